"""Readers for submitted data: metadata eagerly, the count matrix lazily in row chunks.

An ``.h5ad`` (HDF5) or AnnData ``.zarr`` store is opened without loading X: ``obs``
and ``var`` are read whole (they are small), the matrix is read ``chunk_rows`` rows at a
time through anndata's backed sparse datasets (or h5py/zarr slicing for dense
matrices), so memory stays bounded whatever the file size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.errors import UsageError

CountsSource = Literal["X", "raw", "layer"]


class UnreadableDataError(UsageError):
    """The data file exists but is not a readable AnnData store."""

    exit_code = 1
    code = "DATA_UNREADABLE"


@dataclass
class MatrixHandle:
    """A lazily read 2-D matrix inside an AnnData store."""

    element: Any  # h5py/zarr group (sparse) or dataset (dense)
    encoding: Literal["csr_matrix", "csc_matrix", "array"]
    shape: tuple[int, int]
    dtype: np.dtype
    path: str  # "X", "raw/X", "layers/counts"

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR (dense arrays are converted)."""
        if self.encoding == "array":
            block = np.asarray(self.element[start:stop])
            return sp.csr_matrix(block)
        from anndata.io import sparse_dataset

        ds = sparse_dataset(self.element)
        out = ds[start:stop]
        return out.tocsr() if not sp.isspmatrix_csr(out) else out


@dataclass
class SubmittedData:
    """An opened submission: metadata in memory, counts as a lazy :class:`MatrixHandle`."""

    path: Path
    obs: pd.DataFrame
    var: pd.DataFrame  # the var that goes with the counts matrix (raw/var for raw)
    counts: MatrixHandle
    obsm_keys: tuple[str, ...]
    _store: Any
    _obsm_cache: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_obs(self) -> int:
        return len(self.obs)

    @property
    def n_vars(self) -> int:
        return len(self.var)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(row_start, csr_chunk)`` over the counts matrix."""
        n = self.counts.shape[0]
        for start in range(0, n, chunk_rows):
            yield start, self.counts.rows(start, min(n, start + chunk_rows))

    def read_obsm(self, key: str) -> np.ndarray:
        """One submitted embedding, read once and kept (validation, hashing and commit all use it)."""
        if key in self._obsm_cache:
            return self._obsm_cache[key]
        from anndata.io import read_elem

        value = read_elem(self._store["obsm"][key])
        if sp.issparse(value):
            value = value.toarray()
        if isinstance(value, pd.DataFrame):
            value = value.to_numpy()
        self._obsm_cache[key] = np.asarray(value)
        return self._obsm_cache[key]

    def close(self) -> None:
        handle = getattr(self._store, "file", self._store)  # a group of an .h5mu: its file
        close = getattr(handle, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> SubmittedData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _matrix_handle(store: Any, path: str) -> MatrixHandle:
    element = store[path]
    attrs = dict(element.attrs)
    enc = attrs.get("encoding-type")
    if enc in ("csr_matrix", "csc_matrix"):
        shape = tuple(int(s) for s in attrs["shape"])
        dtype = np.dtype(element["data"].dtype)
        return MatrixHandle(element, enc, (shape[0], shape[1]), dtype, path)
    if enc == "array" or (enc is None and hasattr(element, "shape")):
        shp = tuple(int(s) for s in element.shape)
        if len(shp) != 2:
            raise UnreadableDataError(f"matrix has {len(shp)} dimensions, expected 2", where=path)
        return MatrixHandle(element, "array", (shp[0], shp[1]), np.dtype(element.dtype), path)
    raise UnreadableDataError(f"unsupported matrix encoding {enc!r}", where=path)


def open_anndata(path: str | Path, counts: CountsSource = "X", layer: str | None = None, group: str | None = None) -> SubmittedData:
    """Open an AnnData ``.h5ad`` or ``.zarr`` store for streaming validation and ingestion.

    ``group`` opens an AnnData stored inside the file (a MuData modality, ``mod/rna``).

    Raises
    ------
    UsageError
        If the file does not exist.
    UnreadableDataError
        If it is not an AnnData store, or the requested counts matrix is absent.
    """
    from anndata.io import read_elem

    p = Path(path)
    if not p.exists():
        raise UsageError(f"data file not found: {p}", where=str(p))
    try:
        if p.is_dir() or p.suffix == ".zarr":
            import zarr

            store: Any = zarr.open(str(p), mode="r")
        else:
            import h5py

            store = h5py.File(p, "r")
    except Exception as exc:  # h5py raises OSError for non-HDF5 files
        raise UnreadableDataError(f"not a readable .h5ad/.zarr AnnData file ({type(exc).__name__})", where=str(p)) from None
    if group:
        if group not in store:
            store.close() if hasattr(store, "close") else None
            raise UnreadableDataError(f"the file has no {group}", where=f"{p}: {group}")
        store = store[group]
    try:
        keys = set(store.keys())
        if "obs" not in keys or "var" not in keys:
            raise UnreadableDataError("not an AnnData file: it has no 'obs' and 'var' groups", where=str(p))
        obs = read_elem(store["obs"])
        if counts == "X":
            if "X" not in keys:
                raise UnreadableDataError("manifest says counts are in X, but the file has no X", where=f"{p}: X")
            mpath, var = "X", read_elem(store["var"])
        elif counts == "raw":
            if "raw" not in keys or "X" not in store["raw"]:
                raise UnreadableDataError(
                    "manifest says counts are in raw, but the file has no raw.X", where=f"{p}: raw"
                )
            mpath, var = "raw/X", read_elem(store["raw"]["var"])
        else:
            if "layers" not in keys or layer not in store["layers"]:
                have = sorted(store["layers"].keys()) if "layers" in keys else []
                raise UnreadableDataError(
                    f"manifest says counts are in layer {layer!r}, but the file's layers are {have}",
                    where=f"{p}: layers/{layer}",
                )
            mpath, var = f"layers/{layer}", read_elem(store["var"])
        handle = _matrix_handle(store, mpath)
        if group:
            handle.path = f"{group}/{mpath}"
        obsm_keys = tuple(sorted(store["obsm"].keys())) if "obsm" in keys else ()
    except UnreadableDataError:
        _close(store)
        raise
    except Exception as exc:
        _close(store)
        raise UnreadableDataError(f"cannot read AnnData structure ({type(exc).__name__}: {exc})", where=str(p)) from None
    return SubmittedData(p, obs, var, handle, obsm_keys, store)


def _close(store: Any) -> None:
    handle = getattr(store, "file", store)
    if hasattr(handle, "close"):
        handle.close()
