"""Multimodal ingestion benchmark: ``aivc submit`` of an ``.h5mu`` against ``tiledbsoma.io.from_anndata`` per measurement.

Usage::

    .venv/bin/python benchmarks/bench_multimodal_ingest.py [--cells 20000] [--genes 20000]
        [--proteins 33] [--peaks 20000] [--repeats 2] [--workdir DIR] [--json]

Issue 13 asks for "an h5mu submit within 1.3x of tiledbsoma from_anndata per measurement".
This is the multimodal sibling of ``bench_ingest.py``, whose measuring code it imports
(:func:`bench_ingest.measure`, :class:`bench_ingest.Run`, :func:`bench_ingest.summarize`).

What it does
------------
1. Makes (or reuses) a realistic RNA + ADT + ATAC MuData file of the same cells and its
   ``measurements:`` manifest with ``benchmarks/synth_multimodal.py`` (RNA as ``synth.py``;
   30 real TotalSeq-B antibodies + 3 isotype controls; sparse peak counts over sorted,
   non-overlapping GRCh38 intervals), in a subprocess, in ``--workdir`` (default
   ``/work/bench-scratch/multimodal``).
2. Reads the file once (not timed) so both tools start from a warm page cache.
3. Runs, ``--repeats`` times each and alternating which goes first, each in a fresh
   subprocess (a new interpreter, so imports and start-up count for both):

   peer
       ``mdata = mudata.read_h5mu(h5mu)`` (in memory, ``backed=False``), then for each
       modality ``tiledbsoma.io.from_anndata(f"{root}/{NAME}", mdata.mod[mod],
       measurement_name=NAME)`` with NAME = RNA (``rna``), ADT (``prot``), ATAC (``atac``):
       **one SOMA experiment per measurement, default ingestion parameters**. Why one per
       measurement: tiledbsoma has no ``from_mudata`` (TileDB-SOMA issue #1270 says to split
       the h5mu and store the modalities one by one), and ``from_anndata`` with the default
       ``ingest_mode="write"`` refuses a second measurement into an existing experiment
       (``SOMAError: ... already exists``); the only way into one experiment is
       ``ingest_mode="resume"``, deprecated in tiledbsoma 2.3 with a warning that it can
       resume wrongly. So a tiledbsoma user writes one experiment per modality. The
       denominator is the whole child (imports + reading the h5mu + the three ingests); the
       seconds of each part are in the JSON (``detail``). The generated CSR index arrays are
       int32, as scipy and muon write them: with an int64 ``indptr`` next to int32
       ``indices`` every scipy row slice costs O(nnz), and tiledbsoma's in-memory ingestion
       slices once per row to size its chunks, which made the peer quadratic in the cells
       (minutes per 20,000 cells), a cost of the input, not of tiledbsoma.
   aivc
       ``aivc submit DATA -m M --lake L --json`` into a fresh lake (``aivc init``
       beforehand, in its own untimed subprocess), CLI defaults. It validates and harmonizes
       every measurement (genes, antibodies to panel markers and targets, peaks against
       GRCh38, every count, per-modality QC and expectation suites), then writes all three
       measurements into the organism's one SOMA experiment, artifacts, report and catalog.

   Wall time (fork to exit) and peak RSS of that one child are measured as in
   ``bench_ingest.py`` (``os.wait4``'s ``ru_maxrss`` and a 50 ms ``/proc`` sample of the
   child's process tree; the larger is reported). This process never loads anything big.
4. Checks the results in a separate, untimed subprocess with plain tiledbsoma: aivc must
   answer ``status: committed`` with the right ``n_cells`` and feature count per
   measurement; for both tools every measurement must hold every cell, every feature, every
   non-zero (the rows read back) and the exact total of the counts.
5. Prints a table and the ratios aivc/peer: time (median over repeats) against the target
   <= 1.3x, and peak memory (max over repeats; ``bench_ingest``'s RNA target <= 0.5x is shown
   for reference, but ``pass`` is the time target only, as the issue asks).

``--json`` prints one JSON object instead. Exit status 1 when a run failed or its result was
wrong (not when a target is missed; see ``pass`` in the JSON).
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_ingest import (
    MEM_TARGET,
    TIME_TARGET,
    Run,
    _aivc_exe,
    _du_mib,
    _env,
    _self_hwm_mib,
    _warm,
    measure,
    summarize,
)

#: lake / peer measurement name -> MuData modality
MEASUREMENTS: dict[str, str] = {"RNA": "rna", "ADT": "prot", "ATAC": "atac"}

PEER_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import mudata, tiledbsoma.io
t1 = time.perf_counter()
mdata = mudata.read_h5mu(sys.argv[2])
t2 = time.perf_counter()
out = {"import_s": t1 - t0, "read_s": t2 - t1}
for name, mod in json.loads(sys.argv[3]).items():
    t = time.perf_counter()
    tiledbsoma.io.from_anndata(f"{sys.argv[1]}/{name}", mdata.mod[mod], measurement_name=name)
    out[f"ingest_{name}_s"] = time.perf_counter() - t
print(json.dumps(out))
"""

VERIFY_SNIPPET = r"""
import json, sys
import pyarrow as pa, pyarrow.compute as pc, tiledbsoma
out = {}
for uri, name, layer in json.loads(sys.argv[1]):
    with tiledbsoma.Experiment.open(uri) as exp:
        X = exp.ms[name].X[layer]
        rows, total = 0, 0.0
        for t in X.read().tables():
            rows += len(t)
            total += pc.sum(pc.cast(t["soma_data"], pa.float64())).as_py() or 0.0
        out[name] = {"n_obs": int(exp.obs.count), "n_var": int(exp.ms[name].var.count), "nnz": rows, "sum": total}
print(json.dumps(out))
"""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _soma_contents(items: list[tuple[str, str, str]]) -> dict[str, dict[str, Any]]:
    """Cells, features, non-zeros read back and the counts' total of each ``(experiment, measurement, layer)``, in a subprocess."""
    out = subprocess.run([sys.executable, "-c", VERIFY_SNIPPET, json.dumps(items)], env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check_contents(got: dict[str, dict[str, Any]], stats: dict[str, Any]) -> list[str]:
    """What differs between the SOMA contents and the generated data (empty: everything is there)."""
    problems = []
    for name, mod in MEASUREMENTS.items():
        want, have = stats["mods"][mod], got.get(name)
        if have is None:
            problems.append(f"{name}: missing")
            continue
        expect = {"n_obs": stats["n_cells"], "n_var": want["n_features"], "nnz": want["nnz"], "sum": float(want["total_counts"])}
        problems += [f"{name}: {k} {have[k]} != {v}" for k, v in expect.items() if have[k] != v]
    return problems


def run_peer(h5: Path, rundir: Path, stats: dict[str, Any], repeat: int, position: int) -> Run:
    root = rundir / "peer-soma"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    m = measure([sys.executable, "-c", PEER_SNIPPET, str(root), str(h5), json.dumps(MEASUREMENTS)], cwd=rundir, env=_env(), log_dir=rundir / "peer-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = m.returncode == 0
    if ok:
        try:
            detail.update(json.loads(m.stdout.strip().splitlines()[-1]))
            got = _soma_contents([(str(root / name), name, "data") for name in MEASUREMENTS])
            detail.update({"soma": got, "output_mib": round(_du_mib(root), 1)})
            problems = _check_contents(got, stats)
            ok = not problems
            if problems:
                detail["problems"] = problems
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok, detail["error"] = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        detail["stderr_tail"] = m.stderr_tail
    return Run("peer", repeat, position, m.wall_s, m.peak_mib, m.maxrss_mib, m.tree_peak_mib, ok, detail)


def run_aivc(h5: Path, mf: Path, rundir: Path, stats: dict[str, Any], repeat: int, position: int) -> Run:
    lake = rundir / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    init = subprocess.run([*_aivc_exe(), "init", "--lake", str(lake), "--json"], cwd=rundir, env=_env(), capture_output=True, text=True, check=False)
    if init.returncode != 0:
        nan = float("nan")
        return Run("aivc", repeat, position, nan, nan, nan, nan, False, {"error": "aivc init failed", "stderr_tail": init.stderr[-2000:]})
    cmd = [*_aivc_exe(), "submit", str(h5), "-m", str(mf), "--lake", str(lake), "--json"]
    m = measure(cmd, cwd=rundir, env=_env(), log_dir=rundir / "aivc-logs")
    detail: dict[str, Any] = {"returncode": m.returncode}
    ok = False
    try:
        res = json.loads(m.stdout)
        detail.update({k: res.get(k) for k in ("status", "dataset_id", "version", "n_cells", "measurements")})
        detail["n_warnings"] = len(res.get("warnings") or [])
        if res.get("errors"):
            detail["errors"] = res["errors"][:5]
        features = {name: stats["mods"][mod]["n_features"] for name, mod in MEASUREMENTS.items()}
        ok = m.returncode == 0 and res.get("status") == "committed" and res.get("n_cells") == stats["n_cells"] and res.get("measurements") == features
        if ok:
            uri = str(lake / "soma" / "homo_sapiens")  # Lake.soma_uri("homo_sapiens")
            got = _soma_contents([(uri, name, "counts") for name in MEASUREMENTS])
            detail.update({"soma": got, "output_mib": round(_du_mib(lake), 1)})
            problems = _check_contents(got, stats)
            ok = not problems
            if problems:
                detail["problems"] = problems
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        detail["error"] = f"{type(exc).__name__}: {exc}"
    if not ok:
        detail["stderr_tail"] = m.stderr_tail
    return Run("aivc", repeat, position, m.wall_s, m.peak_mib, m.maxrss_mib, m.tree_peak_mib, ok, detail)


# -- report ----------------------------------------------------------------------------------------
def _summary(runs: list[Run]) -> dict[str, Any]:
    """``bench_ingest.summarize`` plus the peer's per-part seconds; ``pass`` is the time target only."""
    out = summarize(runs)
    parts: dict[str, list[float]] = {}
    for r in runs:
        if r.tool == "peer" and r.ok:
            for k, v in r.detail.items():
                if k.endswith("_s") and isinstance(v, float):
                    parts.setdefault(k, []).append(v)
    out["peer"]["parts_s_median"] = {k: statistics.median(v) for k, v in parts.items()}
    if out["targets"]:
        out["targets"]["peak_memory"]["note"] = "bench_ingest's RNA target, for reference; not part of pass"
        out["pass"] = out["targets"]["time"]["pass"]
    return out


def print_human(result: dict[str, Any]) -> None:
    d, g = result["dataset"], result["generator"]
    print()
    print(f"dataset: {d['n_cells']:,} cells, {d['file_mib']:.0f} MiB h5mu, {d['nnz']:,} non-zeros in all")
    for name, m in d["measurements"].items():
        print(f"  {name:<5} {m['n_features']:>7,} features {m['nnz']:>13,} non-zeros ({100 * m['density']:5.1f} %), "
              f"mean {m['mean_counts']:>6.0f} counts and {m['mean_detected']:>6.0f} detected features per cell")
    print(f"generator: {g['seconds']:.1f}s{' (reused file; time of its generation)' if g['reused'] else ''}")
    la = result["machine"]["load_avg"]
    print(f"machine: {result['machine']['cpus']} CPUs; python {result['machine']['python']}; load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1/5/15 min)")
    print()
    hdr = f"{'tool':<6} {'rep':>3} {'order':>5} {'wall s':>9} {'peak RSS MiB':>13} {'output MiB':>11} {'load':>5}  ok   parts (s)"
    print(hdr)
    print("-" * len(hdr))
    for r in result["runs"]:
        out_mib = r["detail"].get("output_mib")
        parts = " ".join(f"{k.removesuffix('_s').removeprefix('ingest_')} {v:.1f}" for k, v in r["detail"].items() if k.endswith("_s") and isinstance(v, float))
        print(f"{r['tool']:<6} {r['repeat']:>3} {r['position'] + 1:>5} {r['wall_s']:>9.1f} {r['peak_rss_mib']:>13.0f} "
              f"{(f'{out_mib:.0f}' if out_mib is not None else '-'):>11} {r['detail'].get('load_avg_before', float('nan')):>5.1f}  {'yes' if r['ok'] else 'NO ':<4} {parts}")
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
        t = s["targets"]["time"]
        print(f"aivc/peer time         {t['ratio']:5.2f}x   target <= {t['target']}x   {'PASS' if t['pass'] else 'FAIL'}")
        t = s["targets"]["peak_memory"]
        print(f"aivc/peer peak memory  {t['ratio']:5.2f}x   (reference: bench_ingest's RNA target <= {t['target']}x, {'met' if t['pass'] else 'not met'})")
    for r in result["runs"]:
        if not r["ok"]:
            print(f"\n{r['tool']} repeat {r['repeat']} failed: {json.dumps(r['detail'])[:3000]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="aivc submit of an .h5mu vs tiledbsoma.io.from_anndata per measurement: wall time and peak memory.")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--proteins", type=int, default=33, help="antibodies, including the 3 isotype controls")
    p.add_argument("--peaks", type=int, default=20_000)
    p.add_argument("--repeats", type=int, default=2, help="runs of each tool (alternating order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/work/bench-scratch/multimodal", help="where data, lakes and SOMA folders go")
    p.add_argument("--only", choices=["peer", "aivc"], default=None, help="run one tool only (no ratios)")
    p.add_argument("--keep", action="store_true", help="keep the lakes and SOMA folders of the last repeat")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()  # generate (or reuse) the input in a subprocess, so this process stays small
    gen = subprocess.run(
        [sys.executable, str(HERE / "synth_multimodal.py"), "--cells", str(a.cells), "--genes", str(a.genes), "--proteins", str(a.proteins),
         "--peaks", str(a.peaks), "--seed", str(a.seed), "--out", str(work / "data")],
        env=_env(), stdout=subprocess.PIPE, text=True, check=True,
    )
    gen_wall = time.perf_counter() - t0
    info = json.loads(gen.stdout)
    h5, mf, stats = Path(info["h5mu"]), Path(info["manifest"]), info["stats"]
    warm_s = _warm(h5)
    _log(f"bench: read {h5.name} once to warm the page cache ({warm_s:.1f}s)")

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
            r = run_peer(h5, rundir, stats, rep, pos) if tool == "peer" else run_aivc(h5, mf, rundir, stats, rep, pos)
            r.detail["load_avg_before"] = round(load, 2)
            _log(f"bench:   {tool}: {r.wall_s:.1f}s, peak {r.peak_rss_mib:.0f} MiB, {'ok' if r.ok else 'FAILED'}")
            runs.append(r)
            if not (a.keep and rep == a.repeats - 1):
                for sub in ("peer-soma", "lake"):
                    shutil.rmtree(rundir / sub, ignore_errors=True)

    result: dict[str, Any] = {
        "benchmark": "multimodal_ingest",
        "dataset": {
            "path": str(h5),
            "manifest": str(mf),
            "n_cells": stats["n_cells"],
            "nnz": stats["nnz"],
            "file_mib": stats["file_bytes"] / 2**20,
            "measurements": {name: stats["mods"][mod] for name, mod in MEASUREMENTS.items()},
        },
        "generator": {"seconds": stats["seconds"], "reused": info["reused"], "this_call_s": round(gen_wall, 2), "spec": info["spec"]},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
        "bench_process_peak_mib": _self_hwm_mib(),
        "commands": {
            "peer": f"{sys.executable} -c 'mdata = mudata.read_h5mu(\"{h5}\"); "
                    + "; ".join(f'tiledbsoma.io.from_anndata(ROOT + "/{n}", mdata.mod["{m}"], measurement_name="{n}")' for n, m in MEASUREMENTS.items()) + "'",
            "aivc": f"{' '.join(_aivc_exe())} submit {h5} -m {mf} --lake LAKE --json",
        },
        "targets": {"time": TIME_TARGET, "peak_memory_reference": MEM_TARGET},
        "runs": [asdict(r) for r in runs],
    }
    result["summary"] = _summary(runs)
    result["pass"] = result["summary"]["pass"]
    if a.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_human(result)
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
