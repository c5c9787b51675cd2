"""``aivc demo``: the main job end to end on real data.

scanpy ships a real 10x PBMC dataset, ``pbmc68k_reduced`` (700 cells, 765 genes, gene
symbols, 10 labelled cell types). Its ``.raw`` holds log1p of counts normalized to 1e4
per cell and ``obs["n_counts"]`` the totals, so raw counts are recovered exactly as
``round(expm1(raw.X) * n_counts / 1e4)``. The demo splits it into two submissions (one
with submitted cell-type labels mapped to the Cell Ontology, one without labels),
validates and commits both, resubmits one unchanged, prints the catalog and runs SQL.

The submissions are written to ``--workdir``, by default ``<lake>/demo-inputs/`` (never
the current folder): no lake reader, check or recovery walks the lake's top level, each
reads only its own folders (``soma``, ``catalog``, ``submissions``, ``features``, ...), so
the extra folder is left alone and goes away with the lake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: Submitted bulk_labels -> Cell Ontology labels (harmonized to term ids by label).
PBMC_LABEL_MAP: dict[str, str] = {
    "CD14+ Monocyte": "CD14-positive monocyte",
    "CD19+ B": "B cell",
    "CD4+/CD25 T Reg": "regulatory T cell",
    "CD8+ Cytotoxic T": "CD8-positive, alpha-beta cytotoxic T cell",
    "CD8+/CD45RA+ Naive Cytotoxic": "naive thymus-derived CD8-positive, alpha-beta T cell",
    "CD56+ NK": "natural killer cell",
    "CD4+/CD45RO+ Memory": "CD4-positive, alpha-beta memory T cell",
    "CD34+": "hematopoietic precursor cell",
    "CD4+/CD45RA+/CD25- Naive T": "naive thymus-derived CD4-positive, alpha-beta T cell",
    "Dendritic": "dendritic cell",
}


def pbmc_counts():  # noqa: ANN201 - AnnData
    """pbmc68k_reduced with its exact raw counts in X (CSR float32), symbols as var index."""
    import warnings

    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = sc.datasets.pbmc68k_reduced()
    raw = src.raw.X.toarray() if sp.issparse(src.raw.X) else np.asarray(src.raw.X)
    counts = np.rint(np.expm1(raw.astype(np.float64)) * src.obs["n_counts"].to_numpy()[:, None] / 1e4)
    obs = src.obs[["bulk_labels", "louvain", "phase", "percent_mito"]].copy()
    obs["bulk_labels"] = obs["bulk_labels"].astype(str)
    obs["louvain"] = obs["louvain"].astype(str)
    obs["phase"] = obs["phase"].astype(str)
    var = src.raw.var[[]].copy()
    adata = ad.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)
    adata.obsm["X_umap"] = np.asarray(src.obsm["X_umap"], dtype=np.float32)
    adata.obsm["X_pca"] = np.asarray(src.obsm["X_pca"], dtype=np.float32)
    return adata


def pbmc_manifest(dataset_id: str, *, labelled: bool, title: str) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "assay": {"value": "EFO:0009901"},
        "cell_type": {"column": "bulk_labels", "label_map": PBMC_LABEL_MAP} if labelled else {"value": "unknown"},
        "development_stage": {"value": "unknown"},
        "disease": {"value": "normal"},
        "self_reported_ethnicity": {"value": "unknown"},
        "sex": {"value": "unknown"},
        "tissue": {"value": "blood"},
        "tissue_type": {"value": "tissue"},
        "suspension_type": {"value": "cell"},
        "donor_id": {"value": "zheng2017-donor-a"},
        "is_primary_data": {"value": True},
    }
    return {
        "dataset_id": dataset_id,
        "title": title,
        "description": "Peripheral blood mononuclear cells, 10x Genomics GemCode (Zheng et al. 2017), as shipped by scanpy (pbmc68k_reduced); raw counts recovered from raw.X and n_counts.",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "symbol"},
        "obs": obs,
        "qc": {"min_mapped_fraction": 0.9},
        "citation": "Zheng et al. (2017) Nat Commun 8:14049",
    }


def build_pbmc_submissions(workdir: str | Path) -> list[tuple[Path, Path]]:
    """Write two real PBMC submissions (h5ad + manifest) into ``workdir``.

    Part 1 (first 350 cells) carries its cell-type labels; part 2 (the other 350) none.
    """
    import yaml

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    adata = pbmc_counts()
    parts = [
        ("pbmc68k-part1", True, "PBMC 68k (reduced), part 1, labelled", slice(0, 350)),
        ("pbmc68k-part2", False, "PBMC 68k (reduced), part 2, unlabelled", slice(350, 700)),
    ]
    written = []
    for dataset_id, labelled, title, sl in parts:
        h5 = out / f"{dataset_id}.h5ad"
        mf = out / f"{dataset_id}.yaml"
        adata[sl].copy().write_h5ad(h5)
        mf.write_text(yaml.safe_dump(pbmc_manifest(dataset_id, labelled=labelled, title=title), sort_keys=False))
        written.append((h5, mf))
    return written


#: Folder of the demo's submissions under the lake when no ``--workdir`` is given.
DEMO_INPUTS = "demo-inputs"


def prepare_inputs(lake_path: str | None, workdir: str | None = None) -> tuple[Any, Path, list[tuple[Path, Path]]]:
    """Create (or open) the demo lake and write the two PBMC submissions: into ``workdir``,
    by default ``<lake>/demo-inputs/``; returns ``(lake, folder, [(h5ad, manifest), ...])``."""
    from aivc.store.lake import Lake

    lake = Lake.init(lake_path)
    work = Path(workdir).expanduser().absolute() if workdir else lake.root / DEMO_INPUTS
    return lake, work, build_pbmc_submissions(work)


def run_demo(lake_path: str | None, *, workdir: str | None = None, json_mode: bool = False) -> dict[str, Any]:
    """Run the demo; print a human summary unless ``json_mode``; return a summary dict."""
    from rich.console import Console

    from aivc.cli_common import print_table, styled

    from aivc.ingest.submission import submit
    from aivc.progress import make_progress
    from aivc.store.catalog import Catalog
    from aivc.store.sql import query

    con = Console(quiet=json_mode, markup=False, highlight=False, soft_wrap=True)  # nothing user-supplied is read as markup
    con.rule(styled(("aivc demo", "bold"), ": consortium submission of real PBMC data"))
    lake, work, files = prepare_inputs(lake_path, workdir)
    con.print(f"lake: {lake.root}\ninputs: {work}", highlight=False)
    summary: dict[str, Any] = {"lake": str(lake.root), "inputs": str(work), "submissions": []}
    for h5, mf in files + files[:1]:
        progress = make_progress(json_mode)
        try:
            res = submit(lake, h5, mf, report_dir=work / "reports", progress=progress)
        finally:
            progress.close()
        summary["submissions"].append(res.to_dict())
        html = Path(res.report).with_name("report.html") if res.report else None
        con.print(
            styled(f"submit {h5.name}: ", (res.status, "bold"), f" {res.dataset_id}@{res.version} ({res.n_cells} cells x {res.n_genes} genes, {len(res.warnings)} warnings); report: {html}, {res.report}")
        )
        for w in res.warnings[:3]:
            con.print(styled("  ", ("warning", "yellow"), f" [{w.code}] {w.message}"))
    cat = Catalog(lake)
    print_table(
        ("dataset", "version", "title", "n_cells", "n_genes", "access", "committed_at"),
        [(v.dataset_id, v.version, v.title, v.n_cells, v.n_genes, v.access, v.committed_at) for v in cat.all_versions()],
        title="catalog",
        out=con,
    )
    sql = (
        "SELECT cell_type, cell_type_ontology_term_id, count(*) AS n_cells, round(median(n_counts)) AS median_counts "
        "FROM cells WHERE dataset_id = 'pbmc68k-part1' GROUP BY ALL ORDER BY n_cells DESC"
    )
    res = query(lake, sql)
    con.print(styled(("aivc sql", "bold"), f' "{sql}"'))
    print_table(res.columns, res.rows, out=con)
    summary["sql"] = {"query": sql, "rows": res.to_dicts()}
    summary["datasets"] = [v.to_record() for v in cat.current()]
    summary["embeddings"] = _demo_embeddings(lake, con, json_mode)
    summary["models"] = _demo_models(lake, con, json_mode)
    summary["reannotation"] = _demo_reannotation(lake, con, summary["models"]["embedding"], json_mode)
    from aivc.demo_multimodal import run_crossmodal

    summary["multimodal"] = run_crossmodal(lake, con, work, json_mode)
    from aivc.demo_spatial import run_spatial

    summary["spatial"] = run_spatial(lake, con, work / "spatial", json_mode)
    serve = f"aivc serve --lake {lake.uri}"
    summary["serve"] = {"command": serve, "url": "http://127.0.0.1:8000"}
    con.rule(styled(("portal", "bold"), ": browse this lake's datasets, reports, SQL and embedding maps"))
    con.print(f"{serve}   then open http://127.0.0.1:8000 (sign in with a token from `aivc access token create USER --lake {lake.uri}`)", highlight=False)
    return summary


def _demo_reannotation(lake: Any, con: Any, embedding: str, json_mode: bool) -> dict[str, Any]:
    """Train a cell-type decoder on part 1's labels over the learned UR, reannotate the whole
    demo atlas with it (the default engine, auto: in-process for 700 cells), and print the agreement
    summary with each fraction's denominator named."""
    import json as _json

    from aivc.cli_common import print_table, styled
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.predictions import version_dir
    from aivc.instruments.sql import query as iquery
    from aivc.progress import make_progress

    con.rule(styled(("virtual instrument", "bold"), f": cell-type decoder on {embedding}, reannotation of the demo atlas"))
    rec = train_celltype(lake, embedding, datasets=["pbmc68k-part1"], name="celltype")
    m = rec.metrics
    con.print(
        f"registered decoder {rec.ref} reading {embedding}: {m['n_classes']} cell types, cross-validated (out-of-fold) macro-F1 "
        f"{m['calibration']['macro_f1']:.3f}, temperature {m['temperature']:.2f} (NLL {m['nll_before']:.3f} -> {m['nll_after']:.3f}, ECE {m['ece_before']:.3f} -> {m['ece_after']:.3f}), "
        f"conformal sets at alpha 0.1 cover {m['calibration_coverage']:.1%} of the labelled cells out of fold",
        highlight=False,
    )
    progress = make_progress(json_mode)
    try:
        pv = annotate(lake, rec.ref, all_datasets=True, progress=progress)
    finally:
        progress.close()
    report = version_dir(lake, pv.instrument, pv.version) / "report.html"
    agreement = _json.loads((report.parent / "report.json").read_text())["agreement"]
    con.print(f"published {pv.ref} ({pv.n_rows} cells on the {pv.job['engine']} engine: {pv.job['engine_reason']}; SQL view {pv.view_name}); report: {report}", highlight=False)
    print_table(*agreement_table(agreement), title="ontology-aware agreement with the submitted labels (part 1 labelled; part 2 was submitted unlabelled)", out=con)
    sql = (
        f"SELECT p.predicted_label, count(*) AS n_cells, round(avg(p.probability), 3) AS mean_probability, sum(p.abstain::INT) AS abstained "
        f"FROM {pv.view_name} p JOIN cells c USING (obs_id) WHERE c.dataset_id = 'pbmc68k-part2' GROUP BY ALL ORDER BY n_cells DESC"
    )
    res = iquery(lake, sql)
    con.print(styled(("aivc sql", "bold"), f' "{sql}"'))
    print_table(res.columns, res.rows, out=con)
    return {"instrument": rec.ref, "decoder_metrics": m, "predictions": pv.ref, "summary": pv.summary, "agreement": agreement["counts"], "report": str(report), "part2_query": sql, "part2": res.to_dicts()}


def agreement_table(agreement: dict[str, Any]) -> tuple[tuple[str, ...], list[tuple[str, int, str, str]]]:
    """Header and rows of the demo's agreement table: each fraction column has one denominator,
    named in its header (the labelled cells, or all cells)."""
    from aivc.instruments.agreement import agreement_rows

    def pct(x: float | None) -> str:
        return "" if x is None else f"{x:.1%}"

    header = ("agreement with the submitted label", "cells", f"of {agreement['n_labelled']} labelled cells", f"of all {agreement['n_cells']} cells")
    return header, [(c, n, pct(fl), pct(fc)) for c, n, fl, fc in agreement_rows(agreement)]


DEMO_VAE_OVERRIDES = ("name=pbmc-vae", "optim.epochs=40", "optim.batch_size=128", "model.latent_dim=10", "model.hidden_dim=128", "seed=0")


def _demo_models(lake: Any, con: Any, json_mode: bool) -> dict[str, Any]:
    """Train a cell-vae on the demo lake with Ray Train, embed the lake with it (Ray Data),
    and ask SQL for the nearest neighbours of a B cell in the learned UR."""
    import ray

    from aivc.cli_common import print_table, styled
    from aivc.embeddings.sql import query as equery
    from aivc.progress import make_progress
    from aivc.training.config import apply_overrides, load_config
    from aivc.embeddings.model_job import embed_model
    from aivc.ray_local import start_ray
    from aivc.training.trainer import train

    con.rule(styled(("scale models", "bold"), ": cell-vae trained with Ray Train, applied with Ray Data"))
    cfg = apply_overrides(load_config(None), list(DEMO_VAE_OVERRIDES))
    started = start_ray()
    try:
        def epoch(m: dict[str, Any]) -> None:
            if m["epoch"] % 10 == 0 or m["epoch"] == cfg.optim.epochs:
                con.print(f"  epoch {m['epoch']}/{cfg.optim.epochs}: train loss {m['train_loss']:.1f}, validation loss {m['validation_loss']:.1f}", highlight=False)

        res = train(lake, cfg, workers=1, on_epoch=epoch)
        con.print(f"registered model {res.model_ref} (run {res.run_id}, {res.epochs} epochs, validation loss {res.metrics['validation_loss']:.1f})", highlight=False)
        progress = make_progress(json_mode)
        try:
            v = embed_model(lake, res.model_ref, progress=progress)
        finally:
            progress.close()
    finally:
        if started:
            ray.shutdown()
    con.print(f"published {v.ref} from {v.lineage.model}: {v.n_rows} cells x {v.dim} dims, SQL view {v.view_name}", highlight=False)
    first_b = equery(lake, "SELECT obs_id FROM cells WHERE cell_type = 'B cell' ORDER BY soma_joinid LIMIT 1").rows[0][0]
    sql = (
        f"SELECT n.obs_id, c.cell_type, round(n.similarity::DOUBLE, 4) AS similarity "
        f"FROM {v.alias_name}_neighbors('{first_b}', 10) n JOIN cells c USING (obs_id) ORDER BY n.similarity DESC"
    )
    rows = equery(lake, sql)
    con.print(styled(("aivc sql", "bold"), f' "{sql}"'))
    print_table(rows.columns, rows.rows, out=con)
    same = sum(1 for r in rows.rows if r[1] == "B cell")
    con.print(f"{same} of the 10 nearest neighbours of B cell {first_b} in {v.ref} are labelled B cell.", highlight=False)
    return {"model": res.model_ref, "run_id": res.run_id, "metrics": res.metrics, "embedding": v.ref, "neighbors_query": sql, "neighbors": rows.to_dicts(), "same_label": same}


def _demo_embeddings(lake: Any, con: Any, json_mode: bool) -> dict[str, Any]:
    """Publish a PCA cell UR over the lake and query its nearest neighbours in SQL."""
    from aivc.cli_common import print_table, styled

    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.embeddings.sql import query as equery
    from aivc.progress import make_progress

    con.rule(styled(("feature store", "bold"), ": PCA baseline cell UR, nearest neighbours in SQL"))
    progress = make_progress(json_mode)
    try:
        v = embed_pca(lake, params=PcaParams(n_components=32, n_top_genes=2000), progress=progress)
    finally:
        progress.close()
    con.print(f"published {v.ref}: {v.n_rows} cells x {v.dim} dims, explained variance {v.metrics['explained_variance_total']:.1%}, SQL view {v.view_name} (alias {v.alias_name})", highlight=False)
    first_b = equery(lake, "SELECT obs_id FROM cells WHERE cell_type = 'B cell' ORDER BY soma_joinid LIMIT 1").rows[0][0]
    sql = (
        f"SELECT b.obs_id, c.cell_type, round(array_cosine_similarity(a.vector, b.vector)::DOUBLE, 4) AS similarity "
        f"FROM {v.alias_name} a JOIN {v.alias_name} b ON a.obs_id <> b.obs_id JOIN cells c ON c.obs_id = b.obs_id "
        f"WHERE a.obs_id = '{first_b}' ORDER BY similarity DESC LIMIT 10"
    )
    res = equery(lake, sql)
    con.print(styled(("aivc sql", "bold"), f' "{sql}"'))
    print_table(res.columns, res.rows, out=con)
    same = sum(1 for r in res.rows if r[1] == "B cell")
    con.print(f"{same} of the 10 nearest neighbours of B cell {first_b} are labelled B cell (labelled cells are in part 1 only).", highlight=False)
    return {"version": v.ref, "metrics": v.metrics, "neighbors_query": sql, "neighbors": res.to_dicts(), "same_label": same}
