"""Object-store benchmark: ``aivc submit`` and ``aivc sql`` on an ``s3://`` lake vs a local folder lake.

Usage::

    /work/venv/bin/python benchmarks/bench_s3.py [--cells 100000] [--genes 20000]
        [--repeats 2] [--sql-repeats 5] [--workdir DIR] [--only local|s3] [--json]

What it does
------------
1. Starts a local S3 server (``moto_server`` in a subprocess on 127.0.0.1, a free port:
   :class:`tests.s3server.MotoServer`) and points the standard variables at it
   (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so
   that nothing reaches real AWS. The server runs on the same machine and its CPU time is part
   of what the s3 side pays, as a real object store's network round trips would be.
2. Makes (or reuses) the realistic synthetic submission of ``bench_ingest.py`` with
   ``benchmarks/synth.py`` (default 100,000 cells x 20,000 real human genes) and reads it once,
   untimed, so both sides start from a warm page cache.
3. Submit, ``--repeats`` times each, alternating which goes first, each in a fresh subprocess
   (``bench_ingest.measure``: wall time fork to exit, peak RSS of that child):

   local
       ``aivc submit DATA --manifest M --lake DIR --json`` into a fresh folder lake.
   s3
       the same into a fresh lake ``s3://<new bucket>/lake``.

   ``aivc init`` runs beforehand in its own untimed subprocess. A run counts when aivc answers
   ``committed`` with the right ``n_cells`` and a plain ``tiledbsoma`` reader (in a separate
   subprocess) finds every cell and every non-zero in the lake's experiment.
4. SQL, on the lakes of the last submit repeat, ``--sql-repeats`` times each, alternating,
   fresh subprocesses: ``aivc sql Q --json`` for

   count
       ``SELECT count(*), count(DISTINCT dataset_id) FROM cells``
   by_type
       ``SELECT cell_type, count(*), avg(n_counts), avg(n_genes) FROM cells GROUP BY 1 ORDER BY 1``

   Both backends must answer the same rows (the count must be the number of cells).
5. Prints the medians and the ratios s3/local against the targets: **submit <= 1.5x**,
   **sql <= 2.0x** (each query), with PASS/FAIL. ``--json`` prints one JSON object instead.

Exit status 1 when a run failed or gave a wrong result (not when a target is missed: see
``pass`` in the JSON). Benchmarks are not tests: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # for tests.s3server

import bench_ingest as bi

from tests.s3server import (
    MotoServer,
    point_environment_at,
    tiledb_s3_config,
    unique_bucket,
)

SUBMIT_TARGET = 1.5
SQL_TARGET = 2.0
BACKENDS = ("local", "s3")
QUERIES = {
    "count": "SELECT count(*) AS n_cells, count(DISTINCT dataset_id) AS n_datasets FROM cells",
    "by_type": (
        "SELECT cell_type, count(*) AS n, round(avg(n_counts), 3) AS mean_umis, round(avg(n_genes), 3) AS mean_genes "
        "FROM cells GROUP BY 1 ORDER BY 1"
    ),
}

VERIFY_SNIPPET = r"""
import json, sys
import tiledbsoma
cfg = json.loads(sys.argv[2])
ctx = tiledbsoma.SOMATileDBContext(tiledb_config=cfg) if cfg else None
with tiledbsoma.Experiment.open(sys.argv[1], context=ctx) as exp:
    print(json.dumps({"n_obs": int(exp.obs.count), "nnz": int(exp.ms["RNA"].X["counts"].nnz)}))
"""


@dataclass
class Run:
    step: str  # submit | sql:<query>
    backend: str
    repeat: int
    position: int  # 0: ran first in its repeat, 1: second
    wall_s: float
    peak_rss_mib: float
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class LakeAt:
    backend: str
    uri: str
    bucket: str | None = None


# -- lakes -------------------------------------------------------------------------------------
def fresh_lake(backend: str, rundir: Path, s3: MotoServer | None) -> LakeAt:
    if backend == "local":
        shutil.rmtree(rundir / "lake", ignore_errors=True)
        return LakeAt("local", str(rundir / "lake"))
    assert s3 is not None
    bucket = s3.create_bucket(unique_bucket("aivc-bench"))
    return LakeAt("s3", f"s3://{bucket}/lake", bucket)


def drop_lake(lake: LakeAt, s3: MotoServer | None) -> None:
    if lake.bucket is None:
        shutil.rmtree(lake.uri, ignore_errors=True)
    elif s3 is not None:
        s3.delete_bucket(lake.bucket)


def _soma_counts(lake: LakeAt, s3: MotoServer | None) -> tuple[int, int]:
    """Cells and non-zeros of the lake's experiment, read by plain tiledbsoma in a subprocess."""
    cfg = tiledb_s3_config(s3.endpoint_url) if lake.bucket is not None and s3 is not None else {}
    uri = f"{lake.uri}/soma/homo_sapiens"
    out = subprocess.run([sys.executable, "-c", VERIFY_SNIPPET, uri, json.dumps(cfg)], env=bi._env(), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return int(res["n_obs"]), int(res["nnz"])


# -- the two steps -----------------------------------------------------------------------------
def run_submit(lake: LakeAt, h5: Path, mf: Path, rundir: Path, stats: dict[str, Any], rep: int, pos: int, s3: MotoServer | None, extra: list[str]) -> Run:
    exe = bi._aivc_exe()
    init = subprocess.run([*exe, "init", "--lake", lake.uri, "--json"], check=False, cwd=rundir, env=bi._env(), capture_output=True, text=True)
    if init.returncode != 0:
        return Run("submit", lake.backend, rep, pos, float("nan"), float("nan"), False, {"error": "aivc init failed", "stderr_tail": init.stderr[-2000:]})
    cmd = [*exe, "submit", str(h5), "--manifest", str(mf), "--lake", lake.uri, "--json", *extra]
    m = bi.measure(cmd, cwd=rundir, env=bi._env(), log_dir=rundir / f"{lake.backend}-submit-logs")
    detail: dict[str, Any] = {"returncode": m.returncode, "lake": lake.uri}
    ok = False
    try:
        res = json.loads(m.stdout)
        detail.update({k: res.get(k) for k in ("status", "dataset_id", "version", "n_cells", "n_genes")})
        ok = m.returncode == 0 and res.get("status") == "committed" and res.get("n_cells") == stats["n_cells"]
        if ok:
            got_obs, got_nnz = _soma_counts(lake, s3)
            detail.update({"soma_n_obs": got_obs, "soma_nnz": got_nnz})
            ok = got_obs == stats["n_cells"] and got_nnz == stats["nnz"]
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        detail["error"] = f"{type(exc).__name__}: {exc}"
    if not ok:
        detail["stderr_tail"] = m.stderr_tail
    return Run("submit", lake.backend, rep, pos, m.wall_s, m.peak_mib, ok, detail)


def run_sql(lake: LakeAt, name: str, rundir: Path, rep: int, pos: int) -> Run:
    cmd = [*bi._aivc_exe(), "sql", QUERIES[name], "--lake", lake.uri, "--json"]
    m = bi.measure(cmd, cwd=rundir, env=bi._env(), log_dir=rundir / f"{lake.backend}-sql-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = m.returncode == 0
    if ok:
        try:
            detail["rows"] = json.loads(m.stdout)["rows"]
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok, detail["error"] = False, f"{type(exc).__name__}: {exc}"
    else:
        detail["stderr_tail"] = m.stderr_tail
    return Run(f"sql:{name}", lake.backend, rep, pos, m.wall_s, m.peak_mib, ok, detail)


def check_sql(runs: list[Run], n_cells: int) -> list[str]:
    """Wrong answers: every run of a query must give the same rows; count must be exact."""
    problems: list[str] = []
    for name in QUERIES:
        answers = {json.dumps(r.detail["rows"], sort_keys=True) for r in runs if r.step == f"sql:{name}" and r.ok}
        if len(answers) > 1:
            problems.append(f"sql:{name}: the backends (or repeats) disagree: {sorted(answers)[:2]}")
    for r in runs:
        if r.step == "sql:count" and r.ok and r.detail["rows"] != [{"n_cells": n_cells, "n_datasets": 1}]:
            problems.append(f"sql:count on {r.backend}: {r.detail['rows']} (expected {n_cells} cells in 1 dataset)")
            r.ok = False
    return problems


# -- summary -----------------------------------------------------------------------------------
def summarize(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": {}, "targets": {}}
    for step, target in [("submit", SUBMIT_TARGET), *((f"sql:{q}", SQL_TARGET) for q in QUERIES)]:
        per: dict[str, Any] = {}
        for backend in BACKENDS:
            rs = [r for r in runs if r.step == step and r.backend == backend and r.ok]
            per[backend] = {
                "n_ok": len(rs),
                "n_failed": len([r for r in runs if r.step == step and r.backend == backend and not r.ok]),
                "wall_s_median": statistics.median(r.wall_s for r in rs) if rs else None,
                "wall_s_min": min(r.wall_s for r in rs) if rs else None,
                "wall_s_max": max(r.wall_s for r in rs) if rs else None,
                "peak_rss_mib_max": max(r.peak_rss_mib for r in rs) if rs else None,
            }
        out["steps"][step] = per
        lo, s3 = per["local"]["wall_s_median"], per["s3"]["wall_s_median"]
        if lo and s3:
            ratio = s3 / lo
            out["targets"][step] = {"ratio": ratio, "target": target, "pass": ratio <= target}
        else:
            out["targets"][step] = {"ratio": None, "target": target, "pass": False}
    out["pass"] = all(t["pass"] for t in out["targets"].values())
    return out


def print_human(result: dict[str, Any]) -> None:
    d = result["dataset"]
    print()
    print(f"dataset: {d['n_cells']:,} cells x {d['n_genes']:,} genes, {d['nnz']:,} non-zeros, {d['file_mib']:.0f} MiB h5ad")
    la = result["machine"]["load_avg"]
    print(f"machine: {result['machine']['cpus']} CPUs; python {result['machine']['python']}; load average at the end "
          f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}; S3: {result['s3']['server']} at {result['s3']['endpoint']}")
    print()
    hdr = f"{'step':<12} {'backend':<7} {'rep':>3} {'order':>5} {'wall s':>9} {'peak RSS MiB':>13}  ok"
    print(hdr)
    print("-" * len(hdr))
    for r in result["runs"]:
        print(f"{r['step']:<12} {r['backend']:<7} {r['repeat']:>3} {r['position'] + 1:>5} {r['wall_s']:>9.2f} {r['peak_rss_mib']:>13.0f}  {'yes' if r['ok'] else 'NO'}")
    s = result["summary"]
    print()
    for step, per in s["steps"].items():
        for backend, t in per.items():
            if t["n_ok"]:
                print(f"{step:<12} {backend:<7} median {t['wall_s_median']:.2f}s (min {t['wall_s_min']:.2f}, max {t['wall_s_max']:.2f})")
            else:
                print(f"{step:<12} {backend:<7} no successful run")
    print()
    for step, t in s["targets"].items():
        ratio = f"{t['ratio']:5.2f}x" if t["ratio"] is not None else "  n/a "
        print(f"s3/local {step:<12} {ratio}   target <= {t['target']}x   {'PASS' if t['pass'] else 'FAIL'}")
    for p in result["problems"]:
        print(f"\nwrong result: {p}")
    for r in result["runs"]:
        if not r["ok"]:
            print(f"\n{r['step']} on {r['backend']} (repeat {r['repeat']}) failed: {json.dumps(r['detail'])[:3000]}")


# -- the benchmark -----------------------------------------------------------------------------
def generate(a: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The same generated submission as bench_ingest.py (reused when it exists), in a subprocess."""
    cmd = [sys.executable, str(HERE / "synth.py"), "--cells", str(a.cells), "--genes", str(a.genes), "--seed", str(a.seed), "--out", str(work / "data")]
    return json.loads(subprocess.run(cmd, env=bi._env(), stdout=subprocess.PIPE, text=True, check=True).stdout)


def _alternate(rep: int, backends: list[str]) -> list[str]:
    return backends if rep % 2 == 0 else list(reversed(backends))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aivc submit and aivc sql: an s3:// lake (local moto server) vs a local folder lake.")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="submits per backend (alternating order)")
    p.add_argument("--sql-repeats", type=int, default=5, help="runs of each query per backend (alternating order)")
    p.add_argument("--workdir", default="/work/bench-scratch/s3", help="where data, local lakes and logs go")
    p.add_argument("--only", choices=list(BACKENDS), default=None, help="one backend only (no ratios)")
    p.add_argument("--chunk-rows", type=int, default=None, help="pass --chunk-rows to aivc submit")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    backends = [a.only] if a.only else list(BACKENDS)
    s3 = MotoServer().start() if "s3" in backends else None
    try:
        if s3 is not None:
            point_environment_at(s3.endpoint_url)  # every child (aivc, the verifier) inherits it
            bi._log(f"bench: S3 server (moto_server pid {s3.pid}) at {s3.endpoint_url}")
        t0 = time.perf_counter()
        info = generate(a, work)
        gen_wall = time.perf_counter() - t0
        h5, mf, stats = Path(info["h5ad"]), Path(info["manifest"]), info["stats"]
        bi._log(f"bench: read {h5.name} once to warm the page cache ({bi._warm(h5):.1f}s)")
        extra = ["--chunk-rows", str(a.chunk_rows)] if a.chunk_rows else []
        runs: list[Run] = []
        last: dict[str, LakeAt] = {}
        for rep in range(a.repeats):
            for pos, backend in enumerate(_alternate(rep, backends)):
                rundir = work / "runs" / f"{backend}-{rep}"
                shutil.rmtree(rundir, ignore_errors=True)
                rundir.mkdir(parents=True)
                if backend in last:
                    drop_lake(last.pop(backend), s3)
                lake = fresh_lake(backend, rundir, s3)
                bi._log(f"bench: submit {rep + 1}/{a.repeats}: {backend} -> {lake.uri} (load average {os.getloadavg()[0]:.2f}) ...")
                r = run_submit(lake, h5, mf, rundir, stats, rep, pos, s3, extra)
                bi._log(f"bench:   {backend}: {r.wall_s:.1f}s, {'ok' if r.ok else 'FAILED'}")
                runs.append(r)
                if r.ok:
                    last[backend] = lake
                else:
                    drop_lake(lake, s3)
        for rep in range(a.sql_repeats):
            for pos, backend in enumerate(_alternate(rep, [b for b in backends if b in last])):
                for name in QUERIES:
                    r = run_sql(last[backend], name, work / "runs", rep, pos)
                    bi._log(f"bench: sql {name} {rep + 1}/{a.sql_repeats}: {backend}: {r.wall_s:.2f}s, {'ok' if r.ok else 'FAILED'}")
                    runs.append(r)
        problems = check_sql(runs, stats["n_cells"])
        result: dict[str, Any] = {
            "benchmark": "s3",
            "dataset": {
                "path": str(h5), "manifest": str(mf), "n_cells": stats["n_cells"], "n_genes": stats["n_genes"],
                "nnz": stats["nnz"], "file_mib": stats["file_bytes"] / 2**20,
            },
            "generator": {"seconds": stats["seconds"], "reused": info["reused"], "this_call_s": round(gen_wall, 2)},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
            "s3": {"server": "moto_server (subprocess, same machine)", "endpoint": s3.endpoint_url if s3 else None},
            "commands": {
                "submit": f"{' '.join(bi._aivc_exe())} submit {h5} --manifest {mf} --lake LAKE --json {' '.join(extra)}".strip(),
                **{f"sql:{k}": f"{' '.join(bi._aivc_exe())} sql {q!r} --lake LAKE --json" for k, q in QUERIES.items()},
            },
            "runs": [asdict(r) for r in runs],
            "problems": problems,
        }
        result["summary"] = summarize(runs)
        result["pass"] = result["summary"]["pass"] and not problems
        for lake in last.values():
            drop_lake(lake, s3)
    finally:
        if s3 is not None:
            s3.stop()
    if a.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_human(result)
    return 0 if all(r.ok for r in runs) and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
