"""A real nuclei image and its segmentation (stardist 0.9.1's DSB 2018 example) as a spatial submission.

The image (512 x 512 uint16) and its mask (125 nuclei, ids 1..183) are real
(``tests/ingest/data/images``, see its PROVENANCE.md); no package ships expression measured
in those cells, so the cell x gene table is made up (Poisson counts over real genes), one
row per nucleus, its ``label_id`` the nucleus's id in the mask.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile

from aivc.ingest.submission import submit
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.spatial import image_path, spatial_record
from aivc.store.sql import query
from tests.conftest import assert_refused, base_manifest, lake_snapshot, make_adata
from tests.ingest.test_cite_submit import write_manifest

IMAGES = Path(__file__).resolve().parent / "data" / "images"
IMAGE, MASK = IMAGES / "nuclei2d.tif", IMAGES / "nuclei2d_mask.tif"


def image_manifest(folder: Path, **spatial: Any) -> dict[str, Any]:
    m = base_manifest("nuclei-dsb", title="DSB 2018 nuclei (stardist example) with a made-up table")
    m["obs"] = {**m["obs"], "assay": {"value": "EFO:0008992"}, "suspension_type": {"value": "na"}}
    m["spatial"] = {"technology": "image", "is_single": True, "image": str(folder / "img.tif"), "labels": str(folder / "mask.tif"), "label_column": "label_id", "channels": ["nuclei"], "pixel_size_um": 0.5, **spatial}
    return m


def write_image_submission(folder: Path, human_genes: pd.DataFrame, *, mask: np.ndarray | None = None, image: np.ndarray | None = None, drop: int = 0, extra_label: int | None = None) -> Path:
    """The table (one cell per nucleus, ``drop`` fewer, one with ``extra_label`` more) and the image files."""
    folder.mkdir(parents=True, exist_ok=True)
    m = tifffile.imread(MASK) if mask is None else mask
    tifffile.imwrite(folder / "img.tif", tifffile.imread(IMAGE) if image is None else image)
    tifffile.imwrite(folder / "mask.tif", m)
    ids = np.unique(m[m > 0])[drop:].tolist() + ([extra_label] if extra_label is not None else [])
    a = make_adata(human_genes, n_cells=len(ids), seed=3)
    a.obs_names = [f"nucleus-{i}" for i in ids]
    a.obs["label_id"] = np.asarray(ids, dtype=np.int64)
    a.write_h5ad(folder / "cells.h5ad")
    return folder / "cells.h5ad"


def test_image_with_segmentation_is_committed_linked_to_cells(lake_uri: str, tmp_path: Path, human_genes: pd.DataFrame) -> None:
    from scipy import ndimage

    lake = Lake.init(lake_uri)
    data = write_image_submission(tmp_path / "sub", human_genes)
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", image_manifest(tmp_path / "sub")), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    v = Catalog(lake).get("nuclei-dsb")
    rec = spatial_record(v)
    assert rec is not None and (rec.technology, rec.units, rec.n_located, rec.pixel_size_um) == ("image", "pixel", 125, 0.5)
    assert rec.images["image"]["labels"] == ["cells"] and rec.images["image"]["channels"] == ["nuclei"]

    # each cell's location is its nucleus's centroid (x = column, y = row)
    mask = tifffile.imread(MASK)
    loc = query(lake, "SELECT barcode, label_id, x, y FROM spatial_cells").to_pandas().set_index("label_id").sort_index()
    ids = np.unique(mask[mask > 0])
    cy, cx = np.asarray(ndimage.center_of_mass(np.ones_like(mask), mask, ids)).T
    np.testing.assert_allclose(loc.loc[ids, "x"].to_numpy(), cx)
    np.testing.assert_allclose(loc.loc[ids, "y"].to_numpy(), cy)
    assert loc.loc[183, "barcode"] == "nucleus-183"

    # the OME-Zarr holds the image and the mask, exactly, ids = label_id
    import zarr

    from aivc.store.images import image_info, read_tile

    path = image_path(lake, v, "image")
    info = image_info(path)
    assert info.shape == (1, 512, 512) and info.labels == ("cells",) and info.pixel_size_um == pytest.approx(0.5)
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["labels/cells/0"][:], mask)
    np.testing.assert_array_equal(read_tile(path, 0, 100, 200, 64, 64)[0], tifffile.imread(IMAGE)[100:164, 200:264])
    assert query(lake, "SELECT count(*), max(level) FROM spatial_images").rows == [(2, 1)]


def test_image_submission_exports_spatialdata_with_labels(tmp_path: Path, human_genes: pd.DataFrame) -> None:
    import spatialdata as sd

    from aivc.store.export_spatial import export_spatialdata

    lake = Lake.init(str(tmp_path / "lake"))
    data = write_image_submission(tmp_path / "sub", human_genes)
    assert submit(lake, data, write_manifest(tmp_path / "m.yaml", image_manifest(tmp_path / "sub")), report_dir=tmp_path / "r").status == "committed"
    export_spatialdata(lake, "nuclei-dsb", tmp_path / "out.zarr")
    back = sd.read_zarr(tmp_path / "out.zarr")
    table = back.tables["table"]
    assert table.uns["spatialdata_attrs"]["region"] == "nuclei-dsb_cells"
    labels = np.asarray(back.labels["nuclei-dsb_cells"]["scale0"]["image"])
    assert set(np.unique(labels[labels > 0])) == set(table.obs["instance_id"])
    assert tuple(back.images["nuclei-dsb_image"]["scale0"]["image"].shape) == (1, 512, 512)
    assert list(back.images["nuclei-dsb_image"]["scale0"]["image"].coords["c"].values) == ["nuclei"]



def test_mask_labels_without_a_cell_are_a_warning(tmp_path: Path, human_genes: pd.DataFrame) -> None:
    """A nucleus of the mask that the table lacks (e.g. filtered out by QC) is said, not refused."""
    lake = Lake.init(str(tmp_path / "lake"))
    data = write_image_submission(tmp_path / "sub", human_genes, drop=2)
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", image_manifest(tmp_path / "sub")), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    hit = [w for w in res.warnings if w.code == "SPATIAL_LABEL_UNKNOWN"]
    assert hit and "2 of the mask's 125 label ids match no cell" in hit[0].message
    assert query(lake, "SELECT count(*) FROM spatial_cells").rows == [(123,)]


BAD = [
    # (id, submission kwargs, spatial overrides, code, where contains, message contains)
    ("cell-without-label", {"extra_label": 999}, {}, "SPATIAL_CELL_UNLABELLED", "mask.tif", "'nucleus-999'"),
    ("mask-shape-differs", {"mask": tifffile.imread(MASK)[:500, :500]}, {}, "SPATIAL_LABELS_SHAPE", "mask.tif", ""),
    ("mask-not-integer", {"mask": tifffile.imread(MASK).astype(np.float32)}, {}, "SPATIAL_LABELS_DTYPE", "mask.tif", ""),
    ("channels-not-as-declared", {}, {"channels": ["DAPI", "GFP"]}, "SPATIAL_IMAGE_CHANNELS", "img.tif", "names 2"),
    ("label-column-missing", {}, {"label_column": "nucleus"}, "SPATIAL_LABEL_COLUMN_MISSING", "obs['nucleus']", "does not have"),
    ("image-file-missing", {}, {"image": "nope.tif"}, "SPATIAL_FILE_MISSING", "spatial/image", "does not exist"),
]


@pytest.mark.parametrize(("case", "kwargs", "spatial", "code", "where", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_image_submission_is_refused_and_changes_nothing(tmp_path: Path, human_genes: pd.DataFrame, case: str, kwargs: dict[str, Any], spatial: dict[str, Any], code: str, where: str, message: str) -> None:
    lake = Lake.init(str(tmp_path / "lake"))
    before = lake_snapshot(tmp_path / "lake")
    data = write_image_submission(tmp_path / "sub", human_genes, **copy.deepcopy(kwargs))
    res = submit(lake, data, write_manifest(tmp_path / "m.yaml", image_manifest(tmp_path / "sub", **spatial)), report_dir=tmp_path / "r")
    assert_refused(res, code, where, message, case)
    assert lake_snapshot(tmp_path / "lake") == before
