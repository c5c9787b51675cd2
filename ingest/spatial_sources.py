"""Reading where a submission's cells are: Space Ranger folders and microscopy images.

:func:`open_spatial` reads the spatial part of a submission that the manifest's
``spatial:`` block declares, as a :class:`SpatialInput`: one location per spot or cell
(``x``, ``y`` in the technology's full-resolution frame), the images with the scale that
maps those coordinates onto each image's pixels, and the segmentation of an image
submission. It checks nothing beyond being readable; :mod:`aivc.ingest.spatial_checks`
holds the checks, each with its code.

- ``visium``: a Space Ranger output folder (the DATA path): ``spatial/tissue_positions_list.csv``
  (Space Ranger 1.x, no header), ``tissue_positions.csv`` (2.x, a header) or
  ``tissue_positions.parquet`` (3.x); ``scalefactors_json.json``; ``tissue_hires_image.png``
  and ``tissue_lowres_image.png``. ``x`` is ``pxl_col_in_fullres``, ``y`` is
  ``pxl_row_in_fullres`` (scanpy's ``obsm['spatial']`` order).
- ``image``: the image and label files the manifest names (relative to the manifest); a
  cell's location is the centroid of its label, in pixels.
- ``merfish`` / ``xenium``: a SpatialData ``.zarr`` (:mod:`aivc.ingest.spatialdata_sources`):
  transcripts as points, cell and nucleus polygons; a cell's location is its polygon's
  centroid, in micrometres.

A file that is missing or unreadable raises :class:`~aivc.ingest.sources.SourceError`
(``SPATIAL_FILE_MISSING``, ``SPATIAL_FILE_UNREADABLE``), which the submission reports as
one finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.ingest.manifest import SpatialSpec
from aivc.ingest.sources import SourceError

__all__ = ["POSITION_COLUMNS", "SpatialImage", "SpatialInput", "is_spaceranger", "open_spatial"]

#: Space Ranger's tissue position columns, in file order.
POSITION_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres")
POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
SCALEFACTORS = "scalefactors_json.json"
VISIUM_IMAGES = {"hires": ("tissue_hires_image.png", "tissue_hires_scalef"), "lowres": ("tissue_lowres_image.png", "tissue_lowres_scalef")}
MATRIX = "filtered_feature_bc_matrix.h5"


@dataclass
class SpatialImage:
    """One image of a submission: pixels as ``(c, y, x)``, and the scale from the location frame."""

    name: str
    array: np.ndarray
    path: str
    scale: float = 1.0  # image pixel = location coordinate x scale
    channel_names: tuple[str, ...] | None = None
    pixel_size_um: float | None = None
    source_dtype: str = ""
    source_axes: str = ""

    @property
    def height(self) -> int:
        return int(self.array.shape[-2])

    @property
    def width(self) -> int:
        return int(self.array.shape[-1])

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0]) if self.array.ndim == 3 else 1


@dataclass
class SpatialInput:
    """The spatial part of a submission, as read."""

    spec: SpatialSpec
    locations: pd.DataFrame  # one row per located spot / cell (index: barcode / cell id, as in the file)
    where: str  # the file the locations come from
    units: str  # "pixel" (full resolution) or "micrometre"
    images: dict[str, SpatialImage] = field(default_factory=dict)
    scalefactors: dict[str, Any] = field(default_factory=dict)
    scalefactors_where: str = ""
    labels: np.ndarray | None = None  # image technology: the label image (y, x)
    labels_where: str = ""
    library_id: str = ""
    transcripts: pd.DataFrame | None = None  # merfish / xenium: x, y, gene, cell ('' unassigned), [z, nucleus]
    transcripts_where: str = ""
    shapes: dict[str, pd.DataFrame] = field(default_factory=dict)  # "cell" / "nucleus" -> polygons by shape id
    shape_of_cell: pd.Series | None = None  # cell id -> its shape id

    @property
    def technology(self) -> str:
        return self.spec.technology


def is_spaceranger(path: str | Path) -> bool:
    """Whether ``path`` is a Space Ranger output folder (a matrix and a ``spatial/`` folder)."""
    p = Path(path)
    return p.is_dir() and (p / "spatial").is_dir() and ((p / MATRIX).is_file() or any((p / "spatial" / f).is_file() for f in POSITION_FILES))


def open_spatial(data_path: str | Path, spec: SpatialSpec, *, manifest_dir: Path, cell_ids: pd.Index, obs: pd.DataFrame) -> SpatialInput:
    """Read the spatial part of a submission (see the module docstring)."""
    if spec.technology == "visium":
        return _open_visium(Path(data_path), spec)
    if spec.technology == "image":
        return _open_image(spec, manifest_dir, cell_ids, obs)
    from aivc.ingest.spatialdata_sources import open_spatialdata

    return open_spatialdata(Path(data_path), spec, cell_ids=cell_ids, obs=obs)


# -- Visium -----------------------------------------------------------------------------------
def _open_visium(folder: Path, spec: SpatialSpec) -> SpatialInput:
    if not folder.is_dir() or not (folder / "spatial").is_dir():
        raise SourceError("SPATIAL_FILE_MISSING", "technology visium needs a Space Ranger output folder (filtered_feature_bc_matrix.h5 and spatial/) as DATA", str(folder))
    sp_dir = folder / "spatial"
    positions, where = _read_positions(sp_dir)
    sf_path = sp_dir / SCALEFACTORS
    if not sf_path.is_file():
        raise SourceError("SPATIAL_FILE_MISSING", f"the Space Ranger folder has no {SCALEFACTORS}; it gives the image scale factors and spot size", str(sf_path))
    try:
        scalefactors = json.loads(sf_path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"not a JSON file ({type(exc).__name__}: {exc})", str(sf_path)) from None
    if not isinstance(scalefactors, dict):
        raise SourceError("SPATIAL_FILE_UNREADABLE", "scale factors must be a JSON object", str(sf_path))
    images: dict[str, SpatialImage] = {}
    for name, (fname, key) in VISIUM_IMAGES.items():
        path = sp_dir / fname
        if not path.is_file():
            if name == "hires":
                raise SourceError("SPATIAL_FILE_MISSING", f"the Space Ranger folder has no {fname}; the hires image is required (CELLxGENE uns['spatial'] images 'hires')", str(path))
            continue
        scale = scalefactors.get(key)
        images[name] = _visium_image(name, path, scale if _positive(scale) else 1.0)
    locations = positions.set_index("barcode")
    locations["x"] = pd.to_numeric(locations["pxl_col_in_fullres"], errors="coerce").astype(float)
    locations["y"] = pd.to_numeric(locations["pxl_row_in_fullres"], errors="coerce").astype(float)
    return SpatialInput(spec, locations, where, "pixel", images, scalefactors, str(sf_path), library_id=spec.library_id or _library_id(folder))


def _read_positions(sp_dir: Path) -> tuple[pd.DataFrame, str]:
    path = next((sp_dir / f for f in POSITION_FILES if (sp_dir / f).is_file()), None)
    if path is None:
        raise SourceError("SPATIAL_FILE_MISSING", f"the Space Ranger spatial/ folder has no tissue positions ({' or '.join(POSITION_FILES)})", str(sp_dir))
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.name == "tissue_positions_list.csv":
            frame = pd.read_csv(path, header=None, dtype={0: str})
            if frame.shape[1] != len(POSITION_COLUMNS):
                raise ValueError(f"{frame.shape[1]} columns, expected {len(POSITION_COLUMNS)} ({', '.join(POSITION_COLUMNS)})")
            frame.columns = list(POSITION_COLUMNS)
        else:
            frame = pd.read_csv(path, dtype={"barcode": str})
    except (OSError, ValueError) as exc:
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"not a tissue positions table ({type(exc).__name__}: {exc})", str(path)) from None
    missing = [c for c in POSITION_COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"the tissue positions lack columns {missing}; Space Ranger writes {', '.join(POSITION_COLUMNS)}", str(path))
    frame["barcode"] = frame["barcode"].astype(str)
    return frame[list(POSITION_COLUMNS)], str(path)


def _library_id(folder: Path) -> str:
    import h5py

    try:
        with h5py.File(folder / MATRIX, "r") as f:
            ids = f.attrs.get("library_ids")
            if ids is not None and len(ids):
                v = ids[0]
                return v.decode() if isinstance(v, bytes) else str(v)
    except OSError:
        pass
    return folder.name


def _visium_image(name: str, path: Path, scale: float) -> SpatialImage:
    img = _read_image(path)
    return SpatialImage(name, img.array, str(path), float(scale), img.channel_names, img.pixel_size_um, img.source_dtype, img.source_axes)


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) and v > 0


# -- images with segmentation -----------------------------------------------------------------
def _read_image(path: Path) -> SpatialImage:
    """An image file as ``(c, y, x)`` (a 2-D image gets one channel)."""
    from aivc.ingest.images import read_image_file
    from aivc.ingest.readers import UnreadableDataError

    try:
        f = read_image_file(path)
    except UnreadableDataError as exc:
        raise SourceError("SPATIAL_FILE_UNREADABLE", exc.message, str(path)) from None
    arr = np.asarray(f.array)
    if f.axes == "yx":
        arr = arr[None]
    elif f.axes == "yxc":
        arr = np.moveaxis(arr, -1, 0)
    return SpatialImage(path.stem, arr, str(path), 1.0, tuple(f.channel_names) if f.channel_names else None, f.pixel_size_um, str(f.dtype), f.axes)


def _resolve(manifest_dir: Path, rel: str, key: str) -> Path:
    p = Path(rel)
    p = p if p.is_absolute() else manifest_dir / p
    if not p.is_file():
        raise SourceError("SPATIAL_FILE_MISSING", f"spatial.{key} names {rel!r}, which does not exist (paths are relative to the manifest)", f"spatial/{key}")
    return p


def _open_image(spec: SpatialSpec, manifest_dir: Path, cell_ids: pd.Index, obs: pd.DataFrame) -> SpatialInput:
    assert spec.image is not None and spec.labels is not None
    ipath, lpath = _resolve(manifest_dir, spec.image, "image"), _resolve(manifest_dir, spec.labels, "labels")
    image = _read_image(ipath)
    image.name = "image"
    image.pixel_size_um = image.pixel_size_um or spec.pixel_size_um
    image.channel_names = image.channel_names or spec.channels
    lab = _read_image(lpath)
    if lab.array.shape[0] != 1:
        raise SourceError("SPATIAL_LABELS_SHAPE", f"the label image has {lab.array.shape[0]} channels; a segmentation is one integer image (y, x)", str(lpath))
    labels = lab.array[0]
    label_ids = _cell_label_ids(spec, cell_ids, obs)
    locations = pd.DataFrame({"label_id": label_ids}, index=cell_ids)
    if np.issubdtype(labels.dtype, np.integer):
        cx, cy = _centroids(labels, label_ids)
        locations["x"], locations["y"] = cx, cy
    else:
        locations["x"] = locations["y"] = np.nan
    return SpatialInput(spec, locations, f"{lpath} (label centroids)", "pixel", {"image": image}, labels=labels, labels_where=str(lpath), library_id=spec.library_id or "")


def _cell_label_ids(spec: SpatialSpec, cell_ids: pd.Index, obs: pd.DataFrame) -> np.ndarray:
    col = spec.label_column
    if col is not None:
        if col not in obs.columns:
            raise SourceError("SPATIAL_LABEL_COLUMN_MISSING", f"spatial.label_column names obs column {col!r}, which the data does not have (obs columns: {sorted(map(str, obs.columns))[:8]})", f"obs['{col}']")
        values = pd.to_numeric(obs[col], errors="coerce")
        where = f"obs['{col}']"
    else:
        values = pd.to_numeric(pd.Series(cell_ids.astype(str)), errors="coerce")
        where = "obs.index"
    bad = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)) | (values.to_numpy(dtype=float) % 1 != 0) | (values.to_numpy(dtype=float) <= 0))
    if bad.size:
        raise SourceError(
            "SPATIAL_LABEL_ID_INVALID",
            f"{bad.size} cells have a label id that is not a positive integer, first {cell_ids[bad[0]]!r}; give each cell the id of its label (spatial.label_column)",
            f"{where} row {int(bad[0])}",
        )
    return values.to_numpy(dtype=np.int64)


def _centroids(labels: np.ndarray, label_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's label centroid (x = column, y = row, pixel centres); NaN for a missing label."""
    from scipy import ndimage

    flat = labels.astype(np.int64, copy=False)
    ids = np.asarray(label_ids, dtype=np.int64)
    counts = np.bincount(flat.ravel(), minlength=int(max(flat.max(initial=0), ids.max(initial=0))) + 1)
    cy, cx = (np.asarray(c) for c in zip(*ndimage.center_of_mass(np.ones_like(flat, dtype=np.uint8), flat, ids), strict=True)) if len(ids) else (np.zeros(0), np.zeros(0))
    present = counts[ids] > 0
    return np.where(present, cx, np.nan).astype(float), np.where(present, cy, np.nan).astype(float)
