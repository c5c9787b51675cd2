"""The ingest floor: ``aivc submit`` against a raw TileDB sparse write of the same COO chunks.

Usage::

    .venv/bin/python benchmarks/bench_ingest_floor.py [--cells 100000] [--genes 20000]
        [--repeats 2] [--workdir DIR] [--chunk-rows 4096] [--json]

What it does
------------
1. Makes (or reuses) the same synthetic raw-count submission as ``bench_ingest.py``
   (``benchmarks/synth.py``, streamed; realistic negative-binomial counts, real genes, a
   manifest) in ``--workdir`` (default ``/work/bench-scratch/ingest-floor``), and reads the
   file once (not timed) to warm the page cache.
2. Runs, ``--repeats`` times each, alternating which goes first, each in a fresh subprocess
   (wall time fork to exit, imports included; peak RSS of that child, as ``bench_ingest``):

   floor
       tiledb-py, nothing else: read the h5ad's CSR ``X`` with h5py ``--chunk-rows`` rows at a
       time (aivc submit's default chunk, 4,096), turn each chunk into COO (global row, gene
       column, float32 value) and write it to a new TileDB sparse array with **the schema of
       aivc's X** (``tiledbsoma``'s SparseNDArray default as aivc creates it: int64 dims
       ``soma_dim_0`` / ``soma_dim_1`` with tiles 2,048 x 2,048 and Zstd(3), a float32
       ``soma_data`` attribute with Zstd(-1), row-major tile and cell order, capacity
       100,000, no duplicates) as one unordered write (one fragment) per chunk. No
       validation, no obs / var, no metadata, no catalog: the cost of getting the counts
       into TileDB at all.
   aivc
       ``aivc submit DATA --manifest M --lake L --json`` into a fresh lake (``aivc init``
       beforehand, untimed): validation, harmonization, QC, the SOMA write (obs, var, X),
       artifacts, report and catalog commit.

3. Checks both: the floor array holds every non-zero (summed fragment cell counts); aivc
   answers ``committed`` and its SOMA X holds every cell and non-zero. It also compares the
   floor array's schema with aivc's X (dims, tiles, filters, orders, capacity) and prints
   whether they match.
4. Prints wall times and the ratio aivc / floor (medians), target **<= 1.2x** at 1M cells
   (information at other sizes, PASS/FAIL printed against the same number).

``--json`` prints one JSON object. Exit status 1 when a run failed or its result was wrong.
Needs ``tiledb`` (tiledb-py, in the ``bench`` extra; the same TileDB core as tiledbsoma's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_ingest import Run, _aivc_exe, _du_mib, _env, _warm, measure, run_aivc  # noqa: E402

TARGET = 1.2

FLOOR_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import h5py
import numpy as np
import tiledb
t1 = time.perf_counter()
uri, h5, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
BIG = np.iinfo(np.int64).max - 2049  # tiledbsoma's maximum domain for int64 dims
dims = [tiledb.Dim(name=n, domain=(0, BIG), tile=2048, dtype=np.int64, filters=tiledb.FilterList([tiledb.ZstdFilter(level=3)])) for n in ("soma_dim_0", "soma_dim_1")]
schema = tiledb.ArraySchema(
    domain=tiledb.Domain(*dims), sparse=True, allows_duplicates=False, capacity=100000,
    cell_order="row-major", tile_order="row-major",
    attrs=[tiledb.Attr(name="soma_data", dtype=np.float32, filters=tiledb.FilterList([tiledb.ZstdFilter(level=-1)]))],
)
tiledb.Array.create(uri, schema)
if h5 == "-":  # only the schema (to compare with aivc's X)
    sys.exit(0)
nnz = 0
with h5py.File(h5, "r") as f:
    X = f["X"]
    indptr = X["indptr"][:]
    n = len(indptr) - 1
    with tiledb.open(uri, "w") as A:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            lo, hi = int(indptr[start]), int(indptr[stop])
            cols = X["indices"][lo:hi].astype(np.int64)
            data = X["data"][lo:hi].astype(np.float32, copy=False)
            rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(indptr[start : stop + 1]))
            if rows.size:
                A[rows, cols] = {"soma_data": data}
            nnz += int(rows.size)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "write_s": t2 - t1, "nnz_written": nnz}))
"""

CHECK_SNIPPET = r"""
import json, sys
import tiledb
def desc(uri):
    s = tiledb.ArraySchema.load(uri)
    d = s.domain
    return {
        "dims": [(d.dim(i).name, str(d.dim(i).dtype), int(d.dim(i).tile), [type(f).__name__ + str(getattr(f, "level", "")) for f in d.dim(i).filters]) for i in range(d.ndim)],
        "attrs": [(s.attr(i).name, str(s.attr(i).dtype), [type(f).__name__ + str(getattr(f, "level", "")) for f in s.attr(i).filters]) for i in range(s.nattr)],
        "cell_order": s.cell_order, "tile_order": s.tile_order, "capacity": int(s.capacity), "allows_duplicates": bool(s.allows_duplicates),
    }
out = {"floor": desc(sys.argv[1])}
out["floor_nnz"] = int(sum(f.cell_num for f in tiledb.array_fragments(sys.argv[1])))
out["floor_fragments"] = len(tiledb.array_fragments(sys.argv[1]))
if len(sys.argv) > 2:
    out["aivc"] = desc(sys.argv[2])
    out["aivc_fragments"] = len(tiledb.array_fragments(sys.argv[2]))
print(json.dumps(out))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check(floor_uri: Path, aivc_x: Path | None) -> dict[str, Any]:
    args = [sys.executable, "-c", CHECK_SNIPPET, str(floor_uri)] + ([str(aivc_x)] if aivc_x is not None else [])
    out = subprocess.run(args, env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_floor(h5: Path, rundir: Path, nnz: int, repeat: int, position: int, chunk_rows: int) -> tuple[Run, Path]:
    uri = rundir / "floor-X"
    shutil.rmtree(uri, ignore_errors=True)
    m = measure([sys.executable, "-c", FLOOR_SNIPPET, str(uri), str(h5), str(chunk_rows)], cwd=rundir, env=_env(), log_dir=rundir / "floor-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = m.returncode == 0
    if ok:
        try:
            detail.update(json.loads(m.stdout.strip().splitlines()[-1]))
            detail["output_mib"] = round(_du_mib(uri), 1)
            ok = detail["nnz_written"] == nnz
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok, detail["error"] = False, f"{type(exc).__name__}: {exc}"
    else:
        detail["stderr_tail"] = m.stderr_tail
    return Run("floor", repeat, position, m.wall_s, m.peak_mib, m.maxrss_mib, m.tree_peak_mib, ok, detail), uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aivc submit vs a raw TileDB sparse write of the same COO chunks (tiledb-py): wall time.")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=4096, help="rows per COO chunk of the floor (aivc submit's default chunk)")
    p.add_argument("--workdir", default="/work/bench-scratch/ingest-floor")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    gen = subprocess.run(
        [sys.executable, str(HERE / "synth.py"), "--cells", str(a.cells), "--genes", str(a.genes), "--seed", str(a.seed), "--out", str(work / "data")],
        env=_env(), stdout=subprocess.PIPE, text=True, check=True,
    )
    info = json.loads(gen.stdout)
    h5, mf, stats = Path(info["h5ad"]), Path(info["manifest"]), info["stats"]
    _log(f"bench: read {h5.name} once to warm the page cache ({_warm(h5):.1f}s)")

    runs: list[Run] = []
    schema: dict[str, Any] | None = None
    for rep in range(a.repeats):
        order = ["floor", "aivc"] if rep % 2 == 0 else ["aivc", "floor"]
        for pos, tool in enumerate(order):
            rundir = work / "runs" / f"{tool}-{rep}"
            shutil.rmtree(rundir, ignore_errors=True)
            rundir.mkdir(parents=True)
            load = os.getloadavg()[0]
            _log(f"bench: repeat {rep + 1}/{a.repeats}: {tool} (load average {load:.2f}) ...")
            if tool == "floor":
                r, uri = run_floor(h5, rundir, stats["nnz"], rep, pos, a.chunk_rows)
                if r.ok:
                    chk = _check(uri, None)
                    r.detail.update({"fragments": chk["floor_fragments"], "nnz_in_array": chk["floor_nnz"]})
                    r.ok = chk["floor_nnz"] == stats["nnz"]
                    if schema is None:
                        schema = {"floor": chk["floor"]}
                    else:
                        schema["floor"] = chk["floor"]
            else:
                extra = ["--chunk-rows", str(a.chunk_rows)] if a.chunk_rows != 4096 else []
                r = run_aivc(h5, mf, rundir, stats["n_cells"], stats["nnz"], rep, pos, extra)
                x = rundir / "lake" / "soma" / "homo_sapiens" / "ms" / "RNA" / "X" / "counts"
                if r.ok and x.exists() and (schema is None or "aivc" not in schema):
                    tmp = rundir / "schema-probe"
                    subprocess.run([sys.executable, "-c", FLOOR_SNIPPET, str(tmp), "-", "0"], env=_env(), check=True, capture_output=True)
                    chk = _check(tmp, x)
                    schema = {"floor": chk["floor"], "aivc": chk["aivc"]}
                    r.detail["fragments"] = chk["aivc_fragments"]
            r.detail["load_avg_before"] = round(load, 2)
            _log(f"bench:   {tool}: {r.wall_s:.1f}s, peak {r.peak_rss_mib:.0f} MiB, {'ok' if r.ok else 'FAILED'}")
            runs.append(r)
            for sub in ("floor-X", "lake", "schema-probe"):
                shutil.rmtree(rundir / sub, ignore_errors=True)

    summ: dict[str, Any] = {}
    for tool in ("floor", "aivc"):
        rs = [r for r in runs if r.tool == tool and r.ok]
        summ[tool] = {"n_ok": len(rs), "wall_s_median": statistics.median(r.wall_s for r in rs) if rs else None,
                      "wall_s_runs": [round(r.wall_s, 2) for r in rs], "peak_rss_mib_max": max((r.peak_rss_mib for r in rs), default=None)}
    ratio = summ["aivc"]["wall_s_median"] / summ["floor"]["wall_s_median"] if summ["aivc"]["wall_s_median"] and summ["floor"]["wall_s_median"] else None
    same_schema = schema is not None and "aivc" in schema and schema["floor"] == schema["aivc"]
    result = {
        "benchmark": "ingest_floor",
        "dataset": {"path": str(h5), "n_cells": stats["n_cells"], "n_genes": stats["n_genes"], "nnz": stats["nnz"], "file_mib": stats["file_bytes"] / 2**20},
        "chunk_rows": a.chunk_rows,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
        "commands": {"floor": f"{sys.executable} -c FLOOR_SNIPPET URI {h5} {a.chunk_rows}", "aivc": f"{' '.join(_aivc_exe())} submit {h5} --manifest {mf} --lake LAKE --json"},
        "schema": schema,
        "schema_same": same_schema,
        "runs": [asdict(r) for r in runs],
        "summary": summ,
        "ratio_time": ratio,
        "target": TARGET,
        "pass": ratio is not None and ratio <= TARGET,
    }
    if a.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print()
        print(f"dataset: {stats['n_cells']:,} cells x {stats['n_genes']:,} genes, {stats['nnz']:,} non-zeros, {result['dataset']['file_mib']:.0f} MiB h5ad; COO chunks of {a.chunk_rows:,} rows")
        la = result["machine"]["load_avg"]
        print(f"machine: {result['machine']['cpus']} CPUs; load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}")
        print(f"floor array schema {'the same as' if same_schema else 'DIFFERENT from'} aivc's X" + ("" if same_schema else f": floor {schema and schema.get('floor')} aivc {schema and schema.get('aivc')}"))
        print()
        print(f"{'tool':<6} {'rep':>3} {'order':>5} {'wall s':>8} {'peak MiB':>9} {'output MiB':>10} {'load':>5}  ok")
        for r in runs:
            om = r.detail.get("output_mib")
            print(f"{r.tool:<6} {r.repeat:>3} {r.position + 1:>5} {r.wall_s:>8.1f} {r.peak_rss_mib:>9.0f} {(f'{om:.0f}' if om is not None else '-'):>10} {r.detail.get('load_avg_before', float('nan')):>5.1f}  {'yes' if r.ok else 'NO'}")
        print()
        for tool in ("floor", "aivc"):
            t = summ[tool]
            print(f"{tool:<6} wall median {t['wall_s_median']:.1f}s over {t['n_ok']} runs" if t["n_ok"] else f"{tool:<6} no successful run")
        if ratio is not None:
            print(f"aivc submit / raw TileDB write: {ratio:.2f}x   target <= {TARGET}x{'' if stats['n_cells'] >= 1_000_000 else ' (the target is at 1M cells)'}   {'PASS' if ratio <= TARGET else 'FAIL'}")
        for r in runs:
            if not r.ok:
                print(f"\n{r.tool} repeat {r.repeat} failed: {json.dumps(r.detail, default=str)[:3000]}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
