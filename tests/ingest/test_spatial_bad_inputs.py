"""Bad spatial submissions: each one mistake in the real Visium sample (or a real nuclei image
and its mask), each refused with its own code and where, and the lake left byte for byte."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aivc.demo_spatial import visium_manifest
from aivc.ingest.submission import submit
from aivc.store.lake import Lake
from tests.conftest import assert_refused, lake_snapshot
from tests.ingest.spatial_fixtures import copy_sample, positions, whole_slide, write_positions
from tests.ingest.test_cite_submit import write_manifest

HIRES = "spatial/tissue_hires_image.png"
SPOT = "ACGCCTGACACGCGCT-1"  # not in the matrix
Make = Callable[[Path], Path]


def _sample(mutate: Callable[[Path], None] | None = None) -> Make:
    def make(tmp: Path) -> Path:
        folder = copy_sample(tmp / "visium")
        if mutate is not None:
            mutate(folder)
        return folder

    return make


def _positions(change: Callable[[Any], Any]) -> Make:
    def mutate(folder: Path) -> None:
        write_positions(folder, change(positions(folder)))

    return _sample(mutate)


def _matrix_barcode(folder: Path, i: int = 0) -> str:
    from tests.ingest.spatial_fixtures import read_matrix

    return read_matrix(folder / "filtered_feature_bc_matrix.h5")[1][i]


def _set(column: str, value: Any, *, row: int = 0) -> Make:
    """Set one tissue-position value of the matrix's ``row``-th spot."""

    def mutate(folder: Path) -> None:
        pos = positions(folder)
        b = _matrix_barcode(folder, row)
        pos[column] = pos[column].astype(object)
        pos.loc[pos["barcode"] == b, column] = value
        write_positions(folder, pos)

    return _sample(mutate)


def _drop_matrix_spot(folder: Path) -> None:
    pos = positions(folder)
    write_positions(folder, pos[pos["barcode"] != _matrix_barcode(folder, 5)])


def _scalefactors(change: Callable[[dict[str, Any]], None]) -> Make:
    def mutate(folder: Path) -> None:
        p = folder / "spatial" / "scalefactors_json.json"
        sf = json.loads(p.read_text())
        change(sf)
        p.write_text(json.dumps(sf))

    return _sample(mutate)


def _hires(change: Callable[[np.ndarray], Image.Image]) -> Make:
    def mutate(folder: Path) -> None:
        arr = np.asarray(Image.open(folder / HIRES))
        change(arr).save(folder / HIRES)

    return _sample(mutate)


def _bigger_hires(folder: Path) -> None:
    arr = np.asarray(Image.open(folder / HIRES))
    Image.fromarray(np.pad(arr, ((0, 500), (0, 500), (0, 0)))).save(folder / HIRES)


def _remove(rel: str) -> Make:
    return _sample(lambda folder: (folder / rel).unlink())


def _obs(**fields: Any) -> dict[str, Any]:
    m = visium_manifest()
    m["obs"] = {**m["obs"], **{k: {"value": v} for k, v in fields.items()}}
    return m


CASES: list[tuple[str, Make, dict[str, Any] | None, str, str, str]] = [
    # (id, make data, manifest (None: the demo's), code, where contains, message contains)
    ("spot-without-location", _sample(_drop_matrix_spot), None, "SPATIAL_LOCATION_MISSING", "tissue_positions_list.csv barcode", "have no location"),
    ("barcode-listed-twice", _positions(lambda p: pd.concat([p, p.iloc[[10]]])), None, "SPATIAL_DUPLICATE_LOCATION", "tissue_positions_list.csv barcode", "more than once"),
    ("subset-declared-whole-slide", _sample(), visium_manifest(spatial={"technology": "visium", "is_single": True}, is_primary=True), "SPATIAL_SPOT_NOT_IN_MATRIX", f"barcode {SPOT!r}", "is_single: false"),
    ("coordinate-not-finite", _set("pxl_col_in_fullres", "nan"), None, "SPATIAL_COORDINATE_NOT_FINITE", "tissue_positions_list.csv barcode", "NaN or infinite"),
    ("coordinate-outside-image", _set("pxl_row_in_fullres", 99999), None, "SPATIAL_COORDINATE_OUTSIDE_IMAGE", "tissue_positions_list.csv barcode", "outside the hires image"),
    ("negative-coordinate", _set("pxl_col_in_fullres", -40), None, "SPATIAL_COORDINATE_OUTSIDE_IMAGE", "barcode", "(x=-40"),
    ("in-tissue-not-0-1", _set("in_tissue", 2), None, "SPATIAL_TISSUE_POSITION_INVALID", "column in_tissue", "0-1"),
    ("array-row-off-grid", _set("array_row", 90), None, "SPATIAL_TISSUE_POSITION_INVALID", "column array_row", "0-77"),
    ("hires-scalef-negative", _scalefactors(lambda sf: sf.update(tissue_hires_scalef=-0.15)), None, "SPATIAL_SCALEFACTORS_INCONSISTENT", "scalefactors_json.json: tissue_hires_scalef", "positive number"),
    ("spot-diameter-missing", _scalefactors(lambda sf: sf.pop("spot_diameter_fullres")), None, "SPATIAL_SCALEFACTORS_INCONSISTENT", "spot_diameter_fullres", "positive number"),
    ("lowres-scalef-contradicts-images", _scalefactors(lambda sf: sf.update(tissue_lowres_scalef=0.09)), None, "SPATIAL_SCALEFACTORS_INCONSISTENT", "tissue_lowres_scalef", "different full-resolution widths"),
    ("hires-grayscale", _hires(lambda a: Image.fromarray(a[..., 0])), None, "SPATIAL_IMAGE_CHANNELS", HIRES, "RGB or RGBA"),
    ("hires-16-bit", _hires(lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 200)), None, "SPATIAL_IMAGE_DTYPE", HIRES, "8-bit"),
    ("hires-too-large", _sample(_bigger_hires), None, "SPATIAL_IMAGE_SIZE", HIRES, "at most 2000 px"),
    ("hires-missing", _remove(HIRES), None, "SPATIAL_FILE_MISSING", HIRES, "hires image is required"),
    ("scalefactors-missing", _remove("spatial/scalefactors_json.json"), None, "SPATIAL_FILE_MISSING", "scalefactors_json.json", "scale factors"),
    ("positions-missing", _remove("spatial/tissue_positions_list.csv"), None, "SPATIAL_FILE_MISSING", "spatial", "tissue positions"),
    ("positions-five-columns", _sample(lambda f: positions(f).iloc[:, :5].to_csv(f / "spatial" / "tissue_positions_list.csv", header=False, index=False)), None, "SPATIAL_FILE_UNREADABLE", "tissue_positions_list.csv", "5 columns"),
    ("generic-visium-assay", _sample(), _obs(assay="EFO:0010961"), "SPATIAL_ASSAY", "obs['assay']", "descendant of EFO:0010961"),
    ("assay-not-visium", _sample(), _obs(assay="EFO:0009922", suspension_type="cell"), "SPATIAL_ASSAY", "obs['assay']", "not 'EFO:0009922'"),
    ("subset-marked-primary", _sample(), visium_manifest(is_primary=True), "SPATIAL_SUBSET_PRIMARY", "obs['is_primary_data']", "never the primary data"),
    ("space-ranger-without-spatial-block", _sample(), {k: v for k, v in visium_manifest().items() if k != "spatial"}, "SPATIAL_BLOCK_MISSING", "spatial (missing)", "technology: visium"),
    ("whole-slide-out-of-tissue-typed", lambda tmp: whole_slide(tmp / "slide"), _obs(cell_type="CL:0000540", is_primary_data=True) | {"spatial": {"technology": "visium", "is_single": True}}, "SPATIAL_OUT_OF_TISSUE_CELL_TYPE", "obs['cell_type'] barcode", "in_tissue 0"),
]


@pytest.fixture(scope="module")
def filled_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake that already holds the Visium sample, so refusals are checked against data."""
    root = tmp_path_factory.mktemp("sp-bad")
    lake = Lake.init(str(root / "lake"))
    res = submit(lake, _sample()(root), write_manifest(root / "m.yaml", visium_manifest("visium-a")), report_dir=root / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    return root / "lake"


@pytest.mark.parametrize(("case", "make", "manifest", "code", "where", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_spatial_input_is_refused_and_changes_nothing(filled_lake: Path, tmp_path: Path, case: str, make: Make, manifest: dict[str, Any] | None, code: str, where: str, message: str) -> None:
    data = make(tmp_path)
    mf = write_manifest(tmp_path / "m.yaml", copy.deepcopy(manifest) if manifest is not None else visium_manifest())
    before = lake_snapshot(filled_lake)
    res = submit(Lake.open(str(filled_lake)), data, mf, report_dir=tmp_path / "report")
    assert_refused(res, code, where, message, case)
    assert lake_snapshot(filled_lake) == before
