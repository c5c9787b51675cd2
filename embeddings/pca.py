"""PCA baseline cell URs over the current lake, streamed from the SOMA experiments.

Cells of the current dataset versions of one organism are read from SOMA in row chunks
(three passes, memory bounded by the chunk): per-gene mean and variance of log-normalized
counts (counts / total * 1e4, log1p) over the genes *every* included dataset measured
(a gene a dataset did not measure is not a zero), then the covariance of the z-scored top
variable genes (exact PCA by eigendecomposition, deterministic), then the projection,
written through the feature store's streaming writer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.store import soma_io
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake

from aivc.embeddings.store import EmbeddingVersion, EmbeddingWriter


@dataclass(frozen=True)
class PcaParams:
    n_components: int = 32
    n_top_genes: int = 2000
    target_sum: float = 1e4
    clip: float = 10.0
    chunk_rows: int = 4096


def _select_versions(lake: Lake, organism: str | None, datasets: list[str] | None) -> list[DatasetVersion]:
    cat = Catalog(lake)
    current = cat.current()
    if datasets:
        chosen = [cat.get(d) for d in datasets]
    else:
        chosen = current
    if not chosen:
        raise UsageError("the lake has no committed datasets to embed; submit one first", where="--lake")
    organisms = sorted({v.organism_name for v in chosen})
    if organism is None:
        if len(organisms) > 1:
            raise UsageError(f"datasets of several organisms ({', '.join(organisms)}); choose one with --organism", where="--organism")
        organism = organisms[0]
    chosen = [v for v in chosen if v.organism_name == organism]
    if not chosen:
        raise UsageError(f"no datasets of organism {organism!r}", where="--organism")
    return chosen


def _cells_and_genes(lake: Lake, versions: list[DatasetVersion]) -> tuple[pd.DataFrame, pd.DataFrame]:
    cat = Catalog(lake)
    cells = pd.concat(
        [pd.read_parquet(cat.artifacts_path(v) / "cells.parquet", columns=["obs_id", "soma_joinid", "dataset_id"]) for v in versions],
        ignore_index=True,
    )
    common: pd.DataFrame | None = None
    for v in versions:
        g = pd.read_parquet(cat.artifacts_path(v) / "genes.parquet", columns=["gene_id", "soma_joinid"])
        common = g if common is None else common.merge(g[["gene_id"]], on="gene_id")
    assert common is not None
    if common.empty:
        raise UsageError("the chosen datasets measured no gene in common; embed them separately with --datasets", where="--datasets")
    return cells, common.sort_values("soma_joinid").reset_index(drop=True)


def _chunks(uri: str, hw: int, cells: pd.DataFrame, var_j: np.ndarray, chunk_rows: int, target_sum: float) -> Iterator[tuple[slice, np.ndarray]]:
    joins = cells["soma_joinid"].to_numpy(np.int64)
    for start in range(0, len(cells), chunk_rows):
        sl = slice(start, min(len(cells), start + chunk_rows))
        X = soma_io.read_rows(uri, hw, joins[sl], var_j).toarray().astype(np.float64)
        totals = X.sum(axis=1, keepdims=True)
        totals[totals == 0] = 1.0
        yield sl, np.log1p(X / totals * target_sum)


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
    versions = _select_versions(lake, organism, datasets)
    org = versions[0].organism_name
    cat = Catalog(lake)
    hw = cat.high_water(org)
    assert hw is not None
    uri = lake.soma_uri(org)
    cells, genes = _cells_and_genes(lake, versions)
    var_j = genes["soma_joinid"].to_numpy(np.int64)
    n, g = len(cells), len(genes)
    k = min(params.n_components, n - 1, g)
    if k < 1:
        raise UsageError(f"too few cells ({n}) or genes ({g}) for PCA", where="--datasets")

    progress.phase("PCA 1/3: gene statistics", total=n)
    s1 = np.zeros(g)
    s2 = np.zeros(g)
    for sl, L in _chunks(uri, hw, cells, var_j, params.chunk_rows, params.target_sum):
        s1 += L.sum(axis=0)
        s2 += (L * L).sum(axis=0)
        progress.advance(sl.stop - sl.start)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    top = np.sort(np.argsort(-var, kind="stable")[: min(params.n_top_genes, int((var > 0).sum()))])
    if top.size < k:
        k = max(1, top.size)
    sd = np.sqrt(var[top])
    sd[sd == 0] = 1.0

    progress.phase("PCA 2/3: covariance", total=n)
    cov = np.zeros((top.size, top.size))
    for sl, L in _chunks(uri, hw, cells, var_j, params.chunk_rows, params.target_sum):
        Z = np.clip((L[:, top] - mean[top]) / sd, -params.clip, params.clip)
        cov += Z.T @ Z
        progress.advance(sl.stop - sl.start)
    cov /= max(n - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:k]
    components = evecs[:, order]
    # deterministic sign: largest-magnitude loading positive
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(k)])
    components *= signs
    explained = evals[order] / evals.sum() if evals.sum() > 0 else np.zeros(k)

    lineage = {
        "datasets": [v.ref for v in versions],
        "organism": org,
        "lake_state": {org: hw},
        "genes": int(g),
        "top_genes": [str(x) for x in genes["gene_id"].to_numpy()[top][:50]],
    }
    source = {"kind": "baseline", "method": "pca", "params": params.__dict__ | {"n_components": int(k)}}
    writer = EmbeddingWriter(lake, "cell", name, int(k), source=source, lineage=lineage, normalization="none")
    try:
        progress.phase("PCA 3/3: projecting and writing", total=n)
        for sl, L in _chunks(uri, hw, cells, var_j, params.chunk_rows, params.target_sum):
            Z = np.clip((L[:, top] - mean[top]) / sd, -params.clip, params.clip)
            part = cells.iloc[sl]
            writer.write(part["obs_id"].to_numpy(), (Z - 0) @ components, soma_joinids=part["soma_joinid"].to_numpy(), dataset_ids=part["dataset_id"].to_numpy())
            progress.advance(sl.stop - sl.start)
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
