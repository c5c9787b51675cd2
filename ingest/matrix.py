"""Streaming checks of a raw count matrix, one row chunk at a time.

:class:`MatrixChecker` sees every chunk once and keeps only per-cell statistics and the
first offending location of each problem, so memory is bounded by the chunk size. It
also computes a content hash of the matrix (over the kept gene columns) so identical
resubmissions are recognised.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.errors import Finding

#: Largest integer float32 holds exactly; counts above it cannot be stored exactly.
MAX_EXACT_COUNT = 2**24


@dataclass
class _First:
    count: int = 0
    row: int = -1
    col: int = -1
    value: float = 0.0

    def note(self, n: int, row: int, col: int, value: float) -> None:
        if self.count == 0:
            self.row, self.col, self.value = row, col, value
        self.count += n


@dataclass
class MatrixChecker:
    """Accumulates checks over row chunks of a counts matrix.

    Parameters
    ----------
    cell_ids, gene_names
        Labels used to say *where* a problem is.
    keep_cols
        Columns (submitted gene positions) that are committed; used for the hash.
    mito_cols
        Columns of mitochondrial genes, for ``pct_mito``.
    where
        Name of the matrix in messages, e.g. ``"X"`` or ``"raw.X"``.
    """

    cell_ids: pd.Index
    gene_names: pd.Index
    keep_cols: np.ndarray
    mito_cols: np.ndarray
    where: str = "X"
    n_counts: np.ndarray = field(init=False)
    n_genes: np.ndarray = field(init=False)
    mito_counts: np.ndarray = field(init=False)
    nnz: int = 0
    max_value: float = 0.0
    _nonfinite: _First = field(default_factory=_First)
    _negative: _First = field(default_factory=_First)
    _nonint: _First = field(default_factory=_First)
    _toolarge: _First = field(default_factory=_First)
    _bad_dtype: str | None = None
    _hashes: list["hashlib._Hash"] = field(default_factory=lambda: [hashlib.sha256() for _ in range(4)])

    def __post_init__(self) -> None:
        n = len(self.cell_ids)
        self.n_counts = np.zeros(n, dtype=np.float64)
        self.n_genes = np.zeros(n, dtype=np.int64)
        self.mito_counts = np.zeros(n, dtype=np.float64)
        self._mito_mask = np.zeros(len(self.gene_names), dtype=bool)
        self._mito_mask[self.mito_cols] = True
        self._hashes[0].update(np.asarray(self.keep_cols, dtype=np.int64).tobytes())

    def update(self, start: int, chunk: sp.csr_matrix) -> None:
        """Check rows ``start : start + chunk.shape[0]``."""
        if not np.issubdtype(chunk.dtype, np.number) or np.issubdtype(chunk.dtype, np.complexfloating):
            self._bad_dtype = str(chunk.dtype)
            return
        chunk.sum_duplicates()
        data = chunk.data
        rows = np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr)) + start
        self.nnz += int(np.count_nonzero(data))
        if np.issubdtype(data.dtype, np.floating):
            bad = ~np.isfinite(data)
            if bad.any():
                i = int(np.argmax(bad))
                self._nonfinite.note(int(bad.sum()), int(rows[i]), int(chunk.indices[i]), float(data[i]))
                data = np.where(bad, 0, data)
            frac = data != np.round(data)
            if frac.any():
                i = int(np.argmax(frac))
                self._nonint.note(int(frac.sum()), int(rows[i]), int(chunk.indices[i]), float(data[i]))
        neg = data < 0
        if neg.any():
            i = int(np.argmax(neg))
            self._negative.note(int(neg.sum()), int(rows[i]), int(chunk.indices[i]), float(data[i]))
        big = data > MAX_EXACT_COUNT
        if big.any():
            i = int(np.argmax(big))
            self._toolarge.note(int(big.sum()), int(rows[i]), int(chunk.indices[i]), float(data[i]))
        if data.size:
            self.max_value = max(self.max_value, float(data.max()))
        stop = start + chunk.shape[0]
        self.n_counts[start:stop] = np.bincount(rows - start, weights=data, minlength=chunk.shape[0])
        self.n_genes[start:stop] = np.bincount(rows - start, weights=(data != 0), minlength=chunk.shape[0])
        if self._mito_mask.any():
            m = self._mito_mask[chunk.indices]
            self.mito_counts[start:stop] = np.bincount(
                rows[m] - start, weights=data[m], minlength=chunk.shape[0]
            )
        kept = chunk[:, self.keep_cols]
        kept.sort_indices()
        # one hash per stream, so the digest does not depend on the chunk size
        self._hashes[1].update(np.diff(kept.indptr).astype(np.int64).tobytes())
        self._hashes[2].update(kept.indices.astype(np.int64).tobytes())
        self._hashes[3].update(kept.data.astype(np.float32).tobytes())

    @property
    def content_hash(self) -> str:
        return hashlib.sha256("".join(h.hexdigest() for h in self._hashes).encode()).hexdigest()

    def qc_frame(self) -> pd.DataFrame:
        with np.errstate(divide="ignore", invalid="ignore"):
            pct = np.where(self.n_counts > 0, 100.0 * self.mito_counts / self.n_counts, 0.0)
        return pd.DataFrame(
            {"n_counts": self.n_counts, "n_genes": self.n_genes, "pct_mito": pct},
            index=self.cell_ids,
        )

    def _at(self, first: _First) -> str:
        cell = self.cell_ids[first.row] if 0 <= first.row < len(self.cell_ids) else first.row
        gene = self.gene_names[first.col] if 0 <= first.col < len(self.gene_names) else first.col
        more = f" and {first.count - 1} more entries" if first.count > 1 else ""
        return f"{self.where}[cell {cell!r} (row {first.row}), gene {gene!r} (column {first.col})]{more}"

    def findings(self) -> list[Finding]:
        """All matrix errors found, one Finding per problem kind."""
        out: list[Finding] = []
        if self._bad_dtype is not None:
            out.append(Finding("MATRIX_BAD_DTYPE", self.where, f"matrix dtype {self._bad_dtype} is not numeric; raw counts must be integers"))
            return out
        if self._nonfinite.count:
            out.append(Finding("MATRIX_NOT_FINITE", self._at(self._nonfinite), f"value {self._nonfinite.value} is not finite; raw counts must be finite"))
        if self._negative.count:
            out.append(Finding("MATRIX_NEGATIVE", self._at(self._negative), f"value {self._negative.value:g} is negative; raw counts must be >= 0"))
        if self._toolarge.count:
            out.append(Finding("MATRIX_COUNT_TOO_LARGE", self._at(self._toolarge), f"count {self._toolarge.value:g} exceeds {MAX_EXACT_COUNT} and cannot be stored exactly"))
        normalized = self._normalized_finding()
        if normalized is not None:
            out.append(normalized)
        elif self._nonint.count:
            if self._looks_log_transformed():
                out.append(Finding("MATRIX_LOG_TRANSFORMED", self._at(self._nonint), f"value {self._nonint.value:g} is not an integer and the matrix max is {self.max_value:.3g}: this looks log-transformed; point 'counts' at the raw counts (X, raw or layer:<name>)"))
            else:
                out.append(Finding("MATRIX_NOT_INTEGER", self._at(self._nonint), f"value {self._nonint.value:g} is not an integer; raw counts must be whole numbers"))
        empty = np.flatnonzero(self.n_counts == 0)
        if empty.size and not (self._nonfinite.count or self._negative.count):
            first = self.cell_ids[empty[0]]
            more = f" and {empty.size - 1} more cells" if empty.size > 1 else ""
            out.append(Finding("MATRIX_EMPTY_CELLS", f"{self.where} cell {first!r} (row {int(empty[0])}){more}", f"{empty.size} cells have no counts at all; remove empty droplets before submitting"))
        return out

    def _normalized_finding(self) -> Finding | None:
        totals = self.n_counts[self.n_counts > 0]
        if totals.size < 10:
            return None
        cv = float(np.std(totals) / np.mean(totals))
        if cv < 0.01:
            return Finding(
                "MATRIX_NORMALIZED",
                f"{self.where} (all {totals.size} cells)",
                f"every cell sums to about {float(f'{np.median(totals):.2g}'):g} (median {np.median(totals):.6g}, coefficient of variation {cv:.2g}): "
                "this is a normalized matrix, not raw counts; point 'counts' at the raw counts",
            )
        return None

    def _looks_log_transformed(self) -> bool:
        return self.max_value < 20 and self._nonint.count > 0.5 * max(self.nnz, 1)
