"""The real peer for cell URs: scvi-tools' SCVI against aivc's ``cell-vae``, same cells, same run.

Usage::

    .venv/bin/python benchmarks/bench_scvi_peer.py [--out DIR] [--scenarios pbmc,batches] [--json]

What it does
------------
Two scenarios, each in a fresh lake under ``--out`` (default ``/work/bench-scratch/scvi-peer``):

``pbmc``
    the real PBMC cells of ``aivc demo`` (:func:`aivc.demo.pbmc_counts`: scanpy's
    ``pbmc68k_reduced`` with its exact raw counts, 700 cells) as **one** dataset, labelled
    (``cell_type`` from ``bulk_labels`` through :func:`aivc.demo.pbmc_manifest`).
``batches``
    the same 700 real cells in 3 batches with simulated batch effects
    (``benchmarks/batch_effects.py``'s :func:`make_batches` at its defaults).

For each, what a user gets, every step a subprocess of the ``aivc`` CLI (``--json``):

1. ``aivc init``, ``aivc submit`` of every file;
2. ``aivc embed pca`` (the baseline; its defaults);
3. ``aivc train cell-vae`` with the packaged config (epochs ``auto``, early stopping on the
   validation loss), then ``aivc embed cell-vae@1``;
4. scvi-tools' ``scvi.model.SCVI`` with its defaults on the **same cells and genes**, read back
   from the lake (the raw counts of the scenario's cells over the genes every dataset measured,
   which are the genes cell-vae trains on): ``setup_anndata`` (``batch_key`` = the dataset for
   ``batches``, none for ``pbmc``), ``SCVI(adata)``, ``train(accelerator="cpu")`` (its
   ``max_epochs`` rule: ``min(400, round(20000 / n_cells * 400))``, no early stopping),
   ``get_latent_representation()``; seeded with ``scvi.settings.seed``; torch threads
   ``--scvi-threads`` (default 1, the compute aivc's training gets: one Ray Train worker, one
   thread; on this shared 2-core machine torch's default of 2 threads measured 3.5x slower per
   epoch than 1, 1.26 s against 0.36 s, from thread contention);
5. "same epochs": ``aivc train cell-vae --set optim.epochs=<SCVI's epochs> --set
   optim.early_stopping_patience=0`` (registered as ``cell-vae-same-epochs@1``) and its embed,
   for the time-per-epoch comparison on the same cells and epochs.

Reported per method: wall time of train (aivc: the ``aivc train`` subprocess, Ray start-up
included; SCVI: ``model.train()``), of embed, of both; epochs run; seconds per epoch
(aivc: the mean of the model record's ``history[].seconds`` (the training loop alone) and
train wall / epochs; SCVI: train wall / epochs); 15-NN label accuracy (``bulk_labels``;
``KNeighborsClassifier(15)``, ``RepeatedStratifiedKFold`` 5 folds x 3 draws, mean); on
``batches`` the scib-metrics scores of ``bench_urs.score`` (raw, Total = 0.6 bio + 0.4 batch).

Targets (PASS/FAIL): aivc seconds per epoch <= 1.0x SCVI's (same epochs); default cell-vae
15-NN accuracy >= SCVI's; default cell-vae scib Total >= SCVI's (batches); default cell-vae
15-NN accuracy >= PCA's (the issue's target). ``--json`` prints one JSON object. Exit status 1
when a step failed (the other steps still run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_urs import Scenario, _fmt, lognorm_counts, scenario_cells, score, vectors_for  # noqa: E402

K_NEIGHBOURS, N_FOLDS, N_DRAWS = 15, 5, 3
DEFAULT, SAME, SCVI, PCA = "cell-vae (defaults)", "cell-vae (same epochs)", "SCVI (defaults)", "PCA"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cli(*args: str) -> tuple[dict[str, Any], float]:
    """``aivc ARGS --json`` in a subprocess (the user's path): its JSON output and wall seconds."""
    exe = Path(sys.executable).parent / "aivc"
    t0 = time.perf_counter()
    res = subprocess.run([str(exe), *args, "--json"], capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled", "GX_ANALYTICS_ENABLED": "False"})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"aivc {' '.join(args)} failed ({res.returncode}): {res.stdout[-1500:]} {res.stderr[-1500:]}")
    return json.loads(res.stdout), wall


# -- inputs --------------------------------------------------------------------------------
def write_inputs(work: Path, seed: int, keys: list[str]) -> list[Scenario]:
    import yaml
    from batch_effects import BatchSpec, make_batches

    from aivc.demo import pbmc_counts, pbmc_manifest

    out: list[Scenario] = []
    if "pbmc" in keys:
        d = work / "inputs" / "pbmc"
        d.mkdir(parents=True, exist_ok=True)
        h5, mf = d / "pbmc68k.h5ad", d / "pbmc68k.yaml"
        pbmc_counts().write_h5ad(h5)
        mf.write_text(yaml.safe_dump(pbmc_manifest("pbmc68k", labelled=True, title="PBMC 68k (reduced), 700 cells, labelled"), sort_keys=False))
        out.append(Scenario("pbmc", "(a) real PBMC, 700 cells, one dataset", ["pbmc68k"], [(h5, mf)]))
    if "batches" in keys:
        spec = BatchSpec(seed=seed)
        files, _ = make_batches(work / "inputs" / "batches", spec, log=_log)
        out.append(Scenario("batches", "(b) the same cells with simulated batch effects (3 batches)", [f"{spec.prefix}-batch{k + 1}" for k in range(spec.n_batches)], files))
    return out


def raw_counts(lake: Any, cells: pd.DataFrame, genes: pd.DataFrame) -> Any:
    """The scenario's raw counts (CSR float32), cells x genes in the given orders, from the lake."""
    from aivc.store import soma_io
    from aivc.store.catalog import Catalog

    hw = Catalog(lake).high_water("homo_sapiens")
    X = soma_io.read_rows(lake.soma_uri("homo_sapiens"), hw, cells["soma_joinid"].to_numpy(np.int64), genes["soma_joinid"].to_numpy(np.int64))
    return X.tocsr().astype(np.float32)


# -- the methods ----------------------------------------------------------------------------
def aivc_model(lake_dir: str, lake: Any, cells: pd.DataFrame, sets: list[str]) -> dict[str, Any]:
    """``aivc train cell-vae [--set ...]``, ``aivc models show``, ``aivc embed MODEL``; vectors."""
    from aivc.store.features import get_version

    args = ["train", "cell-vae", "--lake", lake_dir]
    for s in sets:
        args += ["--set", s]
    tr, train_s = cli(*args)
    rec, _ = cli("models", "show", tr["model"], "--lake", lake_dir)
    hist = rec.get("history") or []
    secs = [float(h["seconds"]) for h in hist if h.get("seconds") is not None]
    em, embed_s = cli("embed", tr["model"], "--lake", lake_dir)
    epochs = int(tr["epochs"])
    return {
        "model": tr["model"], "ref": em["ref"], "epochs": epochs, "best_epoch": tr["metrics"].get("best_epoch"),
        "validation_loss": tr["metrics"].get("validation_loss"), "train_s": train_s, "embed_s": embed_s, "total_s": train_s + embed_s,
        "s_per_epoch_wall": train_s / epochs, "s_per_epoch_history": float(np.mean(secs)) if secs else None, "history_s": float(np.sum(secs)) if secs else None,
        "vectors": vectors_for(lake, get_version(lake, em["ref"]), cells),
    }  # fmt: skip


def run_scvi(counts: Any, cells: pd.DataFrame, genes: pd.DataFrame, batch: bool, seed: int, threads: int, max_epochs: int | None = None) -> dict[str, Any]:
    import contextlib

    import anndata as ad
    import scvi
    import torch

    scvi.settings.seed = seed
    if threads > 0:
        torch.set_num_threads(threads)
    obs = pd.DataFrame({"batch": cells["dataset_id"].astype("category").to_numpy()}, index=cells["obs_id"].to_numpy())
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=genes["gene_id"].astype(str).to_numpy()))
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch" if batch else None)
    model = scvi.model.SCVI(adata)
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model.train(accelerator="cpu", **({"max_epochs": max_epochs} if max_epochs else {}))
    t2 = time.perf_counter()
    latent = model.get_latent_representation()
    t3 = time.perf_counter()
    epochs = int(len(model.history["elbo_train"]))
    return {
        "model": f"scvi-tools {scvi.__version__} SCVI (n_latent {model.module.n_latent}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "epochs": epochs, "setup_s": t1 - t0, "train_s": t2 - t1, "embed_s": t3 - t2, "total_s": t3 - t1,
        "s_per_epoch_wall": (t2 - t1) / epochs, "vectors": np.asarray(latent, dtype=np.float32),
    }  # fmt: skip


def knn_accuracy(vectors: np.ndarray, labels: np.ndarray, seed: int) -> tuple[float, float]:
    """15-NN label accuracy, 5-fold stratified, 3 fold draws: (mean, sd over the 15 folds)."""
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = RepeatedStratifiedKFold(n_splits=N_FOLDS, n_repeats=N_DRAWS, random_state=seed)
    s = cross_val_score(KNeighborsClassifier(n_neighbors=K_NEIGHBOURS), vectors, labels, cv=cv)
    return float(s.mean()), float(s.std())


# -- one scenario ------------------------------------------------------------------------------
def run_scenario(sc: Scenario, work: Path, a: argparse.Namespace, failures: list[dict[str, Any]]) -> dict[str, Any]:
    from aivc.store.features import get_version
    from aivc.store.lake import Lake

    lake_dir = work / sc.key / "lake"
    shutil.rmtree(lake_dir.parent, ignore_errors=True)
    lake_dir.parent.mkdir(parents=True)
    L = str(lake_dir)
    cli("init", "--lake", L)
    for h5, mf in sc.files:
        r, s = cli("submit", str(h5), "-m", str(mf), "--lake", L, "--report-dir", str(work / sc.key / "reports" / h5.stem))
        _log(f"bench: {sc.key}: submit {h5.name}: {r.get('status')} ({s:.1f}s)")
    lake = Lake.open(L)
    cells, genes = scenario_cells(lake, sc)
    labels = cells["label"].to_numpy()
    res: dict[str, dict[str, Any]] = {}

    def step(name: str, fn: Any) -> None:
        _log(f"bench: {sc.key}: {name} ...")
        try:
            res[name] = fn()
            r = res[name]
            _log(f"bench: {sc.key}: {name}: {r.get('model', r.get('ref', ''))}, {r.get('epochs', '-')} epochs, train {r.get('train_s', 0):.1f}s, embed {r.get('embed_s', 0):.1f}s")
        except Exception as exc:  # noqa: BLE001 - reported; the other methods still run
            failures.append({"scenario": sc.key, "method": name, "error": traceback.format_exc()[-3000:]})
            _log(f"bench: {sc.key}: {name} FAILED: {type(exc).__name__}: {str(exc)[:300]}")

    def pca() -> dict[str, Any]:
        em, s = cli("embed", "pca", "--lake", L)
        return {"ref": em["ref"], "embed_s": s, "total_s": s, "vectors": vectors_for(lake, get_version(lake, em["ref"]), cells)}

    step(PCA, pca)
    step(DEFAULT, lambda: aivc_model(L, lake, cells, ["optim.epochs=3"] if a.smoke else []))
    step(SCVI, lambda: run_scvi(raw_counts(lake, cells, genes), cells, genes, batch=len(sc.datasets) > 1, seed=a.seed, threads=a.scvi_threads, max_epochs=2 if a.smoke else None))
    if SCVI in res and not a.skip_same_epochs:
        n = res[SCVI]["epochs"]
        step(SAME, lambda: aivc_model(L, lake, cells, [f"optim.epochs={n}", "optim.early_stopping_patience=0", "name=cell-vae-same-epochs"]))
    for r in res.values():
        r["knn_accuracy"], r["knn_accuracy_sd"] = knn_accuracy(r["vectors"], labels, a.seed)
    out: dict[str, Any] = {
        "title": sc.title, "datasets": sc.datasets, "n_cells": int(len(cells)), "n_genes": int(len(genes)), "n_labels": int(pd.Series(labels).nunique()),
        "methods": {k: {kk: vv for kk, vv in v.items() if kk != "vectors"} for k, v in res.items()},
    }  # fmt: skip
    if len(sc.datasets) > 1 and not a.skip_scib and res:
        t0 = time.perf_counter()
        try:
            table = score(lognorm_counts(lake, cells, genes), cells, {k: v["vectors"] for k, v in res.items()}, n_jobs=a.jobs)
            out["scib"] = {col: {idx: (None if pd.isna(v) else float(v)) for idx, v in table[col].items()} for col in table.columns if col != "type"}
            out["scib_types"] = table["type"].to_dict()
        except Exception:  # noqa: BLE001
            failures.append({"scenario": sc.key, "method": "scib-metrics", "error": traceback.format_exc()[-3000:]})
        out["scib_s"] = round(time.perf_counter() - t0, 1)
    return out


# -- targets and output ----------------------------------------------------------------------
def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den in (None, 0) else num / den


def targets(scen: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, key: str, aivc_v: float | None, peer_v: float | None, lower_is_better: bool, target: str) -> None:
        r = _ratio(aivc_v, peer_v)
        ok = r is not None and (r <= 1.0 if lower_is_better else r >= 1.0)
        rows.append({"target": name, "scenario": key, "aivc": aivc_v, "peer": peer_v, "ratio": r, "goal": target, "pass": bool(ok)})

    for key, s in scen.items():
        m = s["methods"]
        g = lambda meth, f, m=m: m.get(meth, {}).get(f)  # noqa: E731
        add("time/epoch, same epochs (train wall / epochs): cell-vae vs SCVI", key, g(SAME, "s_per_epoch_wall"), g(SCVI, "s_per_epoch_wall"), True, "<= 1.00x")
        add("time/epoch, same epochs (history seconds, loop only): cell-vae vs SCVI", key, g(SAME, "s_per_epoch_history"), g(SCVI, "s_per_epoch_wall"), True, "<= 1.00x")
        add("train+embed wall, defaults: cell-vae vs SCVI (information)", key, g(DEFAULT, "total_s"), g(SCVI, "total_s"), True, "<= 1.00x")
        add("15-NN accuracy, defaults: cell-vae vs SCVI", key, g(DEFAULT, "knn_accuracy"), g(SCVI, "knn_accuracy"), False, ">= 1.00x")
        add("15-NN accuracy, defaults: cell-vae vs PCA", key, g(DEFAULT, "knn_accuracy"), g(PCA, "knn_accuracy"), False, ">= 1.00x")
        if "scib" in s:
            add("scib-metrics Total, defaults: cell-vae vs SCVI", key, s["scib"].get(DEFAULT, {}).get("Total"), s["scib"].get(SCVI, {}).get("Total"), False, ">= 1.00x")
            add("scib-metrics Total, defaults: cell-vae vs PCA (information)", key, s["scib"].get(DEFAULT, {}).get("Total"), s["scib"].get(PCA, {}).get("Total"), False, ">= 1.00x")
    return rows


def print_human(out: dict[str, Any]) -> None:
    m = out["machine"]
    print(f"machine: {m['cpus']} CPUs, load average {m['load_start'][0]:.1f} at the start, {m['load_end'][0]:.1f} at the end; python {m['python']}")
    for key, s in out["scenarios"].items():
        print(f"\n== {key}: {s['title']}: {s['n_cells']} cells x {s['n_genes']} genes, {s['n_labels']} labels")
        hdr = f"{'method':<24} {'epochs':>6} {'train s':>8} {'embed s':>8} {'total s':>8} {'s/epoch wall':>12} {'s/epoch hist':>12} {'15-NN acc':>10}"
        if "scib" in s:
            hdr += f" {'scib bio':>9} {'scib batch':>10} {'scib Total':>10}"
        print(hdr)
        print("-" * len(hdr))
        for name, r in s["methods"].items():
            line = (
                f"{name:<24} {r.get('epochs', '-'):>6} {_fmt(r.get('train_s')):>8} {_fmt(r.get('embed_s')):>8} {_fmt(r.get('total_s')):>8} "
                f"{_fmt(r.get('s_per_epoch_wall')):>12} {_fmt(r.get('s_per_epoch_history')):>12} {_fmt(r.get('knn_accuracy')):>10}"
            )
            if "scib" in s:
                sc = s["scib"].get(name, {})
                line += f" {_fmt(sc.get('Bio conservation')):>9} {_fmt(sc.get('Batch correction')):>10} {_fmt(sc.get('Total')):>10}"
            print(line)
        for name, r in s["methods"].items():
            if r.get("model"):
                extra = f", best epoch {r['best_epoch']}" if r.get("best_epoch") else ""
                print(f"   {name}: {r['model']}{extra}")
    print()
    for t in out["targets"]:
        if t["ratio"] is None:
            print(f"[{t['scenario']}] {t['target']}: not measured   FAIL")
            continue
        print(f"[{t['scenario']}] {t['target']}: {t['aivc']:.4g} vs {t['peer']:.4g} = {t['ratio']:.2f}x (target {t['goal']})   {'PASS' if t['pass'] else 'FAIL'}")
    print(f"total {out['total_s']:.0f}s")
    for f in out["failures"]:
        print(f"\n{f['scenario']} / {f['method']} failed:\n{f['error']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="scvi-tools SCVI vs aivc cell-vae (CLI defaults) on the same cells: time per epoch, 15-NN accuracy, scib-metrics.")
    p.add_argument("--out", default="/work/bench-scratch/scvi-peer", help="scratch folder (inputs, one fresh lake per scenario)")
    p.add_argument("--scenarios", default="pbmc,batches", help="comma-separated: pbmc, batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="threads for scib-metrics' neighbour search")
    p.add_argument("--scvi-threads", type=int, default=1, help="torch threads for SCVI (default 1: the one thread of aivc's one Ray Train worker; 0: torch's default)")
    p.add_argument("--skip-same-epochs", action="store_true", help="skip the same-epochs cell-vae run")
    p.add_argument("--skip-scib", action="store_true")
    p.add_argument("--smoke", action="store_true", help="check the path only: 3 cell-vae epochs, 2 SCVI epochs (figures meaningless)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.scenarios.split(",") if k.strip()]
    bad = [k for k in keys if k not in ("pbmc", "batches")]
    if bad or not keys:
        print(f"error: unknown scenario(s) {bad or keys}; choose from pbmc, batches", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    work = Path(a.out).absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()
    failures: list[dict[str, Any]] = []
    out: dict[str, Any] = {"benchmark": "scvi_peer", "out": str(work), "scenarios": {}, "failures": failures}
    for sc in write_inputs(work, a.seed, keys):
        out["scenarios"][sc.key] = run_scenario(sc, work, a, failures)
    out["targets"] = targets(out["scenarios"])
    out["pass"] = all(t["pass"] for t in out["targets"] if "information" not in t["target"])
    out["total_s"] = time.perf_counter() - t0
    out["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_start": load0, "load_end": os.getloadavg()}
    if a.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_human(out)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
