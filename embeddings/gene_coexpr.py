"""Co-expression gene URs (molecular scale) learned from the cells of the lake.

Cells of the current dataset versions of one organism are streamed from SOMA one dataset
at a time, in row chunks (two passes, memory bounded by the chunk and the gene-by-gene
matrix). Each dataset measured only some genes, so the vocabulary is the *union* of the
datasets' genes (the features each version measured) and a gene a dataset did not measure
is missing there, not zero:

1. per-gene variance of log-normalized counts (``log1p(count / total * 1e4)``) over the
   cells whose dataset measured the gene; the ``n_top_genes`` most variable genes are kept;
2. per dataset, the centred cross-products of those genes; for each pair of genes they are
   pooled over the datasets that measured *both*, which gives the pooled within-dataset
   correlation (dataset mean shifts, i.e. batch effects, do not count as co-expression);
3. the ``dim`` leading eigenvectors of the correlation matrix, scaled by the square roots
   of their eigenvalues (a deterministic spectral embedding, each component's largest
   loading positive), rows L2-normalized: genes that rise and fall together point the
   same way (cosine near 1).

:func:`gene_correlation` gives steps 1-2 (the matrix); :func:`embed_gene_coexpression`
publishes the vectors as a ``gene`` embedding version keyed by reference gene id.

Example
-------
>>> v = embed_gene_coexpression(lake, dim=32)  # doctest: +SKIP
>>> v.ref, v.normalization  # doctest: +SKIP
('gene:coexpr@1', 'l2')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from aivc.embeddings.pca import select_query
from aivc.store.features import EmbeddingVersion, EmbeddingWriter
from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from aivc.store.measurements import RNA
from aivc.store.read import LakeQuery, lognormalize, top_variable, version_cells

TARGET_SUM = float(RNA.target_sum)  # the measurement's one log-normalization
#: fewest cells a pair of genes needs in common for a correlation (else 0)
MIN_PAIR_CELLS = 3
MIN_CELLS = 3


def _log_chunks(q: LakeQuery, joins: np.ndarray, var_j: np.ndarray, chunk_rows: int, totals: np.ndarray | None = None) -> Iterator[tuple[slice, sp.csr_matrix, np.ndarray]]:
    """(rows, sparse ``log1p(count / total * 1e4)``, totals) per chunk of cells; ``totals``
    (counts over all the cell's genes) are summed from the chunk unless given."""
    for sl, X in q.chunks(joins, var_j, chunk_rows=chunk_rows, dense=False):
        tot = np.asarray(X.sum(axis=1), dtype=np.float64).ravel() if totals is None else totals[sl]
        yield sl, lognormalize(X, TARGET_SUM, totals=tot), tot


def _gene_variance(q: LakeQuery, per_dataset: list[np.ndarray], var_j: np.ndarray, measured: np.ndarray, chunk_rows: int, progress: Progress) -> tuple[np.ndarray, list[np.ndarray]]:
    """(variance of each gene's log-normalized counts over the cells that measured it,
    each dataset's per-cell count totals)."""
    g = len(var_j)
    s1, s2, n = np.zeros(g), np.zeros(g), np.zeros(g)
    totals: list[np.ndarray] = []
    for b, joins in enumerate(per_dataset):
        tot = np.zeros(len(joins))
        for sl, L, t in _log_chunks(q, joins, var_j, chunk_rows):
            s1 += np.asarray(L.sum(axis=0)).ravel() * measured[b]
            s2 += np.asarray(L.multiply(L).sum(axis=0)).ravel() * measured[b]
            tot[sl] = t
            progress.advance(sl.stop - sl.start)
        n += measured[b] * len(joins)
        totals.append(tot)
    mean = s1 / np.maximum(n, 1)
    return np.where(n >= MIN_PAIR_CELLS, np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0), 0.0), totals


def _correlation(
    q: LakeQuery, per_dataset: list[np.ndarray], totals: list[np.ndarray], top_j: np.ndarray, measured: np.ndarray, chunk_rows: int, progress: Progress
) -> np.ndarray:
    """Pooled within-dataset correlation of the genes ``top_j``, pairwise over the datasets
    that measured both genes (0 where fewer than ``MIN_PAIR_CELLS`` cells or no variance)."""
    t = top_j.size
    cross = np.zeros((t, t))
    diag = np.zeros(measured.shape)  # per dataset: each gene's centred sum of squares
    n_cells = np.array([len(j) for j in per_dataset], dtype=np.float64)
    for b, joins in enumerate(per_dataset):
        s, c = np.zeros(t), np.zeros((t, t))
        for sl, L, _ in _log_chunks(q, joins, top_j, chunk_rows, totals[b]):
            s += np.asarray(L.sum(axis=0)).ravel()
            c += (L.T @ L).toarray()
            progress.advance(sl.stop - sl.start)
        if len(joins) == 0:
            continue
        centred = c - np.outer(s, s) / len(joins)
        m = measured[b]
        cross += centred * np.outer(m, m)
        diag[b] = np.diag(centred) * m
    M = measured.astype(np.float64)
    var_pair = diag.T @ M  # [i, j]: gene i's sum of squares over the datasets measuring i and j
    n_pair = (M * n_cells[:, None]).T @ M
    denom = np.sqrt(np.maximum(var_pair, 0.0) * np.maximum(var_pair.T, 0.0))
    ok = (denom > 1e-12) & (n_pair >= MIN_PAIR_CELLS)
    corr = np.where(ok, cross / np.where(ok, denom, 1.0), 0.0)
    corr = np.clip((corr + corr.T) / 2, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def _spectral(corr: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(``[T, dim]`` unnormalized vectors, the ``dim`` eigenvalues used), deterministic."""
    evals, evecs = np.linalg.eigh(corr)
    order = np.argsort(-evals, kind="stable")[:dim]
    comps = evecs[:, order]
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    signs[signs == 0] = 1.0
    vals = np.maximum(evals[order], 0.0)
    return comps * signs * np.sqrt(vals), vals


@dataclass(frozen=True)
class GeneCorrelation:
    """Gene-gene correlations of the most variable genes of some datasets, and their source.

    ``matrix[i, j]`` is the pooled within-dataset correlation of ``gene_ids[i]`` and
    ``gene_ids[j]`` over the datasets that measured both (0 where they share fewer than
    ``MIN_PAIR_CELLS`` cells); the diagonal is 1.
    """

    gene_ids: tuple[str, ...]
    matrix: np.ndarray
    n_cells: int
    n_genes: int  # genes in the union vocabulary (before the variable-gene selection)
    datasets: tuple[str, ...]
    organism: str
    high_water: int


def gene_correlation(
    lake: Lake,
    *,
    organism: str | None = None,
    datasets: list[str] | None = None,
    n_top_genes: int = 2000,
    min_genes: int = 2,
    chunk_rows: int = 4096,
    progress: Progress | None = None,
) -> GeneCorrelation:
    """Correlations of the ``n_top_genes`` most variable genes of the current datasets.

    Raises :class:`~aivc.errors.UsageError` when fewer than ``min_genes`` genes vary or
    there are fewer than ``MIN_CELLS`` cells.

    Examples
    --------
    >>> c = gene_correlation(lake, n_top_genes=500)  # doctest: +SKIP
    >>> c.matrix.shape, bool((np.diag(c.matrix) == 1).all())  # doctest: +SKIP
    ((500, 500), True)
    """
    progress = progress or NullProgress()
    for flag, value in (("--n-top-genes", n_top_genes), ("--chunk-rows", chunk_rows)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}", where=flag)
    q = select_query(lake, organism, datasets)
    versions, org, hw = q.versions, q.organism, q.high_water
    per_dataset = [version_cells(lake, v, ["soma_joinid"])["soma_joinid"].to_numpy(np.int64) for v in versions]
    n_cells = sum(len(c) for c in per_dataset)
    if n_cells < MIN_CELLS:
        raise UsageError(f"too few cells ({n_cells}) for gene co-expression; need at least {MIN_CELLS}", where="--datasets")
    feats = q.features("union")
    genes, measured = feats.frame, feats.present
    var_j = genes["soma_joinid"].to_numpy(np.int64)

    progress.phase("co-expression 1/2: gene variance", total=n_cells)
    var, totals = _gene_variance(q, per_dataset, var_j, measured, chunk_rows, progress)
    variable = int((var > 0).sum())
    if variable < max(min_genes, 2):
        raise UsageError(f"only {variable} genes vary across the cells, fewer than the {min_genes} needed; lower --dim or add data", where="--dim")
    top = top_variable(var, n_top_genes)
    if top.size < min_genes:
        raise UsageError(f"--n-top-genes {n_top_genes} keeps fewer than the {min_genes} genes needed; raise it or lower --dim", where="--n-top-genes")

    progress.phase("co-expression 2/2: gene correlations", total=n_cells)
    corr = _correlation(q, per_dataset, totals, var_j[top], measured[:, top], chunk_rows, progress)
    return GeneCorrelation(
        gene_ids=tuple(genes["gene_id"].astype(str).to_numpy()[top]),
        matrix=corr,
        n_cells=int(n_cells),
        n_genes=int(len(genes)),
        datasets=tuple(v.ref for v in versions),
        organism=org,
        high_water=int(hw),
    )


def embed_gene_coexpression(
    lake: Lake,
    *,
    name: str = "coexpr",
    organism: str | None = None,
    datasets: list[str] | None = None,
    dim: int = 32,
    n_top_genes: int = 2000,
    chunk_rows: int = 4096,
    progress: Progress | None = None,
) -> EmbeddingVersion:
    """Compute and publish co-expression gene URs (``gene:<name>@N``); returns the version.

    Parameters
    ----------
    lake
        The lake; its current dataset versions of ``organism`` are used (or ``datasets``,
        each ``DATASET[@VERSION]``).
    dim
        Width of the gene vectors; at most the number of variable genes.
    n_top_genes
        How many of the most variable genes get a vector.
    chunk_rows
        Cells read from SOMA at a time.

    Examples
    --------
    >>> v = embed_gene_coexpression(lake, dim=16, n_top_genes=500)  # doctest: +SKIP
    >>> ids, vectors = read_vectors(lake, v)  # doctest: +SKIP
    >>> np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # doctest: +SKIP
    True
    """
    if dim < 1:
        raise UsageError(f"--dim must be at least 1, got {dim}", where="--dim")
    c = gene_correlation(lake, organism=organism, datasets=datasets, n_top_genes=n_top_genes, min_genes=dim, chunk_rows=chunk_rows, progress=progress)
    vectors, evals = _spectral(c.matrix, dim)
    norms = np.linalg.norm(vectors, axis=1)
    keep = norms > 1e-9  # a gene orthogonal to every kept component has no direction
    vectors = vectors[keep] / norms[keep, None]
    gene_ids = np.asarray(c.gene_ids, dtype=object)[keep]

    params = {"dim": int(dim), "n_top_genes": int(n_top_genes), "target_sum": TARGET_SUM, "chunk_rows": int(chunk_rows), "min_pair_cells": MIN_PAIR_CELLS}
    source = {"kind": "baseline", "method": "coexpression", "params": params}
    lineage = Lineage(datasets=tuple(c.datasets), organism=c.organism, lake_state={c.organism: c.high_water}, extra={"genes": c.n_genes})
    metrics = {
        "n_cells": c.n_cells,
        "n_genes": int(keep.sum()),
        "n_genes_without_direction": int((~keep).sum()),
        "explained_fraction": round(float(evals.sum() / len(c.gene_ids)), 6),
        "eigenvalues": [round(float(x), 6) for x in evals],
    }
    writer = EmbeddingWriter(lake, "gene", name, int(dim), source=source, lineage=lineage, normalization="l2")
    try:
        writer.write(gene_ids, vectors.astype(np.float32))
        return writer.commit(metrics=metrics)
    except BaseException:
        writer.abort()
        raise
