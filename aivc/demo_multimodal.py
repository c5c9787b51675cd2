"""The demo's multimodal part: real CITE-seq cells, and protein predicted from RNA.

Two real 10x PBMC CITE-seq datasets ship in ``schemas/examples`` (200 cells each, RNA plus
14 and 29 TotalSeq-B antibodies in ``obsm``; see ``schemas/build_examples.py``). The demo
submits both with their ADT measurement, computes a PCA cell UR over their RNA (so a cell's
UR never contains its proteins), trains the protein decoder on the 10k cells, applies it to
the 5k cells as if they had RNA only, and scores the prediction against the 5k cells' own
measured antibodies (the 14 both panels share), next to a baseline in the same run on the
same cells: ridge regression on log-normalized RNA (the genes both datasets measured).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: the demo's CITE-seq submissions: dataset id -> example file
CITE_DATASETS = {"cite-pbmc10k": "cite_pbmc10k.h5ad", "cite-pbmc5k": "cite_pbmc5k.h5ad"}
_OBS = {
    "assay": {"value": "EFO:0030008"},
    "cell_type": {"value": "unknown"},
    "development_stage": {"value": "unknown"},
    "disease": {"value": "normal"},
    "self_reported_ethnicity": {"value": "unknown"},
    "sex": {"value": "unknown"},
    "tissue": {"value": "blood"},
    "suspension_type": {"value": "cell"},
}


def cite_manifest(dataset_id: str) -> dict[str, Any]:
    """The manifest of one demo CITE-seq submission (RNA top-level, ADT from obsm)."""
    return {
        "dataset_id": dataset_id,
        "title": f"10x PBMC {dataset_id.removeprefix('cite-pbmc')} with TotalSeq-B antibodies (200 cells, scvi-tools test data)",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "symbol"},
        "measurements": {"ADT": {"modality": "protein", "source": "obsm:protein_expression", "features": "uns:protein_names"}},
        "qc": {"min_mapped_fraction": 0.8},
        "obs": {**_OBS, "donor_id": {"value": dataset_id}},
    }


def build_cite_submissions(workdir: Path) -> list[tuple[Path, Path]]:
    import yaml

    examples = Path(str(resources.files("aivc.schemas").joinpath("examples")))
    workdir.mkdir(parents=True, exist_ok=True)
    out = []
    for dataset_id, name in CITE_DATASETS.items():
        mf = workdir / f"{dataset_id}.yaml"
        mf.write_text(yaml.safe_dump(cite_manifest(dataset_id), sort_keys=False))
        out.append((examples / name, mf))
    return out


def ridge_baseline(lake: Any, train: str, test: str, proteins: list[str], target: str) -> dict[str, Any]:
    """Ridge regression (scikit-learn ``RidgeCV``) from log-normalized RNA to the proteins, trained
    on ``train``'s cells, scored on ``test``'s: the genes both measured, the same transform."""
    from sklearn.linear_model import RidgeCV

    from aivc.instruments.crossmodal import evaluate, protein_targets
    from aivc.store.catalog import Catalog
    from aivc.store.read import LakeQuery

    cat = Catalog(lake)
    tr, te = cat.get(train), cat.get(test)
    rna = LakeQuery.of(lake, [tr, te])
    genes = rna.features("intersection").joinids

    def arrays(v: Any) -> tuple[np.ndarray, np.ndarray, Any]:
        q = LakeQuery.of(lake, [v])
        cells = q.obs(columns=["obs_id", "soma_joinid"])
        x = np.vstack([c for _, c in q.chunks(cells, genes, normalize=True)])
        adt = LakeQuery.of(lake, [v], measurement="ADT")
        fs = adt.features().frame.set_index("feature_id")
        y = np.vstack([c for _, c in adt.chunks(cells, fs.loc[proteins, "soma_joinid"].to_numpy())])
        return x, protein_targets(y, target), cells

    x_tr, y_tr, _ = arrays(tr)
    x_te, y_te, cells = arrays(te)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
    sd[sd == 0] = 1.0
    model = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit((x_tr - mu) / sd, y_tr)
    pred = model.predict((x_te - mu) / sd)
    ev = evaluate(y_te, {"mean": pred}, proteins)
    return {"mean_pearson": ev["mean_pearson"], "mean_spearman": ev["mean_spearman"], "n_genes": int(len(genes)), "alpha": float(model.alpha_), "n_cells": int(len(cells))}


def run_crossmodal(lake: Any, con: Any, work: Path, json_mode: bool) -> dict[str, Any]:
    """Submit the CITE-seq data, train the protein decoder on one dataset, predict the other's
    proteins from its RNA and print the quality next to the ridge baseline."""
    import json

    from aivc.cli_common import print_table, styled
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.instruments.annotate import annotate
    from aivc.instruments.predictions import version_dir
    from aivc.instruments.protein import train_protein
    from aivc.progress import make_progress

    con.rule(styled(("multimodal", "bold"), ": real CITE-seq (RNA + TotalSeq-B antibodies), protein predicted from RNA"))
    subs = []
    for data, mf in build_cite_submissions(work / "cite"):
        res = submit(lake, data, mf, report_dir=work / "reports")
        subs.append(res.to_dict())
        extra = "".join(f" + {n} {k} antibodies" for n, k in res.measurements.items())
        con.print(styled(f"submit {data.name}: ", (res.status, "bold"), f" {res.dataset_id}@{res.version} ({res.n_cells} cells x {res.n_genes} genes{extra}); report: {res.report}"))
    train, test = list(CITE_DATASETS)
    progress = make_progress(json_mode)
    try:
        emb = embed_pca(lake, datasets=list(CITE_DATASETS), params=PcaParams(n_components=20, n_top_genes=1000), progress=progress)
    finally:
        progress.close()
    con.print(f"published {emb.ref} over the RNA of both datasets ({emb.n_rows} cells x {emb.dim} dims): a cell's UR holds none of its proteins", highlight=False)
    rec = train_protein(lake, emb.ref, datasets=[train])
    oof = rec.metrics["out_of_fold"]
    con.print(
        f"registered {rec.ref} on {train}: {len(rec.outputs['proteins'])} proteins, out-of-fold mean Pearson {oof['mean_pearson']:.3f}, "
        f"interval coverage {oof['mean_coverage']:.1%} at alpha {rec.outputs['alpha']:g}",
        highlight=False,
    )
    pv = annotate(lake, rec.ref, datasets=[test])
    report = json.loads((version_dir(lake, pv.instrument, pv.version) / "report.json").read_text())
    held = report["datasets"][test]
    proteins = [p for p in rec.outputs["proteins"] if p in held.get("per_protein", {})]
    base = ridge_baseline(lake, train, test, proteins, str(rec.config.get("target", "log1p")))
    rows = [
        (f"{rec.ref} over {emb.ref}", f"{held['mean_pearson']:.3f}", f"{held['mean_spearman']:.3f}", f"{held['mean_coverage']:.1%}"),
        (f"ridge on log-normalized RNA ({base['n_genes']} genes)", f"{base['mean_pearson']:.3f}", f"{base['mean_spearman']:.3f}", ""),
    ]
    print_table(
        ("protein from RNA", "mean Pearson", "mean Spearman", "interval coverage"), rows,
        title=f"{len(proteins)} proteins of {held['n_cells']} held-out cells ({test}, trained on {train})", out=con,
    )  # fmt: skip
    con.print(f"published {pv.ref}: per-cell abundance, std and interval lists in SQL view {pv.view_name}; report: {version_dir(lake, pv.instrument, pv.version) / 'report.html'}", highlight=False)
    return {
        "submissions": subs, "embedding": emb.ref, "instrument": rec.ref, "predictions": pv.ref, "view": pv.view_name,
        "held_out": {k: held.get(k) for k in ("n_cells", "measured_proteins", "mean_pearson", "mean_spearman", "mean_coverage")},
        "baseline_ridge": base, "out_of_fold": {k: oof.get(k) for k in ("mean_pearson", "mean_spearman", "mean_coverage")},
    }  # fmt: skip
