"""Spatial query benchmark: aivc's Hilbert-sorted locations + table macros in DuckDB, against a naive
full scan and against scipy's ``cKDTree`` (the floor).

Usage::

    .venv/bin/python benchmarks/bench_spatial_query.py [--n-cells 1000000] [--datasets 4]
        [--queries 200] [--row-group-sizes 8192,32768] [--metadata-cache] [--workdir DIR] [--json]

What it does
------------
1. Simulates ``--n-cells`` cell centroids (default 1,000,000) in ``--datasets`` datasets
   (default 4), each a slide with one to three tissue sections in its own micrometre frame
   (the frames overlap, as those of independent datasets do), see :func:`tissue`. Writes,
   per dataset, the aivc layout (:func:`aivc.store.spatial_index.write_locations`) and a
   plain Parquet file of the same rows in acquisition order (``DataFrame.to_parquet``,
   pyarrow's defaults), into ``--workdir`` (default ``/work/bench-scratch/spatial``).
2. Picks ``--queries`` query points (default 200: random cells, jittered by 5 µm) and two
   radii calibrated on this layout so that a query returns ~50 and ~2,000 cells (the
   median over the points of the 50th and 2,000th neighbour distance).
3. Times each query on its own, on a DuckDB connection with the views made as
   ``aivc.store.sql`` makes them (``SELECT * FROM read_parquet([...], union_by_name=true)``):

   aivc
       ``SELECT obs_id, distance FROM cells_within(px, py, r)`` on the aivc files.
   aivc cells_near
       ``SELECT obs_id, distance FROM cells_near(id, r)`` for the query cells (same dataset
       and version; the cell's own row found through the Bloom filter on ``obs_id``).
   macro, unsorted
       the same macro over the plain files: the bounding-box filter without the layout.
   naive
       ``SELECT obs_id, sqrt(...) FROM plain WHERE (x-px)^2 + (y-py)^2 <= r^2``: the
       query a user writes on a plain file (a full scan).
   cKDTree (floor)
       ``scipy.spatial.cKDTree`` over all points (x, y read from the aivc files), build time
       once, then ``query_ball_point(p, r)`` and the distances of the hits per query.

   Every method must return the same cells (and the same distances) for every query;
   a mismatch fails the run (exit 1).
4. Prints per-query latency (median, p95), the ratios aivc / cKDTree (query only, and
   with the tree's read and build amortised over the queries) and aivc / naive.
   ``--row-group-sizes`` repeats the aivc timing for other row-group sizes (the sweep that
   chose the default), ``--metadata-cache`` turns on DuckDB's ``parquet_metadata_cache``
   (off in the lake's connection). DuckDB runs on all cores, the tree on one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CELL_SPACING = 10.0  # µm between neighbouring cells in tissue of average density


def tissue(n: int, n_datasets: int, seed: int = 0) -> Any:
    """``n`` cell centroids in ``n_datasets`` datasets of one to three tissue sections each.

    A section is a blob with a wobbly outline (radius modulated by random low harmonics),
    with 60 % of its cells spread uniformly at ~1 per ``CELL_SPACING``² and 40 % in 30
    dense clusters (follicle- or gland-like, Gaussian, 2-6 % of the section radius) and
    a few empty holes (vessels, lumens). Sections of a slide sit side by side along x,
    every slide starts near the origin. Rows come in random order (as segmentation tiles
    are merged); ids are ``<dataset>@1:c<i>``.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frames = []
    per_dataset = np.diff(np.linspace(0, n, n_datasets + 1).astype(int))
    for d, m in enumerate(per_dataset):
        n_sections = int(rng.integers(1, 4))
        parts, offset = [], 0.0
        for k in np.diff(np.linspace(0, m, n_sections + 1).astype(int)):
            xy, radius = _section(int(k), rng)
            parts.append(xy + [offset + 1.3 * radius, 1.3 * radius])
            offset += 2.8 * radius
        xy = np.concatenate(parts)[rng.permutation(m)]
        name = f"slide-{d}"
        frames.append(pd.DataFrame({"obs_id": [f"{name}@1:c{i:07d}" for i in range(m)], "dataset_id": name, "version": 1, "x": xy[:, 0], "y": xy[:, 1]}))
    return frames


def _section(m: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    radius = CELL_SPACING * np.sqrt(m / np.pi) * 1.15
    harm = rng.normal(0, 0.08, (4, 2))
    holes = np.c_[rng.uniform(-0.6, 0.6, (12, 2)) * radius, rng.uniform(0.02, 0.06, 12) * radius]

    def inside(p: np.ndarray) -> np.ndarray:
        th, rad = np.arctan2(p[:, 1], p[:, 0]), np.hypot(p[:, 0], p[:, 1])
        edge = 1 + sum(harm[j, 0] * np.cos((j + 2) * th) + harm[j, 1] * np.sin((j + 2) * th) for j in range(4))
        ok = rad < radius * edge
        for hx, hy, hr in holes:
            ok &= np.hypot(p[:, 0] - hx, p[:, 1] - hy) > hr
        return ok

    def sample(k: int, draw: Any) -> np.ndarray:
        got: list[np.ndarray] = []
        while sum(len(g) for g in got) < k:
            p = draw(2 * k + 64)
            got.append(p[inside(p)])
        return np.concatenate(got)[:k]

    n_bg = int(0.6 * m)
    background = sample(n_bg, lambda k: rng.uniform(-1.4 * radius, 1.4 * radius, (k, 2)))
    centres = background[rng.choice(n_bg, 30)]
    sizes = rng.multinomial(m - n_bg, rng.dirichlet(np.ones(30)))
    widths = rng.uniform(0.02, 0.06, 30) * radius
    clusters = [
        sample(int(s), lambda k, c=c, w=w: c + rng.normal(0, w, (k, 2)))
        for c, w, s in zip(centres, widths, sizes, strict=True)
        if s
    ]
    return np.concatenate([background, *clusters]), radius


def _write(frames: list[Any], work: Path, row_group_size: int) -> tuple[list[Path], float]:
    from aivc.store.spatial_index import locations_table, write_locations

    paths, t = [], time.perf_counter()
    for f in frames:
        path = work / f"aivc-rg{row_group_size}" / f"{f.dataset_id.iloc[0]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_locations(locations_table(f), path, row_group_size=row_group_size)
        paths.append(path)
    return paths, time.perf_counter() - t


def _connect(paths: list[Path], cache: bool) -> Any:
    import duckdb
    from aivc.store.spatial_index import spatial_macros
    from aivc.store.sql import sql_list

    con = duckdb.connect()
    if cache:
        con.execute("SET parquet_metadata_cache = true")
    con.execute(f"CREATE VIEW spatial_cells AS SELECT * FROM read_parquet({sql_list(paths)}, union_by_name=true)")
    for statement in spatial_macros():
        con.execute(statement)
    return con


Query = Callable[[int], dict[str, float]]
"""``query(i) -> {obs_id: distance}`` for query point ``i``."""


def _sql(con: Any, sql: str, params: Callable[[int], list[Any]]) -> Query:
    def query(i: int) -> dict[str, float]:
        got = con.execute(sql, params(i)).fetchnumpy()
        return dict(zip(got["obs_id"].tolist(), got["distance"].tolist(), strict=True))

    return query


def _interleaved(methods: dict[str, Query], n: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[dict[str, float]]]]:
    """Per method and query point, the fastest of ``repeats`` runs and the first answer.

    The methods take turns on each point (in a rotating order), so that load from other
    processes on the machine falls on all of them alike.
    """
    names = list(methods)
    best = {m: [np.inf] * n for m in names}
    answers: dict[str, list[dict[str, float]]] = {m: [] for m in names}
    for rep in range(repeats):
        for i in range(n):
            for j in range(len(names)):
                m = names[(i + j + rep) % len(names)]
                t = time.perf_counter()
                got = methods[m](i)
                best[m][i] = min(best[m][i], time.perf_counter() - t)
                if rep == 0:
                    answers[m].append(got)
    return best, answers


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(times) * 1e3), "p95_ms": float(np.percentile(times, 95) * 1e3), "total_s": float(sum(times))}


def _same(a: list[dict[str, float]], b: list[dict[str, float]]) -> bool:
    return all(x.keys() == y.keys() and all(abs(x[k] - y[k]) <= 1e-9 * (1 + y[k]) for k in x) for x, y in zip(a, b, strict=True))


def _row_groups_overlapping(paths: list[Path], points: np.ndarray, r: float) -> tuple[float, int]:
    """Mean number of row groups whose x/y min/max meet each query's box (what DuckDB reads), and all."""
    import pyarrow.parquet as pq

    boxes = []
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        ix, iy = meta.schema.names.index("x"), meta.schema.names.index("y")
        for g in range(meta.num_row_groups):
            sx, sy = meta.row_group(g).column(ix).statistics, meta.row_group(g).column(iy).statistics
            boxes.append((sx.min, sy.min, sx.max, sy.max))
    b = np.array(boxes)
    px, py = points[:, :1], points[:, 1:]
    hit = (b[None, :, 0] <= px + r) & (b[None, :, 2] >= px - r) & (b[None, :, 1] <= py + r) & (b[None, :, 3] >= py - r)
    return float(hit.sum(1).mean()), len(b)


def run(a: argparse.Namespace) -> dict[str, Any]:
    import duckdb
    from aivc.store.sql import sql_list
    from scipy.spatial import cKDTree

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    frames = tissue(a.n_cells, a.datasets, a.seed)
    out: dict[str, Any] = {"n_cells": a.n_cells, "datasets": a.datasets, "queries": a.queries, "repeats": a.repeats, "duckdb": duckdb.__version__, "simulate_s": time.perf_counter() - t}
    sizes = [int(s) for s in a.row_group_sizes.split(",")]
    written = {rg: _write(frames, work, rg) for rg in sizes}
    out["layout_write_s"] = written[sizes[0]][1]
    plain = []
    for f in frames:
        path = work / "plain" / f"{f.dataset_id.iloc[0]}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        f.to_parquet(path, index=False)
        plain.append(path)

    # the floor: a k-d tree over every point (x, y read from the aivc files)
    t = time.perf_counter()
    cells = duckdb.sql(f"SELECT obs_id, x, y FROM read_parquet({sql_list(written[sizes[0]][0])})").df()
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    tree = cKDTree(cells[["x", "y"]].to_numpy())
    build_s = time.perf_counter() - t
    ids, xy = cells.obs_id.to_numpy(), cells[["x", "y"]].to_numpy()
    dataset = cells.obs_id.str.partition("@")[0].to_numpy()
    rng = np.random.default_rng(a.seed + 1)
    pick = rng.choice(len(cells), a.queries, replace=False)
    points = xy[pick] + rng.normal(0, 5.0, (a.queries, 2))
    kth = tree.query(points, k=[50, 2000])[0]
    radii = {"~50": float(np.round(np.median(kth[:, 0]), 1)), "~2000": float(np.round(np.median(kth[:, 1]), 1))}
    out.update(tree_load_s=load_s, tree_build_s=build_s, radii=radii, rows=[])

    def ball(i: int, r: float, centre: np.ndarray, near: bool = False) -> dict[str, float]:
        hit = np.asarray(tree.query_ball_point(centre, r, return_sorted=False), dtype=np.int64)
        if near:  # cells_near: same dataset (every version is 1 here), not the cell itself
            hit = hit[(dataset[hit] == dataset[pick[i]]) & (hit != pick[i])]
        d = np.sqrt((xy[hit, 0] - centre[0]) ** 2 + (xy[hit, 1] - centre[1]) ** 2)
        return dict(zip(ids[hit].tolist(), d.tolist(), strict=True))

    ok = True
    views = {rg: _connect(written[rg][0], a.metadata_cache) for rg in sizes}
    unsorted, bare = _connect(plain, a.metadata_cache), duckdb.connect()
    within = "SELECT obs_id, distance FROM cells_within(?, ?, ?)"
    naive = f"SELECT obs_id, sqrt((x - $1)^2 + (y - $2)^2) AS distance FROM read_parquet({sql_list(plain)}) WHERE (x - $1)^2 + (y - $2)^2 <= $3^2"
    for label, r in radii.items():
        at = lambda i, r=r: [float(points[i, 0]), float(points[i, 1]), r]
        methods: dict[str, Query] = {"cKDTree": lambda i, r=r: ball(i, r, points[i])}
        methods.update({f"aivc rg={rg}": _sql(views[rg], within, at) for rg in sizes})
        methods["macro, unsorted"] = _sql(unsorted, within, at)
        methods["naive"] = _sql(bare, naive, at)
        best, answers = _interleaved(methods, a.queries, a.repeats)
        near_tree: Query = lambda i, r=r: ball(i, r, xy[pick[i]], near=True)
        near_best, near_answers = _interleaved(
            {"cKDTree cells_near": near_tree, "aivc cells_near": _sql(views[sizes[0]], "SELECT obs_id, distance FROM cells_near(?, ?)", lambda i, r=r: [str(ids[pick[i]]), r])},
            a.queries,
            a.repeats,
        )
        rows: dict[str, Any] = {}
        for m, times in [*best.items(), *near_best.items()]:
            peer = answers["cKDTree"] if m in best else near_answers["cKDTree cells_near"]
            rows[m] = {**_stats(times), "same": _same((answers if m in best else near_answers)[m], peer)}
            if m.startswith("aivc rg="):
                rows[m]["row_groups_read"], rows[m]["row_groups"] = _row_groups_overlapping(written[int(m.partition("=")[2])][0], points, r)
        n_hits = [len(x) for x in answers["cKDTree"]]
        ok &= all(v["same"] for v in rows.values())
        out["rows"].append({"radius": label, "r": r, "mean_hits": float(np.mean(n_hits)), "median_hits": float(np.median(n_hits)), "methods": rows})
    out["ok"] = ok
    return out


def report(out: dict[str, Any]) -> list[str]:
    lines = [
        f"{out['n_cells']:,} cells in {out['datasets']} datasets, {out['queries']} query points, fastest of {out['repeats']} runs each, DuckDB {out['duckdb']}",
        f"aivc layout: locations_table + write_locations {out['layout_write_s']:.1f} s",
        f"cKDTree: read x, y {out['tree_load_s'] * 1e3:.0f} ms, build {out['tree_build_s'] * 1e3:.0f} ms (once)",
    ]
    amortised_ms = (out["tree_load_s"] + out["tree_build_s"]) / out["queries"] * 1e3
    for row in out["rows"]:
        m = row["methods"]
        lines.append(f"radius {row['r']:g} ({row['radius']} cells: mean {row['mean_hits']:.0f}, median {row['median_hits']:.0f} per query), latency per query:")
        for name, s in m.items():
            groups = f"  reads {s['row_groups_read']:.1f} of {s['row_groups']} row groups" if "row_groups" in s else ""
            lines.append(f"  {name:>18}: median {s['median_ms']:8.3f} ms  p95 {s['p95_ms']:8.3f} ms  {'same cells' if s['same'] else 'MISMATCH'}{groups}")
        tree, naive, unsorted = m["cKDTree"]["median_ms"], m["naive"]["median_ms"], m["macro, unsorted"]["median_ms"]
        for name in (k for k in m if k.startswith("aivc rg=")):
            aivc = m[name]["median_ms"]
            lines.append(
                f"  {name}: aivc/cKDTree {aivc / tree:.0f}x query only, {aivc / (tree + amortised_ms):.2f}x with the tree's read + build amortised "
                f"over {out['queries']} queries; aivc/naive {aivc / naive:.3f} ({naive / aivc:.1f}x faster); aivc/unsorted macro {aivc / unsorted:.2f}"
            )
        near, near_tree = m["aivc cells_near"]["median_ms"], m["cKDTree cells_near"]["median_ms"]
        lines.append(f"  cells_near: aivc/cKDTree {near / near_tree:.0f}x query only, {near / (near_tree + amortised_ms):.2f}x amortised")
    lines.append("all methods returned the same cells and distances" if out["ok"] else "FAIL: the methods disagree")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cells", type=int, default=1_000_000)
    p.add_argument("--datasets", type=int, default=4)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3, help="runs per query and method; the fastest counts")
    p.add_argument("--row-group-sizes", default=None, help="comma-separated (default: write_locations' default)")
    p.add_argument("--metadata-cache", action="store_true", help="SET parquet_metadata_cache = true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/work/bench-scratch/spatial")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.row_group_sizes is None:
        from aivc.store.spatial_index import ROW_GROUP_SIZE

        a.row_group_sizes = str(ROW_GROUP_SIZE)
    out = run(a)
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print("\n".join(report(out)))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
