"""Reannotation benchmark: the cell-type decoder against its peers, and batch throughput.

Usage::

    benchmarks/celltypist-venv.sh      # once: CellTypist 1.7.1 in .celltypist-venv
    .venv/bin/python benchmarks/bench_annotate.py [--splits 3] [--seeds 3] [--urs PCA,cell-vae]
        [--peer-cells 50000] [--cells 100000] [--actors 1] [--json] [--workdir DIR] [--keep]
        [--only accuracy|throughput]

What it does
------------
1. **Accuracy against the real peers** (scanpy's pbmc68k_reduced, 700 cells, 10 types with
   8 to 240 cells), over several reference/query splits: the two halves (the demo's two
   submissions, different 10x lanes) both ways and ``--splits`` random 350/350 splits. For
   each split, the user's path: a lake where the reference is submitted with its labels and the
   query without (``unknown``), ``aivc embed pca`` with its defaults and (``--urs``) the default
   cell-vae UR (``aivc train cell-vae`` + ``aivc embed``, CLI subprocesses, whatever the packaged
   config says when run), ``train_celltype`` on the reference (default config, ``--seeds``
   seeds: rare types are kept, a 1-cell type is left out) and ``annotate`` of the query from the
   stored URs. EVERY query cell is scored against its withheld label (``bulk_labels`` mapped to
   CL terms): macro-F1 over every type present in the query's truth, an abstention (novelty
   above the threshold) counted as wrong. Peers on exactly the same reference and query cells:

   - *CellTypist 1.7.1 itself* (``celltypist.train`` with its defaults on log1p(CP10k) of all
     genes, ``celltypist.annotate`` without and with majority voting), run by
     ``benchmarks/celltypist_peer.py`` in its own venv (``benchmarks/celltypist-venv.sh``:
     CellTypist 1.7.1 needs scikit-learn < 1.7) on h5ad files written here;
   - sklearn ``LogisticRegression`` (L2, C=1, lbfgs) on log1p(CP10k) z-scored on the
     reference and clipped at 10;
   - *kNN label transfer*: ``KNeighborsClassifier`` (k=15, distance-weighted) on the PCA URs.

   A diagnostic row (no peer) fits the same decoder on the z-scored genes instead of a UR.
   Printed: mean ± sd of macro-F1 and accuracy per method over splits x seeds, per-split
   means, the conformal coverage of every held-out cell by the prediction sets at the default
   alpha (target 0.90 ± 0.03), and the targets: aivc macro-F1 >= CellTypist's (each mode), PASS/FAIL.
   Then throughput: ``aivc annotate`` from stored URs (the user's path, writing the prediction
   version and its report) against ``celltypist.annotate`` on an in-memory AnnData, on each
   split's 350 query cells and on ``--peer-cells`` cells (split 0's query repeated, as URs
   written to the lake and as an AnnData): cells/s, target >= 10x.

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


# -- 1. accuracy against the real peers, over splits and seeds -------------------------------------
REF, QUERY = "pbmc-reference", "pbmc-query"
ROOT = Path(__file__).resolve().parent.parent
CELLTYPIST_PY = ROOT / ".celltypist-venv" / "bin" / "python"
PEER_SCRIPT = Path(__file__).resolve().parent / "celltypist_peer.py"
ABSTAINED = "(abstained)"
AIVC = "aivc decoder"
CT, CT_MV = "CellTypist 1.7.1", "CellTypist 1.7.1, majority voting"
LR, KNN, DIAG = "LR on log1p CP10k (sklearn)", "kNN (k=15) on the PCA UR", "aivc decoder on z-scored genes (diagnostic)"
TARGET_SPEEDUP = 10.0


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over every type present in ``truth``: a type never predicted scores 0, an
    abstention or a type absent from the truth is a wrong prediction for its cell."""
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=sorted(set(truth)), average="macro", zero_division=0))


def _splits(n_random: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, reference rows, query rows) of the 700 cells: the two halves (different 10x
    lanes) both ways, then ``n_random`` random 350/350 splits."""
    out = [("halves 1->2", np.arange(350), np.arange(350, 700)), ("halves 2->1", np.arange(350, 700), np.arange(350))]
    for r in range(n_random):
        p = np.random.default_rng(1000 + r).permutation(700)
        out.append((f"random {r}", np.sort(p[:350]), np.sort(p[350:])))
    return out


def _cli(*args: str) -> dict[str, Any]:
    """``aivc ARGS --json`` in a subprocess (the user's path), its JSON output."""
    import subprocess

    exe = Path(sys.executable).parent / "aivc"
    res = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    if res.returncode != 0:
        raise RuntimeError(f"aivc {' '.join(args)} failed ({res.returncode}): {res.stdout[-2000:]} {res.stderr[-2000:]}")
    return json.loads(res.stdout)


def _split_lake(work: Path, ref_rows: np.ndarray, q_rows: np.ndarray, urs: list[str]) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """Submit the reference (labelled) and the query (labels withheld), embed with the defaults."""
    import yaml

    from aivc.demo import pbmc_counts, pbmc_manifest
    from aivc.embeddings.pca import embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.features import get_version
    from aivc.store.lake import Lake

    adata = pbmc_counts()
    lake = Lake.init(work / "lake")
    for ds, rows, lab in ((REF, ref_rows, True), (QUERY, q_rows, False)):
        h, m = work / f"{ds}.h5ad", work / f"{ds}.yaml"
        adata[rows].copy().write_h5ad(h)
        m.write_text(yaml.safe_dump(pbmc_manifest(ds, labelled=lab, title=f"PBMC {'reference' if lab else 'query, labels withheld'}"), sort_keys=False))
        res = submit(lake, h, m, report_dir=work / "reports")
        assert res.status == "committed", res.errors
    embs, secs = {}, {}
    t = time.perf_counter()
    embs["PCA"] = embed_pca(lake)  # `aivc embed pca` with its defaults
    secs["PCA"] = time.perf_counter() - t
    if "cell-vae" in urs:
        t = time.perf_counter()
        model = _cli("train", "cell-vae", "--lake", str(lake.root))["model"]
        ref = _cli("embed", model, "--lake", str(lake.root))["ref"]
        embs["cell-vae"], secs["cell-vae"] = get_version(lake, ref), time.perf_counter() - t
    return lake, embs, secs


def _urs(lake: Any, emb: Any, ds: str, barcodes: list[str]) -> np.ndarray:
    from aivc.store.features import read_vectors

    tab, vec = read_vectors(lake, emb, datasets={ds}, columns=("id",))
    pos = {i: k for k, i in enumerate(tab.column("id").to_pylist())}
    return vec[[pos[f"{ds}@1:{b}"] for b in barcodes]]


def _aivc_run(lake: Any, emb: Any, seed: int, q_ids: list[str], truth: np.ndarray) -> dict[str, Any]:
    """The user's path from stored URs: train (default config, this seed), annotate the query."""
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.instruments.predictions import read_predictions

    t = time.perf_counter()
    rec = train_celltype(lake, emb.ref, datasets=[REF], config=CellTypeConfig(seed=seed))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    pv = annotate(lake, rec.ref, datasets=[QUERY])
    annotate_s = time.perf_counter() - t
    tab = read_predictions(lake, pv).to_pandas().set_index("obs_id").loc[q_ids]
    top = tab["predicted_term_id"].to_numpy(dtype=object)
    abstain = tab["abstain"].to_numpy(dtype=bool)
    sets = tab["prediction_set"].tolist()
    covered = np.array([t in s for t, s in zip(truth, sets, strict=True)])
    trained = np.isin(truth, [c["term_id"] for c in rec.outputs["classes"]])
    return {
        "pred": np.where(abstain, ABSTAINED, top), "top": top, "rec": rec, "train_s": train_s, "annotate_s": annotate_s,
        "coverage": float(covered.mean()), "coverage_trained_types": float(covered[trained].mean()), "set_size": float(tab["set_size"].mean()),
        "abstained": float(abstain.mean()), "n_classes": len(rec.outputs["classes"]), "excluded": dict(rec.metrics["excluded_classes"]),
    }  # fmt: skip


def _write_h5ad(path: Path, expr: np.ndarray, genes: list[str], names: list[str], labels: np.ndarray | None) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    a = ad.AnnData(X=sp.csr_matrix(expr.astype(np.float32)), obs=pd.DataFrame(index=pd.Index(names, dtype=str)), var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    if labels is not None:
        a.obs["label"] = pd.Categorical(labels.astype(str))
    a.write_h5ad(path)


def _celltypist(work: Path, tasks: dict[str, Any]) -> dict[str, Any]:
    """Run CellTypist 1.7.1 in its own venv (scikit-learn < 1.7) on the files written."""
    import subprocess

    if not CELLTYPIST_PY.exists():
        raise SystemExit(f"no CellTypist venv at {CELLTYPIST_PY.parent.parent}: run benchmarks/celltypist-venv.sh first")
    job = work / "celltypist-job.json"
    out = work / "celltypist-out.json"
    job.write_text(json.dumps({"tasks": tasks, "label": "label", "out": str(out), "majority_voting": True}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run([str(CELLTYPIST_PY), str(PEER_SCRIPT), str(job)], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"CellTypist failed ({res.returncode}): {res.stderr[-3000:]}")
    return json.loads(out.read_text())


def _mean_sd(v: list[float]) -> tuple[float, float]:
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def accuracy(work: Path, n_random: int, seeds: int, urs: list[str], peer_cells: int, quiet: bool) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from aivc.demo import pbmc_counts
    from aivc.instruments.celltype_fit import fit_decoder
    from aivc.instruments.celltype_model import CellTypeConfig

    truth_all, expr, barcodes = _truth_terms(), _expression(), _barcodes()
    genes = [str(g) for g in pbmc_counts().var_names]
    splits = _splits(n_random)
    runs: list[dict[str, Any]] = []  # one row per (split, method, UR, seed)
    split_info: list[dict[str, Any]] = []
    ct_tasks: dict[str, Any] = {}
    tiled: dict[str, Any] = {}
    for si, (name, ref_rows, q_rows) in enumerate(splits):
        d = work / f"split{si}"
        d.mkdir(parents=True)
        t0 = time.perf_counter()
        lake, embs, emb_s = _split_lake(d, ref_rows, q_rows, urs)
        q_bar = [barcodes[r] for r in q_rows]
        q_ids = [f"{QUERY}@1:{b}" for b in q_bar]
        truth, truth_ref = truth_all[q_rows], truth_all[ref_rows]
        ref_counts = {str(k): int(v) for k, v in zip(*np.unique(truth_ref, return_counts=True), strict=True)}
        info = {"split": name, "reference_type_counts": ref_counts, "query_types": len(set(truth)), "embed_s": {k: round(v, 1) for k, v in emb_s.items()}}
        _say(f"\n[{name}] reference {len(ref_rows)} cells in {len(ref_counts)} types (cells per type {sorted(ref_counts.values())}), query {len(q_rows)} cells in "
             f"{len(set(truth))} types; lake + URs in {time.perf_counter() - t0:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in emb_s.items())})", quiet)  # fmt: skip
        for ur, emb in embs.items():
            for seed in range(seeds):
                r = _aivc_run(lake, emb, seed, q_ids, truth)
                f1, f1_top = _macro_f1(truth, r["pred"]), _macro_f1(truth, r["top"])
                runs.append({"split": name, "method": AIVC, "ur": ur, "seed": seed, "macro_f1": f1, "macro_f1_without_abstention": f1_top, "accuracy": float((r["pred"] == truth).mean()),
                             **{k: r[k] for k in ("coverage", "coverage_trained_types", "set_size", "abstained", "train_s", "annotate_s", "n_classes")}})  # fmt: skip
                _say(f"  aivc on {ur} (seed {seed}): {r['n_classes']} types kept, excluded {list(r['excluded']) or 'none'}; macro-F1 {f1:.3f} (abstentions wrong; "
                     f"{f1_top:.3f} without), coverage {r['coverage']:.3f}, set size {r['set_size']:.2f}, abstained {r['abstained']:.1%}; train {r['train_s']:.0f}s, annotate {r['annotate_s']:.2f}s", quiet)  # fmt: skip
                if ur == "PCA" and seed == 0:
                    info["aivc_annotate_s"] = r["annotate_s"]
                    if si == 0 and peer_cells:
                        tiled = {"lake": lake, "emb": emb, "rec": r["rec"], "q_bar": q_bar}
        # peers on the same reference and query cells
        e_tr, e_te = expr[ref_rows], expr[q_rows]
        mu, sd = e_tr.mean(axis=0), e_tr.std(axis=0)
        sd[sd == 0] = 1
        z_tr, z_te = np.clip((e_tr - mu) / sd, -10, 10), np.clip((e_te - mu) / sd, -10, 10)
        u_tr, u_te = _urs(lake, embs["PCA"], REF, [barcodes[r] for r in ref_rows]), _urs(lake, embs["PCA"], QUERY, q_bar)
        classes = sorted(k for k, v in ref_counts.items() if v >= 2)
        keep = np.isin(truth_ref, classes)
        diag = fit_decoder(z_tr[keep].astype(np.float32), np.array([classes.index(c) for c in truth_ref[keep]]), classes, classes, CellTypeConfig())
        peers = {
            LR: LogisticRegression(C=1.0, max_iter=3000).fit(z_tr, truth_ref).predict(z_te),
            KNN: KNeighborsClassifier(n_neighbors=15, weights="distance").fit(u_tr, truth_ref).predict(u_te),
            DIAG: np.array(classes, dtype=object)[diag.predict_arrays(z_te.astype(np.float32))["top"]],
        }
        for m, p in peers.items():
            runs.append({"split": name, "method": m, "ur": "genes" if m != KNN else "PCA", "seed": 0, "macro_f1": _macro_f1(truth, p), "accuracy": float((p == truth).mean())})
        _write_h5ad(d / "ct-ref.h5ad", e_tr, genes, [barcodes[r] for r in ref_rows], truth_ref)
        _write_h5ad(d / "ct-query.h5ad", e_te, genes, q_bar, None)
        ct_tasks[name] = {"reference": str(d / "ct-ref.h5ad"), "queries": {"query": str(d / "ct-query.h5ad")}, "_truth": truth}
        if si == 0 and peer_cells:
            reps = -(-peer_cells // len(q_rows))
            _write_h5ad(d / "ct-tiled.h5ad", np.tile(e_te, (reps, 1))[:peer_cells], genes, [f"{b}#{k}" for k in range(reps) for b in q_bar][:peer_cells], None)
            ct_tasks[name]["queries"]["tiled"] = str(d / "ct-tiled.h5ad")
        split_info.append(info)

    _say("\nCellTypist 1.7.1 (its own venv) on every split's reference and query ...", quiet)
    truths = {k: v.pop("_truth") for k, v in ct_tasks.items()}
    ct = _celltypist(work, ct_tasks)
    for info in split_info:
        res = ct["tasks"][info["split"]]
        q, truth = res["queries"]["query"], truths[info["split"]]
        for m, key in ((CT, "predicted"), (CT_MV, "majority_voting")):
            p = np.array(q[key], dtype=object)
            runs.append({"split": info["split"], "method": m, "ur": "genes", "seed": 0, "macro_f1": _macro_f1(truth, p), "accuracy": float((p == truth).mean())})
        info.update(celltypist_train_s=res["train_s"], celltypist_annotate_s=q["annotate_s"], celltypist_majority_voting_s=q["annotate_majority_voting_s"])
    out = _summarise(runs, split_info, urs, seeds, quiet)
    out["celltypist"] = {"version": ct["celltypist"], "scikit_learn": ct["scikit_learn"]}
    out["throughput"] = _peer_throughput(split_info, ct, tiled, peer_cells, quiet)
    return out


def _summarise(runs: list[dict[str, Any]], split_info: list[dict[str, Any]], urs: list[str], seeds: int, quiet: bool) -> dict[str, Any]:
    names = [s["split"] for s in split_info]
    rows = [(AIVC, ur) for ur in urs] + [(CT, "genes"), (CT_MV, "genes"), (LR, "genes"), (KNN, "PCA"), (DIAG, "genes")]
    _say(f"\nMacro-F1 over every held-out cell (all types present in the query's truth; abstention counts as wrong), {len(names)} splits"
         f" x {seeds} decoder seeds for aivc (the peers are deterministic: one run per split)", quiet)  # fmt: skip
    _say(f"{'method':46s} {'UR':9s} {'runs':>4s} {'macro-F1':>15s} {'accuracy':>15s}   per split (mean over seeds): {' | '.join(names)}", quiet)
    summary = {}
    for m, ur in rows:
        mine = [r for r in runs if r["method"] == m and r["ur"] == ur]
        f1, acc = _mean_sd([r["macro_f1"] for r in mine]), _mean_sd([r["accuracy"] for r in mine])
        per = [float(np.mean([r["macro_f1"] for r in mine if r["split"] == s])) for s in names]
        key = f"{m} [{ur}]"
        summary[key] = {"macro_f1_mean": round(f1[0], 4), "macro_f1_sd": round(f1[1], 4), "accuracy_mean": round(acc[0], 4), "accuracy_sd": round(acc[1], 4), "per_split": dict(zip(names, [round(x, 4) for x in per], strict=True)), "runs": len(mine)}
        _say(f"{m:46s} {ur:9s} {len(mine):4d} {f1[0]:8.3f} ± {f1[1]:.3f} {acc[0]:8.3f} ± {acc[1]:.3f}   {' '.join(f'{x:.3f}' for x in per)}", quiet)
    for ur in urs:
        mine = [r for r in runs if r["method"] == AIVC and r["ur"] == ur]
        f1t = _mean_sd([r["macro_f1_without_abstention"] for r in mine])
        cov, cov_t = _mean_sd([r["coverage"] for r in mine]), _mean_sd([r["coverage_trained_types"] for r in mine])
        size, ab = float(np.mean([r["set_size"] for r in mine])), float(np.mean([r["abstained"] for r in mine]))
        ok = abs(cov[0] - 0.9) <= 0.03
        summary[f"{AIVC} [{ur}]"].update(macro_f1_without_abstention=round(f1t[0], 4), coverage=round(cov[0], 4), coverage_sd=round(cov[1], 4), coverage_trained_types=round(cov_t[0], 4),
                                         mean_set_size=round(size, 3), abstained=round(ab, 4), coverage_within_3_points=ok)  # fmt: skip
        _say(f"aivc on {ur}: macro-F1 {f1t[0]:.3f} ± {f1t[1]:.3f} without counting abstentions ({ab:.1%} abstained); conformal sets (alpha 0.1) cover {cov[0]:.3f} ± {cov[1]:.3f} "
             f"of all held-out cells ({cov_t[0]:.3f} of those of trained types), mean set size {size:.2f}; target 0.90 ± 0.03 {'PASS' if ok else 'FAIL'}", quiet)  # fmt: skip
    targets = {}
    for ur in urs:
        dec = summary[f"{AIVC} [{ur}]"]
        for peer in (CT, CT_MV):
            p = summary[f"{peer} [genes]"]
            diffs = [dec["per_split"][s] - p["per_split"][s] for s in names]
            ok = dec["macro_f1_mean"] >= p["macro_f1_mean"]
            targets[f"{ur} vs {peer}"] = {"ratio": round(dec["macro_f1_mean"] / p["macro_f1_mean"], 4), "pass": ok, "splits_at_least_peer": int(sum(x >= 0 for x in diffs)), "mean_difference": round(float(np.mean(diffs)), 4)}
            _say(f"aivc [{ur}] / {peer}: macro-F1 {dec['macro_f1_mean']:.3f} / {p['macro_f1_mean']:.3f} = {dec['macro_f1_mean'] / p['macro_f1_mean']:.3f}x "
                 f"(at least the peer on {sum(x >= 0 for x in diffs)} of {len(diffs)} splits)   target >= 1.00x   {'PASS' if ok else 'FAIL'}", quiet)  # fmt: skip
    return {"splits": split_info, "summary": summary, "targets": targets, "runs": runs}


def _peer_throughput(split_info: list[dict[str, Any]], ct: dict[str, Any], tiled: dict[str, Any], peer_cells: int, quiet: bool) -> dict[str, Any]:
    """aivc annotate from stored URs against celltypist.annotate on the same query cells."""
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import register_decoder
    from aivc.instruments.registry import load_instrument
    from aivc.store.features import EmbeddingWriter
    from aivc.store.lineage import Lineage

    n_q = 350
    a_s = float(np.median([s["aivc_annotate_s"] for s in split_info]))
    c_s = float(np.median([s["celltypist_annotate_s"] for s in split_info]))
    mv_s = float(np.median([s["celltypist_majority_voting_s"] for s in split_info]))
    rows = [{"cells": n_q, "path": "aivc annotate (stored PCA URs -> prediction version + report), median over splits", "seconds": a_s},
            {"cells": n_q, "path": "celltypist.annotate (in-memory AnnData), median over splits", "seconds": c_s},
            {"cells": n_q, "path": "celltypist.annotate, majority voting, median over splits", "seconds": mv_s}]  # fmt: skip
    out: dict[str, Any] = {}
    if tiled:
        lake, emb, rec, q_bar = tiled["lake"], tiled["emb"], tiled["rec"], tiled["q_bar"]
        vec = _urs(lake, emb, QUERY, q_bar)
        reps = -(-peer_cells // len(q_bar))
        ids = [f"{QUERY}@1:{b}#{k}" for k in range(reps) for b in q_bar][:peer_cells]
        with EmbeddingWriter(lake, "cell", "pca_tiled", emb.dim, source={"kind": "benchmark"}, lineage=Lineage(datasets=(f"{QUERY}@1",))) as w:
            w.write(ids, np.tile(vec, (reps, 1))[:peer_cells], soma_joinids=np.arange(peer_cells), dataset_ids=np.array([QUERY] * peer_cells, dtype=object))
        assert w.version is not None
        model = load_instrument(lake, rec)
        trec = register_decoder(lake, model, w.version, name="celltype-tiled")
        times = {}
        for key, report in (("report", True), ("no_report", False)):
            t = time.perf_counter()
            annotate(lake, trec.ref, all_datasets=True, report=report)
            times[key] = time.perf_counter() - t
        from aivc.store.features import read_vectors

        _, allvec = read_vectors(lake, w.version, columns=("id",))
        t = time.perf_counter()
        model.predict(allvec)
        times["direct"] = time.perf_counter() - t
        q = ct["tasks"][split_info[0]["split"]]["queries"]["tiled"]
        rows += [{"cells": peer_cells, "path": "aivc annotate (stored URs -> prediction version + report)", "seconds": times["report"]},
                 {"cells": peer_cells, "path": "aivc annotate --no-report", "seconds": times["no_report"]},
                 {"cells": peer_cells, "path": "aivc decoder.predict on in-memory URs", "seconds": times["direct"]},
                 {"cells": peer_cells, "path": "celltypist.annotate (in-memory AnnData)", "seconds": q["annotate_s"]}]  # fmt: skip
    _say(f"\nThroughput on the query cells (for {peer_cells:,} cells: split 0's query repeated)", quiet)
    _say(f"{'path':78s} {'cells':>7s} {'seconds':>8s} {'cells/s':>11s}", quiet)
    for r in rows:
        r["cells_per_second"] = round(r["cells"] / r["seconds"], 1)
        _say(f"{r['path']:78s} {r['cells']:7,d} {r['seconds']:8.3f} {r['cells_per_second']:11,.0f}", quiet)
    for n in sorted({r["cells"] for r in rows}):
        aivc = next(r for r in rows if r["cells"] == n and r["path"].startswith("aivc annotate ("))
        peer = next(r for r in rows if r["cells"] == n and r["path"].startswith("celltypist.annotate ("))
        ratio = aivc["cells_per_second"] / peer["cells_per_second"]
        out[str(n)] = {"ratio": round(ratio, 4), "pass": ratio >= TARGET_SPEEDUP}
        _say(f"aivc annotate / celltypist.annotate at {n:,} cells: {ratio:.2f}x   target >= {TARGET_SPEEDUP:.0f}x   {'PASS' if ratio >= TARGET_SPEEDUP else 'FAIL'}", quiet)
    return {"rows": rows, "ratios": out}


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
    ap.add_argument("--seeds", type=int, default=3, help="decoder seeds (folds, optimiser) per split and UR")
    ap.add_argument("--splits", type=int, default=3, help="random 350/350 reference/query splits, besides the two halves both ways")
    ap.add_argument("--urs", default="PCA,cell-vae", help="URs the decoder reads: PCA (`aivc embed pca`) and/or cell-vae (`aivc train cell-vae` + `aivc embed`, defaults)")
    ap.add_argument("--peer-cells", type=int, default=50_000, help="cells (split 0's query repeated) for the throughput against celltypist.annotate; 0: skip")
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
            urs = [u.strip() for u in args.urs.split(",") if u.strip()]
            if "PCA" not in urs or not set(urs) <= {"PCA", "cell-vae"}:
                ap.error(f"--urs must include PCA and name only PCA, cell-vae; got {args.urs!r}")
            out["accuracy"] = accuracy(work, args.splits, args.seeds, urs, args.peer_cells, args.json)
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
