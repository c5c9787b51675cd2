"""Lake-wide per-gene statistics over SOMA, chunk by chunk on Dask, never a whole matrix.

:func:`lake_gene_stats` reads the committed versions of one organism (``--datasets``, else the
current ones) ``chunk_rows`` cells at a time (``soma_io.read_rows``: the cells' raw counts over
the features their version measured) as a ``dask.bag`` of chunk reads, maps each chunk to
per-gene partial sums and folds them (tree reduction) on Dask's threaded scheduler. Memory is
``num_workers`` chunks plus a few per-gene vectors, whatever the lake size.

Per gene (the union of the versions' features): ``n_cells`` (cells of the versions that
measured it), ``nnz`` (cells with a count > 0), ``frac_detected``, ``mean`` / ``var`` of the
raw counts, ``mean_log`` / ``var_log`` of the log-normalized values (``log1p(count / total *
target_sum)``, totals over the version's features, as every embedding job normalizes). Variances
are population variances (ddof 0) over the measuring cells.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from aivc.store import soma_io
from aivc.store.lake import Lake
from aivc.store.read import LakeQuery, lognormalize, version_cells

#: partial sums per gene: n_cells, nnz, sum, sum of squares, sum log, sum of squares log
_K = 6


def _partial(q: LakeQuery, n_genes: int, cols: np.ndarray, var_j: np.ndarray, joinids: np.ndarray, target_sum: float) -> np.ndarray:
    X = soma_io.read_rows(q.soma_uri, q.high_water, joinids, var_j, q.measurement).tocsr()
    X.sum_duplicates()
    out = np.zeros((_K, n_genes))
    d = X.data.astype(np.float64)
    L = lognormalize(X, target_sum)
    ld = L.data
    out[0, cols] = len(joinids)
    out[1, cols] = np.bincount(X.indices, weights=(d != 0), minlength=len(cols))
    out[2, cols] = np.bincount(X.indices, weights=d, minlength=len(cols))
    out[3, cols] = np.bincount(X.indices, weights=d * d, minlength=len(cols))
    out[4, cols] = np.bincount(L.indices, weights=ld, minlength=len(cols))
    out[5, cols] = np.bincount(L.indices, weights=ld * ld, minlength=len(cols))
    return out


def lake_gene_stats(
    lake: Lake,
    *,
    organism: str | None = None,
    datasets: Sequence[str] | None = None,
    chunk_rows: int = 4096,
    num_workers: int | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Per-gene statistics over the lake's cells; returns ``(frame, info)``."""
    import dask
    import dask.bag as db

    from aivc.errors import UsageError

    if chunk_rows < 1:
        raise UsageError(f"--chunk-rows must be at least 1, got {chunk_rows}", where="--chunk-rows")
    q = LakeQuery.open(lake, datasets=list(datasets) if datasets else None, organism=organism)
    feats = q.features("union")
    fid = q.measurement.feature_id
    target = float(q.measurement.target_sum or 1e4)
    items = []
    n_cells = 0
    for i, v in enumerate(q.versions):
        cols = np.flatnonzero(feats.present[i])
        var_j = feats.joinids[cols]
        j = np.sort(version_cells(lake, v, ["soma_joinid"])["soma_joinid"].to_numpy(np.int64))
        n_cells += len(j)
        items.extend((cols, var_j, j[s : s + chunk_rows]) for s in range(0, len(j), chunk_rows))
    bag = db.from_sequence(items, npartitions=max(1, len(items)))
    total = bag.map(lambda it: _partial(q, len(feats), it[0], it[1], it[2], target)).fold(np.add, np.add, initial=np.zeros((_K, len(feats))))
    with dask.config.set(scheduler="threads", num_workers=num_workers):
        S = total.compute()
    n = np.maximum(S[0], 1)
    mean, mean_log = S[2] / n, S[4] / n
    frame = pd.DataFrame(
        {
            fid: feats.frame[fid].to_numpy(),
            "n_cells": S[0].astype(np.int64),
            "nnz": S[1].astype(np.int64),
            "frac_detected": S[1] / n,
            "mean": mean,
            "var": np.maximum(S[3] / n - mean**2, 0.0),
            "mean_log": mean_log,
            "var_log": np.maximum(S[5] / n - mean_log**2, 0.0),
        }
    )
    info = {"organism": q.organism, "datasets": q.refs, "n_cells": int(n_cells), "n_genes": len(frame), "chunks": len(items), "chunk_rows": chunk_rows}
    return frame, info
