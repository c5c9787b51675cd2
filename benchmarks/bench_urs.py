"""Cell UR quality benchmark: scib-metrics scores of the PCA baseline, ``cell-vae`` and ``cell-transformer``.

Usage::

    /work/venv/bin/python benchmarks/bench_urs.py [--lake DIR] [--workdir DIR] [--epochs 40]
        [--skip-transformer] [--json]

What it does
------------
1. Writes two scenarios' submissions (in ``--workdir``, default ``/work/bench-scratch/urs``)
   and submits them with :func:`aivc.ingest.submission.submit` into one lake (``--lake``;
   default a fresh temporary lake under the workdir, removed at the end unless ``--keep``):

   ``pbmc``
       the real PBMC data of ``aivc demo`` (:func:`aivc.demo.build_pbmc_submissions`:
       ``pbmc68k-part1`` and ``pbmc68k-part2``, 350 cells each, 700 genes mapped).
       Batches = the two datasets; labels = the real ``bulk_labels`` (10 cell types) of
       every cell, joined on the barcode (part 2 is submitted unlabelled, so the labels
       are never seen by any model).
   ``batches``
       the same 700 real cells split into 3 batches with simulated gene-specific and
       library-size batch effects (``benchmarks/batch_effects.py`` at its defaults:
       balanced composition, log-normal gene effects sd 0.5, library scales 0.5/0.87/1.5,
       Poisson resampling). Batches = the 3 datasets; labels = ``bulk_labels``.

2. Computes, for each scenario, over that scenario's datasets only (``datasets=``):

   ``PCA``
       the baseline: :func:`aivc.embeddings.pca.embed_pca` (32 components of the z-scored
       top variable log-normalized genes), published as ``cell:pca_<scenario>``.
   ``cell-vae``
       trained with :func:`aivc.training.trainer.train` (1 Ray Train worker; latent 16,
       hidden 128, one layer, batch size 32, ``--epochs`` epochs (default 40) with a 10-epoch
       KL warm-up, lr 1e-3, 10 % of the cells held out for validation), then applied to every
       cell of the scenario with :func:`aivc.embeddings.model_job.embed_model` (Ray Data). On these
       630 training cells the validation loss plateaus after ~40 epochs at batch size 32 and
       rises after ~50 (over-fitting); at batch size 128 it is still falling at 40 epochs.
   ``cell-transformer``
       gene URs from co-expression
       (:func:`aivc.embeddings.gene_coexpr.embed_gene_coexpression`, 32 dims) over the
       scenario's datasets, then the transformer (its default architecture: d_model 64,
       2 layers, 4 heads, 128 gene tokens, latent 32; batch size 32, ``--tf-epochs`` epochs,
       default 20) trained on them and applied with ``embed_model``; skipped, and said so,
       when this aivc has no ``cell-transformer`` training yet (or with ``--skip-transformer``).

3. Scores every UR with ``scib_metrics.benchmark.Benchmarker`` (scib-metrics 0.5), raw
   scores (no min-max scaling across methods):

   - bio conservation: isolated labels (ASW), Leiden NMI / ARI (best over resolutions),
     KMeans NMI / ARI, silhouette label, cLISI;
   - batch correction: BRAS (scib-metrics 0.5's batch-removal silhouette, which replaces
     silhouette batch in the Benchmarker), iLISI, kBET (per label), graph connectivity,
     PCR comparison (against the unintegrated PCA: the Benchmarker's ``sc.tl.pca`` of the
     log-normalized counts, 50 components, computed from the cells read back from the lake).
   - aggregates as scib: bio = mean of the bio metrics, batch = mean of the batch metrics,
     total = 0.6 bio + 0.4 batch. The classic silhouette batch (``scib_metrics.silhouette_batch``)
     is printed too, for reference, outside the aggregates.

4. Prints a table per scenario and the target: **cell-vae's total score beats PCA's on the
   batch-effect scenario** (``PASS``/``FAIL``; the same comparison on the PBMC scenario is
   printed for information). ``--json`` prints one JSON object instead.

Everything is seeded (data generation, training, embedding, metrics); on 2 CPU cores the
whole run takes ~5-10 min (JAX start-up included). Exit status 1 when a step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BIO_WEIGHT, BATCH_WEIGHT = 0.6, 0.4


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Scenario:
    key: str
    title: str
    datasets: list[str]
    files: list[tuple[Path, Path]]


@dataclass
class MethodResult:
    method: str
    ref: str | None = None
    seconds: float = 0.0
    ok: bool = True
    note: str = ""
    vectors: np.ndarray | None = None
    detail: dict[str, Any] = field(default_factory=dict)


# -- inputs --------------------------------------------------------------------------------
def write_inputs(work: Path, seed: int) -> list[Scenario]:
    from batch_effects import BatchSpec, make_batches

    from aivc.demo import build_pbmc_submissions

    pbmc = build_pbmc_submissions(work / "inputs" / "pbmc")
    spec = BatchSpec(seed=seed)
    batches, _ = make_batches(work / "inputs" / "batches", spec, log=_log)
    return [
        Scenario("pbmc", "(a) real PBMC, batches = the two demo parts", ["pbmc68k-part1", "pbmc68k-part2"], pbmc),
        Scenario("batches", "(b) PBMC cells with simulated batch effects (3 batches)", [f"{spec.prefix}-batch{k + 1}" for k in range(spec.n_batches)], batches),
    ]


def submit_all(lake: Any, scenarios: list[Scenario], reports: Path) -> None:
    from aivc.ingest.submission import submit

    for sc in scenarios:
        for h5, mf in sc.files:
            res = submit(lake, h5, mf, report_dir=reports / h5.stem)
            if res.status not in ("committed", "unchanged"):
                raise RuntimeError(f"submit {h5.name}: {res.status}: {[str(e) for e in res.errors[:3]]}")
            _log(f"bench: submit {h5.name}: {res.status} {res.dataset_id}@{res.version} ({res.n_cells} cells x {res.n_genes} genes)")


def scenario_cells(lake: Any, sc: Scenario) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cells (``obs_id, soma_joinid, dataset_id, barcode, label``) and common genes of a scenario."""
    from aivc.demo import pbmc_counts
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_cells, version_features

    cat = Catalog(lake)
    versions = [cat.get(d) for d in sc.datasets]
    cells = pd.concat([version_cells(lake, v, ["obs_id", "soma_joinid", "dataset_id"]) for v in versions], ignore_index=True)
    cells = cells.sort_values("soma_joinid", kind="stable").reset_index(drop=True)
    cells["barcode"] = cells["obs_id"].str.split(":", n=1).str[1]
    truth = pbmc_counts().obs["bulk_labels"].astype(str)
    cells["label"] = truth.reindex(cells["barcode"]).to_numpy()
    if cells["label"].isna().any():
        raise RuntimeError(f"{int(cells['label'].isna().sum())} cells of {sc.key} have no ground-truth label")
    genes: pd.DataFrame | None = None
    for v in versions:
        g = version_features(lake, v, ["gene_id", "soma_joinid"])
        genes = g if genes is None else genes.merge(g[["gene_id"]], on="gene_id")
    assert genes is not None
    return cells, genes.sort_values("soma_joinid").reset_index(drop=True)


def lognorm_counts(lake: Any, cells: pd.DataFrame, genes: pd.DataFrame) -> np.ndarray:
    """log1p(counts / total * 1e4) of the scenario's cells, read back from the lake."""
    from aivc.store import soma_io
    from aivc.store.catalog import Catalog
    from aivc.store.read import lognormalize

    org = "homo_sapiens"
    hw = Catalog(lake).high_water(org)
    X = soma_io.read_rows(lake.soma_uri(org), hw, cells["soma_joinid"].to_numpy(np.int64), genes["soma_joinid"].to_numpy(np.int64)).toarray().astype(np.float64)
    return lognormalize(X).astype(np.float32)


def vectors_for(lake: Any, version: Any, cells: pd.DataFrame) -> np.ndarray:
    """The version's vectors in the order of ``cells`` (every cell must have one)."""
    from aivc.store.features import read_vectors

    table, vec = read_vectors(lake, version, columns=("id",))
    pos = pd.Index(table.column("id").to_pylist()).get_indexer(cells["obs_id"])
    if (pos < 0).any():
        raise RuntimeError(f"{version.ref} lacks {int((pos < 0).sum())} of the scenario's cells")
    return vec[pos]


# -- the URs --------------------------------------------------------------------------------
def run_pca(lake: Any, sc: Scenario, cells: pd.DataFrame, n_components: int) -> MethodResult:
    from aivc.embeddings.pca import PcaParams, embed_pca

    t0 = time.perf_counter()
    v = embed_pca(lake, name=f"pca_{sc.key}", datasets=sc.datasets, params=PcaParams(n_components=n_components))
    return MethodResult("PCA", v.ref, time.perf_counter() - t0, vectors=vectors_for(lake, v, cells), detail={"explained_variance_total": v.metrics.get("explained_variance_total")})


def vae_config(sc: Scenario, a: argparse.Namespace) -> Any:
    from aivc.training import config as tc
    from aivc.training.config import CellVaeArchitecture, CellVaeConfig, DataConfig, ValidationSplit

    optim_cls = getattr(tc, "VaeOptimConfig", None) or tc.OptimConfig  # kl_warmup_epochs lives here
    return CellVaeConfig(
        name=f"vae-{sc.key}",
        seed=a.seed,
        data=DataConfig(datasets=tuple(sc.datasets), validation=ValidationSplit(by="fraction", fraction=0.1)),
        model=CellVaeArchitecture(latent_dim=16, hidden_dim=128, n_layers=1, dropout=0.1),
        optim=optim_cls(lr=1e-3, batch_size=a.batch_size, epochs=a.epochs, kl_warmup_epochs=min(10, a.epochs)),
    )


def _embed(lake: Any, model_ref: str, sc: Scenario, name: str, cells: pd.DataFrame) -> tuple[str, np.ndarray, str]:
    """Apply a registered model with ``embed_model`` (or directly when this aivc has none)."""
    try:
        from aivc.embeddings.model_job import embed_model
    except ImportError:
        embed_model = None
    if embed_model is not None:
        v = embed_model(lake, model_ref, datasets=sc.datasets, name=name)
        return v.ref, vectors_for(lake, v, cells), "embed_model (Ray Data)"
    return model_ref, _embed_direct(lake, model_ref, cells), "load_model + module.embed (no embed_model in this aivc)"


def _embed_direct(lake: Any, model_ref: str, cells: pd.DataFrame) -> np.ndarray:
    """Fallback: the registered fixed-input model applied to the cells read from the lake."""
    import torch

    from aivc.store import soma_io
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_features
    from aivc.training.registry import load_model

    module, rec = load_model(lake, model_ref)
    cat = Catalog(lake)
    joinid_of: dict[str, int] = {}
    for ds in sorted(set(cells["dataset_id"])):
        g = version_features(lake, cat.get(ds), ["gene_id", "soma_joinid"])
        joinid_of.update(zip(g["gene_id"].astype(str), g["soma_joinid"].astype(np.int64), strict=True))
    var_j = np.array([joinid_of[g] for g in rec.gene_ids], dtype=np.int64)
    X = soma_io.read_rows(lake.soma_uri("homo_sapiens"), cat.high_water("homo_sapiens"), cells["soma_joinid"].to_numpy(np.int64), var_j).toarray().astype(np.float32)
    codes = {d: i for i, d in enumerate(rec.encodings["batch"])}
    x = torch.from_numpy(X)
    batch = {"x": x, "batch": torch.tensor([codes[d] for d in cells["dataset_id"]]), "library": x.sum(1, keepdim=True)}
    return module.embed(batch).numpy()


def run_vae(lake: Any, sc: Scenario, cells: pd.DataFrame, a: argparse.Namespace) -> MethodResult:
    from aivc.training.trainer import train

    t0 = time.perf_counter()
    res = train(lake, vae_config(sc, a), workers=1)
    t1 = time.perf_counter()
    ref, vec, how = _embed(lake, res.model_ref, sc, f"vae_{sc.key}", cells)
    m = res.metrics
    return MethodResult(
        "cell-vae", ref, time.perf_counter() - t0, vectors=vec, note=f"{res.model_ref}, {how}",
        detail={"model": res.model_ref, "train_s": round(t1 - t0, 1), "epochs": res.epochs, "validation_loss": m.get("validation_loss"), "train_loss": m.get("train_loss"), "embedded_with": how},
    )


def transformer_api() -> tuple[Any, Any] | str:
    """(``CellTransformerConfig``, ``embed_gene_coexpression``) of this aivc, or why not."""
    from aivc.training import config as tc

    if not hasattr(tc, "CellTransformerConfig"):
        return "aivc.training.config has no CellTransformerConfig (no `aivc train cell-transformer` yet)"
    try:
        from aivc.embeddings.gene_coexpr import embed_gene_coexpression
    except ImportError as exc:
        return f"aivc.embeddings.gene_coexpr is not available ({exc})"
    return tc.CellTransformerConfig, embed_gene_coexpression


def transformer_config(sc: Scenario, gene_ur: str, a: argparse.Namespace) -> Any:
    """``cell-transformer`` with its default architecture (d_model 64, 2 layers, 128 tokens, latent 32)."""
    from aivc.training.config import CellTransformerConfig, DataConfig, OptimConfig, ValidationSplit

    return CellTransformerConfig(
        name=f"tf-{sc.key}",
        seed=a.seed,
        gene_ur=gene_ur,
        data=DataConfig(datasets=tuple(sc.datasets), genes="union", validation=ValidationSplit(by="fraction", fraction=0.1)),
        optim=OptimConfig(lr=1e-3, batch_size=a.batch_size, epochs=a.tf_epochs),
    )


def run_transformer(lake: Any, sc: Scenario, cells: pd.DataFrame, a: argparse.Namespace) -> MethodResult:
    api = transformer_api()
    if isinstance(api, str):
        return MethodResult("cell-transformer", ok=False, note=f"not run: {api}")
    _, embed_gene_coexpression = api
    from aivc.training.trainer import train

    t0 = time.perf_counter()
    gv = embed_gene_coexpression(lake, name=f"coexpr_{sc.key}", dim=32, **_if_accepted(embed_gene_coexpression, datasets=sc.datasets))
    cfg = transformer_config(sc, gv.ref, a)
    t1 = time.perf_counter()
    res = train(lake, cfg, workers=1)
    t2 = time.perf_counter()
    ref, vec, how = _embed(lake, res.model_ref, sc, f"tf_{sc.key}", cells)
    m = res.metrics
    return MethodResult(
        "cell-transformer", ref, time.perf_counter() - t0, vectors=vec, note=f"{res.model_ref} on {gv.ref}, {how}",
        detail={"model": res.model_ref, "gene_ur": gv.ref, "gene_ur_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1), "epochs": res.epochs, "validation_loss": m.get("validation_loss"), "train_loss": m.get("train_loss")},
    )


def _if_accepted(fn: Any, **kwargs: Any) -> dict[str, Any]:
    import inspect

    params = inspect.signature(fn).parameters
    return {k: v for k, v in kwargs.items() if k in params}


# -- scoring -------------------------------------------------------------------------------
def score(X: np.ndarray, cells: pd.DataFrame, urs: dict[str, np.ndarray], n_jobs: int) -> pd.DataFrame:
    """scib-metrics Benchmarker results (raw scores) plus silhouette batch for reference."""
    import anndata as ad
    import scib_metrics
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    obs = pd.DataFrame({"batch": cells["dataset_id"].astype("category").to_numpy(), "label": cells["label"].astype("category").to_numpy()}, index=cells["obs_id"].to_numpy())
    adata = ad.AnnData(X=X, obs=obs)
    for k, v in urs.items():
        adata.obsm[k] = np.asarray(v, dtype=np.float32)
    bm = Benchmarker(
        adata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=list(urs),
        bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
        batch_correction_metrics=BatchCorrection(),
        n_jobs=n_jobs,
        progress_bar=False,
    )
    with contextlib.redirect_stdout(sys.stderr):  # scib-metrics logs (e.g. kBET's skipped labels) go to stderr
        bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    kinds = df.loc["Metric Type"]
    table = df.drop(index="Metric Type").astype(float).T  # rows: metrics, columns: methods
    table.insert(0, "type", kinds.map({"Bio conservation": "bio", "Batch correction": "batch", "Aggregate score": "aggregate"}))
    extra = {k: float(scib_metrics.silhouette_batch(v, obs["label"].to_numpy(), obs["batch"].to_numpy())) for k, v in urs.items()}
    table.loc["Silhouette batch (reference only)"] = ["reference", *[extra[k] for k in urs]]
    return table


# -- the benchmark ---------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict[str, Any]:
    from aivc.store.lake import Lake
    from aivc.ray_local import start_ray

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    tmp_lake = a.lake is None
    lake_path = Path(a.lake) if a.lake else Path(tempfile.mkdtemp(prefix="lake-", dir=work)) / "lake"
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"benchmark": "urs", "lake": str(lake_path), "scenarios": {}, "failures": []}
    try:
        lake = Lake.init(lake_path)
        t0 = time.perf_counter()
        scenarios = write_inputs(work, a.seed)
        submit_all(lake, scenarios, work / "reports")
        timings["inputs_and_submit"] = time.perf_counter() - t0
        start_ray()  # one Ray for every job of the run (train/embed_model reuse it)
        importlib.import_module("scib_metrics")  # JAX start-up, timed on its own

        timings["ray_and_jax_startup"] = time.perf_counter() - t0 - timings["inputs_and_submit"]
        for sc in scenarios:
            _log(f"bench: scenario {sc.key}: {sc.title}")
            cells, genes = scenario_cells(lake, sc)
            methods: list[MethodResult] = []
            jobs: list[tuple[str, Callable[[], MethodResult]]] = [
                ("PCA", lambda: run_pca(lake, sc, cells, a.pca_components)),
                ("cell-vae", lambda: run_vae(lake, sc, cells, a)),
                ("cell-transformer", lambda: run_transformer(lake, sc, cells, a)),
            ]
            for name, fn in jobs:
                if name == "cell-transformer" and a.skip_transformer:
                    methods.append(MethodResult(name, ok=False, note="not run: --skip-transformer"))
                    continue
                _log(f"bench:   {name} ...")
                try:
                    r = fn()
                except Exception as exc:  # noqa: BLE001 - reported, the other methods still run
                    r = MethodResult(name, ok=False, note=f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    out["failures"].append({"scenario": sc.key, "method": name, "error": traceback.format_exc()[-3000:]})
                _log(f"bench:   {name}: {r.note or r.ref} ({r.seconds:.1f}s)")
                methods.append(r)
            ok = [m for m in methods if m.ok and m.vectors is not None]
            t0 = time.perf_counter()
            X = lognorm_counts(lake, cells, genes)
            table = score(X, cells, {m.method: m.vectors for m in ok}, n_jobs=a.jobs)
            score_s = time.perf_counter() - t0
            _log(f"bench:   scib-metrics: {score_s:.1f}s")
            out["scenarios"][sc.key] = {
                "title": sc.title,
                "datasets": sc.datasets,
                "n_cells": int(len(cells)),
                "n_genes": int(len(genes)),
                "n_labels": int(cells["label"].nunique()),
                "batch_sizes": {str(k): int(v) for k, v in cells["dataset_id"].value_counts().sort_index().items()},
                "methods": [{"method": m.method, "ref": m.ref, "ok": m.ok, "seconds": round(m.seconds, 1), "note": m.note, **m.detail} for m in methods],
                "scores": {col: {idx: (None if pd.isna(v) else float(v)) for idx, v in table[col].items()} for col in table.columns if col != "type"},
                "metric_types": table["type"].to_dict(),
                "scoring_s": round(score_s, 1),
            }
    finally:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        if tmp_lake and not a.keep:
            shutil.rmtree(lake_path.parent, ignore_errors=True)
    out["timings_s"] = {k: round(v, 1) for k, v in timings.items()} | {"total": round(time.perf_counter() - t_start, 1)}
    out["targets"] = targets(out)
    out["pass"] = bool(out["targets"]["vae_beats_pca_with_batches"]["pass"])
    out["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()}
    return out


def targets(out: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for key, name in (("batches", "vae_beats_pca_with_batches"), ("pbmc", "vae_beats_pca_on_pbmc (information)")):
        s = out["scenarios"].get(key, {}).get("scores", {})
        pca, vae = s.get("PCA", {}).get("Total"), s.get("cell-vae", {}).get("Total")
        res[name] = {"scenario": key, "pca_total": pca, "vae_total": vae, "ratio": (vae / pca) if pca and vae is not None else None, "pass": bool(pca is not None and vae is not None and vae > pca)}
    return res


def print_human(out: dict[str, Any]) -> None:
    print()
    print(f"lake: {out['lake']}")
    m = out["machine"]
    print(f"machine: {m['cpus']} CPUs; python {m['python']}; load average at the end {m['load_avg'][0]:.2f} / {m['load_avg'][1]:.2f} / {m['load_avg'][2]:.2f}")
    for key, s in out["scenarios"].items():
        print()
        print(f"== {s['title']}: {s['n_cells']} cells x {s['n_genes']} genes, {s['n_labels']} labels, batches {s['batch_sizes']}")
        for mm in s["methods"]:
            state = "ok" if mm["ok"] else "not scored"
            fit = f"; {mm['epochs']} epochs, train loss {mm['train_loss']:.4g}, validation loss {mm['validation_loss']:.4g}" if mm.get("validation_loss") is not None else ""
            print(f"   {mm['method']:<17} {state:<10} {mm['seconds']:6.1f}s  {mm['ref'] or ''}  {mm['note']}{fit}")
        methods = list(s["scores"])
        hdr = f"{'metric':<36} {'type':<9}" + "".join(f" {c:>17}" for c in methods)
        print(hdr)
        print("-" * len(hdr))
        for metric, kind in s["metric_types"].items():
            if kind == "aggregate":
                continue
            print(f"{metric:<36} {kind:<9}" + "".join(f" {_fmt(s['scores'][c].get(metric)):>17}" for c in methods))
        print("-" * len(hdr))
        for metric, kind in s["metric_types"].items():
            if kind == "aggregate":
                label = {"Bio conservation": "Bio conservation (mean)", "Batch correction": "Batch correction (mean)", "Total": "Total (0.6 bio + 0.4 batch)"}.get(metric, metric)
                print(f"{label:<36} {'aggregate':<9}" + "".join(f" {_fmt(s['scores'][c].get(metric)):>17}" for c in methods))
        print(f"(scib-metrics: {s['scoring_s']:.1f}s)")
    print()
    for name, t in out["targets"].items():
        if t["pca_total"] is None or t["vae_total"] is None:
            print(f"{name}: not measured   FAIL")
            continue
        print(f"{name}: cell-vae total {t['vae_total']:.3f} vs PCA {t['pca_total']:.3f} (ratio {t['ratio']:.2f}x, target > 1.00x)   {'PASS' if t['pass'] else 'FAIL'}")
    print(f"timings: {json.dumps(out['timings_s'])}")
    for f in out["failures"]:
        print(f"\n{f['scenario']} / {f['method']} failed:\n{f['error']}")


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="scib-metrics scores of cell URs: PCA baseline vs cell-vae vs cell-transformer.")
    p.add_argument("--lake", default=None, help="lake to use (created if missing); default a temporary lake under --workdir")
    p.add_argument("--workdir", default="/work/bench-scratch/urs", help="where inputs, reports and the temporary lake go")
    p.add_argument("--epochs", type=int, default=40, help="cell-vae training epochs")
    p.add_argument("--tf-epochs", type=int, default=20, help="cell-transformer training epochs")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size of both models")
    p.add_argument("--pca-components", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="threads for the neighbour search")
    p.add_argument("--skip-transformer", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the temporary lake")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    out = run(a)
    if a.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print_human(out)
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
