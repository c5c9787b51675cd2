"""Export a committed dataset version as an AnnData following the CELLxGENE schema 7.x.

The cells come back in their submitted order with their exact raw counts (float32 CSR
in ``X``), the harmonized standard fields as ontology term ids, the submitter's other
obs columns and ``obsm`` embeddings, and ``var`` indexed by reference Ensembl ids (only
the genes this dataset measured).

An *analysis* export (``for_analysis=True``, ``aivc export --for-analysis``) adds what
CELLxGENE's own curated files carry for people working in scanpy: ``var["feature_name"]``
(the gene symbol the lake stores for each id) and, next to each ``<field>_ontology_term_id``
obs column, the ``<field>`` label the lake stores (the labels of the ``cells`` SQL view).
Those are columns the CELLxGENE schema reserves for its own tooling, so such a file is
marked ``uns["aivc"]["export"] = "analysis"`` and is not for submission to CELLxGENE.

Another measurement (``measurement="ADT"``, ``aivc export --measurement ADT``) comes back
the same way from its spec: ``X`` its raw layer, ``var`` indexed by its feature ids with
its ``var`` columns.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.measurements import RNA
from aivc.store.measurements import get as get_measurement
from aivc.store.read import submitted_obs, submitted_obsm, version_cells, version_features

TERM_COLUMNS = (
    "assay_ontology_term_id",
    "cell_type_ontology_term_id",
    "development_stage_ontology_term_id",
    "disease_ontology_term_id",
    "self_reported_ethnicity_ontology_term_id",
    "sex_ontology_term_id",
    "tissue_ontology_term_id",
)
CATEGORICAL_COLUMNS = (*TERM_COLUMNS, "tissue_type", "suspension_type", "donor_id")
#: ``<field>`` label columns of an analysis export, each next to ``<field>_ontology_term_id``
#: and read from the lake's cells table (where the ``cells`` SQL view reads them).
LABEL_COLUMNS = tuple(c.removesuffix("_ontology_term_id") for c in TERM_COLUMNS)
#: What ``uns["aivc"]["export"]`` says of an analysis export.
ANALYSIS_EXPORT = "analysis"
#: obs columns the CELLxGENE tooling adds itself; submitter columns with these names are
#: exported with an ``author_`` prefix.
RESERVED_OBS = (
    "assay",
    "cell_type",
    "development_stage",
    "disease",
    "self_reported_ethnicity",
    "sex",
    "tissue",
    "organism",
    "organism_ontology_term_id",
    "observation_joinid",
    "is_primary_data",
    "tissue_type",
    "suspension_type",
    "donor_id",
    *TERM_COLUMNS,
)


def load_version_anndata(lake: Lake, ref: str, *, for_analysis: bool = False, measurement: str = RNA.name):  # noqa: ANN201 - AnnData
    """The committed cells of ``ref`` (``DATASET[@VERSION]``) as an in-memory AnnData.

    ``for_analysis`` adds gene symbols and term labels (see the module docstring);
    ``measurement`` chooses what ``X`` and ``var`` hold (default RNA).
    """
    import anndata as ad

    spec = get_measurement(measurement)
    catalog = Catalog(lake)
    v = catalog.get(ref)
    if spec.name not in v.measured():
        raise UsageError(f"dataset version {v.ref} holds no {spec.name} measurement (holds: {', '.join(v.measured())})", where="--measurement")
    cells = version_cells(lake, v)
    genes = version_features(lake, v, measurement=spec)
    X = soma_io.read_rows(
        lake.soma_uri(v.organism_name),
        v.soma_high_water,
        cells["soma_joinid"].to_numpy(dtype=np.int64),
        genes["soma_joinid"].to_numpy(dtype=np.int64),
        spec,
    )
    obs = pd.DataFrame(index=pd.Index(cells["barcode"].astype(str).to_numpy(), name=None))
    for c in CATEGORICAL_COLUMNS:
        obs[c] = pd.Categorical(cells[c].astype(str).to_numpy())
    obs["is_primary_data"] = cells["is_primary_data"].astype(bool).to_numpy()
    submitted = submitted_obs(lake, v).set_index("barcode")
    submitted.index = submitted.index.astype(str)
    for c in submitted.columns:
        name = f"author_{c}" if c in RESERVED_OBS or c in obs.columns else c
        col = submitted[c].reindex(obs.index)
        if col.dtype == object:
            col = pd.Categorical(col)
        obs[name] = col.to_numpy() if not isinstance(col, pd.Categorical) else col
    if spec.name == RNA.name:
        var = pd.DataFrame({"feature_is_filtered": np.zeros(len(genes), dtype=bool)}, index=pd.Index(genes["gene_id"].astype(str).to_numpy()))
    else:
        var = pd.DataFrame({c: genes[c].to_numpy() for c in spec.var_columns if c in genes.columns}, index=pd.Index(genes[spec.feature_id].astype(str).to_numpy()))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    for key in v.obsm_keys:
        tbl = submitted_obsm(lake, v, key)
        vec = tbl.column("vector").combine_chunks()
        dim = vec.type.list_size
        arr = vec.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        adata.obsm[key if key.startswith("X_") else f"X_{key}"] = arr.astype(np.float64)
    adata.uns["title"] = v.title
    adata.uns["organism_ontology_term_id"] = v.organism
    adata.uns["aivc"] = {"dataset_id": v.dataset_id, "version": v.version, "content_hash": v.content_hash, "license": v.license, "measurement": spec.name}
    if for_analysis and spec.name == RNA.name:
        _add_analysis_columns(adata, cells, genes)
    return adata, v


def _add_analysis_columns(adata: Any, cells: pd.DataFrame, genes: pd.DataFrame) -> None:
    """Gene symbols in ``var``, a label column next to each term id column in ``obs``, the mark in ``uns``."""
    adata.var["feature_name"] = pd.Categorical(genes["feature_name"].astype(str).to_numpy())
    for label in LABEL_COLUMNS:
        adata.obs[label] = pd.Categorical(cells[label].astype(str).to_numpy())
    adata.uns["aivc"] = adata.uns["aivc"] | {
        "export": ANALYSIS_EXPORT,
        "note": "analysis export: var feature_name and the obs label columns are columns CELLxGENE reserves for its own tooling; "
        "export without --for-analysis to submit to CELLxGENE",
    }


def export_h5ad(lake: Lake, ref: str, out: str | Path, *, for_analysis: bool = False, measurement: str = RNA.name) -> dict[str, Any]:
    """Write ``ref`` to ``out`` (atomically: a temporary file renamed into place).

    ``for_analysis`` writes an analysis export (gene symbols and term labels, not for
    submission to CELLxGENE; see the module docstring).
    """
    adata, v = load_version_anndata(lake, ref, for_analysis=for_analysis, measurement=measurement)
    spec = get_measurement(measurement)
    if spec.name == RNA.name and v.spatial:
        from aivc.store.export_spatial import add_cellxgene_spatial

        add_cellxgene_spatial(lake, v, adata)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        adata.write_h5ad(tmp, compression="gzip")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    res = {"dataset_id": v.dataset_id, "version": v.version, "measurement": adata.uns["aivc"]["measurement"], "n_cells": adata.n_obs, "n_genes": adata.n_vars, "path": str(out)}
    from aivc.store.export_multimodal import export_fragments, has_fragments

    if spec.name == RNA.name and has_fragments(v):  # ATAC fragments beside the CELLxGENE file
        res |= export_fragments(lake, v, out)
    return res | {"export": ANALYSIS_EXPORT if for_analysis else "cellxgene"}
