"""Validation benchmark: ``aivc validate`` of a small real submission against just reading it.

Usage::

    /work/main/.venv/bin/python benchmarks/bench_validate.py [--repeats 5] [--workdir DIR] [--json]

What it does
------------
1. Writes (or reuses) the demo's real PBMC part 1 (``aivc.demo.build_pbmc_submissions``:
   350 cells x 765 genes of scanpy's ``pbmc68k_reduced``, raw counts, with its manifest) into
   ``--workdir`` (default ``/work/bench-scratch/validate``), in a subprocess, and reads it
   once to warm the page cache.
2. Runs, ``--repeats`` times each and rotating the order, each in a fresh subprocess (a new
   interpreter, as a user runs it):

   aivc
       ``aivc validate DATA -m MANIFEST --report-dir DIR --json``: reading, gene mapping,
       ontology harmonization, the streaming count checks, the Great Expectations suites,
       ``report.json`` and the self-contained ``report.html``.
   peer (the floor)
       ``python -c "import anndata; a = anndata.read_h5ad(DATA); a.X.sum()"``: reading the
       same file and touching every count, nothing else.
   python (information)
       ``python -c pass``: the interpreter's own start-up.
   gx import (information)
       ``python -c "import great_expectations"``: the import of the QC engine alone, which
       aivc cannot avoid while Great Expectations runs its expectation suites.

   For each child it records wall time (fork to exit) and CPU time (user + system, from
   ``os.wait4``), which is steadier than wall time on a shared machine.
3. A breakdown: ``--repeats`` more fresh processes each run the ``validate`` command
   in-process (``aivc.cli.app``) with timing wrappers set around its parts at run time
   (nothing in the package is changed): imports, opening the file, reading the count chunks,
   the count checks, gene mapping, ontology harmonization, the GX suites (of which the
   ``import great_expectations``), the report, and what is left of the wall time: the
   interpreter's start and exit; medians are printed.
4. Prints medians and the ratio aivc/peer of wall and CPU time, against the target: wall
   ratio <= 2.0x, i.e. validating costs at most one more read of the file.

``--json`` prints one JSON object instead. Exit status 1 when a run failed (a missed target
is printed as ``FAIL`` and does not change the exit status).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TIME_TARGET = 2.0

BUILD_SNIPPET = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from aivc.demo import build_pbmc_submissions
(h5, mf), _ = build_pbmc_submissions(sys.argv[1])
print(json.dumps({"h5ad": str(h5), "manifest": str(mf)}))
"""

PEER_SNIPPET = r"""
import sys
import anndata
a = anndata.read_h5ad(sys.argv[1])
total = float(a.X.sum())
assert a.n_obs > 0 and total > 0
"""

BREAKDOWN_SNIPPET = r"""
import json, sys, time
from collections import defaultdict
t_start = time.perf_counter()
seconds = defaultdict(float)
for key in ("imports (aivc, pandas, typer)", "open file (anndata import, obs, var)", "read count chunks", "count checks",
            "gene mapping", "ontology harmonization", "GX suites (import + run)", "  of which import great_expectations"):
    seconds[key] = 0.0

def timed(owner, name, key):
    fn = getattr(owner, name, None)
    if fn is None:  # an older aivc without this part
        seconds.pop(key, None)
        return
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[key] += time.perf_counter() - t
    setattr(owner, name, wrapper)

from aivc.cli import app
import aivc.ingest.submission as submission, aivc.ingest.readers as readers, aivc.ingest.matrix as matrix
import aivc.ingest.obs_fields as obs_fields, aivc.ingest.qc as qc, aivc.ingest.report as report
seconds["imports (aivc, pandas, typer)"] = time.perf_counter() - t_start
timed(submission, "open_anndata", "open file (anndata import, obs, var)")
timed(readers.MatrixHandle, "rows", "read count chunks")
timed(matrix.MatrixChecker, "update", "count checks")
timed(submission, "map_genes", "gene mapping")
timed(obs_fields, "harmonize_obs", "ontology harmonization")
timed(qc, "run_expectations", "GX suites (import + run)")
timed(qc, "_import_gx", "  of which import great_expectations")
timed(report, "write_report", "report (json + html)")
sys.argv = ["aivc", "validate", sys.argv[1], "-m", sys.argv[2], "--report-dir", sys.argv[3], "--json"]
out = sys.stdout
sys.stdout = open("/dev/null", "w")
code = None
try:
    app()
except SystemExit as exc:
    code = exc.code
sys.stdout = out
seconds["total in process"] = time.perf_counter() - t_start
print(json.dumps({"exit": code, "seconds": seconds}))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _aivc_exe() -> list[str]:
    exe = Path(sys.executable).with_name("aivc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aivc.cli"]


def measure(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Run ``cmd`` in a fresh subprocess: wall time, CPU time (user + sys) and its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return {"returncode": proc.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "stdout": stdout, "stderr_tail": stderr[-2000:]}


def _commands(h5: Path, mf: Path, work: Path) -> dict[str, list[str]]:
    return {
        "aivc": [*_aivc_exe(), "validate", str(h5), "-m", str(mf), "--report-dir", str(work / "report"), "--json"],
        "peer": [sys.executable, "-c", PEER_SNIPPET, str(h5)],
        "python": [sys.executable, "-c", "pass"],
        "gx import": [sys.executable, "-c", "import great_expectations"],
    }


def _ok(tool: str, m: dict[str, Any]) -> bool:
    if tool != "aivc":
        return m["returncode"] == 0
    try:
        res = json.loads(m["stdout"])
    except json.JSONDecodeError:
        return False
    return m["returncode"] == 0 and res.get("status") == "valid" and res.get("n_cells") == 350


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run(work: Path, repeats: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    h5, mf = data / "pbmc68k-part1.h5ad", data / "pbmc68k-part1.yaml"
    if not (h5.exists() and mf.exists()):
        _log(f"bench: writing the demo's PBMC submissions into {data} ...")
        subprocess.run([sys.executable, "-c", BUILD_SNIPPET, str(data)], env=_env(), check=True, stdout=subprocess.PIPE)
    h5.read_bytes()  # warm the page cache
    cmds = _commands(h5, mf, work)
    tools = list(cmds)
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        order = tools[rep % len(tools):] + tools[: rep % len(tools)]
        for tool in order:
            load = os.getloadavg()[0]
            m = measure(cmds[tool], work)
            ok = _ok(tool, m)
            _log(f"bench: repeat {rep + 1}/{repeats} {tool:<9} wall {m['wall_s']:5.2f}s cpu {m['cpu_s']:5.2f}s load {load:4.1f} {'ok' if ok else 'FAILED'}")
            runs.append({"tool": tool, "repeat": rep, "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "load_avg_before": load, "ok": ok,
                         **({} if ok else {"stderr_tail": m["stderr_tail"], "stdout": m["stdout"][-2000:]})})
    breakdowns: list[dict[str, float]] = []
    for rep in range(repeats):
        m = measure([sys.executable, "-c", BREAKDOWN_SNIPPET, str(h5), str(mf), str(work / "report-breakdown")], work)
        try:
            res = json.loads(m["stdout"].strip().splitlines()[-1])
            if res["exit"] != 0:
                raise KeyError("exit")
            inside = res["seconds"]
            outside = m["wall_s"] - inside["total in process"]
            breakdowns.append({"wall of the process": m["wall_s"], **inside, "interpreter start + exit": outside})
        except (json.JSONDecodeError, IndexError, KeyError):
            _log(f"bench: breakdown run {rep + 1} failed: {m['stderr_tail'][-500:]}")
    shutil.rmtree(work / "report-breakdown", ignore_errors=True)
    summary: dict[str, Any] = {}
    for tool in tools:
        ok_runs = [r for r in runs if r["tool"] == tool and r["ok"]]
        summary[tool] = {
            "n_ok": len(ok_runs),
            "wall_s_median": _median([r["wall_s"] for r in ok_runs]),
            "wall_s_min": min((r["wall_s"] for r in ok_runs), default=None),
            "wall_s_max": max((r["wall_s"] for r in ok_runs), default=None),
            "cpu_s_median": _median([r["cpu_s"] for r in ok_runs]),
        }
    a, p = summary["aivc"], summary["peer"]
    ratios = None
    if a["wall_s_median"] and p["wall_s_median"]:
        ratios = {"wall": a["wall_s_median"] / p["wall_s_median"], "cpu": a["cpu_s_median"] / p["cpu_s_median"]}
    keys = list(dict.fromkeys(k for b in breakdowns for k in b))
    breakdown = {k: _median([b[k] for b in breakdowns if k in b]) for k in keys}
    return {
        "benchmark": "validate",
        "dataset": {"h5ad": str(h5), "manifest": str(mf), "file_kib": round(h5.stat().st_size / 1024)},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg_end": os.getloadavg()},
        "repeats": repeats,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "target": {"wall_ratio": TIME_TARGET, "pass": bool(ratios and ratios["wall"] <= TIME_TARGET)},
        "breakdown_s_median": breakdown,
        "n_breakdowns": len(breakdowns),
    }


def print_human(res: dict[str, Any]) -> None:
    la = res["machine"]["load_avg_end"]
    print(f"\ndata: {res['dataset']['h5ad']} ({res['dataset']['file_kib']} KiB); {res['machine']['cpus']} CPUs, "
          f"load average at the end {la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f}; {res['repeats']} repeats\n")
    print(f"{'fresh process':<44} {'wall median':>11} {'(min-max)':>13} {'cpu median':>10}")
    names = {
        "aivc": "aivc validate (CLI, report written)",
        "peer": "peer: anndata.read_h5ad + X.sum()",
        "python": "information: python -c pass",
        "gx import": "information: import great_expectations",
    }
    for tool, label in names.items():
        s = res["summary"][tool]
        if not s["n_ok"]:
            print(f"{label:<44} no successful run")
            continue
        rng = f"({s['wall_s_min']:.2f}-{s['wall_s_max']:.2f})"
        print(f"{label:<44} {s['wall_s_median']:>10.2f}s {rng:>13} {s['cpu_s_median']:>9.2f}s")
    r = res["ratios"]
    if r:
        verdict = "PASS" if res["target"]["pass"] else "FAIL"
        print(f"\naivc/peer wall {r['wall']:.2f}x (target <= {TIME_TARGET}x) {verdict}; cpu {r['cpu']:.2f}x")
    if res["breakdown_s_median"]:
        print(f"\nbreakdown of the validate command in a fresh process (medians of {res['n_breakdowns']}):")
        for k, v in res["breakdown_s_median"].items():
            print(f"  {k:<44} {v:6.2f}s")
    for run_ in res["runs"]:
        if not run_["ok"]:
            print(f"\n{run_['tool']} repeat {run_['repeat']} failed: {run_.get('stderr_tail', '')[-1500:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="aivc validate of the demo's PBMC part 1 vs reading the same file.")
    ap.add_argument("--repeats", type=int, default=5, help="fresh-process runs of each command (order rotates)")
    ap.add_argument("--workdir", default="/work/bench-scratch/validate", help="where the input and reports go")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    res = run(Path(a.workdir).absolute(), a.repeats)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_human(res)
    return 0 if all(r["ok"] for r in res["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
