"""Where does ``aivc submit`` spend its time and memory? A phase breakdown of one submit.

Usage::

    /work/venv/bin/python benchmarks/profile_submit.py [--cells 20000] [--genes 20000]
        [--workdir DIR] [--cprofile FILE] [--json]

Generates (or reuses) a synthetic submission with ``synth.py``, then runs
:func:`aivc.ingest.submission.submit` in this process with timing wrappers installed around
the functions that make up a submit (nothing in the package is changed: the wrappers are
set on the imported modules at run time). For each phase it reports wall seconds and the
peak RSS reached inside it (the kernel's high-water mark is reset at each phase start via
``/proc/self/clear_refs``). Reading the h5ad (``MatrixHandle.rows``) is reported separately
for the validation pass and the write pass. ``--cprofile FILE`` also writes cProfile stats
and prints the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import synth  # noqa: E402


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Accumulates wall time (and peak RSS for top-level phases) per name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.peak_mib: dict[str, float] = {}
        self.stack: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str, *, peak: bool = False):  # noqa: ANN201
        if peak:
            _reset_hwm()
        self.stack.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1
            self.stack.pop()
            if peak:
                self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), _status_kib("VmHWM") / 1024)

    def wrap(self, owner: Any, attr: str, name: str | None = None, *, peak: bool = False, by_outer: bool = False) -> None:
        fn = getattr(owner, attr)
        label = name or attr

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            lab = label
            if by_outer:
                outer = next((s for s in reversed(self.stack) if s in ("validate_submission", "_commit")), "other")
                lab = f"{label} [{outer}]"
            with self.phase(lab, peak=peak):
                return fn(*a, **k)

        setattr(owner, attr, wrapper)

    def wrap_gen(self, owner: Any, attr: str, name: str) -> None:
        """Time a generator function's iteration (each ``next``), not just its creation."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            it = fn(*a, **k)
            while True:
                with self.phase(name):
                    try:
                        item = next(it)
                    except StopIteration:
                        return
                yield item

        setattr(owner, attr, wrapper)


def install(ph: Phases) -> None:
    import tiledbsoma
    import tiledbsoma.io as sio

    import aivc.ingest.genes as genes
    import aivc.ingest.matrix as matrix
    import aivc.ingest.obs_fields as obs_fields
    import aivc.ingest.qc as qc
    import aivc.ingest.readers as readers
    import aivc.ingest.report as report
    import aivc.ingest.sources as sources
    import aivc.ingest.submission as sub
    import aivc.store.catalog as catalog
    import aivc.store.soma_io as soma_io

    ph.wrap(sub, "validate_submission", peak=True)
    ph.wrap(sub, "_commit", peak=True)
    ph.wrap(sources, "open_submission", "validate: open data (obs/var)")
    ph.wrap(sub, "map_genes", "validate: map genes")
    ph.wrap(obs_fields, "harmonize_obs", "validate: harmonize obs (ontologies)")
    ph.wrap(sub, "_obsm_findings", "validate: obsm checks")
    ph.wrap(readers.MatrixHandle, "rows", "read X rows (h5ad)", by_outer=True)
    ph.wrap(matrix.MatrixChecker, "update", "validate: MatrixChecker.update (checks+QC+hash)")
    ph.wrap(qc, "run_expectations", "validate: QC expectations (GX)")
    ph.wrap(sub, "_content_hash", "validate: content hash (obs/manifest)")
    ph.wrap(sub, "_lake_obs", "commit: build lake obs")
    ph.wrap(sub, "_lake_var", "commit: build lake var")
    ph.wrap(report, "write_report", "report: write JSON+HTML", by_outer=True)
    ph.wrap(soma_io, "append_dataset", "commit: soma_io.append_dataset (total)")
    ph.wrap(sio, "register_anndatas", "commit:   register_anndatas")
    ph.wrap(sio, "from_anndata", "commit:   from_anndata (obs/var skeleton)")
    ph.wrap(tiledbsoma.SparseNDArray, "write", "commit:   SparseNDArray.write (X)")
    ph.wrap(sub, "_write_artifacts", "commit: parquet artifacts")
    ph.wrap(catalog.Catalog, "commit", "commit: catalog record")
    ph.wrap(sub, "recover", "commit: recover")
    _ = genes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Phase breakdown of one aivc submit.")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-rows", type=int, default=None)
    p.add_argument("--workdir", default="/work/bench-scratch/profile")
    p.add_argument("--cprofile", default=None, help="write cProfile stats here and print the top functions")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

    work = Path(a.workdir).absolute()
    h5, mf, info = synth.make_submission(work / "data", synth.SynthSpec(n_cells=a.cells, n_genes=a.genes, seed=a.seed))
    import shutil

    lake_dir = work / "lake"
    shutil.rmtree(lake_dir, ignore_errors=True)

    t_imp = time.perf_counter()
    import aivc.ingest.submission as sub
    from aivc.store.lake import Lake

    import_s = time.perf_counter() - t_imp
    lake = Lake.init(lake_dir)
    ph = Phases()
    install(ph)
    kw: dict[str, Any] = {"report_dir": work / "reports"}
    if a.chunk_rows:
        kw["chunk_rows"] = a.chunk_rows
    prof = None
    if a.cprofile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    _reset_hwm()
    t0 = time.perf_counter()
    res = sub.submit(lake, h5, mf, **kw)
    total = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(a.cprofile)
    out = {
        "cells": a.cells,
        "genes": a.genes,
        "status": res.status,
        "n_cells": res.n_cells,
        "import_s": round(import_s, 2),
        "submit_s": round(total, 2),
        "peak_rss_mib": round(_status_kib("VmHWM") / 1024, 0),
        "phases": {k: {"seconds": round(v, 2), "calls": ph.calls[k], **({"peak_rss_mib": round(ph.peak_mib[k])} if k in ph.peak_mib else {})} for k, v in ph.seconds.items()},
    }
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"submit {res.status}: {res.n_cells} cells, {total:.1f}s (imports before it {import_s:.1f}s)")
        for k, v in out["phases"].items():
            extra = f"  peak {v['peak_rss_mib']} MiB" if "peak_rss_mib" in v else ""
            print(f"  {k:<52} {v['seconds']:8.2f}s  x{v['calls']}{extra}")
    if prof is not None and not a.json:
        import pstats

        pstats.Stats(a.cprofile).sort_stats("cumulative").print_stats(40)
    return 0 if res.status == "committed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
