"""Checks of an imaging-based spatial submission's transcripts and polygons (MERFISH, Xenium).

``SPATIAL_LOCATION_MISSING`` (a cell of the table without a polygon) is found with the other
locations (:mod:`aivc.ingest.spatial_checks`); the codes here:

``SPATIAL_SHAPE_WITHOUT_CELL``
    a cell polygon that no cell of the table has (the reverse of a cell without a location).
``SPATIAL_SHAPE_INVALID``
    a polygon that is empty, not a polygon, or invalid (self-intersecting), with its id.
``SPATIAL_COORDINATE_NOT_FINITE``
    a transcript whose x or y is NaN or infinite.
``SPATIAL_TRANSCRIPT_UNKNOWN_CELL``, ``SPATIAL_TRANSCRIPT_UNKNOWN_NUCLEUS``
    transcripts assigned to a cell (nucleus) that has no polygon.
``SPATIAL_TRANSCRIPT_UNKNOWN_GENE``
    transcripts of a gene the table does not have: the table is the count of the
    transcripts per cell and gene, so each gene of the points is a column of the table.
``SPATIAL_TABLE_TRANSCRIPT_MISMATCH`` (a warning)
    cells whose count of a gene in the table is not the number of that gene's transcripts
    assigned to the cell (the bento MERFISH sample agrees exactly; a Xenium table that
    dropped low-quality transcripts does not, so this is reported, not refused), with the
    first cell, gene and both counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.spatial_sources import SpatialInput

__all__ = ["check_imaging"]


def _first(values: list[str] | np.ndarray, n: int = 3) -> str:
    vals = [str(v) for v in values]
    more = f" and {len(vals) - n} more" if len(vals) > n else ""
    return ", ".join(repr(v) for v in vals[:n]) + more


def _count_mismatch(t: pd.DataFrame, where: str, counts: Any, cell_ids: pd.Index, var_names: pd.Index) -> list[Finding]:
    """Compare the table (``counts``, cells x genes in ``cell_ids`` x ``var_names`` order) with
    the transcripts assigned to each cell, per gene."""
    from scipy import sparse

    ci = cell_ids.get_indexer(t["cell"].to_numpy(dtype=object))
    gi = var_names.get_indexer(t["gene"].to_numpy(dtype=object))
    keep = (ci >= 0) & (gi >= 0)
    tx = sparse.csr_matrix((np.ones(int(keep.sum()), np.float64), (ci[keep], gi[keep])), shape=(len(cell_ids), len(var_names)))
    table = sparse.csr_matrix(counts, dtype=np.float64)
    diff = (table - tx).tocoo()
    off = np.abs(diff.data) > 0.5
    if not off.any():
        return []
    rows = np.unique(diff.row[off])
    r, c = int(diff.row[off][0]), int(diff.col[off][0])
    return [Finding(
        "SPATIAL_TABLE_TRANSCRIPT_MISMATCH", f"{where} cell {cell_ids[r]!r} gene {var_names[c]!r}",
        f"{rows.size} cells of the table do not count their assigned transcripts (cell {cell_ids[r]!r}: {table[r, c]:g} {var_names[c]} in the table, "
        f"{tx[r, c]:g} transcripts); both are stored as given",
        severity="warning",
    )]  # fmt: skip


def check_imaging(sp: SpatialInput, var_names: pd.Index | None, counts: Any = None, cell_ids: pd.Index | None = None) -> list[Finding]:
    """The transcripts' and polygons' findings (see the module docstring); ``counts`` (the
    table, cells x genes, rows ``cell_ids``) enables the count comparison."""
    out: list[Finding] = []
    cells = sp.shapes.get("cell")
    if cells is not None and sp.shape_of_cell is not None:
        orphan = cells.index[~cells.index.isin(sp.shape_of_cell.to_numpy())]
        if len(orphan):
            out.append(Finding("SPATIAL_SHAPE_WITHOUT_CELL", f"{cells.attrs.get('where', 'shapes')} id {orphan[0]!r}", f"{len(orphan)} cell polygons ({_first(orphan)}) belong to no cell of the table; every polygon is a cell of the table and the reverse"))
    for kind, frame in sp.shapes.items():
        out.extend(_invalid_shapes(kind, frame))
    t = sp.transcripts
    if t is None:
        return out
    where = sp.transcripts_where
    xy = t[["x", "y"]].to_numpy(dtype=float)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        out.append(Finding("SPATIAL_COORDINATE_NOT_FINITE", f"{where} row {i}", f"{int(bad.sum())} transcripts have a NaN or infinite x or y; coordinates must be finite numbers"))
    if cells is not None:
        assigned = t["cell"].to_numpy(dtype=object)
        unknown = (assigned != "") & ~pd.Index(assigned).isin(cells.index)
        if unknown.any():
            ids = pd.unique(assigned[unknown])
            out.append(Finding("SPATIAL_TRANSCRIPT_UNKNOWN_CELL", f"{where} row {int(np.flatnonzero(unknown)[0])}", f"{int(unknown.sum())} transcripts are assigned to cells without a polygon ({_first(ids)}); assign them to a cell of the table or leave them unassigned"))
    nuclei = sp.shapes.get("nucleus")
    if nuclei is not None and "nucleus" in t.columns:
        n = t["nucleus"].to_numpy(dtype=object)
        unknown = (n != "") & ~pd.Index(n).isin(nuclei.index)
        if unknown.any():
            out.append(Finding("SPATIAL_TRANSCRIPT_UNKNOWN_NUCLEUS", f"{where} row {int(np.flatnonzero(unknown)[0])}", f"{int(unknown.sum())} transcripts name nuclei without a polygon ({_first(pd.unique(n[unknown]))})"))
    if var_names is not None:
        genes = pd.unique(t["gene"].to_numpy(dtype=object))
        missing = [g for g in genes if g not in set(var_names)]
        if missing:
            first = int(np.flatnonzero(t["gene"].to_numpy(dtype=object) == missing[0])[0])
            out.append(Finding("SPATIAL_TRANSCRIPT_UNKNOWN_GENE", f"{where} row {first}", f"{len(missing)} genes of the transcripts are not columns of the table ({_first(missing)}); the table counts each cell's transcripts per gene"))
        if counts is not None and cell_ids is not None and "cell" in t.columns:
            out.extend(_count_mismatch(t, where, counts, pd.Index(cell_ids), pd.Index(var_names)))
    return out


def _invalid_shapes(kind: str, frame: pd.DataFrame) -> list[Finding]:
    geoms = frame["geometry"].to_numpy(dtype=object)
    bad = np.array([g is None or g.is_empty or g.geom_type not in ("Polygon", "MultiPolygon") or not g.is_valid for g in geoms], dtype=bool)
    if not bad.any():
        return []
    i = int(np.flatnonzero(bad)[0])
    g = geoms[i]
    why = "empty" if g is None or g.is_empty else (f"a {g.geom_type}, not a polygon" if g.geom_type not in ("Polygon", "MultiPolygon") else "invalid (self-intersecting or not closed)")
    return [Finding("SPATIAL_SHAPE_INVALID", f"{frame.attrs.get('where', 'shapes')} id {frame.index[i]!r}", f"{int(bad.sum())} {kind} polygons are not valid polygons; the first is {why}")]
