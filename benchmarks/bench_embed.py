"""Embedding throughput: ``embed_model`` (Ray Data) against a plain PyTorch loop over the same cells.

Usage::

    /work/venv/bin/python benchmarks/bench_embed.py [--cells 100000] [--genes 2000]
        [--repeats 2] [--engine auto|ray|local] [--workdir DIR] [--json]

What it does
------------
1. Makes (or reuses) a synthetic raw-count submission with ``benchmarks/synth.py``
   (default 100,000 cells x 2,000 genes, ~1,500 UMIs and ~400 detected genes per cell: a
   2,000-gene panel) and submits it into a lake in ``--workdir`` (default
   ``/work/bench-scratch/embed``). The lake is reused by later runs with the same parameters
   (``--fresh`` rebuilds it).
2. Registers a ``cell-vae`` (latent 16, hidden 128, one layer; the default architecture)
   over all the lake's genes with :func:`aivc.training.registry.register_model`. Its weights
   are the seeded random initialisation, not trained: the cost of a forward pass does not
   depend on the weight values, and equality of the vectors is checked just the same.
3. Starts Ray once (not timed; its start-up time is printed) and reads the whole count
   matrix once (not timed) so both contenders start from a warm page cache. Then runs,
   ``--repeats`` times each, alternating which goes first, in this process:

   aivc
       ``embed_model(lake, MODEL, batch_size=1024, engine=--engine)``: what ``aivc embed
       MODEL`` runs. ``auto`` (the default, as the CLI) picks the engine by size
       (:func:`aivc.embeddings.model_job.choose_engine`: in-process below 1M cells, so
       ``local`` at 100k); ``ray`` forces the Ray Data job (actor pool of one actor per
       CPU, each loading the model once, reading 8,192-cell chunks from SOMA, building
       the masked inputs and calling ``module.embed``). Either way the results are
       streamed into the feature store and published as ``cell:<name>@N`` (Parquet files,
       duplicate check, atomic commit). Wall time of the call; the engine that ran is
       printed.
   peer
       what a user would write by hand: :func:`aivc.store.soma_io.read_rows` of the same
       cells and the model's genes in the same 8,192-row chunks, ``module.embed`` on batches
       of 1,024 rows (same model, loaded once with ``load_model``; torch with all CPUs as
       threads), vectors collected in memory. The reading is counted, since both must read
       the lake; the peer writes nothing (aivc's writing and commit are part of its cost).

4. Checks the published vectors against the peer's, cell by cell (``max abs diff``), and
   prints both times (median over repeats), cells per second, and the ratio aivc/peer
   against the target **<= 1.3x**. ``--json`` prints one JSON object instead.

Exit status 1 when a run failed or the vectors differ by more than 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TIME_TARGET = 1.3
BATCH_SIZE = 1024
CHUNK_ROWS = 8192
EQUAL_TOL = 1e-4
ORGANISM = "homo_sapiens"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the lake and the model -------------------------------------------------------------------
def build_lake(work: Path, a: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    """A lake holding one synthetic dataset (reused when it matches); returns (lake, dataset_id, stats)."""
    from synth import SynthSpec, make_submission

    from aivc.ingest.submission import submit
    from aivc.store.catalog import Catalog
    from aivc.store.lake import Lake

    spec = SynthSpec(n_cells=a.cells, n_genes=a.genes, seed=a.seed, mean_umis=a.mean_umis, mean_genes=a.mean_genes)
    name = f"synth-{a.cells}x{a.genes}-s{a.seed}-u{a.mean_umis:g}-g{a.mean_genes:g}"
    lake_path = work / f"lake-{name}"
    dataset_id = f"synth-{a.cells}x{a.genes}"
    if a.fresh:
        shutil.rmtree(lake_path, ignore_errors=True)
    h5, mf, info = make_submission(work / "data" / name, spec, dataset_id=dataset_id, log=_log)
    lake = Lake.init(lake_path)
    cat = Catalog(lake)
    if not cat.versions(dataset_id):
        t0 = time.perf_counter()
        res = submit(lake, h5, mf, report_dir=work / "reports")
        if res.status != "committed":
            raise RuntimeError(f"submit: {res.status}: {[str(e) for e in res.errors[:3]]}")
        _log(f"bench: submitted {res.dataset_id}@{res.version}: {res.n_cells} cells x {res.n_genes} genes in {time.perf_counter() - t0:.0f}s")
    else:
        _log(f"bench: reusing lake {lake_path}")
    return lake, dataset_id, info["stats"]


def register_vae(lake: Any, dataset_id: str, seed: int) -> Any:
    """Register a seeded, untrained cell-vae over every gene the dataset measured."""
    import torch

    from aivc.store.catalog import Catalog

    from aivc.store.lineage import Lineage
    from aivc.store.read import version_features
    from aivc.training.models.cell_vae import CellVAE
    from aivc.training.registry import register_model

    cat = Catalog(lake)
    genes = version_features(lake, cat.get(dataset_id), ["gene_id", "soma_joinid"]).sort_values("soma_joinid")
    init = {"n_genes": len(genes), "n_batches": 1, "latent_dim": 16, "hidden_dim": 128, "n_layers": 1, "dropout": 0.1}
    torch.manual_seed(seed)
    m = CellVAE(**init)
    return register_model(
        lake, "bench-vae", model_type="cell-vae", state_dict=m.state_dict(), init=init, config={"note": "untrained, for bench_embed.py"},
        gene_ids=genes["gene_id"].astype(str).tolist(), encodings={"batch": [dataset_id]}, metrics={},
        lineage=Lineage(organism=ORGANISM, datasets=(cat.get(dataset_id).ref,)),
    )


# -- the contenders -----------------------------------------------------------------------------
def cells_of(lake: Any, dataset_id: str) -> pd.DataFrame:
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_cells

    cat = Catalog(lake)
    cells = version_cells(lake, cat.get(dataset_id), ["obs_id", "soma_joinid"])
    return cells.sort_values("soma_joinid", kind="stable").reset_index(drop=True)


def run_peer(lake: Any, model_ref: str, dataset_id: str) -> tuple[float, np.ndarray, pd.DataFrame]:
    """Plain loop: read_rows in chunks + module.embed in batches; returns (seconds, vectors, cells)."""
    import torch

    from aivc.store import soma_io
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_features
    from aivc.training.registry import load_model

    t0 = time.perf_counter()
    module, rec = load_model(lake, model_ref)
    cat = Catalog(lake)
    hw = cat.high_water(ORGANISM)
    uri = lake.soma_uri(ORGANISM)
    genes = version_features(lake, cat.get(dataset_id), ["gene_id", "soma_joinid"]).set_index("gene_id")["soma_joinid"]
    var_j = genes.loc[list(rec.gene_ids)].to_numpy(np.int64)
    cells = cells_of(lake, dataset_id)
    joins = cells["soma_joinid"].to_numpy(np.int64)
    code = rec.encodings["batch"].index(dataset_id)
    out = np.empty((len(cells), int(rec.init["latent_dim"])), dtype=np.float32)
    for lo in range(0, len(joins), CHUNK_ROWS):
        hi = min(len(joins), lo + CHUNK_ROWS)
        x = torch.from_numpy(soma_io.read_rows(uri, hw, joins[lo:hi], var_j).toarray())
        for b0 in range(0, hi - lo, BATCH_SIZE):
            xb = x[b0 : b0 + BATCH_SIZE]
            batch = {"x": xb, "batch": torch.full((xb.shape[0],), code, dtype=torch.long), "library": xb.sum(dim=1, keepdim=True)}
            out[lo + b0 : lo + b0 + xb.shape[0]] = module.embed(batch).numpy()
    return time.perf_counter() - t0, out, cells


def run_aivc(lake: Any, model_ref: str, actors: int | None, engine: str) -> tuple[float, Any]:
    from aivc.embeddings.model_job import embed_model

    t0 = time.perf_counter()
    v = embed_model(lake, model_ref, batch_size=BATCH_SIZE, actors=actors, name="bench_vae", engine=engine)
    return time.perf_counter() - t0, v


def compare(lake: Any, version: Any, peer_vec: np.ndarray, cells: pd.DataFrame) -> dict[str, Any]:
    from aivc.store.features import read_vectors

    table, vec = read_vectors(lake, version, columns=("id",))
    pos = pd.Index(table.column("id").to_pylist()).get_indexer(cells["obs_id"])
    missing = int((pos < 0).sum())
    if missing:
        return {"n_rows": int(len(vec)), "missing": missing, "max_abs_diff": None, "equal": False}
    diff = float(np.abs(vec[pos] - peer_vec).max()) if len(vec) else 0.0
    return {"n_rows": int(len(vec)), "missing": 0, "max_abs_diff": diff, "bit_identical": bool(diff == 0.0), "equal": diff <= EQUAL_TOL}


def warm(lake: Any, dataset_id: str) -> float:
    """Read every count once (untimed by the benchmark) to warm the page cache."""
    from aivc.store import soma_io
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_features

    t0 = time.perf_counter()
    cat = Catalog(lake)
    hw = cat.high_water(ORGANISM)
    genes = version_features(lake, cat.get(dataset_id), ["soma_joinid"])["soma_joinid"].to_numpy(np.int64)
    joins = cells_of(lake, dataset_id)["soma_joinid"].to_numpy(np.int64)
    for lo in range(0, len(joins), 4 * CHUNK_ROWS):
        soma_io.read_rows(lake.soma_uri(ORGANISM), hw, joins[lo : lo + 4 * CHUNK_ROWS], genes)
    return time.perf_counter() - t0


# -- the benchmark ---------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from aivc.ray_local import start_ray

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    lake, dataset_id, stats = build_lake(work, a)
    rec = register_vae(lake, dataset_id, a.seed)
    t0 = time.perf_counter()
    start_ray()
    ray_s = time.perf_counter() - t0
    warm_s = warm(lake, dataset_id)
    _log(f"bench: Ray started in {ray_s:.1f}s; page cache warmed in {warm_s:.1f}s; model {rec.ref} ({len(rec.gene_ids)} genes)")
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    try:
        for rep in range(a.repeats):
            order = ["peer", "aivc"] if rep % 2 == 0 else ["aivc", "peer"]
            peer_vec, cells, version = None, None, None
            for pos, tool in enumerate(order):
                load = os.getloadavg()[0]
                _log(f"bench: repeat {rep + 1}/{a.repeats}: {tool} (load average {load:.2f}) ...")
                if tool == "peer":
                    secs, peer_vec, cells = run_peer(lake, rec.ref, dataset_id)
                    detail: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
                else:
                    secs, version = run_aivc(lake, rec.ref, a.actors, a.engine)
                    detail = {"version": version.ref, "engine": version.metrics.get("engine"), "engine_reason": version.metrics.get("engine_reason"), "actors": version.metrics.get("actors")}
                _log(f"bench:   {tool}: {secs:.1f}s ({a.cells / secs:,.0f} cells/s)")
                runs.append({"tool": tool, "repeat": rep, "position": pos, "wall_s": secs, "cells_per_s": a.cells / secs, "load_avg_before": round(load, 2), **detail})
            assert peer_vec is not None and cells is not None and version is not None
            checks.append({"repeat": rep, "version": version.ref, **compare(lake, version, peer_vec, cells)})
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    med = {t: statistics.median(r["wall_s"] for r in runs if r["tool"] == t) for t in ("peer", "aivc")}
    ratio = med["aivc"] / med["peer"]
    equal = all(c["equal"] for c in checks)
    return {
        "benchmark": "embed",
        "dataset": {"dataset_id": dataset_id, "n_cells": stats["n_cells"], "n_genes": stats["n_genes"], "nnz": stats["nnz"], "mean_umis": stats["mean_umis"], "mean_detected_genes": stats["mean_detected_genes"]},
        "model": {"ref": rec.ref, "n_genes": len(rec.gene_ids), "latent_dim": rec.init["latent_dim"], "hidden_dim": rec.init["hidden_dim"], "trained": False},
        "settings": {"batch_size": BATCH_SIZE, "chunk_rows": CHUNK_ROWS, "actors": a.actors, "engine": a.engine, "repeats": a.repeats},
        "ray_startup_s": round(ray_s, 2),
        "warm_read_s": round(warm_s, 2),
        "runs": runs,
        "checks": checks,
        "summary": {"peer_wall_s_median": med["peer"], "aivc_wall_s_median": med["aivc"], "ratio": ratio, "target": TIME_TARGET, "pass": ratio <= TIME_TARGET, "vectors_equal": equal},
        "pass": ratio <= TIME_TARGET and equal,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
    }


def print_human(r: dict[str, Any]) -> None:
    d, m, s = r["dataset"], r["model"], r["summary"]
    print()
    print(f"dataset: {d['n_cells']:,} cells x {d['n_genes']:,} genes, {d['nnz']:,} non-zeros; mean {d['mean_umis']:.0f} UMIs, {d['mean_detected_genes']:.0f} genes per cell")
    print(f"model: {m['ref']} (cell-vae, {m['n_genes']} genes -> hidden {m['hidden_dim']} -> latent {m['latent_dim']}, untrained weights); batch size {r['settings']['batch_size']}, chunks of {r['settings']['chunk_rows']} cells")
    la = r["machine"]["load_avg"]
    print(f"machine: {r['machine']['cpus']} CPUs; python {r['machine']['python']}; load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}")
    print(f"Ray start-up (not timed): {r['ray_startup_s']:.1f}s; warm-up read (not timed): {r['warm_read_s']:.1f}s")
    print()
    hdr = f"{'tool':<5} {'rep':>3} {'order':>5} {'wall s':>8} {'cells/s':>10} {'load':>5}  detail"
    print(hdr)
    print("-" * len(hdr))
    for x in r["runs"]:
        det = (f"{x['version']}, engine {x['engine']} ({x['engine_reason']}), {x['actors']} actors" if x["tool"] == "aivc" else f"{x['torch_threads']} torch threads")
        print(f"{x['tool']:<5} {x['repeat']:>3} {x['position'] + 1:>5} {x['wall_s']:>8.1f} {x['cells_per_s']:>10,.0f} {x['load_avg_before']:>5.1f}  {det}")
    print()
    for c in r["checks"]:
        if c["max_abs_diff"] is None:
            print(f"vectors {c['version']}: {c['missing']} cells missing   NOT EQUAL")
        else:
            print(f"vectors {c['version']} vs peer: {c['n_rows']:,} rows, max abs diff {c['max_abs_diff']:.3g} ({'bit-identical' if c['bit_identical'] else f'tolerance {EQUAL_TOL:g}'})   {'EQUAL' if c['equal'] else 'NOT EQUAL'}")
    print(f"peer  wall median {s['peer_wall_s_median']:.1f}s ({d['n_cells'] / s['peer_wall_s_median']:,.0f} cells/s)")
    print(f"aivc  wall median {s['aivc_wall_s_median']:.1f}s ({d['n_cells'] / s['aivc_wall_s_median']:,.0f} cells/s)")
    print(f"aivc/peer time {s['ratio']:5.2f}x   target <= {s['target']}x   {'PASS' if s['pass'] else 'FAIL'}   (--engine {r['settings']['engine']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="embed_model (Ray Data) vs a plain PyTorch loop: wall time and equal vectors.")
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--mean-umis", type=float, default=1500.0)
    p.add_argument("--mean-genes", type=float, default=400.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--actors", type=int, default=None, help="embed_model actors (default: one per CPU; implies the Ray engine under auto)")
    p.add_argument("--engine", choices=("auto", "ray", "local"), default="auto", help="embed_model engine (default auto, as `aivc embed`)")
    p.add_argument("--workdir", default="/work/bench-scratch/embed")
    p.add_argument("--fresh", action="store_true", help="rebuild the lake even if one with these parameters exists")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    r = run(a)
    if a.json:
        print(json.dumps(r, indent=2, default=str))
    else:
        print_human(r)
    return 0 if all(c["equal"] for c in r["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
