"""Lazy, chunked QC of a submitted count matrix with Dask (anndata's dask-backed reader).

:func:`lazy_counts` opens ``X`` (or ``raw/X``, ``layers/<name>``) of an ``.h5ad`` / AnnData
``.zarr`` with :func:`anndata.experimental.read_elem_lazy`: a ``dask.array`` whose blocks are
row chunks of CSR (column chunks of CSC, on-disk chunks of dense), nothing read yet.
:func:`lazy_qc` computes the per-cell QC numbers of validation (``n_counts``, ``n_genes``,
``pct_mito``, as :class:`aivc.ingest.matrix.MatrixChecker` does) and per-gene ``n_cells`` /
``total_counts`` block by block on Dask's threaded scheduler, so memory is bounded by
``num_workers`` blocks whatever the file size, and a CSC file is read column block by column
block (its row slices would read the whole matrix).

The validate/submit path keeps its own ordered row-chunk stream (``readers.SubmittedData.
iter_chunks``): it also hashes the matrix in row order and locates the first bad entry, and it
is already bounded by ``--chunk-rows``. This module is for QC over files without a manifest
and for checking those numbers independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.ingest.readers import UnreadableDataError


@dataclass
class LazyQC:
    cells: pd.DataFrame  # index obs names; n_counts, n_genes, pct_mito
    genes: pd.DataFrame  # index var names; n_cells, total_counts
    blocks: int  # Dask blocks computed
    chunks: tuple[tuple[int, ...], tuple[int, ...]]


def _open(path: str | Path) -> Any:
    p = Path(path)
    if not p.exists():
        raise UnreadableDataError(f"{p} does not exist", where=str(p))
    if p.is_dir() or p.suffix == ".zarr":
        import zarr

        return zarr.open(str(p), mode="r")
    import h5py

    return h5py.File(p, "r")


def lazy_counts(store: Any, element: str = "X", chunk_rows: int = 4096) -> Any:
    """The matrix ``element`` of an open AnnData store as a lazy ``dask.array``."""
    from anndata.experimental import read_elem_lazy

    if element not in store:
        raise UnreadableDataError(f"no {element} in the file", where=element)
    elem = store[element]
    enc = dict(elem.attrs).get("encoding-type")
    shape = tuple(int(s) for s in (elem.attrs["shape"] if enc in ("csr_matrix", "csc_matrix") else elem.shape))
    if len(shape) != 2:
        raise UnreadableDataError(f"matrix has {len(shape)} dimensions, expected 2", where=element)
    if enc == "csr_matrix":
        chunks: tuple[int, ...] | None = (max(1, chunk_rows), shape[1])
    elif enc == "csc_matrix":
        chunks = (shape[0], max(1, chunk_rows))
    else:
        chunks = (max(1, chunk_rows), shape[1])
    return read_elem_lazy(elem, chunks=chunks)


def _block_stats(block: Any, mito: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-row [counts, detected, mito counts], per-column [detected, counts]) of one block."""
    m = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
    m.sum_duplicates()
    data = m.data.astype(np.float64)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    nz = data != 0
    cell = np.stack(
        [
            np.bincount(rows, weights=data, minlength=m.shape[0]),
            np.bincount(rows, weights=nz, minlength=m.shape[0]),
            np.bincount(rows, weights=data * mito[m.indices], minlength=m.shape[0]),
        ],
        axis=1,
    )
    gene = np.stack([np.bincount(m.indices, weights=nz, minlength=m.shape[1]), np.bincount(m.indices, weights=data, minlength=m.shape[1])], axis=1)
    return cell, gene


def lazy_qc(
    path: str | Path,
    *,
    element: str = "X",
    mito: np.ndarray | None = None,
    chunk_rows: int = 4096,
    num_workers: int | None = None,
) -> LazyQC:
    """Per-cell and per-gene QC of ``element`` of an AnnData file, computed lazily with Dask.

    ``mito`` is a boolean mask over the matrix's columns; default: ``var`` names (or a
    ``gene_symbols``/``feature_name`` column) starting with ``MT-`` / ``mt-``.
    """
    import dask
    from anndata.io import read_elem

    store = _open(path)
    try:
        X = lazy_counts(store, element, chunk_rows)
        var = read_elem(store["raw/var" if element == "raw/X" else "var"])
        obs_names = read_elem(store["obs"]).index
        if mito is None:
            names = var.index.astype(str)
            for col in ("gene_symbols", "feature_name"):
                if col in var.columns:
                    names = var[col].astype(str)
            mito = np.asarray(pd.Index(names).str.match(r"^(MT|mt)-"), dtype=bool)
        mito = np.asarray(mito, dtype=np.float64)
        if mito.shape != (X.shape[1],):
            raise ValueError(f"mito mask has {mito.shape[0]} entries for {X.shape[1]} columns")
        row_edges = np.concatenate([[0], np.cumsum(X.chunks[0])])
        col_edges = np.concatenate([[0], np.cumsum(X.chunks[1])])
        grid = X.to_delayed()
        tasks = [
            dask.delayed(_block_stats)(grid[i, j], mito[col_edges[j] : col_edges[j + 1]])
            for i in range(grid.shape[0])
            for j in range(grid.shape[1])
        ]
        results = dask.compute(*tasks, scheduler="threads", num_workers=num_workers)
    finally:
        store_close = getattr(store, "close", None)
        if store_close is not None:
            store_close()
    cell = np.zeros((X.shape[0], 3))
    gene = np.zeros((X.shape[1], 2))
    k = 0
    for i in range(len(row_edges) - 1):
        for j in range(len(col_edges) - 1):
            c, g = results[k]
            k += 1
            cell[row_edges[i] : row_edges[i + 1]] += c
            gene[col_edges[j] : col_edges[j + 1]] += g
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(cell[:, 0] > 0, 100.0 * cell[:, 2] / cell[:, 0], 0.0)
    cells = pd.DataFrame({"n_counts": cell[:, 0], "n_genes": cell[:, 1].astype(np.int64), "pct_mito": pct}, index=obs_names)
    genes = pd.DataFrame({"n_cells": gene[:, 0].astype(np.int64), "total_counts": gene[:, 1]}, index=var.index)
    return LazyQC(cells, genes, len(tasks), (tuple(X.chunks[0]), tuple(X.chunks[1])))
