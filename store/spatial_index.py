"""Cell locations laid out for spatial SQL: Hilbert-sorted Parquet and DuckDB table macros.

A dataset version's locations table (``schema_name`` ``aivc.locations``, ``schema_version``
1) holds one row per cell or Visium spot: ``obs_id`` (the lake-wide cell id),
``dataset_id``, ``version``, ``x``, ``y`` (one unit per dataset: micrometres or
full-resolution pixels), any further columns, and ``tile``: the Hilbert-curve key of the
square grid cell of side ``tile_size`` that holds the point. Rows are sorted by ``tile``
(and, inside a tile, by the same curve at 256 x 256 finer resolution), so each Parquet row
group covers a small compact patch of the tissue and its min/max statistics on ``x`` and
``y`` let DuckDB skip most row groups of a file for a small query box.

Table macros (:func:`spatial_macros`, created on the SQL connection after the view)
---------------------------------------------------------------------------------
``cells_within(px, py, r)``
    Every row of the view within distance ``r`` of the point ``(px, py)``, all columns
    plus ``distance``, nearest first. Coordinates of different datasets are unrelated
    frames, so this spans every dataset at that position; see ``cells_within_in``.
    ``SELECT obs_id, distance FROM cells_within(1200.0, 850.0, 50.0)``
``cells_within_in(dataset, px, py, r)``
    The same restricted to one dataset (every version of it the view holds).
    ``SELECT obs_id, version, distance FROM cells_within_in('visium-a', 1200.0, 850.0, 50.0)``
``cells_near(cell_obs_id, r)``
    The cells within ``r`` of the cell ``cell_obs_id``, in the same dataset and version,
    itself excluded, with ``distance``; nothing for an unknown id.
    ``SELECT n.obs_id, n.distance, c.cell_type FROM cells_near('ds@1:AAAC-1', 30.0) n JOIN cells c USING (obs_id)``
``cells_in_box(x0, y0, x1, y1)``
    Every row with ``x`` between ``x0`` and ``x1`` and ``y`` between ``y0`` and ``y1``
    (bounds included, in either order).
    ``SELECT dataset_id, count(*) FROM cells_in_box(0, 0, 500, 500) GROUP BY 1``

Each filters with a bounding box on ``x`` and ``y`` that DuckDB pushes into the Parquet scan
(row groups outside it are not read), then with the exact Euclidean distance. They are
plain SQL: no extension, so they run in the sandboxed connection of :mod:`aivc.store.sql`.
The view needs ``obs_id, dataset_id, version, x, y`` and must not have a column named
``distance``. DuckDB opens every file of the view for each query (~0.7 ms a file on a
2-core machine, skipped row groups ~10 µs each), so latency grows with the number of
files the view unites; a connection with ``SET parquet_metadata_cache = true`` (set
before it is locked) keeps the footers in memory between queries.

Example
-------
>>> import duckdb, tempfile, pandas as pd
>>> frame = pd.DataFrame({"obs_id": ["a", "b", "c"], "dataset_id": "d", "version": 1,
...                       "x": [0.0, 3.0, 40.0], "y": [0.0, 4.0, 0.0]})
>>> path = tempfile.mkdtemp() + "/locations.parquet"
>>> write_locations(locations_table(frame), path)
>>> con = duckdb.connect()
>>> _ = con.execute(f"CREATE VIEW spatial_cells AS SELECT * FROM read_parquet(['{path}'], union_by_name=true)")
>>> for statement in spatial_macros():
...     _ = con.execute(statement)
>>> con.execute("SELECT obs_id, distance FROM cells_near('a', 10)").fetchall()
[('b', 5.0)]
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivc.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

SCHEMA_NAME = "aivc.locations"
SCHEMA_VERSION = 1
LOCATION_TILE = "tile"
"""The column holding each row's tile key (``BIGINT``)."""
LOCATION_COLUMNS = ("obs_id", "dataset_id", "version", "x", "y")
"""The columns every locations table has, before ``tile`` and any others."""
CELLS_PER_TILE = 4096
"""The automatic ``tile_size`` aims at this many cells per occupied tile."""
ROW_GROUP_SIZE = 16384
"""Rows per Parquet row group (see :func:`write_locations` for the measurement)."""
FINE_ORDER = 8
"""Inside a tile rows follow the curve on a 2^8 x 2^8 finer grid."""
MAX_ORDER = 31
"""The curve's order is at most 31 (tile and fine bits together fit in 62 bits)."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LocationLayout:
    """How a locations file is tiled: grid origin, tile side, the curve's order in tiles."""

    tile_size: float
    origin_x: float
    origin_y: float
    order: int
    curve: str = "hilbert"

    def to_metadata(self) -> dict[str, str]:
        return {
            "schema_name": SCHEMA_NAME,
            "schema_version": str(SCHEMA_VERSION),
            "tile_size": repr(self.tile_size),
            "layout": json.dumps({"curve": self.curve, "origin": [self.origin_x, self.origin_y], "order": self.order, "fine_order": FINE_ORDER}),
        }


def hilbert_key(ix: np.ndarray, iy: np.ndarray, order: int) -> np.ndarray:
    """The Hilbert-curve index of integer grid cells ``(ix, iy)`` in ``[0, 2**order)``.

    Vectorized form of the classic bit-by-bit construction; a cell's key at order ``k``
    is its key at order ``k + j`` shifted right by ``2 * j`` (the curve nests).

    >>> hilbert_key(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]), 1).tolist()
    [0, 1, 2, 3]
    """
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in [0, {MAX_ORDER}], got {order}")
    x = np.asarray(ix, dtype=np.int64).copy()
    y = np.asarray(iy, dtype=np.int64).copy()
    d = np.zeros(x.shape, dtype=np.int64)
    s = 1 << (order - 1) if order else 0
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += np.int64(s) * np.int64(s) * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = rx & ~ry  # rotate the quadrant: reflect, then swap x and y where ry == 0
        x = np.where(flip, x ^ (s - 1), x)
        y = np.where(flip, y ^ (s - 1), y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def auto_tile_size(x: np.ndarray, y: np.ndarray, cells_per_tile: int = CELLS_PER_TILE) -> float:
    """A tile side giving about ``cells_per_tile`` points per *occupied* tile.

    The occupied area is the area of the non-empty cells of a grid of about 16 points per
    cell over the bounding box, so holes and empty margins of a section do not count. The
    side is rounded to two significant digits (it is recorded in the file's metadata).
    """
    n = len(x)
    if n == 0:
        return 1.0
    w, h = float(np.ptp(x)), float(np.ptp(y))
    if w <= 0 and h <= 0:
        return 1.0
    g = max(1, int(math.sqrt(n / 16)))
    side = max(w, h) / g
    ix = np.minimum(((x - x.min()) / side).astype(np.int64), g)
    iy = np.minimum(((y - y.min()) / side).astype(np.int64), g)
    occupied = np.unique(ix * (g + 1) + iy).size * side * side
    tile = math.sqrt(occupied * cells_per_tile / n) if n > cells_per_tile else max(w, h)
    digits = 1 - math.floor(math.log10(tile))
    return float(round(tile, digits))


def _layout(x: np.ndarray, y: np.ndarray, tile_size: float) -> LocationLayout:
    if not (math.isfinite(tile_size) and tile_size > 0):
        raise UsageError(f"tile_size must be a positive number, got {tile_size!r}")
    if len(x) == 0:
        return LocationLayout(tile_size, 0.0, 0.0, 0)
    ox = math.floor(float(x.min()) / tile_size) * tile_size  # tiles sit on a grid of tile_size from 0
    oy = math.floor(float(y.min()) / tile_size) * tile_size
    tiles = max(float(x.max()) - ox, float(y.max()) - oy) / tile_size + 1
    order = max(0, math.ceil(math.log2(tiles)))
    if order + FINE_ORDER > MAX_ORDER:
        raise UsageError(f"tile_size {tile_size!r} is too small for an extent of {tiles * tile_size:.6g}: choose one above {tiles * tile_size / 2 ** (MAX_ORDER - FINE_ORDER):.3g}")
    return LocationLayout(tile_size, ox, oy, order)


def locations_table(frame: pd.DataFrame, *, tile_size: float | None = None) -> pa.Table:
    """The locations of one dataset version as an Arrow table sorted along the Hilbert curve.

    Parameters
    ----------
    frame
        One row per cell or spot with ``obs_id``, ``dataset_id``, ``version``, ``x``, ``y``
        (finite) and any further columns, which are kept.
    tile_size
        The side of a tile in the coordinates' unit; ``None`` picks one for about
        :data:`CELLS_PER_TILE` cells per tile (:func:`auto_tile_size`).

    Returns
    -------
    The rows with ``tile`` (``int64``) after ``y``, sorted by ``tile`` and, inside a tile,
    along the curve at a finer grid; the schema's metadata records the layout
    (:func:`read_layout`), and :func:`write_locations` writes it.
    """
    import pyarrow as pa

    missing = [c for c in LOCATION_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"locations need the columns {', '.join(LOCATION_COLUMNS)}: missing {', '.join(missing)}")
    if LOCATION_TILE in frame.columns:
        raise UsageError(f"locations must not have a {LOCATION_TILE!r} column: it is computed here")
    x = frame["x"].to_numpy(dtype=np.float64)
    y = frame["y"].to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        raise UsageError(f"{int(bad.sum())} locations have a missing or infinite x or y (first: {frame['obs_id'].iloc[int(np.argmax(bad))]!r}): drop them or fill them in")
    layout = _layout(x, y, auto_tile_size(x, y) if tile_size is None else float(tile_size))
    fine = layout.tile_size / (1 << FINE_ORDER)
    top = (1 << (layout.order + FINE_ORDER)) - 1
    fx = np.clip(((x - layout.origin_x) / fine).astype(np.int64), 0, top)
    fy = np.clip(((y - layout.origin_y) / fine).astype(np.int64), 0, top)
    key = hilbert_key(fx, fy, layout.order + FINE_ORDER)
    order = np.argsort(key, kind="stable")
    rest = [c for c in frame.columns if c not in LOCATION_COLUMNS]
    columns: dict[str, Any] = {
        "obs_id": pa.array(frame["obs_id"].to_numpy()[order], pa.string(), from_pandas=True),  # null: e.g. an unassigned transcript
        "dataset_id": pa.array(frame["dataset_id"].to_numpy()[order], pa.string(), from_pandas=True),
        "version": pa.array(frame["version"].to_numpy()[order], pa.int32()),
        "x": pa.array(x[order], pa.float64()),
        "y": pa.array(y[order], pa.float64()),
        LOCATION_TILE: pa.array(key[order] >> (2 * FINE_ORDER), pa.int64()),
    }
    table = pa.table(columns)
    if rest:
        extra = pa.Table.from_pandas(frame[rest].iloc[order], preserve_index=False)
        for name in rest:
            table = table.append_column(name, extra[name])
    return table.replace_schema_metadata(layout.to_metadata())


def read_layout(path: str | Path) -> LocationLayout:
    """The layout recorded in a locations file; refuses a file of another format or version."""
    import pyarrow.parquet as pq

    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}
    if meta.get("schema_name") != SCHEMA_NAME or meta.get("schema_version") != str(SCHEMA_VERSION):
        raise UsageError(f"{path} is not a locations file of format {SCHEMA_NAME}/{SCHEMA_VERSION} (found {meta.get('schema_name')}/{meta.get('schema_version')})")
    layout = json.loads(meta["layout"])
    return LocationLayout(float(meta["tile_size"]), float(layout["origin"][0]), float(layout["origin"][1]), int(layout["order"]), str(layout["curve"]))


def write_locations(table: pa.Table, path: str | Path, *, row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write a :func:`locations_table` result as Parquet, ready for spatial queries.

    Row groups of ``row_group_size`` rows (16,384 by default: measured on 1 M cells in
    4 files, queries returning ~50 and ~2,000 cells were fastest at 16,384 among 4,096 to
    131,072 rows; DuckDB spends ~10 µs per row group even on those it skips, and decodes
    every row of those it reads), min/max statistics on every column, a page index, a
    Bloom filter on ``obs_id`` (``cells_near`` finds its cell without reading every row
    group) and the layout in the key-value metadata (:func:`read_layout`).
    """
    import pyarrow.parquet as pq

    if (table.schema.metadata or {}).get(b"schema_name") != SCHEMA_NAME.encode() or LOCATION_TILE not in table.column_names:
        raise UsageError("write_locations takes the table locations_table returns (sorted, with its tile column and layout)")
    pq.write_table(
        table,
        str(path),
        row_group_size=max(1, int(row_group_size)),
        compression="zstd",
        write_statistics=True,
        write_page_index=True,
        sorting_columns=[pq.SortingColumn(table.column_names.index(LOCATION_TILE))],
        bloom_filter_options={"obs_id": {"ndv": max(1, min(table.num_rows, int(row_group_size))), "fpp": 0.01}},
    )


def spatial_macros(view: str = "spatial_cells") -> list[str]:
    """The ``CREATE MACRO`` statements of the spatial table macros over ``view``.

    Run each on the connection after creating the view (see the module docstring for
    what each macro returns, with examples).
    """
    if not _IDENT.match(view):
        raise UsageError(f"view name {view!r} is not a plain SQL identifier")
    v = f'"{view}"'
    # The box is widened by 1e-9 of the coordinates' magnitude, so that rounding in
    # ``px - r`` can never drop a point whose exact distance is within ``r``.
    box = (
        "c.x BETWEEN {px} - {r} - 1e-9 * (abs({px}) + {r}) AND {px} + {r} + 1e-9 * (abs({px}) + {r}) "
        "AND c.y BETWEEN {py} - {r} - 1e-9 * (abs({py}) + {r}) AND {py} + {r} + 1e-9 * (abs({py}) + {r})"
    )
    dist = "sqrt((c.x - {px}) * (c.x - {px}) + (c.y - {py}) * (c.y - {py}))"
    at_point = {"px": "px", "py": "py", "r": "r"}
    at_cell = {"px": "q.x", "py": "q.y", "r": "r"}
    within = f"SELECT c.*, {dist.format(**at_point)} AS distance FROM {v} c WHERE {box.format(**at_point)}"
    near = (
        f"SELECT c.*, {dist.format(**at_cell)} AS distance "
        f"FROM (SELECT dataset_id, version, x, y FROM {v} WHERE obs_id = cell_obs_id) q "
        f"JOIN {v} c ON c.dataset_id = q.dataset_id AND c.version = q.version AND {box.format(**at_cell)} "
        "WHERE c.obs_id <> cell_obs_id"
    )
    nearest_first = "WHERE distance <= r ORDER BY distance, obs_id"
    in_box = "c.x BETWEEN least(x0, x1) AND greatest(x0, x1) AND c.y BETWEEN least(y0, y1) AND greatest(y0, y1)"
    return [
        f"CREATE OR REPLACE MACRO cells_within(px, py, r) AS TABLE SELECT * FROM ({within}) {nearest_first}",
        f"CREATE OR REPLACE MACRO cells_within_in(dataset, px, py, r) AS TABLE SELECT * FROM ({within} AND c.dataset_id = dataset) {nearest_first}",
        f"CREATE OR REPLACE MACRO cells_near(cell_obs_id, r) AS TABLE SELECT * FROM ({near}) {nearest_first}",
        f"CREATE OR REPLACE MACRO cells_in_box(x0, y0, x1, y1) AS TABLE SELECT c.* FROM {v} c WHERE {in_box}",
    ]
