"""Perturbation benchmark: the manipulator against its three baselines, scored by cell-eval.

Usage::

    /work/venv/bin/python benchmarks/bench_perturb.py [--genes 200] [--regulators 40] [--extra-targets 10]
        [--doubles 40] [--controls 1000] [--cells 60] [--holdout 0.25] [--ur-dim 32] [--seed 0]
        [--steps 600] [--members 5] [--workdir DIR] [--json]

What it does
------------
1. Simulates a knockdown screen with :func:`grn_sim.simulate_screen` (``benchmarks/grn_sim.py``) (a random
   sparse regulatory DAG, Hill responses, negative-binomial counts): control cells, single
   knockdowns of every regulator plus ``--extra-targets`` non-regulator genes, and ``--doubles``
   random double knockdowns.
2. Holds out ``--holdout`` of the singles, and of the doubles, with
   :func:`~aivc.instruments.perturbation_screen.split_conditions` (a double with a held-out target is held
   out too). Gene URs are the control cells' co-expression (top eigenvectors of the gene-gene
   correlation, ``--ur-dim``), as an embedding job would publish them.
3. Trains the manipulator (PCA cell URs, ensemble of ``--members``) on the rest and predicts every
   held-out condition from the control cells. Baselines, from the same training conditions:
   ``no_change`` (the control mean), ``mean`` (the mean change of the training perturbations) and
   ``additive`` (sum of the observed single changes, for doubles whose singles were trained on).
4. Scores each method with ``cell-eval`` (``MetricsEvaluator``, profile ``minimal``: pearson_delta,
   mse, mae, discrimination_score_l1, overlap_at_N, precision_at_N, de_nsig_counts) on
   log-normalized cells: the real held-out cells against predicted cells, each a real control cell
   shifted by the method's predicted mean change (as many as the real condition has, floored
   at 0). Also ``pearson_truth``: the Pearson correlation of the predicted change with the
   simulator's noise-free ground truth (``true_lognorm_effects``).

Conditions are grouped: ``single`` (held-out single knockdowns), ``double/seen`` (held-out doubles
whose two singles were trained on: all four methods) and ``double/unseen`` (a target held out; no
additive baseline). Prints one table (means over a group's conditions) and the manipulator's
ratios against each baseline, or one JSON object with ``--json``. cell-eval is a ``bench`` extra
(``pip install "cell-eval>=0.8"``), never a test dependency.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")  # pdex's per-perturbation progress bars
sys.path.insert(0, str(Path(__file__).resolve().parent))  # grn_sim.py lives beside this file

METRICS = ("pearson_delta", "mse", "mae", "discrimination_score_l1", "overlap_at_N", "precision_at_N")
LOWER_IS_BETTER = {"mse", "mae"}


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=200)
    ap.add_argument("--regulators", type=int, default=40)
    ap.add_argument("--extra-targets", type=int, default=10, help="non-regulator genes knocked down alone")
    ap.add_argument("--doubles", type=int, default=40)
    ap.add_argument("--controls", type=int, default=1000)
    ap.add_argument("--cells", type=int, default=60, help="cells per perturbation")
    ap.add_argument("--holdout", type=float, default=0.25)
    ap.add_argument("--ur-dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/work/bench-scratch/perturb")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def _simulate(a: argparse.Namespace) -> Any:
    from grn_sim import GrnParams, simulate_screen

    rng = np.random.default_rng(a.seed)
    extra = rng.choice(np.arange(a.regulators, a.genes), size=a.extra_targets, replace=False)
    perturbed = [*range(a.regulators), *sorted(int(i) for i in extra)]
    params = GrnParams(n_genes=a.genes, n_regulators=a.regulators, seed=a.seed)
    return simulate_screen(params, n_control=a.controls, n_cells_per_perturbation=a.cells, perturbed=perturbed, n_doubles=a.doubles)


def _groups(test: list[str], train: list[str]) -> dict[str, list[str]]:
    from aivc.instruments.perturbation_screen import targets_of

    trained = set(train)
    out: dict[str, list[str]] = {"single": [], "double/seen": [], "double/unseen": []}
    for c in test:
        t = targets_of(c)
        out["single" if len(t) == 1 else "double/seen" if all(x in trained for x in t) else "double/unseen"].append(c)
    return {k: v for k, v in out.items() if v}


def _cell_eval(real: Any, pred: Any, outdir: Path) -> dict[str, float]:
    """Mean over perturbations of each cell-eval metric (profile ``minimal``)."""
    from cell_eval import MetricsEvaluator

    ev = MetricsEvaluator(pred, real, control_pert="control", pert_col="target", num_threads=2, outdir=str(outdir))
    results, _ = ev.compute(profile="minimal", write_csv=False)
    frame = results.to_pandas()
    return {m: float(pd.to_numeric(frame[m], errors="coerce").mean()) for m in METRICS if m in frame.columns}


def _anndata(X: np.ndarray, labels: list[str], genes: list[str]) -> Any:
    import anndata as ad

    obs = pd.DataFrame({"target": pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.asarray(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=genes))


def main() -> int:
    a = _parse()
    logging.getLogger("cell_eval").setLevel(logging.ERROR)
    logging.getLogger("pdex").setLevel(logging.ERROR)
    from aivc.instruments.manipulator import METHODS, ManipulatorParams
    from aivc.instruments.perturbation_fit import fit_manipulator
    from aivc.instruments.perturbation_screen import PerturbationScreen, baseline_effects, coexpression_gene_urs, pearson_delta, split_conditions

    t0 = time.perf_counter()
    sim = _simulate(a)
    screen = PerturbationScreen.from_counts(sim.counts, sim.gene_names, sim.obs["perturbation_targets"])
    urs = coexpression_gene_urs(screen, dim=a.ur_dim)
    train, test = split_conditions(screen.condition_names, a.holdout, seed=a.seed)
    t1 = time.perf_counter()
    m = fit_manipulator(screen, urs, ManipulatorParams(steps=a.steps, n_members=a.members, seed=a.seed), train_conditions=train)
    t_fit = time.perf_counter() - t1
    z = m.encode(screen.control_expression)
    train_effects = screen.observed_effects(m.train_conditions)
    deltas: dict[str, dict[str, np.ndarray]] = {}
    for c in test:
        deltas[c] = {"manipulator": m.predict(z, c.split(";")).delta}
        deltas[c] |= {k: v for k, v in baseline_effects(c, train_effects).items() if v is not None}

    rng = np.random.default_rng(a.seed)
    ctrl = screen.control_expression
    genes = list(screen.gene_ids)
    groups = _groups(test, list(m.train_conditions))
    rows: list[dict[str, Any]] = []
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        for group, conds in groups.items():
            methods = [k for k in METHODS if all(k in deltas[c] for c in conds)]
            real_X = [ctrl]
            real_labels = ["control"] * len(ctrl)
            for c in conds:
                cells = screen.expression[screen.conditions == c]
                real_X.append(cells)
                real_labels += [c] * len(cells)
            real = _anndata(np.vstack(real_X), real_labels, genes)
            for method in methods:
                pred_X = [ctrl]
                for c in conds:
                    n = int((screen.conditions == c).sum())
                    base = ctrl[rng.integers(0, len(ctrl), n)]
                    pred_X.append(np.maximum(base + deltas[c][method], 0.0))
                pred = _anndata(np.vstack(pred_X), real_labels, genes)
                scores = _cell_eval(real, pred, Path(tmp) / f"{group.replace('/', '-')}-{method}")
                truth = np.mean([pearson_delta(deltas[c][method], sim.true_lognorm_effects.loc[c].to_numpy()) for c in conds])
                rows.append({"group": group, "method": method, "n": len(conds), **scores, "pearson_truth": float(truth)})
    table = pd.DataFrame(rows)
    ratios = {}
    for group in groups:
        g = table[table["group"] == group].set_index("method")
        for base in [b for b in ("no_change", "mean", "additive") if b in g.index]:
            ratios[f"{group}: mse manipulator/{base}"] = float(g.loc["manipulator", "mse"] / g.loc[base, "mse"])
    setup = {
        "genes": a.genes, "regulators": a.regulators, "single_targets": a.regulators + a.extra_targets, "doubles": a.doubles,
        "cells": int(len(screen.conditions)), "controls": int(screen.is_control.sum()), "train_conditions": len(m.train_conditions),
        "test_conditions": len(test), "ur_dim": a.ur_dim, "members": a.members, "steps": a.steps, "seed": a.seed,
        "fit_seconds": round(t_fit, 1), "total_seconds": round(time.perf_counter() - t0, 1),
        "remaining_fraction_learned": [round(float(f), 3) for f in m.remaining_fraction], "remaining_fraction_true": sim.params.knockdown_fraction,
    }  # fmt: skip
    if a.json:
        print(json.dumps({"setup": setup, "results": rows, "ratios": ratios}, indent=2))
        return 0
    _print(setup, table, ratios)
    return 0


def _print(setup: dict[str, Any], table: pd.DataFrame, ratios: dict[str, float]) -> None:
    print(
        f"simulated screen: {setup['genes']} genes ({setup['regulators']} regulators), {setup['cells']} cells "
        f"({setup['controls']} controls), {setup['single_targets']} single + {setup['doubles']} double knockdowns; "
        f"trained on {setup['train_conditions']} conditions, held out {setup['test_conditions']}"
    )
    print(
        f"manipulator: gene URs = control co-expression ({setup['ur_dim']} dims), PCA cell URs, {setup['members']} members x "
        f"{setup['steps']} steps, fit {setup['fit_seconds']} s; knockdown efficiency learned {setup['remaining_fraction_learned']} "
        f"(true {setup['remaining_fraction_true']}); total {setup['total_seconds']} s"
    )
    cols = ["group", "method", "n", *[m for m in METRICS if m in table.columns], "pearson_truth"]
    shown = table[cols].copy()
    widths = {c: max(len(c), 11 if c == "method" else 9) for c in cols}
    widths["group"] = 13
    print()
    print("  ".join(c.ljust(widths[c]) for c in cols))
    print("  ".join("-" * widths[c] for c in cols))
    for _, r in shown.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            text = f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else ("nan" if isinstance(v, float) else str(v))
            cells.append(text.ljust(widths[c]))
        print("  ".join(cells))
    print(
        "\n(higher is better except mse and mae; no_change predicts resampled control cells, so its cell-eval pearson_delta "
        "is noise, and its pearson_truth is 0 by definition)"
    )
    print("\nmanipulator mse ratios (< 1: manipulator better):")
    for k, v in ratios.items():
        print(f"  {k:<45} {v:.3f}")


if __name__ == "__main__":
    sys.exit(main())
