"""PCA baseline cell URs over the current lake, streamed from the SOMA experiments.

Cells of the current dataset versions of one organism are read from SOMA in row chunks
(three passes, memory bounded by the chunk and one dataset version's cell table; the
lake-wide cell table is never built): per-gene mean and variance of log-normalized
counts (counts / total * 1e4, log1p) over the genes *every* included dataset measured
(a gene a dataset did not measure is not a zero), then the covariance of the z-scored top
variable genes (exact PCA by eigendecomposition, deterministic), then the projection,
written through the feature store's streaming writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from aivc.store.read import LakeQuery, Options, top_variable

from aivc.store.features import EmbeddingVersion, EmbeddingWriter


@dataclass(frozen=True)
class PcaParams:
    n_components: int = 32
    n_top_genes: int = 2000
    clip: float = 10.0
    chunk_rows: int = 4096


OPTIONS = Options(purpose="embed")


def select_query(lake: Lake, organism: str | None, datasets: list[str] | None) -> LakeQuery:
    """The versions an embedding job reads (``--datasets``, else the current ones)."""
    return LakeQuery.open(lake, datasets=datasets, organism=organism, options=OPTIONS)


def embed_pca(
    lake: Lake,
    *,
    name: str = "pca",
    organism: str | None = None,
    datasets: list[str] | None = None,
    params: PcaParams = PcaParams(),
    progress: Progress | None = None,
) -> EmbeddingVersion:
    """Compute and publish a PCA cell UR version; returns its record."""
    progress = progress or NullProgress()
    for name_, value in (("--n-components", params.n_components), ("--n-top-genes", params.n_top_genes), ("--chunk-rows", params.chunk_rows)):
        if value < 1:
            raise UsageError(f"{name_} must be at least 1, got {value}", where=name_)
    q = select_query(lake, organism, datasets)
    versions, org, hw = q.versions, q.organism, q.high_water
    # the cells are streamed version by version (LakeQuery.stream), never held lake-wide
    feats = q.features("intersection")
    genes = feats.frame
    n, g = q.n_cells(), len(genes)
    k = min(params.n_components, n - 1, g)
    if k < 1:
        raise UsageError(f"too few cells ({n}) or genes ({g}) for PCA", where="--datasets")

    progress.phase("PCA 1/3: gene statistics", total=n)
    mean, var = q.feature_moments(None, feats, chunk_rows=params.chunk_rows, progress=progress.advance)
    top = top_variable(var, params.n_top_genes)
    if top.size < k:
        k = max(1, top.size)
    sd = np.sqrt(var[top])
    sd[sd == 0] = 1.0

    progress.phase("PCA 2/3: covariance", total=n)
    cov = np.zeros((top.size, top.size))
    # normalized over every gene (sparse), densified over the top genes only: a chunk is
    # chunk_rows x n_top_genes dense, not chunk_rows x all genes
    for _, L in q.stream(feats.joinids, columns=("soma_joinid",), chunk_rows=params.chunk_rows, normalize=True, dense=False):
        Z = np.clip((L[:, top].toarray() - mean[top]) / sd, -params.clip, params.clip)
        cov += Z.T @ Z
        progress.advance(L.shape[0])
    cov /= max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    components = evecs[:, order]
    # deterministic sign: largest-magnitude loading positive
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
    components *= signs
    explained = evals[order] / evals.sum() if evals.sum() > 0 else np.zeros(k)

    lineage = Lineage(
        datasets=tuple(v.ref for v in versions),
        organism=org,
        lake_state={org: hw},
        extra={"genes": int(g), "top_genes": [str(x) for x in genes["gene_id"].to_numpy()[top][:50]]},
    )
    source = {"kind": "baseline", "method": "pca", "params": params.__dict__ | {"n_components": int(k), "target_sum": q.measurement.target_sum}}
    writer = EmbeddingWriter(lake, "cell", name, int(k), source=source, lineage=lineage, normalization="none")
    try:
        progress.phase("PCA 3/3: projecting and writing", total=n)
        for part, L in q.stream(feats.joinids, chunk_rows=params.chunk_rows, normalize=True, dense=False):
            Z = np.clip((L[:, top].toarray() - mean[top]) / sd, -params.clip, params.clip)
            writer.write(part["obs_id"].to_numpy(), Z @ components, soma_joinids=part["soma_joinid"].to_numpy(), dataset_ids=part["dataset_id"].to_numpy())
            progress.advance(len(part))
        metrics = {
            "explained_variance_ratio": [round(float(x), 6) for x in explained],
            "explained_variance_total": round(float(explained.sum()), 6),
            "n_cells": int(n),
            "n_genes_used": int(top.size),
        }
        return writer.commit(metrics=metrics)
    except BaseException:
        writer.abort()
        raise
