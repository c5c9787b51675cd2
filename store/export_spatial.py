"""Export a spatial dataset version: a SpatialData ``.zarr``, and the spatial part of an ``.h5ad``.

:func:`export_spatialdata` writes what ``spatialdata.read_zarr`` opens: the version's
images (``<dataset>_<image>``, multiscale, with the scale from the full-resolution frame),
an image submission's segmentation as labels (``<dataset>_cells``), Visium spots as circle
shapes (``<dataset>_spots``, radius from ``spot_diameter_fullres``), and the table (the
RNA counts and cell metadata of :func:`aivc.store.export.load_version_anndata`) annotating
the spots or labels through ``region`` / ``instance_id``. Everything lives in one
coordinate system, ``global``, the dataset's full-resolution frame. tiledbsoma 2.3's own
``to_spatialdata`` fails on string obs ids, so the export builds the elements itself.

:func:`add_cellxgene_spatial` adds to a CELLxGENE export what schema 7.x wants of a spatial
dataset: ``uns['spatial']['is_single']``, ``obsm['spatial']`` (``x``, ``y``), and, for a
whole Visium slide (``is_single: true``), ``obs`` ``in_tissue`` / ``array_row`` /
``array_col`` and ``uns['spatial'][library_id]`` with the hires image and the two scale
factors CELLxGENE allows. Other technologies have no CELLxGENE spatial encoding; their
h5ad carries no spatial part (export them as SpatialData).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake
from aivc.store.spatial import LABELS, image_path, read_locations, spatial_record

__all__ = ["add_cellxgene_spatial", "export_spatialdata"]


def add_cellxgene_spatial(lake: Lake, v: DatasetVersion, adata: Any) -> None:
    """Add the CELLxGENE 7.x spatial fields of a Visium version to ``adata`` (in place)."""
    rec = spatial_record(v)
    if rec is None or rec.technology != "visium":
        return
    loc = read_locations(lake, v).set_index("barcode").reindex(adata.obs.index.astype(str))
    adata.obsm["spatial"] = loc[["x", "y"]].to_numpy(dtype=np.float64)
    spatial: dict[str, Any] = {"is_single": bool(rec.is_single)}
    if rec.is_single:
        for c in ("in_tissue", "array_row", "array_col"):
            adata.obs[c] = loc[c].to_numpy(dtype=np.int64)
        from aivc.store.images import read_level

        hires = np.asarray(read_level(image_path(lake, v, "hires"), 0))  # (c, y, x)
        spatial[rec.library_id or v.dataset_id] = {
            "images": {"hires": np.moveaxis(hires, 0, -1)},
            "scalefactors": {"spot_diameter_fullres": float(rec.scalefactors["spot_diameter_fullres"]), "tissue_hires_scalef": float(rec.scalefactors["tissue_hires_scalef"])},
        }
    adata.uns["spatial"] = spatial


def export_spatialdata(lake: Lake, ref: str, out: str | Path) -> dict[str, Any]:
    """Write ``ref`` as a SpatialData zarr store at ``out`` (atomically: a folder renamed into place)."""
    v = Catalog(lake).get(ref)
    rec = spatial_record(v)
    if rec is None:
        raise UsageError(f"dataset version {v.ref} has no spatial part; export it as .h5ad or .h5mu", where="--out")
    sdata = _build(lake, v)
    out = Path(out)
    if out.exists():
        raise UsageError(f"{out} exists; a SpatialData store is a folder, choose a new path", where="--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # spatialdata's writers warn on every element (deprecations of its own)
            sdata.write(tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "dataset_id": v.dataset_id,
        "version": v.version,
        "path": str(out),
        "n_cells": int(sdata.tables["table"].n_obs),
        "n_genes": int(sdata.tables["table"].n_vars),
        "measurement": "RNA",
        "export": "spatialdata",
        "elements": {kind: sorted(getattr(sdata, kind)) for kind in ("images", "labels", "points", "shapes", "tables") if len(getattr(sdata, kind))},
    }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def _build(lake: Lake, v: DatasetVersion) -> Any:
    import dask.array as da
    import geopandas as gpd
    import spatialdata as sd
    from shapely.geometry import Point
    from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    from aivc.store.export import load_version_anndata
    from aivc.store.images import image_info, read_level

    rec = spatial_record(v)
    assert rec is not None
    adata, _ = load_version_anndata(lake, v.ref)
    loc = read_locations(lake, v).set_index("barcode").reindex(adata.obs.index.astype(str))
    base = _safe(v.dataset_id)
    images, labels, shapes, points = {}, {}, {}, {}
    for name, meta in rec.images.items():
        path = image_path(lake, v, name)
        info = image_info(path)
        scale = float(meta["scale"])
        to_global = Scale([1.0 / scale, 1.0 / scale], axes=("y", "x")) if scale != 1.0 else Identity()
        arr = read_level(path, 0)
        factors = [2] * (len(info.levels) - 1)
        c_coords = list(meta.get("channels") or []) or None
        images[f"{base}_{name}"] = Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=c_coords, scale_factors=factors or None, transformations={"global": to_global})
        if LABELS in info.labels:
            lab = read_level(path, 0, label=LABELS)
            labels[f"{base}_{LABELS}"] = Labels2DModel.parse(da.asarray(lab), dims=("y", "x"), scale_factors=factors or None, transformations={"global": to_global})
    if rec.technology == "visium":
        region = f"{base}_spots"
        radius = float(rec.scalefactors.get("spot_diameter_fullres", 1.0)) / 2
        instance = np.arange(adata.n_obs, dtype=np.int64)
        geo = gpd.GeoDataFrame({"radius": np.full(adata.n_obs, radius)}, geometry=[Point(x, y) for x, y in loc[["x", "y"]].to_numpy(dtype=float)], index=pd.Index(instance))
        shapes[region] = ShapesModel.parse(geo, transformations={"global": Identity()})
    elif rec.shapes:
        region = _imaging_elements(lake, v, base, shapes, points, loc)
        instance = np.arange(adata.n_obs, dtype=np.int64)
    elif labels:
        region = f"{base}_{LABELS}"
        instance = loc["label_id"].to_numpy(dtype=np.int64)
    else:
        raise UsageError(f"dataset version {v.ref} ({rec.technology}) has no spots or labels for the table to annotate", where=v.ref)
    table = adata.copy()
    table.obs["region"] = pd.Categorical([region] * table.n_obs)
    table.obs["instance_id"] = instance
    table.obsm["spatial"] = loc[["x", "y"]].to_numpy(dtype=np.float64)
    table.uns = {k: val for k, val in table.uns.items() if k in ("title", "aivc")}
    table = TableModel.parse(table, region=region, region_key="region", instance_key="instance_id")
    return sd.SpatialData(images=images, labels=labels, shapes=shapes, points=points, tables={"table": table})


def _imaging_elements(lake: Lake, v: DatasetVersion, base: str, shapes: dict[str, Any], points: dict[str, Any], loc: pd.DataFrame) -> str:
    """Cell / nucleus polygons and the transcripts of a MERFISH / Xenium version; returns the
    region the table annotates (the cell polygons, indexed by the table's row number)."""
    import dask.dataframe as dd
    import geopandas as gpd
    from spatialdata.models import PointsModel, ShapesModel
    from spatialdata.transformations import Identity

    from aivc.store.spatial import read_shapes, read_transcripts

    polys = read_shapes(lake, v)
    row_of = pd.Series(np.arange(len(loc)), index=loc["obs_id"].to_numpy())
    cells = polys[polys["kind"] == "cell"]
    region = f"{base}_cell_boundaries"
    shapes[region] = ShapesModel.parse(gpd.GeoDataFrame({"obs_id": cells["obs_id"].to_numpy()}, geometry=list(cells.geometry), index=pd.Index(row_of.reindex(cells["obs_id"]).to_numpy(dtype=np.int64))), transformations={"global": Identity()})
    nuclei = polys[polys["kind"] == "nucleus"]
    if len(nuclei):
        shapes[f"{base}_nucleus_boundaries"] = ShapesModel.parse(gpd.GeoDataFrame({"obs_id": nuclei["obs_id"].to_numpy()}, geometry=list(nuclei.geometry), index=pd.RangeIndex(len(nuclei))), transformations={"global": Identity()})
    if v.spatial.get("n_transcripts"):
        t = read_transcripts(lake, v, columns=["x", "y", "gene", "obs_id"])
        t["cell"] = pd.array(row_of.reindex(t["obs_id"]).to_numpy(), dtype="Int64")
        t["gene"] = pd.Categorical(t["gene"])
        points[f"{base}_transcripts"] = PointsModel.parse(dd.from_pandas(t.drop(columns=["obs_id"]), npartitions=1, sort=False), coordinates={"x": "x", "y": "y"}, feature_key="gene", instance_key="cell", transformations={"global": Identity()})
    return region
