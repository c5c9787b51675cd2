"""Cross-modal protein prediction on real CITE-seq cells: aivc's multimodal model and decoder against peers.

Usage (from the repository root; scvi-tools 1.4.2 in the same venv, see below)::

    .venv/bin/python benchmarks/bench_crossmodal.py [--seeds 0 1 2] [--genes 4000]
        [--only cross within labels] [--no-totalvi] [--threads 1] [--json] [--save FILE]
    # or one process per seed, side by side, then one report:
    for s in 0 1 2; do .venv/bin/python benchmarks/bench_crossmodal.py --seeds $s --save seed$s.json > seed$s.log & done; wait
    .venv/bin/python benchmarks/bench_crossmodal.py --merge seed0.json seed1.json seed2.json

Data
----
The 200 + 200 real PBMC of the scvi-tools 1.4.2 sdist's ``pbmc_10k_protein_v3.h5ad`` and
``pbmc_5k_protein_v3.h5ad`` (raw RNA counts; 14 and 29 TotalSeq-B antibodies, the 14 of the
10k panel also in the 5k one), read from the derived copy ``tests/training/data/cite_*.npz``
(the 4,000 most variable shared genes, counts exact; ``tests/training/data/cite_data.py``
rebuilds it from ``pip download --no-deps --no-binary :all: scvi-tools==1.4.2``, sha256
pinned). Targets: ``log1p`` of the antibody counts; every method is scored on the same
held-out cells against the same values.

Tasks
-----
(a) ``cross``: train on one dataset's cells with their proteins, predict the 14 shared
    proteins of every cell of the other dataset (both directions). Methods that read both
    datasets' RNA (PCA, aivc, totalVI) see the query cells' RNA, never their proteins; the
    batch covariate (aivc, totalVI) is the dataset.
(b) ``within``: 5 folds within each dataset (folds drawn per seed); each fold's cells are
    predicted from the other four folds' proteins, all proteins of the dataset. Predictions of
    the 5 folds are pooled, then scored over the 200 cells.

Per protein: Pearson and Spearman between prediction and truth over the held-out cells; the
table shows their mean over proteins, as mean +- sd over ``--seeds`` (data splits, model
seeds and the calibration split change with the seed; ridge is deterministic).

Methods (peers with their defaults, as a user would call them)
---------------------------------------------------------------
- ``ridge``: scikit-learn ``Ridge()`` (alpha=1) on log1p(CP10k) RNA of the training cells.
- ``knn``: ``KNeighborsRegressor()`` (k=5) on ``PCA(n_components=50)`` of log1p(CP10k) RNA
  (fitted on all cells of the task).
- ``totalvi``: scvi-tools 1.4.2 ``TOTALVI`` (defaults; ``setup_anndata(batch_key=...)``),
  trained on all cells with the held-out cells' proteins set to 0 in a batch of their own,
  which totalVI treats as proteins not measured in that batch (its documented way for
  missing proteins); prediction ``get_normalized_expression(indices=held_out,
  transform_batch=<a training batch>)`` (defaults otherwise), compared as ``log1p``.
- ``aivc-mm``: aivc's ``cell-multimodal-vae`` (:mod:`aivc.training.multimodal`, default
  config) trained on all cells (held-out cells without proteins), predicting proteins from
  the RNA-only posterior through its own protein decoder (decoded in a training batch),
  compared as ``log1p`` of the expected counts.
- ``aivc-mm x3``: a deep ensemble of three ``aivc-mm`` models (seeds ``1000 * seed + k``),
  their log1p predictions averaged (three times the training).
- ``aivc-dec(mm UR)``: aivc's cross-modal decoder (:mod:`aivc.instruments.crossmodal`,
  default config) on the multimodal model's RNA-only URs. 20% of the training cells are held
  out of the model's protein training and calibrate the decoder's intervals (their URs carry
  no memory of their proteins, as the query's); the decoder learns from the other 80%.
- ``aivc-dec(RNA UR)``: the same decoder on the URs of the model trained on RNA alone (so
  out-of-fold calibration is sound).
- ``aivc-dec(PCA)``: diagnostic, the decoder on the PCA-50 of the kNN peer.

Decoders also print the coverage of their 90% intervals on the held-out cells (mean over
proteins; nominal 0.90).

(c) ``labels``: label structure of the URs. These cells have no labels, so they are derived
from the proteins by marker rules: a protein is positive when its CLR value (log1p counts
minus the cell's mean over the 14 shared proteins) is above the dataset's Otsu threshold for
that protein; then, first rule that matches: CD3+CD4+CD8a- "CD4 T", CD3+CD8a+CD4- "CD8 T",
CD3-CD19+ "B", CD3-CD19-CD14+ "CD14 mono", CD3-CD19-CD14-CD56+ "NK", CD3-CD19-CD14-CD56-CD16+
"CD16 mono"; cells matching none are left out. Printed: leave-one-out 15-NN accuracy
(majority of the 15 nearest other labelled cells of the dataset, Euclidean) of each dataset's
cells' URs in the setting of (a), where that dataset is the RNA-only query: the multimodal
model's RNA-only URs (the model learned proteins from the *other* dataset only, so the URs
cannot carry these cells' own proteins), the RNA-only model's URs and PCA-50 (the same RNA of
both datasets); and, for reference, the joint (RNA + protein) UR of a multimodal model given
the dataset's own proteins, which the labels were derived from (circular by construction).

Targets: aivc's best row at least the best peer's mean Pearson (printed PASS/FAIL per task,
not a test), decoder coverage within 0.05 of nominal.

Measured (2026-12-02, 2 busy cores, one process per seed, ``--merge``d; mean Pearson over
proteins, mean over seeds 0, 1, 2):

=================  =====  =====  =======  =======  ==========  ============  =============
task               ridge  knn    totalvi  aivc-mm  aivc-mm x3  dec(mm UR)    dec(RNA UR)
=================  =====  =====  =======  =======  ==========  ============  =============
10k -> 5k          0.634  0.639  0.495    0.617    0.650       0.545         0.576
5k -> 10k          0.668  0.635  0.584    0.691    0.699       0.567         0.632
10k 5-fold         0.694  0.608  0.516    0.659    0.684       0.553 (0.92)  0.631 (0.92)
5k 5-fold          0.608  0.566  0.508    0.596    0.614       0.503 (0.91)  0.555 (0.91)
=================  =====  =====  =======  =======  ==========  ============  =============

(decoder 90%-interval coverage of held-out cells in brackets; across datasets it is 0.50-0.64,
the datasets' antibody counts being on different scales.) Label structure (15-NN accuracy,
query cells): multimodal RNA-only UR 0.888 / 0.909 (5k / 10k), RNA-only model 0.884 / 0.870,
PCA 0.875 / 0.815. The single model is below ridge within the 10k cells (0.95x) and the 10k ->
5k direction (0.97x against kNN); the three-seed ensemble reaches the best peer in three of
the four tasks (0.99x within 10k). Decoders over the multimodal model's RNA-only URs are the
weakest rows: that model learned the training cells' proteins, and their URs carry them (out-
of-fold Pearson ~0.80 against ~0.63 on new cells), so a decoder fitted on those URs learns a
map that new cells do not follow; held-out calibration cells keep its intervals honest.

scvi-tools: ``.venv/bin/pip install scvi-tools==1.4.2 torch==2.13.0`` (adds lightning,
pyro-ppl, ... and leaves torch at 2.13.0+cpu; ``pip check`` clean). ``--no-totalvi`` skips it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # for tests.training.data.cite_data
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

SHARED = ("CD3", "CD4", "CD8a", "CD14", "CD15", "CD16", "CD56", "CD19", "CD25", "CD45RA", "CD45RO", "PD-1", "TIGIT", "CD127")
CAL_FRACTION = 0.2
ALPHA = 0.1
PEERS = ("ridge", "knn", "totalvi")
AIVC = ("aivc-mm", "aivc-mm x3", "aivc-dec(mm UR)", "aivc-dec(RNA UR)")
DIAGNOSTIC = ("aivc-dec(PCA)",)


@dataclass(frozen=True)
class Task:
    """Cells of one prediction problem: every cell's RNA, the training cells' proteins."""

    name: str
    rna: np.ndarray  # counts, all cells
    adt: np.ndarray  # counts, all cells (held-out rows are the truth, never shown)
    proteins: tuple[str, ...]
    batch: np.ndarray  # dataset code per cell
    batch_names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray


def lognorm(x: np.ndarray) -> np.ndarray:
    return np.log1p(x / np.maximum(x.sum(axis=1, keepdims=True), 1.0) * 1e4)


# -- peers ---------------------------------------------------------------------------------
def ridge(t: Task, seed: int) -> dict[str, np.ndarray]:
    from sklearn.linear_model import Ridge

    X = lognorm(t.rna)
    return {"mean": Ridge().fit(X[t.train], np.log1p(t.adt[t.train])).predict(X[t.test])}


def _pca(t: Task, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_components=50, random_state=seed).fit_transform(lognorm(t.rna)).astype(np.float32)


def knn(t: Task, seed: int) -> dict[str, np.ndarray]:
    from sklearn.neighbors import KNeighborsRegressor

    P = _pca(t, seed)
    return {"mean": KNeighborsRegressor().fit(P[t.train], np.log1p(t.adt[t.train])).predict(P[t.test])}


def totalvi(t: Task, seed: int) -> dict[str, np.ndarray]:
    import anndata as ad
    import pandas as pd
    import scvi

    a = ad.AnnData(X=t.rna.astype(np.float32))
    a.obs_names = [f"c{i}" for i in range(len(t.rna))]
    prot = t.adt.copy()
    prot[t.test] = 0.0  # one batch of their own, all zero: totalVI's "not measured in this batch"
    a.obsm["protein_expression"] = pd.DataFrame(prot, index=a.obs_names, columns=list(t.proteins))
    names = np.array(t.batch_names, dtype=object)[t.batch].astype(str)
    in_test = np.zeros(len(t.rna), bool)
    in_test[t.test] = True
    if len(t.batch_names) == 1:  # within one dataset: the held-out cells are their own batch
        names = np.where(in_test, "held-out", names)
    a.obs["batch"] = pd.Categorical(names)
    ref = str(names[t.train[0]])
    scvi.settings.seed = seed
    scvi.model.TOTALVI.setup_anndata(a, protein_expression_obsm_key="protein_expression", batch_key="batch")
    model = scvi.model.TOTALVI(a)
    model.train(accelerator="cpu", enable_progress_bar=False)
    _, protein = model.get_normalized_expression(a, indices=t.test, transform_batch=ref)
    return {"mean": np.log1p(np.asarray(protein, dtype=np.float64))}


# -- aivc ------------------------------------------------------------------------------------
def _arrays(t: Task, with_protein: np.ndarray | None) -> Any:
    from aivc.training.multimodal import MultimodalArrays

    if with_protein is None:
        return MultimodalArrays(counts={"RNA": t.rna}, batch=t.batch.astype(np.int64))
    present = np.zeros(len(t.rna), bool)
    present[with_protein] = True
    return MultimodalArrays(counts={"RNA": t.rna, "ADT": t.adt}, present={"ADT": present}, batch=t.batch.astype(np.int64))


def _fit(arrays: Any, seed: int, measurements: tuple[str, ...] = ("ADT",)) -> Any:
    from aivc.training.multimodal import CellMultimodalVaeConfig, MeasurementInput, fit_arrays

    cfg = CellMultimodalVaeConfig(seed=seed, measurements=tuple(MeasurementInput(name=m) for m in measurements))  # type: ignore[arg-type]
    return fit_arrays(arrays, cfg).model


def aivc_mm(t: Task, seed: int) -> dict[str, np.ndarray]:
    arrays = _arrays(t, t.train)
    model = _fit(arrays, seed)
    ref = int(t.batch[t.train[0]])
    pred = model.predict(arrays.rows(t.test), "ADT", use=("RNA",), decode_batch=ref).numpy()
    return {"mean": np.log1p(pred.astype(np.float64))}


def aivc_mm_ensemble(t: Task, seed: int, members: int = 3) -> dict[str, np.ndarray]:
    """``aivc-mm`` with ``members`` models of different seeds, their log1p predictions averaged."""
    preds = [aivc_mm(t, seed * 1000 + k)["mean"] for k in range(members)]
    return {"mean": np.mean(preds, axis=0)}


def _decode(urs: np.ndarray, t: Task, fit: np.ndarray, seed: int, cal: np.ndarray | None = None) -> dict[str, np.ndarray]:
    from aivc.instruments.crossmodal import CrossModalConfig, fit_crossmodal

    y = np.log1p(t.adt)
    calibration = None if cal is None else (urs[cal], y[cal])
    dec = fit_crossmodal(urs[fit], y[fit], t.proteins, CrossModalConfig(alpha=ALPHA, seed=seed), calibration=calibration)
    return dec.predict_arrays(urs[t.test])


def aivc_dec_mm(t: Task, seed: int) -> dict[str, np.ndarray]:
    from aivc.training.multimodal import embed_arrays

    rng = np.random.default_rng(seed + 7)
    perm = rng.permutation(t.train)
    n_cal = int(round(CAL_FRACTION * len(perm)))
    cal, fit = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    arrays = _arrays(t, fit)  # the calibration cells' proteins stay out of the model
    urs = embed_arrays(_fit(arrays, seed), arrays, use=("RNA",))
    return _decode(urs, t, fit, seed, cal)


def aivc_dec_rna(t: Task, seed: int) -> dict[str, np.ndarray]:
    from aivc.training.multimodal import embed_arrays

    arrays = _arrays(t, None)
    urs = embed_arrays(_fit(arrays, seed, measurements=()), arrays)
    return _decode(urs, t, t.train, seed)


def aivc_dec_pca(t: Task, seed: int) -> dict[str, np.ndarray]:
    return _decode(_pca(t, seed), t, t.train, seed)


METHODS: dict[str, Callable[[Task, int], dict[str, np.ndarray]]] = {
    "ridge": ridge, "knn": knn, "totalvi": totalvi,
    "aivc-mm": aivc_mm, "aivc-mm x3": aivc_mm_ensemble, "aivc-dec(mm UR)": aivc_dec_mm, "aivc-dec(RNA UR)": aivc_dec_rna, "aivc-dec(PCA)": aivc_dec_pca,
}  # fmt: skip


# -- tasks -----------------------------------------------------------------------------------
def cross_tasks(data: dict[str, Any]) -> list[tuple[str, list[Task]]]:
    out = []
    for ref, query in (("pbmc10k", "pbmc5k"), ("pbmc5k", "pbmc10k")):
        a, b = data[ref], data[query]
        cols = [[list(d.proteins).index(p) for p in SHARED] for d in (a, b)]
        n_a, n_b = len(a.rna), len(b.rna)
        t = Task(
            name=f"{ref} -> {query}", rna=np.vstack([a.rna, b.rna]), adt=np.vstack([a.adt[:, cols[0]], b.adt[:, cols[1]]]),
            proteins=SHARED, batch=np.r_[np.zeros(n_a, np.int64), np.ones(n_b, np.int64)], batch_names=(ref, query),
            train=np.arange(n_a), test=np.arange(n_a, n_a + n_b),
        )  # fmt: skip
        out.append((t.name, [t]))
    return out


def within_tasks(data: dict[str, Any], seed: int, folds: int = 5) -> list[tuple[str, list[Task]]]:
    out = []
    for name, d in data.items():
        n = len(d.rna)
        fold = np.random.default_rng(seed).permutation(n) % folds
        ts = [
            Task(name=f"{name} fold {f}", rna=d.rna, adt=d.adt, proteins=tuple(str(p) for p in d.proteins), batch=np.zeros(n, np.int64),
                 batch_names=(name,), train=np.flatnonzero(fold != f), test=np.flatnonzero(fold == f))
            for f in range(folds)
        ]  # fmt: skip
        out.append((f"{name} 5-fold", ts))
    return out


def score(tasks: list[Task], preds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Pool the held-out predictions of ``tasks`` and score them (per protein, then the mean)."""
    from aivc.instruments.crossmodal import evaluate

    y = np.concatenate([np.log1p(t.adt[t.test]) for t in tasks])
    pooled = {k: np.concatenate([p[k] for p in preds]) for k in preds[0]}
    return evaluate(y, pooled, tasks[0].proteins)


# -- labels ---------------------------------------------------------------------------------
def otsu(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``v`` (maximum between-class variance over a ``bins`` histogram)."""
    hist, edges = np.histogram(v, bins=bins)
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids) / np.maximum(w0, 1)
    m1 = ((hist * mids).sum() - np.cumsum(hist * mids)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(mids[int(np.argmax(between[:-1]))])


def marker_labels(adt: np.ndarray, proteins: list[str]) -> np.ndarray:
    """Labels by the marker rules of the module docstring ("" for cells no rule matches)."""
    from aivc.instruments.crossmodal import protein_targets

    cols = [proteins.index(p) for p in SHARED]
    clr = protein_targets(adt[:, cols], "clr")
    pos = {p: clr[:, j] > otsu(clr[:, j]) for j, p in enumerate(SHARED)}
    cd3, cd4, cd8, cd19, cd14, cd56, cd16 = (pos[p] for p in ("CD3", "CD4", "CD8a", "CD19", "CD14", "CD56", "CD16"))
    rules = [
        ("CD4 T", cd3 & cd4 & ~cd8), ("CD8 T", cd3 & cd8 & ~cd4), ("B", ~cd3 & cd19), ("CD14 mono", ~cd3 & ~cd19 & cd14),
        ("NK", ~cd3 & ~cd19 & ~cd14 & cd56), ("CD16 mono", ~cd3 & ~cd19 & ~cd14 & ~cd56 & cd16),
    ]  # fmt: skip
    out = np.full(len(adt), "", dtype=object)
    for label, hit in rules:
        out[(out == "") & hit] = label
    return out


def knn_accuracy(urs: np.ndarray, labels: np.ndarray, k: int = 15) -> float:
    from sklearn.neighbors import NearestNeighbors

    keep = labels != ""
    x, y = urs[keep], labels[keep]
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    hits = 0
    for i, row in enumerate(idx):
        vals, counts = np.unique(y[row], return_counts=True)
        hits += int(vals[np.argmax(counts)] == y[i])
    return hits / len(y)


def label_structure(data: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """15-NN accuracy of each dataset's cells' URs on its marker labels (see the module docstring)."""
    from aivc.training.multimodal import MultimodalArrays, embed_arrays

    out: dict[str, dict[str, Any]] = {}
    for query, t in ((tk.name.split(" -> ")[1], tk) for _, (tk,) in cross_tasks(data)):
        d = data[query]
        labels = marker_labels(d.adt, list(d.proteins))
        q = t.test
        cross = _arrays(t, t.train)  # the other dataset's proteins only
        rna = _arrays(t, None)
        n = len(d.rna)
        own = MultimodalArrays(counts={"RNA": d.rna, "ADT": d.adt}, batch=np.zeros(n, np.int64))
        urs = {
            "aivc-mm RNA-only UR (other dataset's proteins)": embed_arrays(_fit(cross, seed), cross, use=("RNA",))[q],
            "aivc RNA-only model UR (both datasets' RNA)": embed_arrays(_fit(rna, seed, measurements=()), rna)[q],
            "PCA-50 of RNA (both datasets)": _pca(t, seed)[q],
            "aivc-mm joint UR (own proteins; circular)": embed_arrays(_fit(own, seed), own),
        }
        row: dict[str, Any] = {k: knn_accuracy(v, labels) for k, v in urs.items()}
        row["n_labelled"] = int((labels != "").sum())
        row["classes"] = {str(k): int(v) for k, v in zip(*np.unique(labels[labels != ""], return_counts=True), strict=True)}
        out[query] = row
    return out


# -- driver ----------------------------------------------------------------------------------
def _quiet_scvi() -> None:
    import logging

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from tests.training.data.cite_data import load

    torch.set_num_threads(args.threads)
    _quiet_scvi()
    data = {n: load(n).top_genes(args.genes) for n in ("pbmc10k", "pbmc5k")}
    methods = [m for m in METHODS if not (args.no_totalvi and m == "totalvi")]
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    seconds: dict[str, float] = {m: 0.0 for m in methods}
    labels: list[dict[str, Any]] = []
    for seed in args.seeds:
        groups: list[tuple[str, list[Task]]] = []
        if "cross" in args.only:
            groups += cross_tasks(data)
        if "within" in args.only:
            groups += within_tasks(data, seed)
        for gname, tasks in groups:
            for m in methods:
                t0 = time.perf_counter()
                preds = [METHODS[m](t, seed) for t in tasks]
                seconds[m] += time.perf_counter() - t0
                results.setdefault(gname, {}).setdefault(m, []).append(score(tasks, preds))
                if not args.json:
                    r = results[gname][m][-1]
                    cov = f", coverage {r['mean_coverage']:.3f}" if r.get("mean_coverage") is not None else ""
                    print(f"  seed {seed} {gname:22s} {m:18s} pearson {r['mean_pearson']:.3f} spearman {r['mean_spearman']:.3f}{cov}", flush=True)
        if "labels" in args.only:
            labels.append(label_structure(data, seed))
    return {"seeds": list(args.seeds), "genes": args.genes, "results": results, "labels": labels, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def _ms(vals: list[float]) -> str:
    a = np.asarray([v for v in vals if v is not None], dtype=float)
    return f"{a.mean():.3f} +- {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}" if len(a) else "-"


def report(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for gname, by in out["results"].items():
        print(f"\n{gname}  (mean over proteins; mean +- sd over seeds {out['seeds']})")
        print(f"  {'method':18s} {'Pearson':>16s} {'Spearman':>16s} {'90% coverage':>16s}")
        means = {}
        for m, runs in by.items():
            means[m] = float(np.mean([r["mean_pearson"] for r in runs]))
            cov = _ms([r.get("mean_coverage") for r in runs]) if runs[0].get("mean_coverage") is not None else "-"
            print(f"  {m:18s} {_ms([r['mean_pearson'] for r in runs]):>16s} {_ms([r['mean_spearman'] for r in runs]):>16s} {cov:>16s}")
        peers = {m: v for m, v in means.items() if m in PEERS}
        best_peer = max(peers, key=peers.__getitem__)
        rows = {}
        for m in AIVC:
            if m in means:
                ratio = means[m] / peers[best_peer]
                rows[m] = {"pearson": round(means[m], 4), "ratio_to_best_peer": round(ratio, 4), "pass": bool(means[m] >= peers[best_peer])}
                print(f"  {m} / best peer ({best_peer} {peers[best_peer]:.3f}): {ratio:.3f}x  {'PASS' if rows[m]['pass'] else 'FAIL'}")
        covs = {m: float(np.mean([r["mean_coverage"] for r in runs])) for m, runs in by.items() if runs[0].get("mean_coverage") is not None}
        if " -> " in gname:
            print(f"  (coverage under the dataset shift: the intervals are in the training dataset's units, its antibody counts scale differently; nominal {1 - ALPHA:.2f})")
        else:
            for m, c in covs.items():
                print(f"  {m} coverage {c:.3f} vs nominal {1 - ALPHA:.2f}: {'PASS' if abs(c - (1 - ALPHA)) <= 0.05 else 'FAIL'}")
        summary[gname] = {"best_peer": best_peer, "best_peer_pearson": round(peers[best_peer], 4), "aivc": rows, "coverage": {m: round(c, 4) for m, c in covs.items()}}
    if out["labels"]:
        print(f"\nlabel structure: leave-one-out 15-NN accuracy on marker-derived labels (mean +- sd over seeds {out['seeds']})")
        for name in out["labels"][0]:
            first = out["labels"][0][name]
            print(f"  {name}: {int(first['n_labelled'])} labelled cells {first['classes']}")
            for k in first:
                if k not in ("n_labelled", "classes"):
                    print(f"    {k:50s} {_ms([lab[name][k] for lab in out['labels']])}")
    print(f"\nseconds per method, all seeds and tasks: {out['seconds']}")
    return summary


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of several saved runs (their seeds, results and labels concatenated, seconds summed)."""
    out: dict[str, Any] = {"seeds": [], "genes": runs[0]["genes"], "results": {}, "labels": [], "seconds": {}}
    for r in runs:
        out["seeds"] += r["seeds"]
        out["labels"] += r["labels"]
        for g, by in r["results"].items():
            for m, vals in by.items():
                out["results"].setdefault(g, {}).setdefault(m, []).extend(vals)
        for m, v in r["seconds"].items():
            out["seconds"][m] = round(out["seconds"].get(m, 0.0) + v, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--genes", type=int, default=4000, help="most variable genes to use (at most 4000)")
    p.add_argument("--only", nargs="+", default=["cross", "within", "labels"], choices=["cross", "within", "labels"])
    p.add_argument("--no-totalvi", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every method (1: no contention on a shared machine)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--save", type=Path, help="also write the results as JSON to this file")
    p.add_argument("--merge", type=Path, nargs="+", help="print the report of saved runs (e.g. one per seed, run side by side) instead of running")
    args = p.parse_args()
    out = merge([json.loads(f.read_text()) for f in args.merge]) if args.merge else run(args)
    if args.save:
        args.save.write_text(json.dumps(out, indent=1, default=float))
    if args.json:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            summary = report(out)
        print(json.dumps({**out, "summary": summary}, indent=1, default=float))
    else:
        report(out)


if __name__ == "__main__":
    main()
