"""A real Visium slide subset (Space Ranger 1.0.0) from submission to SQL, SOMA and exports.

The data is the scanpy 1.11.5 sdist's ``tests/_data/visium_data/1.0.0`` (100 spots x 100
genes of real counts, the real H&E hires 2000 x 2000 RGBA and lowres 600 x 600 images, the
slide's 4,992 tissue positions), shipped in ``schemas/examples/visium_spaceranger_1.0.0``
(see ``schemas/build_visium_example.py``). 100 of the slide's 4,235 in-tissue spots: a
subset, so ``is_single: false`` and every spot ``is_primary_data: false``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from aivc.demo_spatial import VISIUM_EXAMPLE, visium_manifest
from aivc.ingest.submission import submit
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.spatial import spatial_record
from aivc.store.sql import query
from tests.ingest.test_cite_submit import write_manifest

CXG = Path(__file__).resolve().parents[2] / ".cxg-venv" / "bin" / "cellxgene-schema"


def _positions() -> pd.DataFrame:
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    return pd.read_csv(VISIUM_EXAMPLE / "spatial" / "tissue_positions_list.csv", header=None, names=cols).set_index("barcode")


def _submit(lake: Lake, tmp_path: Path, **over: object):  # noqa: ANN202
    return submit(lake, VISIUM_EXAMPLE, write_manifest(tmp_path / "m.yaml", visium_manifest(**over)), report_dir=tmp_path / "r")


def test_visium_subset_is_committed_with_locations_images_and_scene(lake_uri: str, tmp_path: Path) -> None:
    lake = Lake.init(lake_uri)
    res = _submit(lake, tmp_path)
    assert res.status == "committed", [str(e) for e in res.errors]
    assert (res.n_cells, res.n_genes) == (100, 97)  # 3 Ensembl ids of Space Ranger 1.0 are not in the GENCODE reference
    v = Catalog(Lake.open(lake_uri)).get("visium-sample")
    rec = spatial_record(v)
    assert rec is not None and (rec.technology, rec.is_single, rec.units, rec.n_located) == ("visium", False, "pixel", 100)
    assert rec.library_id == "custom" and rec.scalefactors["tissue_hires_scalef"] == pytest.approx(0.150015)
    assert rec.images["hires"]["shape"] == [4, 2000, 2000] and rec.images["lowres"]["shape"] == [3, 600, 600]

    # SQL: every spot where Space Ranger put it, joinable to cells
    pos = _positions()
    rows = query(lake, "SELECT s.barcode, s.x, s.y, s.in_tissue, s.array_row, s.array_col, c.is_primary_data FROM spatial_cells s JOIN cells c USING (obs_id)").to_pandas()
    assert len(rows) == 100 and not rows["is_primary_data"].any()
    got = rows.set_index("barcode").sort_index()
    want = pos.loc[got.index]
    np.testing.assert_array_equal(got["x"].to_numpy(), want["pxl_col_in_fullres"].to_numpy(dtype=float))
    np.testing.assert_array_equal(got["y"].to_numpy(), want["pxl_row_in_fullres"].to_numpy(dtype=float))
    assert (got["array_row"].to_numpy() == want["array_row"].to_numpy()).all() and (got["in_tissue"] == 1).all()

    # a radius query equals the brute force on the same spots
    first = got.index[0]
    r = 400.0
    near = query(lake, f"SELECT barcode, distance FROM cells_near('visium-sample@1:{first}', {r})").to_pandas()
    d = np.hypot(got["x"] - got.loc[first, "x"], got["y"] - got.loc[first, "y"])
    expected = sorted(b for b in d[(d <= r) & (d.index != first)].index)
    assert sorted(near["barcode"]) == expected and len(expected) > 0

    levels = query(lake, "SELECT image, level, height, width, channels, scale FROM spatial_images ORDER BY image, level").rows
    assert levels[0][:5] == ("hires", 0, 2000, 2000, 4) and levels[1][:4] == ("hires", 1, 1000, 1000)
    assert ("lowres", 0, 600, 600, 3) in [row[:5] for row in levels]
    assert query(lake, "SELECT technology, is_single, n_located FROM spatial_datasets").rows == [("visium", False, 100)]

    # the images are OME-Zarr that plain zarr reads with the declared shapes, pixels exact
    if lake.is_local:
        from PIL import Image

        root = zarr.open_group(str(Path(lake_uri) / v.artifacts / rec.images["hires"]["path"]), mode="r")
        assert root["0"].shape == (4, 2000, 2000) and root["0"].dtype == np.uint8
        png = np.asarray(Image.open(VISIUM_EXAMPLE / "spatial" / "tissue_hires_image.png"))
        np.testing.assert_array_equal(root["0"][:, 700:900, 1000:1300], np.moveaxis(png, -1, 0)[:, 700:900, 1000:1300])

        # stock tiledbsoma finds the locations in the experiment's spatial Scene
        from aivc.store.soma_spatial import read_scene

        scene = read_scene(lake.soma_uri("homo_sapiens"), rec.scene, v.soma_high_water).set_index("obs_id").sort_index()
        assert len(scene) == 100
        np.testing.assert_array_equal(scene["x"].to_numpy(), query(lake, "SELECT obs_id, x FROM spatial_cells ORDER BY obs_id").to_pandas()["x"].to_numpy())

    # an identical resubmission is recognised
    assert _submit(lake, tmp_path).status == "unchanged"


def test_visium_exports_spatialdata_and_a_cellxgene_valid_h5ad(tmp_path: Path) -> None:
    import spatialdata as sd

    from aivc.store.export import export_h5ad
    from aivc.store.export_spatial import export_spatialdata

    lake = Lake.init(str(tmp_path / "lake"))
    assert _submit(lake, tmp_path).status == "committed"
    info = export_spatialdata(lake, "visium-sample", tmp_path / "out.zarr")
    assert info["elements"]["images"] == ["visium-sample_hires", "visium-sample_lowres"]
    back = sd.read_zarr(tmp_path / "out.zarr")
    table = back.tables["table"]
    assert table.n_obs == 100 and table.n_vars == 97
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region"], attrs["region_key"], attrs["instance_key"]) == ("visium-sample_spots", "region", "instance_id")
    spots = back.shapes["visium-sample_spots"]
    assert len(spots) == 100 and spots["radius"].iloc[0] == pytest.approx(89.42751063343188 / 2)
    pos = _positions().loc[table.obs_names]
    np.testing.assert_allclose(spots.loc[table.obs["instance_id"].to_numpy()].geometry.x.to_numpy(), pos["pxl_col_in_fullres"].to_numpy(dtype=float))
    hires = back.images["visium-sample_hires"]
    assert tuple(hires["scale0"]["image"].shape) == (4, 2000, 2000)
    # hires pixels map to the full-resolution frame by 1 / tissue_hires_scalef
    from spatialdata.transformations import get_transformation

    t = get_transformation(hires, "global").to_affine_matrix(("y", "x"), ("y", "x"))
    assert t[0, 0] == pytest.approx(1 / 0.150015)

    out = tmp_path / "visium.h5ad"
    export_h5ad(lake, "visium-sample", out)
    import anndata as ad

    a = ad.read_h5ad(out)
    assert a.uns["spatial"] == {"is_single": False} and a.obsm["spatial"].shape == (100, 2)
    assert "in_tissue" not in a.obs  # CELLxGENE forbids tissue positions unless is_single
    assert CXG.is_file(), f"{CXG} missing: create it with `bash .ci/cxg-venv.sh` (the README's test command does)"
    proc = subprocess.run([str(CXG), "validate", str(out)], capture_output=True, text=True, timeout=600)
    assert "is_valid=True" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_visium_whole_slide_export_carries_the_cellxgene_library(tmp_path: Path) -> None:
    """A whole slide (every one of the 4,992 spots; counts made up for the spots the sample lacks)
    exports in_tissue / array_row / array_col and uns['spatial'][library] with the hires image."""
    from aivc.store.export import export_h5ad
    from tests.ingest.spatial_fixtures import whole_slide

    folder = whole_slide(tmp_path / "slide")
    lake = Lake.init(str(tmp_path / "lake"))
    res = submit(lake, folder, write_manifest(tmp_path / "m.yaml", visium_manifest(spatial={"technology": "visium", "is_single": True}, is_primary=True)), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    out = tmp_path / "slide.h5ad"
    export_h5ad(lake, "visium-sample", out)
    import anndata as ad

    a = ad.read_h5ad(out)
    lib = a.uns["spatial"]["custom"]
    assert a.uns["spatial"]["is_single"] and lib["images"]["hires"].shape == (2000, 2000, 4)
    assert lib["scalefactors"] == {"spot_diameter_fullres": pytest.approx(89.42751063343188), "tissue_hires_scalef": pytest.approx(0.150015)}
    pos = _positions().loc[a.obs_names]
    assert (a.obs["array_col"].to_numpy() == pos["array_col"].to_numpy()).all() and int(a.obs["in_tissue"].sum()) == 4235
    empty = np.asarray(a.X.sum(axis=1)).ravel() == 0
    assert empty[a.obs["in_tissue"].to_numpy() == 0].sum() > 100 and not empty[a.obs["in_tissue"].to_numpy() == 1].any()  # empty out-of-tissue spots are kept
    proc = subprocess.run([str(CXG), "validate", str(out)], capture_output=True, text=True, timeout=900)
    assert "is_valid=True" in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
