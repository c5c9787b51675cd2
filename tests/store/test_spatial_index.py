"""Spatial layout and table macros: exact answers against numpy, the curve order, the
metadata, and row groups pruned for a small box on a larger file."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aivc.errors import UsageError
from aivc.store.spatial_index import (
    FINE_ORDER,
    LOCATION_TILE,
    hilbert_key,
    locations_table,
    read_layout,
    spatial_macros,
    write_locations,
)
from aivc.store.sql import sql_list


def frame(dataset: str, version: int, n: int, seed: int, *, side: float = 1000.0) -> pd.DataFrame:
    """``n`` uniform points and a dense cluster, in a frame shared by every dataset."""
    rng = np.random.default_rng(seed)
    xy = np.concatenate([rng.uniform(0, side, (n - n // 4, 2)), rng.normal(side / 3, side / 30, (n // 4, 2))])
    return pd.DataFrame(
        {
            "obs_id": [f"{dataset}@{version}:c{i:05d}" for i in range(n)],
            "dataset_id": dataset,
            "version": version,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "cell_type": rng.choice(["T", "B", "epithelial"], n),
        }
    )


def connect(paths: list[Path], view: str = "spatial_cells") -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({sql_list(paths)}, union_by_name=true)")
    for statement in spatial_macros(view):
        con.execute(statement)
    return con


@pytest.fixture(scope="module")
def lake_files(tmp_path_factory) -> tuple[pd.DataFrame, list[Path]]:
    """Three files (two datasets, one of them in two versions) over the same frame."""
    root = tmp_path_factory.mktemp("locations")
    # the third file has no cell_type: the view unites columns by name
    frames = [frame("visium-a", 1, 2000, 1), frame("visium-a", 2, 1500, 2), frame("xenium-b", 1, 2500, 3).drop(columns="cell_type")]
    paths = []
    for f in frames:
        path = root / f"{f.dataset_id[0]}-{f.version[0]}.parquet"
        write_locations(locations_table(f, tile_size=None if len(f) != 1500 else 120.0), path, row_group_size=256)
        paths.append(path)
    return pd.concat(frames, ignore_index=True), paths


def brute(cells: pd.DataFrame, px: float, py: float, r: float) -> pd.DataFrame:
    d = np.sqrt((cells.x.to_numpy() - px) ** 2 + (cells.y.to_numpy() - py) ** 2)
    hit = cells.assign(distance=d)[d <= r]
    return hit.sort_values(["distance", "obs_id"]).reset_index(drop=True)


def check_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(want) > 0
    assert got.obs_id.tolist() == want.obs_id.tolist()
    np.testing.assert_allclose(got.distance.to_numpy(), want.distance.to_numpy(), rtol=1e-12, atol=1e-9)


def test_cells_within_matches_numpy(lake_files):
    cells, paths = lake_files
    con = connect(paths)
    rng = np.random.default_rng(0)
    for px, py, r in [(*rng.uniform(0, 1000, 2), 60.0), (333.3, 333.3, 15.0), (0.0, 1000.0, 120.0), (500.0, 500.0, 2000.0)]:
        got = con.execute(f"SELECT * FROM cells_within({px}, {py}, {r})").df()
        check_same(got, brute(cells, px, py, r))
        assert set(got.columns) == {*cells.columns, LOCATION_TILE, "distance"}
        want_b = brute(cells[cells.dataset_id == "xenium-b"], px, py, r)
        check_same(con.execute(f"SELECT * FROM cells_within_in('xenium-b', {px}, {py}, {r})").df(), want_b)
    assert con.execute("SELECT count(*) FROM cells_within(-500, -500, 10)").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM cells_within(500, 500, -1)").fetchone() == (0,)


def test_cells_near_same_dataset_and_version_not_itself(lake_files):
    cells, paths = lake_files
    con = connect(paths)
    for obs_id in ["visium-a@2:c00007", "xenium-b@1:c02499", "visium-a@1:c01999"]:
        me = cells[cells.obs_id == obs_id].iloc[0]
        same = cells[(cells.dataset_id == me.dataset_id) & (cells.version == me.version) & (cells.obs_id != obs_id)]
        want = brute(same, me.x, me.y, 80.0)
        got = con.execute("SELECT * FROM cells_near(?, 80.0)", [obs_id]).df()
        check_same(got, want)
        assert obs_id not in set(got.obs_id)
        assert set(zip(got.dataset_id, got.version)) == {(me.dataset_id, me.version)}
        # the other datasets and versions do have cells that close
        assert len(brute(cells[cells.obs_id != obs_id], me.x, me.y, 80.0)) > len(want)
    assert con.execute("SELECT count(*) FROM cells_near('no-such-cell', 50)").fetchone() == (0,)


def test_cells_in_box(lake_files):
    cells, paths = lake_files
    con = connect(paths)
    got = con.execute("SELECT obs_id FROM cells_in_box(400, 250, 100.5, 300) ORDER BY obs_id").fetchall()
    inside = cells[cells.x.between(100.5, 400) & cells.y.between(250, 300)]
    assert [g[0] for g in got] == sorted(inside.obs_id) and len(got) > 10


def test_macros_in_the_sandbox(lake_files):
    """The lake's connection locks DuckDB down after the views: the macros still work."""
    from aivc.store.sql import _lock

    cells, paths = lake_files
    con = connect(paths)
    _lock(con, [str(p) for p in paths])
    check_same(con.execute("SELECT * FROM cells_within(500, 500, 40)").df(), brute(cells, 500, 500, 40))
    with pytest.raises(duckdb.Error):
        con.execute("SELECT * FROM read_parquet('/etc/hostname')")


def test_rows_follow_the_curve_and_metadata(lake_files):
    _, paths = lake_files
    for path in paths:
        table = pq.read_table(path)
        layout = read_layout(path)
        meta = pq.read_schema(path).metadata
        assert meta[b"schema_name"] == b"aivc.locations" and meta[b"schema_version"] == b"1"
        assert float(meta[b"tile_size"]) == layout.tile_size > 0
        assert json.loads(meta[b"layout"])["curve"] == "hilbert"
        x, y = table["x"].to_numpy(), table["y"].to_numpy()
        tile = table[LOCATION_TILE].to_numpy()
        ix = np.floor((x - layout.origin_x) / layout.tile_size).astype(np.int64)
        iy = np.floor((y - layout.origin_y) / layout.tile_size).astype(np.int64)
        assert ix.min() >= 0 and iy.min() >= 0 and max(ix.max(), iy.max()) < 2**layout.order
        np.testing.assert_array_equal(tile, hilbert_key(ix, iy, layout.order))
        assert (np.diff(tile) >= 0).all()
    assert len(np.unique(pq.read_table(paths[0])[LOCATION_TILE])) == 1  # 2,000 cells: one automatic tile
    assert read_layout(paths[1]).tile_size == 120.0
    assert 20 < len(np.unique(pq.read_table(paths[1])[LOCATION_TILE])) < 1500 / 4  # several cells per tile


def test_hilbert_curve_is_continuous():
    for order in (1, 3, 6):
        n = 1 << order
        ix, iy = (a.ravel() for a in np.meshgrid(np.arange(n), np.arange(n)))
        key = hilbert_key(ix, iy, order)
        assert sorted(key.tolist()) == list(range(n * n))
        walk = np.argsort(key)
        assert (np.abs(np.diff(ix[walk])) + np.abs(np.diff(iy[walk])) == 1).all()  # one step at a time
        finer = hilbert_key(ix * 4 + 3, iy * 4 + 1, order + 2)
        np.testing.assert_array_equal(finer >> 4, key)  # the curve nests: tiles are key prefixes
    assert FINE_ORDER >= 4


def test_bad_input():
    f = frame("d", 1, 10, 0)
    with pytest.raises(UsageError, match="missing y"):
        locations_table(f.drop(columns="y"))
    with pytest.raises(UsageError, match="infinite"):
        locations_table(f.assign(x=[np.nan] + [1.0] * 9))
    with pytest.raises(UsageError, match="tile_size"):
        locations_table(f, tile_size=0)
    with pytest.raises(UsageError, match="locations_table"):
        write_locations(pa.table({"x": [1.0]}), "/dev/null")
    unassigned = locations_table(f.assign(obs_id=[None, np.nan] + f.obs_id.tolist()[2:]))  # transcripts outside cells
    assert unassigned["obs_id"].null_count == 2
    empty = locations_table(f.iloc[:0])
    assert empty.num_rows == 0 and LOCATION_TILE in empty.column_names


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    path = tmp_path_factory.mktemp("big") / "locations.parquet"
    f = frame("big", 1, 200_000, 7, side=5000.0)
    write_locations(locations_table(f), path, row_group_size=4096)  # 49 row groups
    return path, f


def _overlapping_row_groups(path: Path, box: tuple[float, float, float, float]) -> tuple[int, int]:
    """Row groups whose x/y min/max overlap the box (the most any reader must read), and all."""
    meta = pq.ParquetFile(path).metadata
    names = meta.schema.names
    hit = 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        sx, sy = rg.column(names.index("x")).statistics, rg.column(names.index("y")).statistics
        hit += sx.min <= box[2] and sx.max >= box[0] and sy.min <= box[3] and sy.max >= box[1]
    return hit, meta.num_row_groups


def test_small_box_reads_few_row_groups(big_file):
    path, f = big_file
    rng = np.random.default_rng(3)
    hits = []
    for px, py in f[["x", "y"]].to_numpy()[rng.choice(len(f), 50)]:
        hit, total = _overlapping_row_groups(path, (px - 50, py - 50, px + 50, py + 50))
        assert total == 49 and 1 <= hit <= total // 5, (hit, total)
        hits.append(hit)
    assert np.mean(hits) < 4  # ~2 of 49 on average
    unsorted = path.with_name("unsorted.parquet")
    pq.write_table(pa.Table.from_pandas(f, preserve_index=False), unsorted, row_group_size=4096)
    assert _overlapping_row_groups(unsorted, (px - 50, py - 50, px + 50, py + 50))[0] == 49  # what the order buys


def test_duckdb_prunes_row_groups(big_file):
    path, f = big_file
    con = connect([path])
    px, py = f.x.iloc[123], f.y.iloc[123]
    profile = json.loads(con.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM cells_within({px}, {py}, 50)").fetchall()[0][1])
    scanned, total = profile["query"].get("total_row_groups_scanned"), profile["query"].get("total_row_groups_to_scan")
    if scanned is None or total is None:
        pytest.skip(f"this DuckDB ({duckdb.__version__}) does not report row groups scanned")
    hit, n_groups = _overlapping_row_groups(path, (px - 50, py - 50, px + 50, py + 50))
    assert total == n_groups and 1 <= scanned <= hit <= total // 5, (scanned, hit, total)
    check_same(con.execute(f"SELECT * FROM cells_within({px}, {py}, 50)").df(), brute(f, px, py, 50))
