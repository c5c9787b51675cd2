"""A dataset version's spatial part: locations, images, segmentation, and their record.

What a spatial version keeps, in its version folder (committed with its record, so a
reader sees all of it or none):

``spatial/locations.parquet``
    one row per located cell: ``obs_id``, ``dataset_id``, ``version``, ``barcode``, ``x``,
    ``y`` (the technology's full-resolution frame: Visium full-resolution pixels, image
    pixels, or micrometres), Visium's ``in_tissue``, ``array_row``, ``array_col``, an image
    submission's ``label_id``, and the ``tile`` key that keeps row groups spatially compact
    (:mod:`aivc.store.spatial_index`). The rows of the ``spatial_cells`` SQL view.
``images/<name>.ome.zarr``
    each image as an OME-Zarr multiscale pyramid (:mod:`aivc.store.images`); the
    segmentation of an image submission is its NGFF label image ``labels/cells``, whose ids
    are the ``label_id`` of the locations table (so a label links to its cell's ``obs_id``).
``spatial/transcripts.parquet``
    imaging-based technologies: one row per transcript, ``obs_id`` of the cell it is
    assigned to (null: none), ``dataset_id``, ``version``, ``x``, ``y`` (µm), ``gene`` (as
    submitted), ``feature_id`` (the gene's reference id; null for controls and unmapped
    names), ``in_nucleus``, [``z``], ``tile``: Hilbert-sorted like the locations.
``spatial/shapes.parquet``
    GeoParquet (``geo`` metadata, WKB ``geometry``): one row per cell or nucleus polygon,
    ``kind`` (``cell`` / ``nucleus``), ``shape_id`` as submitted, ``obs_id`` (a nucleus: the
    cell whose polygon holds its centroid), ``area``, ``x_min`` .. ``y_max``.
``spatial/images.parquet``
    one row per image level: ``image``, ``level``, ``height``, ``width``, ``channels``,
    ``scale`` (image pixel = location x scale, at that level), ``pixel_size_um``, ``path``.

The record's ``spatial`` entry (:class:`SpatialRecord`) says the technology, ``is_single``,
the library id, units, the images with their scale factors and the SOMA Scene name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import LakeError
from aivc.store.catalog import DatasetVersion
from aivc.store.lake import Lake

__all__ = ["IMAGES", "IMAGE_LEVELS", "LOCATIONS", "SHAPES", "TRANSCRIPTS", "SpatialRecord", "StagedImage", "image_path", "read_locations", "read_shapes", "read_transcripts", "spatial_record", "stage_spatial"]

LOCATIONS = "spatial/locations.parquet"
TRANSCRIPTS = "spatial/transcripts.parquet"
SHAPES = "spatial/shapes.parquet"
IMAGE_LEVELS = "spatial/images.parquet"
IMAGES = "images"
LABELS = "cells"  # the NGFF label image of a segmentation


@dataclass(frozen=True)
class StagedImage:
    """One image to store: pixels ``(c, y, x)`` and how locations map onto them."""

    name: str
    array: Any
    scale: float = 1.0
    channel_names: tuple[str, ...] | None = None
    pixel_size_um: float | None = None
    labels: Any = None  # (y, x) integer segmentation, ids = locations' label_id


@dataclass(frozen=True)
class SpatialRecord:
    """The ``spatial`` entry of a dataset version's record."""

    technology: str
    is_single: bool
    units: str
    n_located: int
    library_id: str = ""
    scene: str = ""
    scalefactors: dict[str, Any] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {path, scale, shape, levels, labels}
    n_transcripts: int = 0
    shapes: dict[str, int] = field(default_factory=dict)  # kind -> polygons
    pixel_size_um: float | None = None  # the size of one coordinate unit when units is "pixel" (if known)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> SpatialRecord:
        return cls(**d)


def stage_spatial(folder: Path, locations: pd.DataFrame, images: list[StagedImage], *, transcripts: pd.DataFrame | None = None, shapes: pd.DataFrame | None = None, progress: Any = None) -> dict[str, dict[str, Any]]:
    """Write the locations table and the images into a version's staging ``folder``.

    ``locations``: ``obs_id``, ``dataset_id``, ``version``, ``barcode``, ``x``, ``y`` and any
    technology columns, one row per cell (cells without a location have NaN ``x``/``y`` and
    are left out). ``transcripts`` and ``shapes`` are the tables of the same names (see the
    module docstring; ``shapes`` with shapely ``geometry``). Returns the record's ``images`` entry.
    """
    from aivc.store.images import write_ome_zarr
    from aivc.store.spatial_index import locations_table, write_locations

    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    located = locations[np.isfinite(locations["x"].to_numpy(dtype=float)) & np.isfinite(locations["y"].to_numpy(dtype=float))]
    write_locations(locations_table(located.reset_index(drop=True)), folder / LOCATIONS)
    if transcripts is not None:
        write_locations(locations_table(transcripts.reset_index(drop=True)), folder / TRANSCRIPTS, row_group_size=65536)
    if shapes is not None:
        _write_shapes(shapes, folder / SHAPES)
    out: dict[str, dict[str, Any]] = {}
    levels: list[dict[str, Any]] = []
    for img in images:
        rel = f"{IMAGES}/{img.name}.ome.zarr"
        labels = {LABELS: np.asarray(img.labels)} if img.labels is not None else None
        info = write_ome_zarr(img.array, folder / rel, axes="cyx", channel_names=list(img.channel_names) if img.channel_names else None, pixel_size_um=img.pixel_size_um, labels=labels, progress=progress)
        out[img.name] = {"path": rel, "scale": float(img.scale), "shape": list(info.shape), "levels": len(info.levels), "labels": list(info.labels), "channels": list(img.channel_names or ())}
        for lv in info.levels:
            f = 2 ** lv.level
            levels.append({"image": img.name, "level": lv.level, "height": int(lv.shape[-2]), "width": int(lv.shape[-1]), "channels": int(lv.shape[0]) if len(lv.shape) == 3 else 1, "scale": float(img.scale) / f, "pixel_size_um": (img.pixel_size_um * f) if img.pixel_size_um else None, "path": rel})
    frame = pd.DataFrame(levels, columns=["image", "level", "height", "width", "channels", "scale", "pixel_size_um", "path"])
    frame["pixel_size_um"] = frame["pixel_size_um"].astype(float)
    frame.to_parquet(folder / IMAGE_LEVELS, index=False)
    return out


def _write_shapes(shapes: pd.DataFrame, path: Path) -> None:
    """Polygons as GeoParquet (WKB geometry and the ``geo`` metadata; geopandas reads it)."""
    import geopandas as gpd

    geo = gpd.GeoDataFrame(shapes.drop(columns=["geometry"]).reset_index(drop=True), geometry=list(shapes["geometry"]), crs=None)
    bounds = geo.geometry.bounds
    geo["area"] = geo.geometry.area.to_numpy(dtype=float)
    for c in ("minx", "miny", "maxx", "maxy"):
        geo[{"minx": "x_min", "miny": "y_min", "maxx": "x_max", "maxy": "y_max"}[c]] = bounds[c].to_numpy(dtype=float)
    geo.to_parquet(path, index=False, schema_version="1.0.0")


def read_shapes(lake: Lake, v: DatasetVersion) -> Any:
    """The polygons of an imaging-based version (a GeoDataFrame; see the module docstring)."""
    import geopandas as gpd

    _require(v)
    return gpd.read_parquet(lake.storage.local_file(f"{v.artifacts}/{SHAPES}"))


def read_transcripts(lake: Lake, v: DatasetVersion, columns: list[str] | None = None) -> pd.DataFrame:
    """The transcripts of an imaging-based version."""
    _require(v)
    return lake.storage.read_parquet(f"{v.artifacts}/{TRANSCRIPTS}", columns=columns).to_pandas()


def spatial_record(v: DatasetVersion) -> SpatialRecord | None:
    """The spatial entry of a version's record, or None for a version without locations."""
    d = getattr(v, "spatial", None)
    return SpatialRecord.from_record(d) if d else None


def _require(v: DatasetVersion) -> SpatialRecord:
    rec = spatial_record(v)
    if rec is None:
        raise LakeError(f"dataset version {v.ref} has no spatial part (it was not submitted with a spatial: block)", where=v.ref)
    return rec


def read_locations(lake: Lake, v: DatasetVersion) -> pd.DataFrame:
    """The located cells of a spatial version (see the module docstring)."""
    _require(v)
    return lake.storage.read_parquet(f"{v.artifacts}/{LOCATIONS}").to_pandas()


def image_path(lake: Lake, v: DatasetVersion, name: str) -> str:
    """Where one image of a version is (a local path, or the cached copy of an object-store lake)."""
    rec = _require(v)
    if name not in rec.images:
        raise LakeError(f"dataset version {v.ref} has no image {name!r} (it has: {', '.join(rec.images) or 'none'})", where=v.ref)
    return str(lake.storage.materialize(f"{v.artifacts}/{rec.images[name]['path']}"))
