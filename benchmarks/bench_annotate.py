"""Reannotation benchmark: the cell-type decoder against its peers, and batch throughput.

Usage::

    /work/venv/bin/python benchmarks/bench_annotate.py [--cells 100000] [--actors 1] [--seeds 3]
        [--json] [--workdir DIR] [--keep] [--only accuracy|throughput]

What it does
------------
1. **Accuracy on real data** (scanpy's pbmc68k_reduced, the demo's two submissions of 350
   cells each, from different 10x lanes), in both directions: for each half, a lake where
   that half is submitted with its cell-type labels and the other *without* (``unknown``,
   as in ``aivc demo``), with a PCA cell UR (``aivc embed pca``, 32 dims) over both. The
   decoder is trained on the labelled half's URs (``train_celltype``, default config:
   5-fold cross-fitting, width/L2 chosen by out-of-fold macro-F1, temperature, conformal,
   novelty) and the other half is annotated by the Ray Data job (``annotate``). The
   withheld truth is ``bulk_labels`` mapped to CL terms with ``aivc.demo.PBMC_LABEL_MAP``.
   Peers, trained on exactly the same labelled cells (cell types with >= 10 cells):

   - *CellTypist-style*: sklearn ``LogisticRegression`` (L2, C=1, lbfgs) on log1p(CP10k)
     expression of all genes, z-scored on the training half and clipped at 10
     (CellTypist's preprocessing, without its SGD/feature-selection options);
   - *kNN label transfer on PCA*: sklearn ``KNeighborsClassifier`` (k=15, distance-weighted)
     on the same PCA URs the decoder reads.

   A diagnostic row (no peer, not the target) fits the same decoder, default config, on the
   LR's own input (the z-scored expression of all genes) instead of the 32-dim UR: it
   separates what the decoder does from what the UR keeps.

   Printed: accuracy and macro-F1 over held-out cells whose true type is one of the
   trained types, per direction and the mean of the two directions (target: the decoder
   at least the best peer), with a paired bootstrap 95% interval of the decoder's
   difference to each peer (2,000 resamples of the held-out cells, every method scored on
   the same resamples): how much of a difference the sampling of ~340 cells explains; then the conformal coverage of the held-out true types by
   the prediction sets against the nominal ``1 - alpha`` (LAC at 0.05/0.1/0.2, APS at
   0.1), averaged over ``--seeds`` fold assignments per direction, and the mean of the
   two directions (target: within 3 points).

2. **Throughput**: ``--cells`` synthetic cell URs (32 dims, 8 Gaussian cell types, over 4
   datasets) are written with ``EmbeddingWriter`` as ``cell:synth@1``; a decoder fitted
   (default config) on 20,000 labelled draws of the same mixture is registered over it.
   Timed, end to end from the stored URs through the published prediction version (no
   report), against calling ``decoder.predict`` directly on the same vectors already in
   memory: ``annotate`` with Ray Data tasks (the default) as the first job after Ray
   started (cold worker processes) and again (running workers), with an actor pool of
   ``--actors``, and with the in-process engine. Ray's own start-up is printed, not
   timed. The outputs must agree row for row. Printed: cells/s and the ratio to the
   direct call; target >= 100,000 cells/s end to end.

Scratch data goes to ``--workdir`` (default ``/work/bench-scratch/annotate``) and is
removed unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
TARGET_CELLS_PER_S = 100_000


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, flush=True)


def _macro_f1(truth: np.ndarray, pred: np.ndarray, classes: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0))


BOOTSTRAP = 2000


def _bootstrap_f1(truth: np.ndarray, pred: np.ndarray, classes: list[str], draws: np.ndarray) -> np.ndarray:
    """Macro-F1 (as ``_macro_f1``: over ``classes``, 0 for a class without support or
    predictions) of each bootstrap resample of the cells, ``draws`` (B x n indices)."""
    K = len(classes)
    index = {c: k for k, c in enumerate(classes)}
    t = np.array([index.get(x, K) for x in truth])
    p = np.array([index.get(x, K) for x in pred])
    out = np.empty(len(draws))
    for b, d in enumerate(draws):
        tb, pb = t[d], p[d]
        tp = np.bincount(tb[tb == pb], minlength=K + 1)[:K].astype(float)
        n_true = np.bincount(tb, minlength=K + 1)[:K]
        n_pred = np.bincount(pb, minlength=K + 1)[:K]
        denom = n_true + n_pred
        out[b] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).mean()
    return out


# -- 1. accuracy -----------------------------------------------------------------------------
PARTS = ("pbmc68k-part1", "pbmc68k-part2")


def _pbmc_lake(work: Path, labelled: str) -> tuple[Any, Any]:
    """A lake with both PBMC halves, only ``labelled`` submitted with its labels; PCA URs over both."""
    import yaml

    from aivc.demo import build_pbmc_submissions, pbmc_manifest
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake

    files = build_pbmc_submissions(work / "inputs")
    lake = Lake.init(work / f"pbmc-lake-{labelled}")
    for (h, _), ds in zip(files, PARTS, strict=True):
        m = work / "inputs" / f"{ds}-{labelled}.yaml"
        is_lab = ds == labelled
        m.write_text(yaml.safe_dump(pbmc_manifest(ds, labelled=is_lab, title=f"{ds}, {'labelled' if is_lab else 'labels withheld'}"), sort_keys=False))
        res = submit(lake, h, m)
        assert res.status == "committed", res.errors
    emb = embed_pca(lake, params=PcaParams(n_components=32, n_top_genes=2000))
    return lake, emb


def _truth_terms() -> np.ndarray:
    from aivc.demo import PBMC_LABEL_MAP, pbmc_counts
    from aivc.ontology import get_ontologies

    onto = get_ontologies()
    labels = pbmc_counts().obs["bulk_labels"].to_numpy()
    term = {k: onto.resolve_label(v, ("CL",)).term_id for k, v in PBMC_LABEL_MAP.items()}
    return np.array([term[x] for x in labels], dtype=object)


def _expression() -> np.ndarray:
    """log1p(CP10k) of every cell (both datasets measured the same genes), in barcode order."""
    from aivc.demo import pbmc_counts
    from aivc.store.read import lognormalize

    adata = pbmc_counts()
    return lognormalize(np.asarray(adata.X.toarray(), dtype=np.float64))


def _direction(work: Path, train_ds: str, truth_all: np.ndarray, expr: np.ndarray, seeds: int, quiet: bool) -> dict[str, Any]:
    """Train on ``train_ds`` (labelled), annotate the other half (labels withheld); peers on the same cells."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from aivc.store.features import read_vectors
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_fit import fit_decoder
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.instruments.predictions import read_predictions

    test_ds = PARTS[1] if train_ds == PARTS[0] else PARTS[0]
    tr_rows = np.arange(350) if train_ds == PARTS[0] else np.arange(350, 700)
    te_rows = np.arange(350, 700) if train_ds == PARTS[0] else np.arange(350)
    t0 = time.perf_counter()
    lake, emb = _pbmc_lake(work, train_ds)
    barcodes = _barcodes()

    def aligned(ds: str, rows: np.ndarray) -> np.ndarray:
        tab, vec = read_vectors(lake, emb, datasets={ds}, columns=("id",))
        pos = {i.split(":", 1)[1]: k for k, i in enumerate(tab.column("id").to_pylist())}
        return vec[[pos[barcodes[r]] for r in rows]]

    u_tr, u_te = aligned(train_ds, tr_rows), aligned(test_ds, te_rows)
    truth_tr, truth_te = truth_all[tr_rows], truth_all[te_rows]
    rec = train_celltype(lake, emb.ref, datasets=[train_ds])
    classes = [c["term_id"] for c in rec.outputs["classes"]]
    t = time.perf_counter()
    pv = annotate(lake, rec.ref, datasets=[test_ds], engine="ray")
    _say(f"\n[{train_ds} -> {test_ds}] lake with {emb.ref} in {t - t0:.0f}s; {rec.ref}: {len(classes)} types, selected {rec.metrics['selected']} "
         f"(out-of-fold macro-F1 {rec.metrics['calibration']['macro_f1']:.3f}); annotated {test_ds} with Ray in {time.perf_counter() - t:.1f}s", quiet)  # fmt: skip
    pred_tab = read_predictions(lake, pv).to_pandas().set_index("obs_id")
    pred = pred_tab.loc[[f"{test_ds}@1:{barcodes[r]}" for r in te_rows]]
    known = np.isin(truth_te, classes)
    train_m = np.isin(truth_tr, classes)

    e_tr, e_te = expr[tr_rows], expr[te_rows]
    mu, sd = e_tr[train_m].mean(axis=0), e_tr[train_m].std(axis=0)
    sd[sd == 0] = 1
    z_tr, z_te = np.clip((e_tr - mu) / sd, -10, 10), np.clip((e_te - mu) / sd, -10, 10)
    lr = LogisticRegression(C=1.0, max_iter=3000).fit(z_tr[train_m], truth_tr[train_m])
    knn = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(u_tr[train_m], truth_tr[train_m])
    # diagnostic: the same decoder (default config) given the LR's own input instead of a 32-dim UR
    y_lab = np.array([classes.index(c) for c in truth_tr[train_m]])
    on_genes = fit_decoder(z_tr[train_m].astype(np.float32), y_lab, classes, classes, CellTypeConfig())
    methods = {
        "aivc decoder (default)": pred["predicted_term_id"].to_numpy(dtype=object),
        "CellTypist-style LR on log1p CP10k": lr.predict(z_te),
        "kNN (k=15) on the PCA URs": knn.predict(u_te),
        "aivc decoder on the LR's input (diagnostic)": np.array(classes, dtype=object)[on_genes.predict_arrays(z_te.astype(np.float32))["top"]],
    }
    rows = []
    for name, p in methods.items():
        rows.append({"method": name, "accuracy": round(float((p[known] == truth_te[known]).mean()), 4), "macro_f1": round(_macro_f1(truth_te[known], p[known], classes), 4)})
    # paired bootstrap over the held-out cells: the same resamples score every method
    draws = np.random.default_rng(0).integers(0, int(known.sum()), size=(BOOTSTRAP, int(known.sum())))
    boot = {name: _bootstrap_f1(truth_te[known], p[known], classes, draws) for name, p in methods.items()}
    _say(f"{'method':46s} {'accuracy':>9s} {'macro-F1':>9s}   ({int(known.sum())} cells of the trained types; {int((~known).sum())} of others)", quiet)
    for r in rows:
        _say(f"{r['method']:46s} {r['accuracy']:9.3f} {r['macro_f1']:9.3f}", quiet)

    # conformal coverage of the held-out half over `seeds` fold assignments (the default config)
    y_tr = y_lab
    labels = [c["label"] for c in rec.outputs["classes"]]
    cov: list[dict[str, Any]] = []
    for score, alpha in (("lac", 0.05), ("lac", 0.1), ("lac", 0.2), ("aps", 0.1)):
        c, sz = [], []
        for seed in range(seeds):
            dec = fit_decoder(u_tr[train_m], y_tr, classes, labels, CellTypeConfig(alpha=alpha, score=score, seed=seed))  # type: ignore[arg-type]
            mem = dec.predict_arrays(u_te[known])["members"]
            y_te = np.array([classes.index(x) for x in truth_te[known]])
            c.append(float(mem[np.arange(len(y_te)), y_te].mean()))
            sz.append(float(mem.sum(axis=1).mean()))
        cov.append({"score": score, "alpha": alpha, "coverage_by_seed": [round(x, 4) for x in c], "coverage": round(float(np.mean(c)), 4), "mean_set_size": round(float(np.mean(sz)), 3)})
    abst = pred["abstain"].to_numpy()
    return {"train": train_ds, "test": test_ds, "methods": rows, "coverage": cov, "_bootstrap": boot, "n_known": int(known.sum()), "selected": rec.metrics["selected"],
            "abstain_known": round(float(abst[known].mean()), 4), "abstain_unknown": round(float(abst[~known].mean()), 4) if (~known).any() else None}  # fmt: skip


def accuracy(work: Path, seeds: int, quiet: bool) -> dict[str, Any]:
    truth, expr = _truth_terms(), _expression()
    runs = [_direction(work, ds, truth, expr, seeds, quiet) for ds in PARTS]
    names = [r["method"] for r in runs[0]["methods"]]
    mean_f1 = {n: round(float(np.mean([next(m["macro_f1"] for m in r["methods"] if m["method"] == n) for r in runs])), 4) for n in names}
    best_peer = max(v for k, v in mean_f1.items() if not k.startswith("aivc"))  # the diagnostic row is no peer
    dec = mean_f1["aivc decoder (default)"]
    _say("\nMacro-F1 on the held-out half (cells of the trained types), each direction and their mean", quiet)
    _say(f"{'method':46s} {'1 -> 2':>8s} {'2 -> 1':>8s} {'mean':>8s}", quiet)
    for n in names:
        per = [next(m["macro_f1"] for m in r["methods"] if m["method"] == n) for r in runs]
        _say(f"{n:46s} {per[0]:8.3f} {per[1]:8.3f} {mean_f1[n]:8.3f}", quiet)
    _say(f"decoder / best peer (mean macro-F1): {dec:.3f} / {best_peer:.3f} = {dec / best_peer:.3f}x   target >= 1.00x   {'PASS' if dec >= best_peer else 'FAIL'}", quiet)
    # how much of the difference is the sampling of the held-out cells: paired bootstrap
    # (same resampled cells for both methods, each direction resampled, their mean taken)
    diffs = {}
    for n in names:
        if n.startswith("aivc"):
            continue
        d = np.mean([r["_bootstrap"]["aivc decoder (default)"] - r["_bootstrap"][n] for r in runs], axis=0)
        lo, hi = np.percentile(d, [2.5, 97.5])
        diffs[n] = {"mean_difference": round(float(dec - mean_f1[n]), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)], "p_decoder_worse": round(float((d < 0).mean()), 4)}
        _say(f"  decoder - {n}: {dec - mean_f1[n]:+.3f} macro-F1, paired bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}] ({BOOTSTRAP} resamples of the held-out cells)", quiet)
    for r in runs:
        r.pop("_bootstrap")
    _say(f"\nConformal coverage of the held-out half's true type, mean over {seeds} fold assignments", quiet)
    _say(f"{'score':6s} {'alpha':>6s} {'nominal':>8s} {'1 -> 2':>8s} {'2 -> 1':>8s} {'mean':>8s} {'set size':>9s} {'target':>7s}", quiet)
    cov_summary = []
    for i, c in enumerate(runs[0]["coverage"]):
        per = [r["coverage"][i]["coverage"] for r in runs]
        m = float(np.mean(per))
        ok = abs(m - (1 - c["alpha"])) <= 0.03
        cov_summary.append({"score": c["score"], "alpha": c["alpha"], "coverage_1_to_2": per[0], "coverage_2_to_1": per[1], "mean": round(m, 4), "within_3_points": ok})
        size = np.mean([r["coverage"][i]["mean_set_size"] for r in runs])
        _say(f"{c['score']:6s} {c['alpha']:6.2f} {1 - c['alpha']:8.2f} {per[0]:8.3f} {per[1]:8.3f} {m:8.3f} {size:9.2f} {'PASS' if ok else 'FAIL':>7s}", quiet)
    for r in runs:
        _say(f"abstained (novel) [{r['train']} -> {r['test']}]: {r['abstain_known']:.1%} of cells of trained types, "
             f"{'n/a' if r['abstain_unknown'] is None else format(r['abstain_unknown'], '.1%')} of cells of untrained types", quiet)  # fmt: skip
    return {"directions": runs, "mean_macro_f1": mean_f1, "decoder_over_best_peer": round(dec / best_peer, 4), "decoder_minus_peer": diffs, "coverage": cov_summary}


def _barcodes() -> list[str]:
    from aivc.demo import pbmc_counts

    return [str(b) for b in pbmc_counts().obs_names]


# -- 2. throughput -----------------------------------------------------------------------------
def _mixture(n: int, rng: np.random.Generator, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, len(centres), n)
    x = centres[y] + rng.normal(size=(n, centres.shape[1])).astype(np.float32)
    return x.astype(np.float32), y


def throughput(work: Path, n_cells: int, actors: int, quiet: bool) -> dict[str, Any]:
    import ray

    from aivc.store.features import EmbeddingWriter
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import register_decoder
    from aivc.instruments.celltype_fit import fit_decoder
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.instruments.predictions import read_predictions
    from aivc.store.lake import Lake
    from aivc.store.lineage import Lineage

    lake = Lake.init(work / "synth-lake")
    rng = np.random.default_rng(0)
    centres = (rng.normal(size=(8, 32)) * 3).astype(np.float32)
    terms = ["CL:0000236", "CL:0000084", "CL:0000623", "CL:0001054", "CL:0000451", "CL:0000815", "CL:0000794", "CL:0000900"]
    labels = ["B cell", "T cell", "natural killer cell", "CD14-positive monocyte", "dendritic cell", "regulatory T cell", "CD8-positive, alpha-beta cytotoxic T cell", "naive thymus-derived CD8-positive, alpha-beta T cell"]
    x, _ = _mixture(n_cells, rng, centres)
    ds = np.array([f"synth-{i % 4}" for i in range(n_cells)], dtype=object)
    t = time.perf_counter()
    with EmbeddingWriter(lake, "cell", "synth", 32, source={"kind": "benchmark"}, lineage=Lineage(datasets=tuple(f"synth-{i}@1" for i in range(4)))) as w:
        for s in range(0, n_cells, 50_000):
            sl = slice(s, min(n_cells, s + 50_000))
            w.write([f"synth-{i % 4}@1:c{i}" for i in range(sl.start, sl.stop)], x[sl], soma_joinids=np.arange(sl.start, sl.stop), dataset_ids=ds[sl])
    emb = w.version
    assert emb is not None
    xt, yt = _mixture(20_000, rng, centres)
    model = fit_decoder(xt, yt, terms, labels, CellTypeConfig())
    rec = register_decoder(lake, model, emb, name="celltype")
    _say(f"\nThroughput: {n_cells:,} cells x 32 dims written as {emb.ref} in {time.perf_counter() - t:.1f}s; decoder {rec.ref} ({len(terms)} types)", quiet)

    floor = _ray_data_floor()
    t = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False, configure_logging=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t

    # the order of ids in storage, for the direct call on the same vectors
    from aivc.store.features import read_vectors

    tab, vec = read_vectors(lake, emb, columns=("id",))
    ids = tab.column("id").to_pylist()
    from aivc.instruments.registry import load_instrument

    decoder = load_instrument(lake, rec)
    decoder.predict(vec[:1000])  # warm
    results: dict[str, list[float]] = {"direct": [], "ray_cold": [], "ray": [], "ray_actors": [], "local": []}
    pvs: dict[str, Any] = {}

    def run(key: str, engine: str, n_actors: int) -> None:
        t = time.perf_counter()
        pvs[key] = annotate(lake, rec.ref, all_datasets=True, engine=engine, actors=n_actors, report=False)  # type: ignore[arg-type]
        results[key].append(time.perf_counter() - t)

    run("ray_cold", "ray", 0)  # the first job after Ray started: its worker processes import Ray Data, pyarrow, aivc
    for _ in range(2):
        t = time.perf_counter()
        direct = decoder.predict(vec)
        results["direct"].append(time.perf_counter() - t)
        run("ray", "ray", 0)
        run("ray_actors", "ray", actors)
        run("local", "local", 0)
    # correctness: same predictions row for row
    for engine, pv in pvs.items():
        got = read_predictions(lake, pv).to_pandas().set_index("obs_id").loc[ids]
        same = (got["predicted_term_id"].to_numpy() == np.array(direct.column("predicted_term_id").to_pylist())).all()
        close = np.allclose(got["probability"].to_numpy(), direct.column("probability").to_numpy(), atol=1e-5)
        assert same and close, f"{engine} predictions differ from the direct call"
    best = {k: min(v) for k, v in results.items()}
    rate = {k: n_cells / v for k, v in best.items()}
    _say(f"Ray start-up (not in the timings): {ray_start:.1f}s; best of 2 runs each (the cold row: one run)", quiet)
    own = best["ray_cold"] - floor
    _say(f"Ray Data's own cold cost (a fresh driver's `import ray.data` + an identity map_batches job over 2 blocks, first after Ray start): {floor:.2f}s; "
         f"the cold annotate job beyond it: {own:.2f}s", quiet)  # fmt: skip
    _say(f"{'path':66s} {'seconds':>8s} {'cells/s':>12s} {'ratio to direct':>16s} {'target':>7s}", quiet)
    rows = [
        ("direct: decoder.predict on in-memory vectors", "direct"),
        ("annotate --engine ray (Ray Data tasks), first job after Ray start", "ray_cold"),
        ("annotate --engine ray (Ray Data tasks), running workers", "ray"),
        (f"annotate, Ray Data actor pool ({actors} actor(s))", "ray_actors"),
        ("annotate, in-process engine", "local"),
    ]
    out_rows = []
    for label, k in rows:
        target = "" if k == "direct" else ("PASS" if rate[k] >= TARGET_CELLS_PER_S else "FAIL")
        _say(f"{label:66s} {best[k]:8.2f} {rate[k]:12,.0f} {rate[k] / rate['direct']:16.3f} {target:>7s}", quiet)
        out_rows.append({"path": k, "seconds": round(best[k], 3), "cells_per_second": round(rate[k]), "ratio_to_direct": round(rate[k] / rate["direct"], 4), "pass": None if k == "direct" else rate[k] >= TARGET_CELLS_PER_S})
    return {"cells": n_cells, "actors": actors, "ray_startup_s": round(ray_start, 2), "ray_data_cold_floor_s": round(floor, 3), "cold_job_beyond_floor_s": round(own, 3), "runs": results, "rows": out_rows}


_FLOOR_SCRIPT = """
import os, time
import ray
ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=256 * 1024**2, log_to_driver=False, configure_logging=False, logging_level="WARNING")
t = time.perf_counter()
import ray.data
ray.data.DataContext.get_current().enable_progress_bars = False
ray.data.range(1000, override_num_blocks=2).map_batches(lambda b: b).materialize()
print(time.perf_counter() - t)
ray.shutdown()
"""


def _ray_data_floor() -> float:
    """Seconds a fresh driver needs for ``import ray.data`` plus a trivial job, first after
    ``ray.init`` (its own Ray instance, in a subprocess): the fixed cost any cold Ray Data job pays."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT], capture_output=True, text=True, check=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--actors", type=int, default=1, help="actor-pool size for the actor row of the throughput table")
    ap.add_argument("--seeds", type=int, default=3, help="fold assignments averaged for coverage")
    ap.add_argument("--workdir", default="/work/bench-scratch/annotate")
    ap.add_argument("--only", choices=("accuracy", "throughput"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    out: dict[str, Any] = {}
    try:
        if args.only in (None, "accuracy"):
            out["accuracy"] = accuracy(work, args.seeds, args.json)
        if args.only in (None, "throughput"):
            out["throughput"] = throughput(work, args.cells, args.actors, args.json)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
