"""Fragments benchmark: ``check_fragments`` (and the ATAC QC pass) against the tools a user would reach for.

Usage::

    .venv/bin/python benchmarks/bench_fragments.py [--sizes 2000000,8000000] [--workdir DIR]
        [--repeats 1] [--snapatac2-python PATH] [--json]

What it does
------------
1. Simulates (or reuses) one sorted, BGZF-compressed, tabix-indexed 10x-style fragments file
   per size in ``--workdir`` (default ``/work/bench-scratch/fragments``), see :func:`simulate`.
2. Runs each of these in a fresh subprocess (a new interpreter, as a user runs it) and records
   wall time, CPU time (user + system) and peak RSS (``ru_maxrss`` from ``os.wait4``):

   baseline
       the imports and the simulation's cells, peaks and genes, nothing else (RSS floor).
   aivc check
       ``aivc.ingest.fragments.check_fragments(path, genome("homo_sapiens"), cells)``: every
       fragments-file rule, per-cell counts, non-cell barcodes.
   aivc qc
       ``aivc.ingest.atac_qc.compute_atac_qc`` with the simulated peaks and genes: the checks
       plus FRiP, TSS enrichment and gene activity, in the same single pass.
   pysam (peer)
       ``pysam.TabixFile(path).fetch(parser=pysam.asTuple())`` over the whole file, counting
       fragments per cell barcode in a dict: the plain streaming loop a user writes with the
       standard htslib binding; it checks nothing.
   pandas (peer)
       ``pandas.read_csv(path, sep="\\t", header=None)`` of the whole file plus
       ``value_counts()`` of the barcode: what cellxgene-schema's fragment check (dask/pandas
       ``read_csv``) and most notebooks do first; memory grows with the file.
   snapatac2 (peer, optional)
       ``snapatac2.pp.import_fragments(path, chrom_sizes, whitelist=cells, sorted_by_barcode=False,
       min_num_fragments=0)``: the single-cell ATAC package's own fragment import (per-cell
       fragment counts and QC into an in-memory AnnData), run with ``--snapatac2-python`` (an
       interpreter that has it; skipped when none does).

3. Prints fragments/s (by wall and by CPU time) and peak RSS per tool and size, the ratios
   aivc/peer of throughput, and the RSS growth from the smallest to the largest size
   (flat memory: ``check_fragments`` reads ``chunk_bytes`` at a time). Target: aivc check
   >= 1,000,000 fragments/s (wall) at every size. A missed target prints ``FAIL`` and does
   not change the exit status; a run that fails exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 1_000_000  # fragments per second, wall, for aivc check
N_CELLS = 10_000
N_BACKGROUND = 200_000
CONTIGS = {  # GRCh38 lengths; fragments are spread in proportion
    "chr1": 248_956_422, "chr2": 242_193_529, "chr3": 198_295_559, "chr4": 190_214_555, "chr5": 181_538_259,
    "chr6": 170_805_979, "chr7": 159_345_973, "chr8": 145_138_636, "chr9": 138_394_717, "chr10": 133_797_422,
    "chr11": 135_086_622, "chr12": 133_275_309, "chr13": 114_364_328, "chr14": 107_043_718, "chr15": 101_991_189,
    "chr16": 90_338_345, "chr17": 83_257_441, "chr18": 80_373_285, "chr19": 58_617_616, "chr20": 64_444_167,
    "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895,
}


def simulate(path: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Write a sorted 10x-style fragments file of ``n`` fragments (BGZF + .tbi), plus cells, peaks and genes.

    The model: 10,000 cells with log-normal depth (sigma 0.6) take 85 % of the fragments, and
    200,000 background barcodes (Cell Ranger keeps every barcode) take the rest, Zipf-like
    (most with one or two fragments). Barcodes are 16 random bases and ``-1``. 60 % of the
    fragments start inside one of 60,000 open-chromatin peaks (500 bp, placed uniformly),
    the rest uniformly on the contig; contigs get fragments in proportion to their length.
    Lengths follow the nucleosomal ladder: 55 % sub-nucleosomal (40 + exponential, mean 60),
    30 % mono- (normal 200, sd 25) and 15 % di-nucleosomal (normal 390, sd 35). The read
    count is geometric(0.7): 1, 2, ... read pairs (PCR duplicates). The file is written per 5 Mb window, sorted
    by start, as Arrow CSV text into pysam's BGZF writer, so memory stays bounded. 20,000
    genes (10-100 kb) are placed uniformly, for the QC pass.
    """
    import numpy as np
    import pyarrow as pa
    import pysam
    from pyarrow import csv

    rng = np.random.default_rng(seed)
    bases = np.array(list("ACGT"))
    cells = np.unique(["".join(x) + "-1" for x in bases[rng.integers(0, 4, (N_CELLS + N_BACKGROUND, 16))]])
    rng.shuffle(cells)
    cell_bc, background = cells[:N_CELLS], cells[N_CELLS:]
    depth = rng.lognormal(0, 0.6, N_CELLS)
    p_cell = depth / depth.sum()
    zipf = 1.0 / np.arange(1, len(background) + 1) ** 1.1
    p_bg = zipf / zipf.sum()
    total = sum(CONTIGS.values())
    peaks, genes = [], []
    window = 5_000_000
    options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    written = 0
    with pysam.BGZFile(str(path), "wb") as out:
        for contig, length in CONTIGS.items():
            n_contig = round(n * length / total)
            p_start = np.sort(rng.integers(0, length - 600, round(60_000 * length / total)))
            peaks += [(contig, int(s), int(s) + 500) for s in p_start]
            g_start = np.sort(rng.integers(0, length - 100_000, round(20_000 * length / total)))
            genes += [(contig, int(s), int(s) + int(rng.integers(10_000, 100_000))) for s in g_start]
            for w in range(0, length, window):
                k = rng.binomial(n_contig, min(window, length - w) / length) if n_contig else 0
                if k == 0:
                    continue
                in_peak = rng.random(k) < 0.6
                local = p_start[(p_start >= w) & (p_start < w + window)]
                start = rng.integers(w, min(w + window, length - 1000), k)
                if local.size:
                    start[in_peak] = rng.choice(local, int(in_peak.sum())) + rng.integers(0, 500, int(in_peak.sum()))
                kind = rng.random(k)
                flen = np.where(kind < 0.55, 40 + rng.exponential(60, k), np.where(kind < 0.85, rng.normal(200, 25, k), rng.normal(390, 35, k)))
                start = np.sort(np.minimum(start, min(w + window, length) - 1))  # peaks near the window's end stay in it
                end = np.minimum(start + np.maximum(flen, 20).astype(np.int64), length)
                is_cell = rng.random(k) < 0.85
                barcode = np.where(is_cell, cell_bc[rng.choice(N_CELLS, k, p=p_cell)], background[rng.choice(len(background), k, p=p_bg)])
                count = rng.geometric(0.7, k)  # 1, 2, ... read pairs
                table = pa.table({"c": pa.array([contig] * k), "s": start, "e": end, "b": barcode, "n": count})
                sink = pa.BufferOutputStream()
                csv.write_csv(table, sink, options)
                out.write(sink.getvalue().to_pybytes())
                written += k
    pysam.tabix_index(str(path), preset="bed", force=True)
    side = {"n": written, "cells": cell_bc.tolist(), "peaks": [f"{c}:{s}-{e}" for c, s, e in peaks], "genes": [f"{c}:{s}-{e}" for c, s, e in genes], "size": path.stat().st_size}
    Path(f"{path}.json").write_text(json.dumps(side))
    return side


AIVC_CHECK = """
import json, sys, time
import pyarrow.csv, pyarrow.compute, pysam
from aivc.ingest.fragments import check_fragments
from aivc.ingest.intervals import genome
side = json.load(open(sys.argv[1] + ".json"))
t = time.perf_counter()
r = check_fragments(sys.argv[1], genome("homo_sapiens"), side["cells"])
print(json.dumps({"n": r.n_fragments, "cells": r.n_fragments_cells, "ok": r.ok, "codes": [f.code for f in r.findings], "call_s": time.perf_counter() - t}))
"""
BASELINE = """
import json, sys, time
t = time.perf_counter()
import pyarrow.csv, pyarrow.compute, pysam, scipy.sparse
import aivc.ingest.atac_qc
side = json.load(open(sys.argv[1] + ".json"))
print(json.dumps({"n": None, "cells": None, "call_s": time.perf_counter() - t}))
"""
AIVC_QC = """
import json, sys, time
import pyarrow.csv, pyarrow.compute, pysam, scipy.sparse
from aivc.ingest.atac_qc import compute_atac_qc
from aivc.ingest.intervals import parse_intervals
side = json.load(open(sys.argv[1] + ".json"))
t = time.perf_counter()
r, qc = compute_atac_qc(sys.argv[1], "homo_sapiens", side["cells"], peaks=parse_intervals(side["peaks"]), genes=parse_intervals(side["genes"]))
print(json.dumps({"n": r.n_fragments, "cells": r.n_fragments_cells, "ok": r.ok, "median_frip": float(qc.qc["frip"].median()), "nnz": int(qc.gene_activity.nnz), "call_s": time.perf_counter() - t}))
"""
PYSAM = """
import json, sys, time, pysam
cells = set(json.load(open(sys.argv[1] + ".json"))["cells"])
t = time.perf_counter()
counts, n = {}, 0
with pysam.TabixFile(sys.argv[1]) as tabix:
    for row in tabix.fetch(parser=pysam.asTuple()):
        n += 1
        b = row[3]
        if b in cells:
            counts[b] = counts.get(b, 0) + 1
print(json.dumps({"n": n, "cells": sum(counts.values()), "call_s": time.perf_counter() - t}))
"""
PANDAS = """
import json, sys, time
import pandas as pd
cells = json.load(open(sys.argv[1] + ".json"))["cells"]
t = time.perf_counter()
df = pd.read_csv(sys.argv[1], sep="\\t", header=None, names=["chrom", "start", "end", "barcode", "count"])
vc = df["barcode"].value_counts()
print(json.dumps({"n": len(df), "cells": int(vc.reindex(cells, fill_value=0).sum()), "call_s": time.perf_counter() - t}))
"""
SNAPATAC2 = """
import json, sys, time
import snapatac2 as snap
side = json.load(open(sys.argv[1] + ".json"))
t = time.perf_counter()
sizes = {"chr1": 248956422, "chr2": 242193529, "chr3": 198295559, "chr4": 190214555, "chr5": 181538259, "chr6": 170805979, "chr7": 159345973, "chr8": 145138636, "chr9": 138394717, "chr10": 133797422, "chr11": 135086622, "chr12": 133275309, "chr13": 114364328, "chr14": 107043718, "chr15": 101991189, "chr16": 90338345, "chr17": 83257441, "chr18": 80373285, "chr19": 58617616, "chr20": 64444167, "chr21": 46709983, "chr22": 50818468, "chrX": 156040895}
a = snap.pp.import_fragments(sys.argv[1], chrom_sizes=sizes, whitelist=side["cells"], sorted_by_barcode=False, min_num_fragments=0, n_jobs=2)
print(json.dumps({"n": None, "cells": int(a.obs["n_fragment"].sum()), "call_s": time.perf_counter() - t}))
"""


def _run(python: str, code: str, path: Path) -> dict[str, Any]:
    """One fresh process: wall, CPU (user + system) and peak RSS of the child, and what it printed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-c", code, str(path)], stdout=out, stderr=err, env={**os.environ, "GX_ANALYTICS_ENABLED": "False"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        text, errors = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": errors.strip().splitlines()[-1] if errors.strip() else f"exit {status}"}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mib": usage.ru_maxrss / 1024, "result": json.loads(text.strip().splitlines()[-1]) if text.strip() else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000000,8000000", help="comma-separated numbers of fragments")
    parser.add_argument("--workdir", type=Path, default=Path("/work/bench-scratch/fragments"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--snapatac2-python", default=None, help="an interpreter with snapatac2 installed (default: skip it)")
    parser.add_argument("--skip", default="", help="comma-separated tools to skip (pandas, pysam, qc)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    tools = [("baseline", sys.executable, BASELINE), ("aivc check", sys.executable, AIVC_CHECK), ("aivc qc", sys.executable, AIVC_QC), ("pysam", sys.executable, PYSAM), ("pandas", sys.executable, PANDAS)]
    if args.snapatac2_python:
        tools.append(("snapatac2", args.snapatac2_python, SNAPATAC2))
    tools = [t for t in tools if t[0].split()[-1] not in skip and t[0] not in skip]
    rows: list[dict[str, Any]] = []
    failed = False
    for n in sizes:
        path = args.workdir / f"fragments_{n}.tsv.gz"
        if not Path(f"{path}.json").is_file():
            t = time.perf_counter()
            simulate(path, n)
            if not args.json:
                print(f"simulated {n:,} fragments in {time.perf_counter() - t:.0f} s: {path} ({path.stat().st_size / 2**20:.0f} MiB)", flush=True)
        m = json.loads(Path(f"{path}.json").read_text())["n"]  # the fragments actually written
        _run(sys.executable, "import sys; open(sys.argv[1], 'rb').read()", path)  # warm the page cache
        for name, python, code in tools:
            best: dict[str, Any] | None = None
            for _ in range(args.repeats):
                r = _run(python, code, path)
                if "error" in r:
                    best = r
                    break
                best = r if best is None or r["wall_s"] < best["wall_s"] else best
            assert best is not None
            row = {"tool": name, "n": n, **best}
            if "error" not in best and name != "baseline":
                row["per_s_wall"], row["per_s_cpu"] = m / best["wall_s"], m / best["cpu_s"]
                row["per_s_call"] = m / best["result"]["call_s"]
            elif "error" in best and name != "snapatac2":  # snapatac2 is optional
                failed = True
            rows.append(row)
            if not args.json:
                _print_row(row)
    summary = _summary(rows, sizes)
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=1))
    else:
        for line in summary["lines"]:
            print(line)
    return 1 if failed else 0


def _print_row(r: dict[str, Any]) -> None:
    if r["tool"] == "baseline":
        print(f"{'baseline':>11} {r['n']:>10,}  imports and the simulation's cells, peaks and genes: peak RSS {r['rss_mib']:7.0f} MiB", flush=True)
        return
    if "error" in r:
        print(f"{r['tool']:>11} {r['n']:>10,}  failed: {r['error']}", flush=True)
        return
    print(f"{r['tool']:>11} {r['n']:>10,}  {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s cpu  {r['per_s_wall'] / 1e6:5.2f} M/s wall {r['per_s_cpu'] / 1e6:5.2f} M/s cpu {r['per_s_call'] / 1e6:5.2f} M/s in call  peak RSS {r['rss_mib']:7.0f} MiB  {json.dumps(r['result'])[:90]}", flush=True)


def _summary(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    ok = {(r["tool"], r["n"]): r for r in rows if "error" not in r}
    lines, out = ["", "ratios (aivc check / peer, fragments per second, wall):"], {"pass": True}
    for n in sizes:
        a = ok.get(("aivc check", n))
        if a is None:
            continue
        verdict = "PASS" if a["per_s_wall"] >= TARGET else "FAIL"
        out["pass"] &= verdict == "PASS"
        peers = ", ".join(f"{t} {a['per_s_wall'] / ok[(t, n)]['per_s_wall']:.2f}x" for t in ("pysam", "pandas", "snapatac2") if (t, n) in ok)
        calls = ", ".join(f"{t} {a['per_s_call'] / ok[(t, n)]['per_s_call']:.2f}x" for t in ("pysam", "pandas", "snapatac2") if (t, n) in ok)
        lines.append(f"  {n:>10,}: aivc check {a['per_s_wall'] / 1e6:.2f} M/s (target >= {TARGET / 1e6:.1f} M/s: {verdict}); {peers}")
        lines.append(f"  {'':>10}  the calls alone (after imports and reading the inputs): aivc check {a['per_s_call'] / 1e6:.2f} M/s; {calls}")
        if ("aivc qc", n) in ok:
            lines.append(f"  {'':>10}  aivc qc (checks + FRiP + TSS + gene activity) {ok[('aivc qc', n)]['per_s_wall'] / 1e6:.2f} M/s")
    lo, hi = min(sizes), max(sizes)
    if lo != hi:
        lines.append(f"peak RSS growth from {lo:,} to {hi:,} fragments ({hi / lo:.0f}x the file):")
        for t in ("aivc check", "aivc qc", "pysam", "pandas", "snapatac2"):
            if (t, lo) in ok and (t, hi) in ok:
                a, b = ok[(t, lo)]["rss_mib"], ok[(t, hi)]["rss_mib"]
                extra = ""
                if t.startswith("aivc") and ("baseline", lo) in ok and ("baseline", hi) in ok:
                    a0, b0 = ok[("baseline", lo)]["rss_mib"], ok[("baseline", hi)]["rss_mib"]
                    extra = f"; above the baseline process (imports, inputs): {a - a0:.0f} -> {b - b0:.0f} MiB"
                lines.append(f"  {t:>11}: {a:6.0f} -> {b:6.0f} MiB ({b / a:.2f}x){extra}")
                out[f"rss_ratio {t}"] = b / a
    out["lines"] = lines
    return out


if __name__ == "__main__":
    raise SystemExit(main())
