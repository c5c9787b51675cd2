"""Reannotation benchmark: the cell-type decoder against its peers, and batch throughput.

Usage::

    /work/venv/bin/python benchmarks/bench_annotate.py [--cells 100000] [--actors 1] [--json]
        [--workdir DIR] [--keep] [--only accuracy|throughput]

What it does
------------
1. **Accuracy on real data** (scanpy's pbmc68k_reduced, the demo's two submissions): part 1
   (350 cells) is submitted with its cell-type labels, part 2 (350 cells) *without* labels
   (``unknown``, as in ``aivc demo``); a PCA cell UR (``aivc embed pca``, 32 dims) is
   computed over both. The decoder is trained on part 1's labelled URs
   (``train_celltype``, default config: class-balanced one-hidden-layer (64) softmax
   classifier, calibration split, temperature, conformal, novelty) and part 2 is annotated by the Ray Data job
   (``annotate``). The withheld truth of part 2 is its ``bulk_labels`` mapped to CL terms
   with ``aivc.demo.PBMC_LABEL_MAP``. Peers, trained on exactly the same labelled cells
   (part 1, cell types with >= 10 cells, all of them: the decoder's train and calibration
   splits together):

   - *CellTypist-style*: sklearn ``LogisticRegression`` (L2, C=1, lbfgs) on log1p(CP10k)
     expression of the genes both parts measured, z-scored and clipped at 10 (CellTypist's
     preprocessing, without its SGD/feature-selection options);
   - *kNN label transfer on PCA*: sklearn ``KNeighborsClassifier`` (k=15, distance-weighted)
     on the same PCA URs the decoder reads.

   Printed: accuracy and macro-F1 over part 2 cells whose true type is one of the trained
   types, and macro-F1 over all part 2 cells (types the training half lacked count as
   misses for everyone); the decoder as a plain logistic regression (``hidden=0``) too; then the
   conformal coverage of part 2's true types by the prediction sets against the nominal
   ``1 - alpha`` for several alphas and both scores (LAC, APS), with mean set sizes.

2. **Throughput**: ``--cells`` synthetic cell URs (32 dims, 8 Gaussian cell types, over 4
   datasets) are written with ``EmbeddingWriter`` as ``cell:synth@1``; a decoder fitted on
   20,000 labelled draws of the same mixture is registered over it. Timed, end to end from
   the stored URs through the published prediction version (no report): ``annotate`` with
   the Ray Data engine (Ray already started; its start-up is printed separately) and with
   the in-process engine, against calling ``decoder.predict`` directly on the same vectors
   already in memory. The outputs must agree row for row. Printed: cells/s and the ratio
   to the direct call; target >= 100,000 cells/s end to end.

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


# -- 1. accuracy -----------------------------------------------------------------------------
def _pbmc_lake(work: Path) -> tuple[Any, Any]:
    import yaml

    from aivc.demo import build_pbmc_submissions, pbmc_manifest
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake

    files = build_pbmc_submissions(work / "inputs")
    lake = Lake.init(work / "pbmc-lake")
    (h1, _), (h2, _) = files
    m1 = work / "inputs" / "part1.yaml"
    m1.write_text(yaml.safe_dump(pbmc_manifest("pbmc68k-part1", labelled=True, title="PBMC part 1, labelled"), sort_keys=False))
    m2 = work / "inputs" / "part2.yaml"  # labels withheld
    m2.write_text(yaml.safe_dump(pbmc_manifest("pbmc68k-part2", labelled=False, title="PBMC part 2, labels withheld"), sort_keys=False))
    for h, m in ((h1, m1), (h2, m2)):
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


def _expression() -> tuple[Any, Any]:
    """log1p(CP10k) of the genes both datasets measured, rows in obs_id order of each part."""
    from aivc.demo import pbmc_counts

    adata = pbmc_counts()
    X = np.asarray(adata.X.toarray(), dtype=np.float64)
    L = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)
    return L[:350], L[350:]


def accuracy(work: Path, quiet: bool) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from aivc.embeddings.store import read_vectors
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import CellTypeConfig, train_celltype
    from aivc.instruments.predictions import read_predictions

    t0 = time.perf_counter()
    lake, emb = _pbmc_lake(work)
    _say(f"PBMC lake with {emb.ref} ready in {time.perf_counter() - t0:.0f}s", quiet)
    truth_all = _truth_terms()
    truth1, truth2 = truth_all[:350], truth_all[350:]
    barcode_order = _barcodes()

    def aligned(ds: str) -> np.ndarray:
        tab, vec = read_vectors(lake, emb, datasets={ds}, columns=("id",))
        ids = [i.split(":", 1)[1] for i in tab.column("id").to_pylist()]
        want = barcode_order[:350] if ds == "pbmc68k-part1" else barcode_order[350:]
        pos = {b: i for i, b in enumerate(ids)}
        return vec[[pos[b] for b in want]]

    u1, u2 = aligned("pbmc68k-part1"), aligned("pbmc68k-part2")
    rec = train_celltype(lake, emb.ref, datasets=["pbmc68k-part1"])
    classes = [c["term_id"] for c in rec.outputs["classes"]]
    t = time.perf_counter()
    pv = annotate(lake, rec.ref, datasets=["pbmc68k-part2"], engine="ray")
    _say(f"trained {rec.ref} ({len(classes)} types; excluded {sorted(rec.metrics['excluded_classes'])}); annotated part 2 with Ray in {time.perf_counter() - t:.1f}s", quiet)
    pred_tab = read_predictions(lake, pv).to_pandas().set_index("obs_id")
    pred = pred_tab.loc[[f"pbmc68k-part2@1:{b}" for b in barcode_order[350:]]]
    known = np.isin(truth2, classes)
    train_m = np.isin(truth1, classes)

    e1, e2 = _expression()
    mu, sd = e1[train_m].mean(axis=0), e1[train_m].std(axis=0)
    sd[sd == 0] = 1
    z1, z2 = np.clip((e1 - mu) / sd, -10, 10), np.clip((e2 - mu) / sd, -10, 10)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(z1[train_m], truth1[train_m])
    knn = KNeighborsClassifier(n_neighbors=15, weights="distance").fit(u1[train_m], truth1[train_m])
    rec_lin = train_celltype(lake, emb.ref, datasets=["pbmc68k-part1"], name="celltype_linear", config=CellTypeConfig(hidden=0))
    from aivc.instruments.registry import load_instrument

    lin_pred = np.array(load_instrument(lake, rec_lin).predict(u2).column("predicted_term_id").to_pylist(), dtype=object)
    methods = {
        "aivc decoder (default, hidden=64)": pred["predicted_term_id"].to_numpy(dtype=object),
        "aivc decoder (logistic, hidden=0)": lin_pred,
        "CellTypist-style LR on log1p CP10k": lr.predict(z2),
        "kNN (k=15) on the PCA URs": knn.predict(u2),
    }
    all_classes = sorted(set(truth2))
    rows = []
    for name, p in methods.items():
        rows.append({
            "method": name,
            "accuracy_known": round(float((p[known] == truth2[known]).mean()), 4),
            "macro_f1_known": round(_macro_f1(truth2[known], p[known], classes), 4),
            "macro_f1_all": round(_macro_f1(truth2, p, all_classes), 4),
        })  # fmt: skip
    base = rows[0]["macro_f1_known"]
    for r in rows:
        r["f1_ratio_decoder_over_this"] = round(base / r["macro_f1_known"], 3) if r["macro_f1_known"] else None
    _say(f"\nAccuracy on part 2 ({int(known.sum())} cells of the {len(classes)} trained types; {int((~known).sum())} of types absent from training)", quiet)
    _say(f"{'method':40s} {'accuracy':>9s} {'macro-F1':>9s} {'macro-F1 all':>13s} {'decoder/this':>13s}", quiet)
    for r in rows:
        _say(f"{r['method']:40s} {r['accuracy_known']:9.3f} {r['macro_f1_known']:9.3f} {r['macro_f1_all']:13.3f} {r['f1_ratio_decoder_over_this']:13.3f}", quiet)

    cov_rows = []
    for score in ("lac", "aps"):
        for alpha in (0.05, 0.1, 0.2):
            r = train_celltype(lake, emb.ref, datasets=["pbmc68k-part1"], name=f"cov_{score}", config=CellTypeConfig(alpha=alpha, score=score))  # type: ignore[arg-type]
            out = load_instrument(lake, r).predict(u2)
            sets = out.column("prediction_set").to_pylist()
            covered = np.array([t in s for t, s in zip(truth2, sets, strict=True)])
            sizes = out.column("set_size").to_numpy()
            cov_rows.append({"score": score, "alpha": alpha, "nominal": 1 - alpha, "coverage": round(float(covered[known].mean()), 4),
                             "mean_set_size": round(float(sizes[known].mean()), 3), "n_calibration": r.metrics["n_calibration"]})  # fmt: skip
    _say(f"\nConformal coverage of part 2's true type ({int(known.sum())} cells of trained types), calibrated on part 1", quiet)
    _say(f"{'score':6s} {'alpha':>6s} {'nominal':>8s} {'coverage':>9s} {'mean set size':>14s} {'calibration cells':>18s}", quiet)
    for r in cov_rows:
        _say(f"{r['score']:6s} {r['alpha']:6.2f} {r['nominal']:8.2f} {r['coverage']:9.3f} {r['mean_set_size']:14.2f} {r['n_calibration']:18d}", quiet)
    abst = pred["abstain"].to_numpy()
    _say(f"\nabstained (novel): {abst[known].mean():.1%} of part 2 cells of trained types, {abst[~known].mean():.1%} of cells of untrained types", quiet)
    return {"methods": rows, "coverage": cov_rows, "n_known": int(known.sum()), "n_unknown": int((~known).sum()),
            "abstain_known": round(float(abst[known].mean()), 4), "abstain_unknown": round(float(abst[~known].mean()), 4)}  # fmt: skip


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

    from aivc.embeddings.store import EmbeddingWriter
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import CellTypeConfig, fit_decoder, register_decoder
    from aivc.instruments.predictions import read_predictions
    from aivc.store.lake import Lake

    lake = Lake.init(work / "synth-lake")
    rng = np.random.default_rng(0)
    centres = (rng.normal(size=(8, 32)) * 3).astype(np.float32)
    terms = ["CL:0000236", "CL:0000084", "CL:0000623", "CL:0001054", "CL:0000451", "CL:0000815", "CL:0000794", "CL:0000900"]
    labels = ["B cell", "T cell", "natural killer cell", "CD14-positive monocyte", "dendritic cell", "regulatory T cell", "CD8-positive, alpha-beta cytotoxic T cell", "naive thymus-derived CD8-positive, alpha-beta T cell"]
    x, _ = _mixture(n_cells, rng, centres)
    ds = np.array([f"synth-{i % 4}" for i in range(n_cells)], dtype=object)
    t = time.perf_counter()
    with EmbeddingWriter(lake, "cell", "synth", 32, source={"kind": "benchmark"}, lineage={"datasets": [f"synth-{i}@1" for i in range(4)]}) as w:
        for s in range(0, n_cells, 50_000):
            sl = slice(s, min(n_cells, s + 50_000))
            w.write([f"synth-{i % 4}@1:c{i}" for i in range(sl.start, sl.stop)], x[sl], soma_joinids=np.arange(sl.start, sl.stop), dataset_ids=ds[sl])
    emb = w.version
    assert emb is not None
    xt, yt = _mixture(20_000, rng, centres)
    model = fit_decoder(xt, yt, terms, labels, CellTypeConfig())
    rec = register_decoder(lake, model, emb, name="celltype")
    _say(f"\nThroughput: {n_cells:,} cells x 32 dims written as {emb.ref} in {time.perf_counter() - t:.1f}s; decoder {rec.ref} ({len(terms)} types)", quiet)

    t = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False, configure_logging=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t

    # the order of ids in storage, for the direct call on the same vectors
    from aivc.embeddings.store import read_vectors

    tab, vec = read_vectors(lake, emb, columns=("id",))
    ids = tab.column("id").to_pylist()
    from aivc.instruments.registry import load_instrument

    decoder = load_instrument(lake, rec)
    decoder.predict(vec[:1000])  # warm
    results: dict[str, list[float]] = {"ray": [], "local": [], "direct": []}
    pvs: dict[str, Any] = {}
    for _ in range(2):
        t = time.perf_counter()
        direct = decoder.predict(vec)
        results["direct"].append(time.perf_counter() - t)
        for engine in ("ray", "local"):
            t = time.perf_counter()
            pvs[engine] = annotate(lake, rec.ref, all_datasets=True, engine=engine, actors=actors, report=False)  # type: ignore[arg-type]
            results[engine].append(time.perf_counter() - t)
    # correctness: same predictions row for row
    for engine, pv in pvs.items():
        got = read_predictions(lake, pv).to_pandas().set_index("obs_id").loc[ids]
        same = (got["predicted_term_id"].to_numpy() == np.array(direct.column("predicted_term_id").to_pylist())).all()
        close = np.allclose(got["probability"].to_numpy(), direct.column("probability").to_numpy(), atol=1e-5)
        assert same and close, f"{engine} predictions differ from the direct call"
    best = {k: min(v) for k, v in results.items()}
    rate = {k: n_cells / v for k, v in best.items()}
    _say(f"Ray start-up (not in the timings): {ray_start:.1f}s; best of 2 runs each", quiet)
    _say(f"{'path':55s} {'seconds':>8s} {'cells/s':>12s} {'ratio to direct':>16s} {'target':>10s}", quiet)
    rows = [
        ("direct: decoder.predict on in-memory vectors", "direct"),
        (f"annotate, Ray Data ({actors} actor(s)), stored URs -> published version", "ray"),
        ("annotate, in-process engine, stored URs -> published version", "local"),
    ]
    out_rows = []
    for label, k in rows:
        target = "" if k == "direct" else ("PASS" if rate[k] >= TARGET_CELLS_PER_S else "FAIL")
        _say(f"{label:55s} {best[k]:8.2f} {rate[k]:12,.0f} {rate[k] / rate['direct']:16.3f} {target:>10s}", quiet)
        out_rows.append({"path": k, "seconds": round(best[k], 3), "cells_per_second": round(rate[k]), "ratio_to_direct": round(rate[k] / rate["direct"], 4), "pass": None if k == "direct" else rate[k] >= TARGET_CELLS_PER_S})
    return {"cells": n_cells, "actors": actors, "ray_startup_s": round(ray_start, 2), "runs": results, "rows": out_rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--actors", type=int, default=1)
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
            out["accuracy"] = accuracy(work, args.json)
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
