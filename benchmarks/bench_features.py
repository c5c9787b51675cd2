"""Feature-store benchmark: neighbours, id fetches and streaming writes against their peers.

Usage::

    /work/venv/bin/python benchmarks/bench_features.py [--rows 1000000] [--dim 64] [--json]
        [--datasets 10] [--queries 20] [--ann-queries 500] [--workdir DIR] [--keep]

What it does
------------
1. **Write** (in a fresh subprocess): generates ``--rows`` x ``--dim`` float32 cell URs,
   deterministic and clustered (1,000 Gaussian clusters in a 16-dimensional latent space,
   projected to ``--dim`` with a little isotropic noise, like learned embeddings), and
   streams them through :class:`aivc.store.features.EmbeddingWriter` in batches of 50,000
   rows spread over ``--datasets`` fake datasets (one partition each) into a temporary
   lake. Peak memory of that child: ``ru_maxrss`` from ``os.wait4`` and its own ``VmHWM``
   (the larger is used), compared with the version's size (rows x dim x 4 bytes).
2. **Exact top-10 cosine**, per query (``--queries`` random cells, median): aivc's
   ``exact_neighbors(lake, ref, [id], k=10)`` (its per-process matrix already loaded; the
   cold load is reported separately) against the NumPy peer on the same normalized
   vectors already in memory: ``s = X @ X[q]``, ``argpartition``, sort. The two alternate
   which goes first; their answers must be identical. The SQL path
   (``aivc.embeddings.sql.query``, ``array_cosine_similarity(vector, <query>) ORDER BY ..
   LIMIT 10`` over the version's DuckDB view) is timed the same way when that module exists.
3. **Approximate** (faiss HNSW, ``aivc.embeddings.ann``): index build time; recall@10 of
   ``approximate_neighbors`` over ``--ann-queries`` random cells against the NumPy peer's
   exact answer; median time per query against aivc's exact median.
4. **Fetch by id**: 100,000 random ids (``--fetch``) with
   ``read_vectors(lake, ref, ids=...)`` against pyarrow directly
   (``pyarrow.dataset`` over the same files, ``id`` ``isin`` filter, vectors to NumPy),
   best of three alternating runs each.

Prints a table (aivc, peer, ratio, target, PASS/FAIL) or, with ``--json``, one JSON
object. A missed target is reported, not raised. Scratch data goes to ``--workdir``
(default ``/work/bench-scratch/features``) and is removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

WRITE_BATCH = 50_000
LATENT_DIM = 16
N_CLUSTERS = 1_000
NAME = "bench"
REF = f"cell:{NAME}@1"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------


def dataset_of(rows: np.ndarray, n_datasets: int) -> np.ndarray:
    return np.array([f"bench-{d:02d}" for d in range(n_datasets)], dtype=object)[rows % n_datasets]


def cell_ids(rows: np.ndarray, n_datasets: int) -> list[str]:
    ds = dataset_of(rows, n_datasets)
    return [f"{d}@1:cell-{r:07d}" for d, r in zip(ds, rows.tolist(), strict=True)]


def batch_vectors(start: int, stop: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of the deterministic clustered data set and their cluster labels.

    The same rows come out whatever the batching (one generator per aligned 50k chunk).
    """
    base = np.random.default_rng(seed)
    centers = base.normal(size=(N_CLUSTERS, LATENT_DIM)).astype(np.float32)
    proj = (base.normal(size=(LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)
    out = np.empty((stop - start, dim), dtype=np.float32)
    out_labels = np.empty(stop - start, dtype=np.int64)
    for s in range(start - start % WRITE_BATCH, stop, WRITE_BATCH):
        rng = np.random.default_rng([seed, s // WRITE_BATCH])
        labels = rng.integers(0, N_CLUSTERS, WRITE_BATCH)
        z = centers[labels]
        z += np.float32(0.35) * rng.standard_normal(size=(WRITE_BATCH, LATENT_DIM), dtype=np.float32)
        x = z @ proj
        x += np.float32(0.05) * rng.standard_normal(size=(WRITE_BATCH, dim), dtype=np.float32)
        lo, hi = max(s, start), min(s + WRITE_BATCH, stop)
        out[lo - start : hi - start] = x[lo - s : hi - s]
        out_labels[lo - start : hi - start] = labels[lo - s : hi - s]
    return out, out_labels


def register_datasets(lake: Any, args: argparse.Namespace) -> None:
    """Commit the fake datasets to the catalog (cells and genes tables only, no SOMA data).

    This makes the benchmark cells visible to the lake's SQL views (``cells``, the embedding
    views) like cells of real submissions; it is set-up, not measured.
    """
    import datetime as dt

    import pyarrow as pa

    from aivc.store.artifacts import VersionWriter
    from aivc.store.catalog import DatasetVersion

    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    for d in range(args.datasets):
        rows = np.arange(d, args.rows, args.datasets)
        labels = np.concatenate([batch_vectors(s, min(args.rows, s + WRITE_BATCH), 1, args.seed)[1] for s in range(0, args.rows, WRITE_BATCH)])[rows]
        ds = f"bench-{d:02d}"
        w = VersionWriter(lake, ds, 1)
        w.write_cells(
            pa.table({
                "obs_id": cell_ids(rows, args.datasets), "soma_joinid": rows, "dataset_id": [ds] * len(rows),
                "dataset_version": pa.array(np.ones(len(rows), np.int32)), "cell_type": [f"type-{lab % 20:02d}" for lab in labels.tolist()],
            })
        )  # fmt: skip
        w.write_features(pa.table({"gene_id": ["ENSG00000141510"], "feature_name": ["TP53"], "soma_joinid": [0]}))
        rec = DatasetVersion(
            dataset_id=ds, version=1, title=f"benchmark {ds}", description="fake", license="CC0-1.0", access="public",
            embargo_until=None, organism="NCBITaxon:9606", organism_name="homo_sapiens", n_cells=len(rows), n_genes=1, nnz=0,
            content_hash="", submission_id=f"bench-{d}", committed_at=now, soma_timestamp=0, soma_high_water=0,
            obs_joinid_min=int(rows.min()), obs_joinid_max=int(rows.max()), artifacts=w.artifacts,
        )  # fmt: skip
        with lake.write_lock():
            w.commit(rec)


def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def write_child(lake_dir: str, rows: int, dim: int, seed: int, n_datasets: int) -> None:
    """The write measured in a subprocess: stream ``rows`` through EmbeddingWriter."""
    import duckdb  # noqa: F401 - the writer's duplicate check uses it: count it in the baseline
    import pyarrow.parquet  # noqa: F401

    from aivc.store.features import EmbeddingWriter
    from aivc.store.lake import Lake

    lake = Lake.init(lake_dir)
    baseline, anon_baseline = _vm("VmRSS"), _vm("RssAnon")
    anon_peak = [anon_baseline]
    done = threading.Event()

    def sample() -> None:  # RssAnon has no high-water mark of its own: sample it
        while not done.wait(0.01):
            anon_peak[0] = max(anon_peak[0], _vm("RssAnon"))

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    w = EmbeddingWriter(lake, "cell", NAME, dim, source={"kind": "benchmark", "seed": seed})
    for s in range(0, rows, WRITE_BATCH):
        e = min(rows, s + WRITE_BATCH)
        r = np.arange(s, e)
        w.write(cell_ids(r, n_datasets), batch_vectors(s, e, dim, seed)[0], soma_joinids=r, dataset_ids=dataset_of(r, n_datasets))
    t1 = time.perf_counter()
    v = w.commit()
    t2 = time.perf_counter()
    done.set()
    anon_peak[0] = max(anon_peak[0], _vm("RssAnon"))
    print(json.dumps({
        "ref": v.ref, "n_rows": v.n_rows, "write_s": t1 - t0, "commit_s": t2 - t1, "baseline_kib": baseline, "vmhwm_kib": _vm("VmHWM"),
        "anon_baseline_kib": anon_baseline, "anon_peak_kib": anon_peak[0], "rss_file_kib": _vm("RssFile"),
    }))  # fmt: skip


def run_write(lake_dir: Path, args: argparse.Namespace, rows: int | None = None) -> dict[str, Any]:
    """Run :func:`write_child` in a fresh interpreter; its timings and peak RSS."""
    rows = args.rows if rows is None else rows
    cmd = [sys.executable, __file__, "--write-child", str(lake_dir), "--rows", str(rows), "--dim", str(args.dim), "--seed", str(args.seed), "--datasets", str(args.datasets)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"write child failed:\n{err.decode(errors='replace')[-3000:]}")
    res = json.loads(out.decode().strip().splitlines()[-1])
    res["wall_s"] = wall
    res["peak_mib"] = max(ru.ru_maxrss, res["vmhwm_kib"]) / 1024  # Linux: KiB
    res["baseline_mib"] = res["baseline_kib"] / 1024
    res["anon_peak_mib"] = res["anon_peak_kib"] / 1024
    res["anon_baseline_mib"] = res["anon_baseline_kib"] / 1024
    res["rss_file_mib"] = res["rss_file_kib"] / 1024
    res["version_mib"] = rows * args.dim * 4 / 2**20
    return res


# -- the peers -------------------------------------------------------------------------------


def load_peer_matrix(lake: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ids and L2-normalized vectors with plain pyarrow + NumPy (the peer's own copy)."""
    import pyarrow.parquet as pq

    from aivc.store.features import get_version, parquet_files

    v = get_version(lake, REF)
    ids, mats = [], []
    for f in parquet_files(lake, v):
        t = pq.read_table(f, columns=["id", "vector"])
        ids.append(t.column("id").to_numpy(zero_copy_only=False))
        mats.append(t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, v.dim))
    x = np.concatenate(mats)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.concatenate(ids), x


def numpy_top(x: np.ndarray, row: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    s = x @ x[row]
    s[row] = -np.inf
    top = np.argpartition(s, len(s) - k)[-k:]
    top = top[np.argsort(-s[top])]
    return top, s[top]


def numpy_truth(x: np.ndarray, rows: np.ndarray, k: int = 10, chunk: int = 32) -> np.ndarray:
    out = np.empty((len(rows), k), dtype=np.int64)
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        sims = x @ x[r].T  # (n, chunk)
        sims[r, np.arange(len(r))] = -np.inf
        top = np.argpartition(sims, len(x) - k, axis=0)[-k:].T
        order = np.argsort(-np.take_along_axis(sims.T, top, axis=1), axis=1)
        out[s : s + len(r)] = np.take_along_axis(top, order, axis=1)
    return out


# -- measurements --------------------------------------------------------------------------


def bench_exact(lake: Any, ids: np.ndarray, x: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    from aivc.embeddings.neighbors import clear_cache, exact_neighbors

    clear_cache()
    t0 = time.perf_counter()
    exact_neighbors(lake, REF, [str(ids[rows[0]])], k=10)
    cold = time.perf_counter() - t0
    t_aivc, t_np, mismatches, max_diff = [], [], 0, 0.0
    for i, r in enumerate(rows):
        for turn in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            if turn == 0:
                top, sims = numpy_top(x, int(r))
                t_np.append(time.perf_counter() - t0)
            else:
                (res,) = exact_neighbors(lake, REF, [str(ids[r])], k=10)
                t_aivc.append(time.perf_counter() - t0)
        mismatches += list(res.ids) != [str(ids[j]) for j in top]
        max_diff = max(max_diff, float(np.abs(np.asarray(res.similarities) - sims).max()))
    batch = [str(ids[r]) for r in rows]
    t0 = time.perf_counter()
    exact_neighbors(lake, REF, batch, k=10)
    t_batch = time.perf_counter() - t0
    return {
        "cold_load_s": cold,
        "aivc_s": statistics.median(t_aivc),
        "numpy_s": statistics.median(t_np),
        "batch_per_query_s": t_batch / len(rows),
        "mismatches": mismatches,
        "max_similarity_diff": max_diff,
    }


def bench_sql(lake: Any, ids: np.ndarray, x: np.ndarray, rows: np.ndarray) -> dict[str, Any] | None:
    """SQL neighbours: the ``<view>_neighbors`` macro (aivc's in-memory exact search behind a
    DuckDB function) on one sandboxed session connection, alternating with NumPy; plus,
    for information, the one-shot ``aivc.embeddings.sql.query`` (new connection per call)
    and a plain ``array_cosine_similarity ... ORDER BY LIMIT 10`` scan in DuckDB."""
    from aivc.embeddings import sql as esql

    view = f"cell_{NAME}_v1"
    con = esql.connect(lake)
    con.execute(f"SELECT * FROM {view}_neighbors('{ids[rows[0]]}', 10)").fetchall()  # load vectors once
    t_sql, t_np, mismatches = [], [], 0
    for i, r in enumerate(rows):
        stmt = f"SELECT obs_id, similarity FROM {view}_neighbors('{ids[r]}', 10)"
        for turn in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            if turn == 0:
                top, _ = numpy_top(x, int(r))
                t_np.append(time.perf_counter() - t0)
            else:
                got_rows = con.execute(stmt).fetchall()
                t_sql.append(time.perf_counter() - t0)
        mismatches += [row[0] for row in got_rows] != [str(ids[j]) for j in top]
    con.close()
    t_oneshot = []
    for r in rows[:3]:
        t0 = time.perf_counter()
        esql.query(lake, f"SELECT obs_id FROM {view}_neighbors('{ids[r]}', 10)")
        t_oneshot.append(time.perf_counter() - t0)
    vec = ", ".join(f"{float(a):.9g}" for a in x[rows[0]])
    t0 = time.perf_counter()
    scan = esql.query(lake, f"SELECT obs_id FROM {view} WHERE obs_id <> '{ids[rows[0]]}' ORDER BY array_cosine_similarity(vector, [{vec}]::FLOAT[{x.shape[1]}]) DESC LIMIT 10")
    t_scan = time.perf_counter() - t0
    return {
        "aivc_s": statistics.median(t_sql),
        "numpy_s": statistics.median(t_np),
        "mismatches": mismatches,
        "oneshot_s": statistics.median(t_oneshot),
        "scan_s": t_scan,
        "scan_matches": [r[0] for r in scan.rows] == [str(ids[j]) for j in numpy_top(x, int(rows[0]))[0]],
    }


def bench_ann(lake: Any, ids: np.ndarray, x: np.ndarray, rows: np.ndarray, exact_s: float, ef_construction: int) -> dict[str, Any]:
    from aivc.embeddings import ann

    t0 = time.perf_counter()
    info = ann.build_index(lake, REF, params=ann.HnswParams(ef_construction=ef_construction))
    build_total = time.perf_counter() - t0
    truth = numpy_truth(x, rows)
    qids = [str(ids[r]) for r in rows]
    ann.approximate_neighbors(lake, REF, qids[:1], k=10)  # load the index
    times, hits = [], 0
    for qid, t in zip(qids, truth, strict=True):
        t0 = time.perf_counter()
        (res,) = ann.approximate_neighbors(lake, REF, [qid], k=10)
        times.append(time.perf_counter() - t0)
        hits += len(set(res.ids) & {str(ids[j]) for j in t})
    t0 = time.perf_counter()
    ann.approximate_neighbors(lake, REF, qids, k=10)
    t_batch = time.perf_counter() - t0
    return {
        "build_s": info.build_seconds,
        "build_total_s": build_total,
        "ef_search": info.ef_search,
        "recall_build_sample": info.recall_at_10,
        "recall_at_10": hits / (10 * len(rows)),
        "aivc_s": statistics.median(times),
        "exact_s": exact_s,
        "batch_per_query_s": t_batch / len(rows),
        "index_mib": info.index_bytes / 2**20,
    }


def bench_fetch(lake: Any, ids: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    from aivc.store.features import get_version, parquet_files, read_vectors

    rng = np.random.default_rng(seed + 7)
    wanted = ids[rng.choice(len(ids), size=min(n, len(ids)), replace=False)].tolist()
    v = get_version(lake, REF)
    files = [str(f) for f in parquet_files(lake, v)]

    def peer() -> int:
        t = pds.dataset(files, format="parquet").to_table(columns=["id", "vector"], filter=pc.field("id").isin(pa.array(wanted, pa.string())))
        m = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, v.dim)
        return len(m)

    def ours() -> int:
        _, m = read_vectors(lake, REF, ids=wanted)
        return len(m)

    t_a, t_p = [], []
    for i in range(3):
        for fn, acc in ((ours, t_a), (peer, t_p)) if i % 2 == 0 else ((peer, t_p), (ours, t_a)):
            t0 = time.perf_counter()
            got = fn()
            acc.append(time.perf_counter() - t0)
            if got != len(wanted):
                raise SystemExit(f"fetch returned {got} rows, expected {len(wanted)}")
    return {"n_ids": len(wanted), "aivc_s": min(t_a), "pyarrow_s": min(t_p)}


# -- report ----------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    aivc: str
    peer: str
    ratio: float | None
    target: str
    passed: bool | None


def _ms(s: float) -> str:
    return f"{s * 1000:.2f} ms"


def rows_of(res: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    e = res["exact"]
    r = e["aivc_s"] / e["numpy_s"]
    out.append(Row("exact top-10 per query (API)", _ms(e["aivc_s"]), f"numpy {_ms(e['numpy_s'])}", r, "<= 1.5x", r <= 1.5 and e["mismatches"] == 0))
    s = res.get("sql")
    if s is None:
        out.append(Row("exact top-10 per query (SQL)", "not measured", "aivc.embeddings.sql absent", None, "<= 1.5x", None))
    else:
        r = s["aivc_s"] / s["numpy_s"]
        out.append(Row("exact top-10 per query (SQL)", _ms(s["aivc_s"]), f"numpy {_ms(s['numpy_s'])}", r, "<= 1.5x", r <= 1.5 and s["mismatches"] == 0))
    a = res["ann"]
    out.append(Row("HNSW recall@10", f"{a['recall_at_10']:.4f}", "exact (numpy)", None, ">= 0.95", a["recall_at_10"] >= 0.95))
    r = a["exact_s"] / a["aivc_s"]
    out.append(Row("HNSW speed-up per query", _ms(a["aivc_s"]), f"exact {_ms(a['exact_s'])}", r, ">= 10x faster", r >= 10))
    f = res["fetch"]
    r = f["aivc_s"] / f["pyarrow_s"]
    out.append(Row(f"fetch {f['n_ids']:,} ids (read_vectors)", f"{f['aivc_s']:.3f} s", f"pyarrow {f['pyarrow_s']:.3f} s", r, "<= 2x", r <= 2))
    out.extend(write_rows(res["write"]))
    return out


def print_table(res: dict[str, Any], rows: list[Row]) -> None:
    a, e, w = res["ann"], res["exact"], res["write"]
    print(f"\nfeature store benchmark: {res['rows']:,} x {res['dim']} float32 cell URs, {res['datasets']} datasets")
    hdr = f"{'metric':<34} {'aivc':>14} {'peer':>24} {'ratio':>8} {'target':>14}  result"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        verdict = ("info" if r.target == "(info)" else "n/a") if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"{r.metric:<34} {r.aivc:>14} {r.peer:>24} {ratio:>8} {r.target:>14}  {verdict}")
    print(
        f"\nexact: cold load {e['cold_load_s']:.2f} s (ids + vectors + normalize), batch of {res['queries']} queries "
        f"{_ms(e['batch_per_query_s'])}/query, answers identical to numpy: {e['mismatches'] == 0} "
        f"(max similarity difference {e['max_similarity_diff']:.1e})"
    )
    if res.get("sql"):
        s = res["sql"]
        print(
            f"SQL: <view>_neighbors macro on a session connection; one-shot query() incl. connection {_ms(s['oneshot_s'])}, plain DuckDB array_cosine_similarity scan {_ms(s['scan_s'])} (same answer: {s['scan_matches']}); "
            f"answers identical to numpy: {s['mismatches'] == 0}"
        )
    print(
        f"HNSW: build {a['build_s']:.1f} s (M=32, efConstruction={res['ef_construction']}), efSearch {a['ef_search']}, "
        f"recall@10 at build (200 queries) {a['recall_build_sample']:.4f}, index {a['index_mib']:.0f} MiB, "
        f"batch {_ms(a['batch_per_query_s'])}/query"
    )
    print(
        f"write: {w['write_s']:.1f} s streaming + {w['commit_s']:.1f} s commit; peak RSS {w['peak_mib']:.0f} MiB "
        f"(interpreter + numpy + pyarrow + duckdb after import: {w['baseline_mib']:.0f} MiB, of it anonymous {w['anon_baseline_mib']:.0f} MiB; "
        f"file-backed library pages at the end: {w['rss_file_mib']:.0f} MiB)"
    )


def write_rows(w: dict[str, Any]) -> list[Row]:
    """The write's rows of the table (peak RSS against the version size)."""
    r = w["peak_mib"] / w["version_mib"]
    out = [Row("write peak RSS / version size", f"{w['peak_mib']:.0f} MiB", f"version {w['version_mib']:.0f} MiB", r, "<= 0.5x", r <= 0.5)]
    r = w["anon_peak_mib"] / w["version_mib"]
    out.append(Row("  peak anonymous memory (RssAnon)", f"{w['anon_peak_mib']:.0f} MiB", f"version {w['version_mib']:.0f} MiB", r, "(info)", None))
    grow = w["peak_mib"] - w["one_batch_peak_mib"]
    out.append(Row("  peak RSS growth over 1 batch", f"{grow:+.0f} MiB", f"1 batch {w['one_batch_peak_mib']:.0f} MiB", grow / w["version_mib"], "(info)", None))
    return out


def write_only_report(args: argparse.Namespace, w: dict[str, Any]) -> int:
    """``--write-only``: the write's rows, as a table or JSON."""
    rows = write_rows(w)
    res = {"rows": args.rows, "dim": args.dim, "datasets": args.datasets, "write": w, "targets": [asdict(r) for r in rows], "pass": all(r.passed is not False for r in rows)}
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    print(f"\nfeature store write: {args.rows:,} x {args.dim} float32 cell URs, {args.datasets} datasets")
    hdr = f"{'metric':<34} {'aivc':>14} {'peer':>24} {'ratio':>8} {'target':>14}  result"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        verdict = ("info" if r.target == "(info)" else "n/a") if r.passed is None else ("PASS" if r.passed else "FAIL")
        print(f"{r.metric:<34} {r.aivc:>14} {r.peer:>24} {r.ratio:>7.2f}x {r.target:>14}  {verdict}")
    print(
        f"write: {w['write_s']:.1f} s streaming + {w['commit_s']:.1f} s commit; peak RSS {w['peak_mib']:.0f} MiB "
        f"(interpreter + numpy + pyarrow + duckdb after import: {w['baseline_mib']:.0f} MiB, of it anonymous {w['anon_baseline_mib']:.0f} MiB; "
        f"file-backed library pages at the end: {w['rss_file_mib']:.0f} MiB)"
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--datasets", type=int, default=10)
    p.add_argument("--queries", type=int, default=20, help="queries timed for exact search (API and SQL)")
    p.add_argument("--ann-queries", type=int, default=500, help="queries for HNSW recall and timing")
    p.add_argument("--fetch", type=int, default=100_000, help="random ids fetched by read_vectors")
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/work/bench-scratch/features")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write-only", action="store_true", help="measure only the streaming write (step 1) and print its rows")
    p.add_argument("--write-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_child:
        write_child(args.write_child, args.rows, args.dim, args.seed, args.datasets)
        return 0

    from aivc.store.lake import Lake

    work = Path(args.workdir) / f"run-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _log(f"writing {args.rows:,} x {args.dim} in a subprocess ...")
        write = run_write(work / "lake", args)
        _log(f"writing one batch ({WRITE_BATCH:,} rows) in a subprocess: the process's fixed memory ...")
        write["one_batch_peak_mib"] = run_write(work / "lake-one-batch", args, rows=min(args.rows, WRITE_BATCH))["peak_mib"]
        shutil.rmtree(work / "lake-one-batch", ignore_errors=True)
        if args.write_only:
            return write_only_report(args, write)
        lake = Lake.open(work / "lake")
        _log("registering the fake datasets in the catalog ...")
        register_datasets(lake, args)
        _log("loading the peer's matrix ...")
        ids, x = load_peer_matrix(lake)
        rng = np.random.default_rng(args.seed + 1)
        q_rows = rng.choice(len(ids), size=args.queries, replace=False)
        _log("exact search ...")
        exact = bench_exact(lake, ids, x, q_rows)
        _log("SQL ...")
        sql = bench_sql(lake, ids, x, q_rows[: max(3, args.queries // 4)])
        _log("HNSW build and search ...")
        ann_rows = rng.choice(len(ids), size=min(args.ann_queries, len(ids)), replace=False)
        ann_res = bench_ann(lake, ids, x, ann_rows, exact["aivc_s"], args.ef_construction)
        _log("fetch by id ...")
        fetch = bench_fetch(lake, ids, args.fetch, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res: dict[str, Any] = {
        "rows": args.rows, "dim": args.dim, "datasets": args.datasets, "queries": args.queries, "ef_construction": args.ef_construction,
        "write": write, "exact": exact, "sql": sql, "ann": ann_res, "fetch": fetch,
        "main_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip
    rows = rows_of(res)
    res["targets"] = [asdict(r) for r in rows]
    res["pass"] = all(r.passed is not False for r in rows)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
    else:
        print_table(res, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
