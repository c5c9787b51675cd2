"""Ingestion benchmark: ``aivc submit`` against plain ``tiledbsoma.io.from_h5ad`` on the same h5ad.

Usage::

    /work/venv/bin/python benchmarks/bench_ingest.py [--cells 100000] [--genes 20000]
        [--repeats 2] [--workdir DIR] [--json]

What it does
------------
1. Makes (or reuses) a realistic synthetic raw-count submission with ``benchmarks/synth.py``
   (negative-binomial counts whose per-gene statistics come from real PBMC data; real human
   genes; a matching manifest), in ``--workdir`` (default ``/work/bench-scratch/ingest``).
2. Reads the file once (not timed) so both tools start from a warm page cache.
3. Runs, ``--repeats`` times each and alternating which goes first, each in a fresh
   subprocess (a new Python interpreter, so imports and start-up are included for both):

   peer
       ``tiledbsoma.io.from_h5ad(uri, h5ad, measurement_name="RNA")`` into a fresh folder,
       default ingestion parameters.
   aivc
       ``aivc submit DATA --manifest M --lake L --json`` into a fresh lake (``aivc init``
       beforehand, in its own untimed subprocess). Validation, harmonization, QC
       expectations, SOMA write, artifacts, report and catalog commit are all included,
       since that is what a submitter waits for.

   Each run measures wall time (fork to exit) and the peak resident memory of that one child:
   ``os.wait4`` returns the child's own ``ru_maxrss`` (max over it and any descendants it
   reaped), and the child's process tree is also sampled from ``/proc`` every 50 ms
   (sum of ``VmRSS`` over the tree); the larger of the two is reported. This process never
   loads anything big (generation and result checks run in their own subprocesses), because a
   child's ``ru_maxrss`` starts from the parent's high-water mark at fork time on Linux.
4. Checks the results: aivc must answer ``status: committed`` with the right ``n_cells``;
   both SOMA experiments must hold every cell and every non-zero.
5. Prints a table and the ratios aivc/peer: time (median over repeats) and peak memory
   (max over repeats), against the targets time <= 1.3x, peak memory <= 0.5x.

``--json`` prints one JSON object instead of the human table. Exit status 1 when a run
failed or its result was wrong (not when a target is missed; see ``pass`` in the JSON).
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
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from proc_tree import run_sampled  # noqa: E402


TIME_TARGET = 1.3
MEM_TARGET = 0.5

PEER_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import tiledbsoma.io
t1 = time.perf_counter()
tiledbsoma.io.from_h5ad(sys.argv[1], sys.argv[2], measurement_name="RNA")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "ingest_s": t2 - t1}))
"""


VERIFY_SNIPPET = r"""
import json, sys
import tiledbsoma
with tiledbsoma.Experiment.open(sys.argv[1]) as exp:
    print(json.dumps({"n_obs": int(exp.obs.count), "nnz": int(exp.ms[sys.argv[2]].X[sys.argv[3]].nnz)}))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- measuring one child ---------------------------------------------------------------------
@dataclass
class Measured:
    returncode: int
    wall_s: float
    maxrss_mib: float  # wait4 ru_maxrss of the child (its own peak, or a reaped descendant's)
    tree_peak_mib: float  # sampled peak of the summed RSS of the child's process tree
    stdout: str
    stderr_tail: str

    @property
    def peak_mib(self) -> float:
        return max(self.maxrss_mib, self.tree_peak_mib)


def measure(cmd: list[str], *, cwd: Path, env: dict[str, str], log_dir: Path, interval: float = 0.05) -> Measured:
    """Run ``cmd`` in a fresh subprocess; wall time and peak RSS of exactly that child."""
    m = run_sampled(cmd, log_dir=log_dir, env=env, cwd=cwd, interval=interval)
    return Measured(
        returncode=m.returncode,
        wall_s=m.wall_s,
        maxrss_mib=m.maxrss_kib / 1024.0,  # Linux: KiB
        tree_peak_mib=m.peak_rss_kib / 1024.0,
        stdout=m.stdout_path.read_text(errors="replace"),
        stderr_tail=m.stderr_path.read_text(errors="replace")[-2000:],
    )


# -- the two contenders ------------------------------------------------------------------------
@dataclass
class Run:
    tool: str
    repeat: int
    position: int  # 0: ran first in its repeat, 1: second
    wall_s: float
    peak_rss_mib: float
    maxrss_mib: float
    tree_peak_mib: float
    ok: bool
    detail: dict[str, Any] = field(default_factory=dict)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _du_mib(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / 2**20


def _soma_counts(uri: str, measurement: str, layer: str) -> tuple[int, int]:
    """Cells and non-zeros of a SOMA experiment, read in a separate subprocess.

    Nothing heavy is ever loaded into this (parent) process: on Linux a child's ``ru_maxrss``
    starts from the parent's high-water mark at fork/vfork time (``execve`` keeps it), so a
    big parent would inflate the children's measured peaks.
    """
    out = subprocess.run([sys.executable, "-c", VERIFY_SNIPPET, uri, measurement, layer], env=_env(), capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return int(res["n_obs"]), int(res["nnz"])


def run_peer(h5: Path, rundir: Path, n_cells: int, nnz: int, repeat: int, position: int) -> Run:
    uri = rundir / "peer-soma"
    shutil.rmtree(uri, ignore_errors=True)
    m = measure([sys.executable, "-c", PEER_SNIPPET, str(uri), str(h5)], cwd=rundir, env=_env(), log_dir=rundir / "peer-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = m.returncode == 0
    if ok:
        try:
            detail.update(json.loads(m.stdout.strip().splitlines()[-1]))
            got_obs, got_nnz = _soma_counts(str(uri), "RNA", "data")
            detail.update({"soma_n_obs": got_obs, "soma_nnz": got_nnz, "output_mib": round(_du_mib(uri), 1)})
            ok = got_obs == n_cells and got_nnz == nnz
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok, detail["error"] = False, f"{type(exc).__name__}: {exc}"
    else:
        detail["stderr_tail"] = m.stderr_tail
    return Run("peer", repeat, position, m.wall_s, m.peak_mib, m.maxrss_mib, m.tree_peak_mib, ok, detail)


def _aivc_exe() -> list[str]:
    exe = Path(sys.executable).with_name("aivc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aivc.cli"]


def run_aivc(h5: Path, mf: Path, rundir: Path, n_cells: int, nnz: int, repeat: int, position: int, extra: list[str]) -> Run:
    lake = rundir / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    init = subprocess.run([*_aivc_exe(), "init", "--lake", str(lake), "--json"], cwd=rundir, env=_env(), capture_output=True, text=True)
    if init.returncode != 0:
        return Run("aivc", repeat, position, float("nan"), float("nan"), float("nan"), float("nan"), False, {"error": "aivc init failed", "stderr_tail": init.stderr[-2000:]})
    cmd = [*_aivc_exe(), "submit", str(h5), "--manifest", str(mf), "--lake", str(lake), "--json", *extra]
    m = measure(cmd, cwd=rundir, env=_env(), log_dir=rundir / "aivc-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = False
    try:
        res = json.loads(m.stdout)
        detail.update({k: res.get(k) for k in ("status", "dataset_id", "version", "n_cells", "n_genes")})
        detail["n_warnings"] = len(res.get("warnings") or [])
        if res.get("errors"):
            detail["errors"] = res["errors"][:5]
        ok = m.returncode == 0 and res.get("status") == "committed" and res.get("n_cells") == n_cells
        if ok:
            uri = lake / "soma" / "homo_sapiens"  # Lake.soma_uri("homo_sapiens")
            got_obs, got_nnz = _soma_counts(str(uri), "RNA", "counts")
            detail.update({"soma_n_obs": got_obs, "soma_nnz": got_nnz, "output_mib": round(_du_mib(lake), 1)})
            ok = got_obs == n_cells and got_nnz == nnz
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        detail["error"] = f"{type(exc).__name__}: {exc}"
        detail["stderr_tail"] = m.stderr_tail
    if not ok and "stderr_tail" not in detail:
        detail["stderr_tail"] = m.stderr_tail
    return Run("aivc", repeat, position, m.wall_s, m.peak_mib, m.maxrss_mib, m.tree_peak_mib, ok, detail)


# -- the benchmark -----------------------------------------------------------------------------
def _self_hwm_mib() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _warm(path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    return time.perf_counter() - t0


def summarize(runs: list[Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tool in ("peer", "aivc"):
        rs = [r for r in runs if r.tool == tool and r.ok]
        out[tool] = {
            "n_ok": len(rs),
            "n_failed": len([r for r in runs if r.tool == tool and not r.ok]),
            "wall_s_median": statistics.median(r.wall_s for r in rs) if rs else None,
            "wall_s_min": min(r.wall_s for r in rs) if rs else None,
            "wall_s_max": max(r.wall_s for r in rs) if rs else None,
            "peak_rss_mib_max": max(r.peak_rss_mib for r in rs) if rs else None,
        }
    p, a = out["peer"], out["aivc"]
    if p["wall_s_median"] and a["wall_s_median"]:
        tr = a["wall_s_median"] / p["wall_s_median"]
        mr = a["peak_rss_mib_max"] / p["peak_rss_mib_max"]
        out["ratios"] = {"time": tr, "peak_memory": mr}
        out["targets"] = {
            "time": {"ratio": tr, "target": TIME_TARGET, "pass": tr <= TIME_TARGET},
            "peak_memory": {"ratio": mr, "target": MEM_TARGET, "pass": mr <= MEM_TARGET},
        }
        out["pass"] = tr <= TIME_TARGET and mr <= MEM_TARGET
    else:
        out["ratios"], out["targets"], out["pass"] = None, None, False
    return out


def print_human(result: dict[str, Any]) -> None:
    d = result["dataset"]
    g = result["generator"]
    print()
    print(f"dataset: {d['n_cells']:,} cells x {d['n_genes']:,} genes, {d['nnz']:,} non-zeros "
          f"({100 * d['density']:.2f} %), {d['file_mib']:.0f} MiB h5ad; mean {d['mean_umis']:.0f} UMIs, "
          f"{d['mean_detected_genes']:.0f} genes per cell")
    print(f"generator: {g['seconds']:.1f}s{' (reused file; time of its generation)' if g['reused'] else ''}")
    la = result["machine"]["load_avg"]
    print(f"machine: {result['machine']['cpus']} CPUs; python {result['machine']['python']}; load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min)")
    print()
    hdr = f"{'tool':<6} {'rep':>3} {'order':>5} {'wall s':>9} {'peak RSS MiB':>13} {'output MiB':>11} {'load':>5}  ok"
    print(hdr)
    print("-" * len(hdr))
    for r in result["runs"]:
        out_mib = r["detail"].get("output_mib")
        print(f"{r['tool']:<6} {r['repeat']:>3} {r['position'] + 1:>5} {r['wall_s']:>9.1f} {r['peak_rss_mib']:>13.0f} "
              f"{(f'{out_mib:.0f}' if out_mib is not None else '-'):>11} {r['detail'].get('load_avg_before', float('nan')):>5.1f}  {'yes' if r['ok'] else 'NO'}")
    s = result["summary"]
    print()
    for tool in ("peer", "aivc"):
        t = s[tool]
        if t["n_ok"]:
            print(f"{tool:<6} wall median {t['wall_s_median']:.1f}s (min {t['wall_s_min']:.1f}, max {t['wall_s_max']:.1f}); peak RSS max {t['peak_rss_mib_max']:.0f} MiB")
        else:
            print(f"{tool:<6} no successful run")
    if s["targets"]:
        print()
        for name, t in s["targets"].items():
            print(f"aivc/peer {name:<12} {t['ratio']:5.2f}x   target <= {t['target']}x   {'PASS' if t['pass'] else 'FAIL'}")
    for r in result["runs"]:
        if not r["ok"]:
            print(f"\n{r['tool']} repeat {r['repeat']} failed: {json.dumps(r['detail'])[:3000]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aivc submit vs tiledbsoma.io.from_h5ad: wall time and peak memory.")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool (alternating order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/work/bench-scratch/ingest", help="where data, lakes and SOMA folders go")
    p.add_argument("--only", choices=["peer", "aivc"], default=None, help="run one tool only (no ratios)")
    p.add_argument("--chunk-rows", type=int, default=None, help="pass --chunk-rows to aivc submit")
    p.add_argument("--keep", action="store_true", help="keep the lakes and SOMA folders of the last repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    # generate (or reuse) the input in a subprocess, so this process stays small (see _soma_counts)
    t0 = time.perf_counter()
    gen = subprocess.run(
        [sys.executable, str(HERE / "synth.py"), "--cells", str(a.cells), "--genes", str(a.genes), "--seed", str(a.seed), "--out", str(work / "data")],
        env=_env(), stdout=subprocess.PIPE, text=True, check=True,
    )
    gen_wall = time.perf_counter() - t0
    info = json.loads(gen.stdout)
    h5, mf, stats, spec = Path(info["h5ad"]), Path(info["manifest"]), info["stats"], info["spec"]
    warm_s = _warm(h5)
    _log(f"bench: read {h5.name} once to warm the page cache ({warm_s:.1f}s)")

    extra = ["--chunk-rows", str(a.chunk_rows)] if a.chunk_rows else []
    tools = [a.only] if a.only else ["peer", "aivc"]
    runs: list[Run] = []
    for rep in range(a.repeats):
        order = tools if rep % 2 == 0 else list(reversed(tools))
        for pos, tool in enumerate(order):
            rundir = work / "runs" / f"{tool}-{rep}"
            shutil.rmtree(rundir, ignore_errors=True)
            rundir.mkdir(parents=True)
            load = os.getloadavg()[0]
            _log(f"bench: repeat {rep + 1}/{a.repeats}: {tool} (load average {load:.2f}) ...")
            if tool == "peer":
                r = run_peer(h5, rundir, stats["n_cells"], stats["nnz"], rep, pos)
            else:
                r = run_aivc(h5, mf, rundir, stats["n_cells"], stats["nnz"], rep, pos, extra)
            r.detail["load_avg_before"] = round(load, 2)
            _log(f"bench:   {tool}: {r.wall_s:.1f}s, peak {r.peak_rss_mib:.0f} MiB, {'ok' if r.ok else 'FAILED'}")
            runs.append(r)
            if not (a.keep and rep == a.repeats - 1):
                for sub in ("peer-soma", "lake"):
                    shutil.rmtree(rundir / sub, ignore_errors=True)

    result: dict[str, Any] = {
        "benchmark": "ingest",
        "dataset": {
            "path": str(h5),
            "manifest": str(mf),
            "n_cells": stats["n_cells"],
            "n_genes": stats["n_genes"],
            "nnz": stats["nnz"],
            "density": stats["density"],
            "mean_umis": stats["mean_umis"],
            "mean_detected_genes": stats["mean_detected_genes"],
            "file_mib": stats["file_bytes"] / 2**20,
        },
        "generator": {"seconds": stats["seconds"], "reused": info["reused"], "this_call_s": round(gen_wall, 2), "spec": spec},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
        "bench_process_peak_mib": _self_hwm_mib(),
        "commands": {
            "peer": f'{sys.executable} -c \'tiledbsoma.io.from_h5ad(URI, "{h5}", measurement_name="RNA")\'',
            "aivc": f"{' '.join(_aivc_exe())} submit {h5} --manifest {mf} --lake LAKE --json {' '.join(extra)}".strip(),
        },
        "runs": [asdict(r) for r in runs],
    }
    result["summary"] = summarize(runs)
    result["pass"] = result["summary"]["pass"]
    if a.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_human(result)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
