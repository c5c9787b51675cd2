"""Niche benchmark: spatial domains from aivc's niche UR against cell URs and neighbour-mean aggregation.

Usage::

    .venv/bin/python benchmarks/bench_niche.py [--n-cells 20000] [--samples 3] [--domains 5]
        [--seeds 0,1,2] [--epochs N] [--threads 1] [--no-squidpy] [--json]

What it does, per seed
----------------------
1. Simulates a tissue with :func:`tissue_sim.simulate_tissue` (``benchmarks/tissue_sim.py``:
   jittered-hex cells 10 µm apart in ``--samples`` sections, ``--domains`` domains (bands
   plus one blob domain) from smooth random fields, domain-specific mixtures of 7 cell
   types, expression resampled from the real ``pbmc68k_reduced`` cells, Poisson noise).
2. Cell URs: PCA (50 components) of the log-normalized counts, z-scored and clipped as the
   lake's ``pca`` embedding job makes them (:func:`tissue_sim.cell_urs`).
3. One graph for every method: Delaunay per section (``NicheGraphSpec()``: edges longer than
   2x the section's median Delaunay edge dropped), ``groups`` = the sections.
4. k-means (k = the number of domains, ``n_init=10``) on each representation; ARI against
   the true domains:

   ``cell``            (a) the cell URs alone
   ``mean``            (b) the mean of the neighbours' cell URs (CellCharter-style aggregation)
   ``cellcharter``     (b) CellCharter's ``aggregate_neighbors`` (n_layers 3): the cell UR next
                       to the means of the cells at exactly 1, 2 and 3 hops, concatenated
   ``mean_12hop``      a stronger linear peer, not asked for: ``P^12`` of the cell URs (the
                       12-step random-walk mean, the niche model's widest scale)
   ``squidpy``         descriptive, when squidpy 1.8.2 imports: its Delaunay graph
                       (``sq.gr.spatial_neighbors``), k-means cell clusters (k = 7) of the
                       cell URs, ``sq.gr.nhood_enrichment`` on them (timed), and each cell's
                       neighbour-cluster composition (the counts the enrichment sums) clustered
   ``niche``           (c) aivc: :func:`aivc.training.niche_nets.fit_niche_model` with the
                       default :class:`~aivc.training.niche_nets.NicheModelConfig` (seed = the
                       seed), :func:`~aivc.training.niche_nets.embed_niches`
   ``oracle_types``    a ceiling, not a method: ``P^12`` of the one-hot TRUE cell types

Prints ARI mean ± sd over seeds per method and the ratios niche/cell, niche/mean and
niche/cellcharter (target: > 1, ``PASS``/``FAIL``), or one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tissue_sim.py lives beside this file

TARGETS = ("cell", "mean", "cellcharter")
ORDER = ("cell", "mean", "cellcharter", "mean_12hop", "squidpy", "niche", "oracle_types")


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-cells", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--domains", type=int, default=5)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated simulator and model seeds")
    ap.add_argument("--epochs", type=int, default=None, help="override the niche model's default epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--no-squidpy", action="store_true")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def _row_normalized(graph: Any) -> Any:
    from scipy import sparse

    a = graph.to_scipy().astype(bool).astype(np.float64)
    return sparse.diags(1.0 / np.maximum(graph.degree, 1)) @ a


def _ring_means(graph: Any, x: np.ndarray, n_layers: int = 3) -> np.ndarray:
    """CellCharter's aggregation: ``x`` next to the mean of the nodes at exactly 1..L hops."""
    from scipy import sparse

    a = graph.to_scipy().astype(bool).astype(np.int8)
    reach = sparse.identity(graph.n_nodes, dtype=np.int8, format="csr")
    seen = reach.copy()
    out = [x]
    for _ in range(n_layers):
        reach = ((reach @ a) > 0).astype(np.int8)
        ring = ((reach - seen.multiply(reach)) > 0).astype(np.float64)
        seen = ((seen + reach) > 0).astype(np.int8)
        cnt = np.asarray(ring.sum(axis=1)).ravel()
        out.append(sparse.diags(1.0 / np.maximum(cnt, 1)) @ ring @ x)
    return np.hstack(out)


def _squidpy(adata: Any, z: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, float]:
    import logging

    import pandas as pd
    import squidpy as sq
    from scipy import sparse
    from sklearn.cluster import KMeans

    logging.getLogger("squidpy").setLevel(logging.WARNING)
    a = adata.copy()
    a.obs["cluster"] = pd.Categorical(KMeans(7, n_init=4, random_state=seed).fit_predict(z).astype(str))
    sq.gr.spatial_neighbors(a, coord_type="generic", delaunay=True, library_key="sample")
    t = time.perf_counter()
    sq.gr.nhood_enrichment(a, cluster_key="cluster", seed=seed, n_jobs=1, show_progress_bar=False)
    t_enrich = time.perf_counter() - t
    conn = sparse.csr_matrix(a.obsp["spatial_connectivities"])
    onehot = np.eye(7)[a.obs["cluster"].cat.codes.to_numpy()]
    comp = conn @ onehot
    comp /= np.maximum(comp.sum(axis=1, keepdims=True), 1.0)
    return comp, t_enrich


def run_seed(a: argparse.Namespace, seed: int) -> dict[str, Any]:
    import torch
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from tissue_sim import TissueParams, cell_urs, simulate_tissue

    from aivc.training.niche_graph import NicheGraphSpec, build_graph
    from aivc.training.niche_nets import NicheModelConfig, embed_niches, fit_niche_model

    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    adata = simulate_tissue(TissueParams(n_cells=a.n_cells, n_samples=a.samples, n_domains=a.domains, seed=seed))
    truth = adata.obs["domain"].cat.codes.to_numpy()
    z = cell_urs(adata.X, 50)
    graph = build_graph(adata.obsm["spatial"], NicheGraphSpec(), groups=adata.obs["sample"].to_numpy())
    P = _row_normalized(graph)
    reps: dict[str, np.ndarray] = {"cell": z, "mean": P @ z, "cellcharter": _ring_means(graph, z, 3)}
    h, oh = z.astype(np.float64), np.eye(7)[adata.obs["cell_type"].cat.codes.to_numpy()]
    for _ in range(12):
        h, oh = P @ h, P @ oh
    reps["mean_12hop"], reps["oracle_types"] = h, oh
    seconds: dict[str, float] = {}
    if not a.no_squidpy:
        try:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reps["squidpy"], seconds["squidpy_nhood_enrichment"] = _squidpy(adata, z, a.domains, seed)
            seconds["squidpy"] = time.perf_counter() - t
        except ImportError:
            pass
    cfg = NicheModelConfig(seed=seed) if a.epochs is None else NicheModelConfig(seed=seed, epochs=a.epochs)
    t = time.perf_counter()
    model, history = fit_niche_model(z, graph, cfg)
    reps["niche"] = embed_niches(model, z, graph)
    seconds["niche_fit_embed"] = time.perf_counter() - t
    ari = {m: float(adjusted_rand_score(truth, KMeans(a.domains, n_init=10, random_state=seed).fit_predict(r))) for m, r in reps.items()}
    return {
        "seed": seed,
        "ari": ari,
        "seconds": {k: round(v, 1) for k, v in seconds.items()} | {"total": round(time.perf_counter() - t0, 1)},
        "graph": graph.summary(),
        "type_oracle_accuracy": adata.uns["tissue_sim"]["type_oracle_accuracy"],
        "niche_loss_first_last": [round(history[0]["loss"], 4), round(history[-1]["loss"], 4)],
        "niche_config": cfg.to_dict(),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    methods = [m for m in ORDER if all(m in r["ari"] for r in runs)]
    table = {m: {"mean": float(np.mean([r["ari"][m] for r in runs])), "sd": float(np.std([r["ari"][m] for r in runs], ddof=1)) if len(runs) > 1 else 0.0} for m in methods}
    ratios = {}
    for base in [m for m in ("cell", "mean", "cellcharter", "mean_12hop", "squidpy") if m in table]:
        per_seed = [r["ari"]["niche"] / r["ari"][base] if r["ari"][base] > 0 else float("inf") for r in runs]
        ratios[f"niche/{base}"] = {"of_means": table["niche"]["mean"] / table[base]["mean"], "per_seed": per_seed, "target": base in TARGETS}
    passed = all(v["of_means"] > 1.0 for k, v in ratios.items() if v["target"])
    return {"ari": table, "ratios": ratios, "pass": passed}


def main() -> int:
    a = _parse()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    runs = []
    for s in seeds:
        runs.append(run_seed(a, s))
        if not a.json:
            r = runs[-1]
            print(f"seed {s}: " + ", ".join(f"{m} {v:.3f}" for m, v in r["ari"].items()) + f"  ({r['seconds']['total']} s)", flush=True)
    summary = summarize(runs)
    setup = {"n_cells": a.n_cells, "samples": a.samples, "domains": a.domains, "seeds": seeds, "ur": "PCA 50 of log-normalized counts", "graph": "delaunay per sample"}
    if a.json:
        print(json.dumps({"setup": setup, "runs": runs, **summary}, indent=2))
        return 0
    g = runs[0]["graph"]
    print(
        f"\n{a.n_cells:,} simulated cells, {a.samples} samples, {a.domains} domains; Delaunay graph mean degree {g['mean_degree']:.2f}; "
        f"domain-from-type oracle accuracy {np.mean([r['type_oracle_accuracy'] for r in runs]):.3f}"
    )
    print(f"\n{'method':<14} ARI mean ± sd over {len(runs)} seed(s)")
    for m, v in summary["ari"].items():
        note = "  (ceiling: true types)" if m == "oracle_types" else "  (descriptive)" if m == "squidpy" else ""
        print(f"{m:<14} {v['mean']:.3f} ± {v['sd']:.3f}{note}")
    print("\nniche ARI ratios (> 1: niche better):")
    for k, v in summary["ratios"].items():
        verdict = ("PASS" if v["of_means"] > 1.0 else "FAIL") if v["target"] else "(reference)"
        print(f"  {k:<20} {v['of_means']:.3f}  per seed {', '.join(f'{x:.2f}' for x in v['per_seed'])}  {verdict}")
    fit = [r["seconds"]["niche_fit_embed"] for r in runs]
    print(f"\nniche model fit + embed: {np.mean(fit):.1f} s per seed (torch threads {a.threads}); target beat cell and both (b): {'PASS' if summary['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
