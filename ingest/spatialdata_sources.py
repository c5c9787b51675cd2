"""Imaging-based spatial submissions (MERFISH, Xenium) from a SpatialData ``.zarr``.

The DATA path is a SpatialData store (any format ``spatialdata`` 0.7 reads, including
format 0.1 on zarr v2). The manifest's ``spatial:`` block names its elements (defaults in
brackets): the cells x genes ``table`` [``table``], whose ``spatialdata_attrs`` say which
shapes it annotates and by which ``instance_key``; the ``transcripts`` points [``transcripts``]
(``x``, ``y``, the points' ``feature_key`` gene and ``instance_key`` cell); the
``cell_boundaries`` polygons [the table's region] and optionally ``nucleus_boundaries`` and
the transcripts' ``transcript_nucleus_column``. Coordinates are the elements' ``global``
frame: micrometres, or pixels when the manifest gives ``pixel_size_um``. A cell's location is the centroid of its polygon.

:func:`spatialdata_table_group` tells the RNA reader where the table's AnnData is inside the
store; :func:`open_spatialdata` reads the rest as a
:class:`~aivc.ingest.spatial_sources.SpatialInput` whose ``transcripts`` / ``shapes`` the
checks (:mod:`aivc.ingest.spatial_checks`) and the store (:mod:`aivc.store.spatial`) use.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.ingest.manifest import SpatialSpec
from aivc.ingest.sources import SourceError

__all__ = ["open_spatialdata", "spatialdata_table_group"]


def spatialdata_table_group(path: Path, spec: SpatialSpec) -> str:
    """The group of the table's AnnData inside the store (``tables/<name>``; format 0.1: ``table/<name>``)."""
    name = spec.table or "table"
    for group in (f"tables/{name}", f"table/{name}"):
        if (path / group / "obs").exists():
            return group
    if not path.is_dir():
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"technology {spec.technology} needs a SpatialData .zarr folder as DATA", str(path))
    have = sorted(p.name for p in (path / "tables").iterdir()) if (path / "tables").is_dir() else []
    raise SourceError("SPATIAL_ELEMENT_MISSING", f"the SpatialData store has no table {name!r} (tables: {have or 'none'}); name it with spatial.table", f"{path}: tables/{name}")


def _read(path: Path) -> Any:
    import spatialdata as sd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not stored in the most current format", zarr v2 metadata notes
            return sd.read_zarr(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable store is one finding
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"not a readable SpatialData store ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})", str(path)) from None


def _element(sdata: Any, kind: str, name: str, key: str, path: Path) -> Any:
    elements = getattr(sdata, kind)
    if name not in elements:
        raise SourceError("SPATIAL_ELEMENT_MISSING", f"the SpatialData store has no {kind} element {name!r} ({kind}: {sorted(elements) or 'none'}); name it with spatial.{key}", f"{path}: {kind}/{name}")
    return elements[name]


def open_spatialdata(path: Path, spec: SpatialSpec, *, cell_ids: pd.Index, obs: pd.DataFrame) -> Any:
    """Read the locations, transcripts and polygons of a SpatialData submission."""
    from aivc.ingest.spatial_sources import SpatialInput

    sdata = _read(path)
    table = _element(sdata, "tables", spec.table or "table", "table", path)
    attrs = dict(table.uns.get("spatialdata_attrs", {}))
    region = attrs.get("region")
    region = region[0] if isinstance(region, list | tuple) and len(region) == 1 else region
    cells_name = spec.cell_boundaries or (region if isinstance(region, str) else None)
    if cells_name is None:
        raise SourceError("SPATIAL_ELEMENT_MISSING", "the table annotates no single shapes element; name the cell polygons with spatial.cell_boundaries", f"{path}: tables/{spec.table or 'table'}")
    cells = _element(sdata, "shapes", cells_name, "cell_boundaries", path)
    instance_key = attrs.get("instance_key")
    if instance_key and instance_key in obs.columns:
        shape_of_cell = pd.Series(obs[instance_key].astype(str).to_numpy(), index=cell_ids)
    else:
        shape_of_cell = pd.Series(cell_ids.astype(str).to_numpy(), index=cell_ids)
    shapes = {"cell": _shape_frame(cells, f"{path}: shapes/{cells_name}")}
    if spec.nucleus_boundaries:
        shapes["nucleus"] = _shape_frame(_element(sdata, "shapes", spec.nucleus_boundaries, "nucleus_boundaries", path), f"{path}: shapes/{spec.nucleus_boundaries}")
    cent = shapes["cell"]["geometry"]
    located = pd.DataFrame({"shape_id": shape_of_cell.to_numpy()}, index=cell_ids)
    geom = cent.reindex(located["shape_id"].to_numpy()).to_numpy(dtype=object)
    points = [g.centroid if g is not None and not isinstance(g, float) and not g.is_empty else None for g in geom]
    located["x"] = [p.x if p is not None else np.nan for p in points]
    located["y"] = [p.y if p is not None else np.nan for p in points]
    units = "micrometre" if spec.pixel_size_um is None else "pixel"  # pixel_size_um: the frame is pixels of that size
    sp_in = SpatialInput(spec, located, f"{path}: shapes/{cells_name}", units, library_id=spec.library_id or "")
    sp_in.shapes = shapes
    sp_in.shape_of_cell = shape_of_cell
    points_name = spec.transcripts or "transcripts"
    if points_name in sdata.points or spec.transcripts is not None:
        sp_in.transcripts, sp_in.transcripts_where = _transcripts(_element(sdata, "points", points_name, "transcripts", path), spec, f"{path}: points/{points_name}")
    return sp_in


def _shape_frame(gdf: Any, where: str) -> pd.DataFrame:
    """Polygons by shape id (``geometry``), with validity."""
    frame = pd.DataFrame({"geometry": list(gdf.geometry)}, index=pd.Index(gdf.index.astype(str), name="shape_id"))
    frame.attrs["where"] = where
    return frame


def _transcripts(points: Any, spec: SpatialSpec, where: str) -> tuple[pd.DataFrame, str]:
    attrs = dict(points.attrs.get("spatialdata_attrs", {}))
    gene_key, cell_key = attrs.get("feature_key"), attrs.get("instance_key")
    frame = points.compute() if hasattr(points, "compute") else points
    missing = [k for k, v in (("x", "x"), ("y", "y"), ("feature_key", gene_key), ("instance_key", cell_key)) if v is None or v not in frame.columns]
    if missing:
        raise SourceError("SPATIAL_FILE_UNREADABLE", f"the transcripts lack {', '.join(missing)}: points need x, y, a feature_key gene column and an instance_key cell column", where)
    out = pd.DataFrame(
        {
            "x": pd.to_numeric(frame["x"], errors="coerce").to_numpy(dtype=np.float64),
            "y": pd.to_numeric(frame["y"], errors="coerce").to_numpy(dtype=np.float64),
            "gene": frame[gene_key].astype(str).to_numpy(dtype=object),
            "cell": _ids(frame[cell_key]),
        }
    )
    if "z" in frame.columns:
        out["z"] = pd.to_numeric(frame["z"], errors="coerce").to_numpy(dtype=np.float64)
    col = spec.transcript_nucleus_column
    if col is not None:
        if col not in frame.columns:
            raise SourceError("SPATIAL_ELEMENT_MISSING", f"spatial.transcript_nucleus_column names {col!r}, which the transcripts lack (columns: {sorted(map(str, frame.columns))})", f"{where} column {col}")
        out["nucleus"] = _ids(frame[col])
    return out, where


def _ids(col: pd.Series) -> np.ndarray:
    """Cell / nucleus ids as strings, '' for none (unassigned: NaN, '', '<NA>', -1, 0 for integer ids)."""
    if pd.api.types.is_integer_dtype(col.dtype):
        v = col.to_numpy()
        return np.where(v > 0, v.astype(str), "").astype(object)
    s = col.astype("string").fillna("").to_numpy(dtype=object)
    s[np.isin(s, ["<NA>", "nan", "None", "-1", "UNASSIGNED"])] = ""
    return s
