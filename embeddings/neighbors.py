"""Nearest neighbours within an embedding version: exact brute force by default.

A version's vectors are read once per process into one float32 matrix (L2-normalized for
cosine similarity) and kept in a small cache keyed by the version and its files, so the
next query costs one blocked matrix product and a partial sort. Results never contain the
query itself. Candidates can be restricted twice:

- ``allowed_datasets`` (access control): a cell version is limited to the partitions of
  the datasets the caller may see. A hidden cell is treated exactly like a missing one: as
  a query id it raises :class:`~aivc.errors.NotFoundError`, as a neighbour it never appears.
- ``filter_ids`` (metadata filters): only these ids may be returned, e.g. the ``obs_id``
  of ``SELECT obs_id FROM cells WHERE cell_type = 'B cell'``.

The approximate (HNSW) counterpart with the same signature is
:func:`aivc.embeddings.ann.approximate_neighbors`.

Example
-------
>>> import numpy as np, tempfile
>>> from aivc.store.lake import Lake
>>> from aivc.store.features import EmbeddingWriter
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> vecs = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
>>> with EmbeddingWriter(lake, "gene", "demo", dim=2, source={"kind": "import"}) as w:
...     w.write(["a", "b", "c"], vecs)
>>> exact_neighbors(lake, "gene:demo@1", ["a"], k=2)[0].ids
('b', 'c')
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aivc.store.features import PER_DATASET, RECORD_NAME, EmbeddingVersion, get_version, parquet_files, parse_ref, version_dir
from aivc.errors import NotFoundError, UsageError
from aivc.store.lake import Lake

Metric = Literal["cosine", "dot"]
METRICS: tuple[str, ...] = ("cosine", "dot")
Method = Literal["exact", "hnsw"]
BLOCK_ROWS = 262_144
"""Rows of the version's matrix multiplied at a time (64 MiB of scores for one query)."""
_MAX_SCORES = 1 << 24  # elements of one (queries x block) score matrix: 64 MiB of float32
_CACHE_SIZE = 2
_MAX_SEGMENTS = 256  # candidate runs searched as views of the matrix; more are gathered


@dataclass(frozen=True)
class NeighborResult:
    """The ``k`` nearest neighbours of one query, most similar first.

    ``query_id`` is ``None`` for an ad-hoc query vector. ``dataset_ids`` gives each
    neighbour's dataset for cell versions (empty for gene and niche versions).
    """

    query_id: str | None
    ids: tuple[str, ...]
    similarities: tuple[float, ...]
    dataset_ids: tuple[str, ...] = ()
    method: Method = "exact"

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {"rank": i + 1, "id": nid, "similarity": sim, **({"dataset_id": self.dataset_ids[i]} if self.dataset_ids else {})}
            for i, (nid, sim) in enumerate(zip(self.ids, self.similarities, strict=True))
        ]
        return {"query_id": self.query_id, "method": self.method, "neighbors": rows}


class LoadedVersion:
    """One version's ids (storage order), partition bounds and, on demand, its matrix.

    Rows are numbered in the order of :func:`~aivc.store.features.parquet_files`; each
    file is one contiguous range of rows, so a dataset's rows are a few ranges.
    """

    def __init__(self, version: EmbeddingVersion, files: tuple[Path, ...], ids: np.ndarray, bounds: np.ndarray, datasets: tuple[str | None, ...]) -> None:
        self.version = version
        self.files = files
        self.ids = ids
        self.bounds = bounds  # file i holds rows bounds[i]:bounds[i + 1]
        self.file_datasets = datasets
        self._index: Any = None
        self._matrices: dict[bool, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    @property
    def is_cell(self) -> bool:
        return self.version.entity in PER_DATASET

    def rows_of(self, ids: Iterable[str]) -> np.ndarray:
        """Row of each id (``-1`` where the version has no such id)."""
        import pandas as pd

        if self._index is None:
            with self._lock:
                if self._index is None:
                    self._index = pd.Index(self.ids, dtype=object)
        wanted = list(ids)
        if len(wanted) <= 32:  # a hash lookup each: no Index to build
            out = np.full(len(wanted), -1, dtype=np.int64)
            for i, q in enumerate(wanted):
                with contextlib.suppress(KeyError, TypeError):
                    out[i] = int(self._index.get_loc(q))
            return out
        return np.asarray(self._index.get_indexer(pd.Index(np.asarray(wanted, dtype=object), dtype=object)), dtype=np.int64)

    def file_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds, rows, side="right") - 1

    def dataset_ids_of(self, rows: np.ndarray) -> tuple[str, ...]:
        if not self.is_cell:
            return ()
        return tuple(str(self.file_datasets[f]) for f in self.file_of(rows))

    def visible_files(self, allowed_datasets: Iterable[str] | None) -> np.ndarray | None:
        """Indices of the files a caller may see (``None``: all of them)."""
        if allowed_datasets is None or not self.is_cell:
            return None
        allowed = set(allowed_datasets)
        return np.array([i for i, d in enumerate(self.file_datasets) if d in allowed], dtype=np.int64)

    def visible_rows(self, allowed_datasets: Iterable[str] | None) -> np.ndarray | None:
        files = self.visible_files(allowed_datasets)
        return None if files is None else self.rows_of_files(files)

    def rows_of_files(self, files: np.ndarray) -> np.ndarray:
        """The rows of the files numbered ``files``, in storage order."""
        parts = [np.arange(self.bounds[i], self.bounds[i + 1], dtype=np.int64) for i in files]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def matrix(self, metric: Metric = "cosine") -> np.ndarray:
        """The version's vectors as one C-contiguous float32 matrix (normalized for cosine)."""
        normalize = _check_metric(metric) == "cosine"
        with self._lock:
            if normalize not in self._matrices:
                self._matrices[normalize] = self._read_matrix(normalize)
            return self._matrices[normalize]

    def _read_matrix(self, normalize: bool) -> np.ndarray:
        import pyarrow.parquet as pq

        dim = self.version.dim
        out = np.empty((self.n_rows, dim), dtype=np.float32)
        for i, f in enumerate(self.files):
            col = pq.read_table(f, columns=["vector"], memory_map=True).column("vector")
            pos = int(self.bounds[i])
            for chunk in col.chunks:
                flat = chunk.flatten().to_numpy(zero_copy_only=False)
                n = len(flat) // dim
                out[pos : pos + n] = flat.reshape(n, dim)
                pos += n
            del col
        if normalize:
            normalize_rows(out)
        return out


def normalize_rows(mat: np.ndarray, block: int = BLOCK_ROWS) -> np.ndarray:
    """L2-normalize the rows of ``mat`` in place (zero rows stay zero); returns ``mat``."""
    for s in range(0, len(mat), block):
        blk = mat[s : s + block]
        norms = np.sqrt(np.einsum("ij,ij->i", blk, blk))
        norms[norms == 0] = 1.0
        blk /= norms[:, None]
    return mat


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r} is not one of {', '.join(METRICS)}", where="metric")
    return metric


_CACHE: OrderedDict[tuple[Any, ...], LoadedVersion] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cache_key(lake: Lake, entity: str, name: str, version: int) -> tuple[Any, ...] | None:
    """Identity of a published version: its record file (a version is published once, whole)."""
    try:
        st = (version_dir(lake, entity, name, version) / RECORD_NAME).stat()
    except OSError:
        return None
    return (str(lake.root), entity, name, version, st.st_ino, st.st_mtime_ns)


def _cached(key: tuple[Any, ...] | None) -> LoadedVersion | None:
    with _CACHE_LOCK:
        if key is not None and key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    return None


def load_version(lake: Lake, ref: str | EmbeddingVersion | LoadedVersion) -> LoadedVersion:
    """The cached :class:`LoadedVersion` of ``ref`` (ids read now, vectors on first use).

    An explicit ``ENTITY:NAME@VERSION`` already loaded costs one ``stat``: versions are
    immutable, so the record file identifies their content.
    """
    if isinstance(ref, LoadedVersion):
        return ref
    if isinstance(ref, str):
        entity, name, number = parse_ref(ref)
        if number is not None and (hit := _cached(_cache_key(lake, entity, name, number))) is not None:
            return hit
    v = ref if isinstance(ref, EmbeddingVersion) else get_version(lake, ref)
    key = _cache_key(lake, v.entity, v.name, v.version)
    if (hit := _cached(key)) is not None:
        return hit
    loaded = _read_ids(v, tuple(parquet_files(lake, v)))
    if key is None:
        return loaded
    with _CACHE_LOCK:
        _CACHE[key] = loaded
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return loaded


def clear_cache() -> None:
    """Forget every loaded version (frees their matrices)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _read_ids(v: EmbeddingVersion, files: tuple[Path, ...]) -> LoadedVersion:
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks: list[Any] = []
    bounds = [0]
    datasets: list[str | None] = []
    for f in files:
        col = pq.read_table(f, columns=["id"], memory_map=True).column("id")
        chunks.extend(col.chunks)
        bounds.append(bounds[-1] + len(col))
        part = f.parent.name
        datasets.append(part.split("=", 1)[1] if v.entity in PER_DATASET and part.startswith("dataset=") else None)
    ids = pa.chunked_array(chunks, type=pa.string()).to_numpy(zero_copy_only=False) if chunks else np.zeros(0, dtype=object)
    if bounds[-1] != v.n_rows:
        raise NotFoundError(f"embedding {v.ref} records {v.n_rows} rows but its files hold {bounds[-1]}; the version is damaged", where=v.ref)
    return LoadedVersion(v, files, ids, np.asarray(bounds, dtype=np.int64), tuple(datasets))


# -- candidates and queries --------------------------------------------------------------


def candidate_rows(lv: LoadedVersion, allowed_datasets: Iterable[str] | None, filter_ids: Iterable[str] | None) -> np.ndarray | None:
    """Sorted rows that may be returned (``None``: every row)."""
    rows = lv.visible_rows(allowed_datasets)
    if filter_ids is not None:
        found = lv.rows_of(filter_ids)
        found = np.unique(found[found >= 0])
        rows = found if rows is None else np.intersect1d(rows, found, assume_unique=True)
    return rows


def query_rows(lv: LoadedVersion, query_ids: Sequence[str], allowed_datasets: Iterable[str] | None) -> np.ndarray:
    """Rows of the query ids; a missing or hidden id raises :class:`NotFoundError`."""
    rows = lv.rows_of(query_ids)
    visible = lv.visible_files(allowed_datasets)
    hidden = rows < 0
    if visible is not None:
        hidden |= ~np.isin(lv.file_of(rows), visible)
    if hidden.any():
        qid = query_ids[int(np.flatnonzero(hidden)[0])]
        what = "cell (obs_id)" if lv.is_cell else "id"
        hint = _cell_id_hint(lv, str(qid), visible) if lv.is_cell else ""
        raise NotFoundError(f"no {what} {qid!r} in embedding {lv.version.ref}{hint}", where=str(qid))
    return rows


_MAX_SUGGESTED = 3


def _cell_id_hint(lv: LoadedVersion, qid: str, visible: np.ndarray | None) -> str:
    """For a bare barcode, the visible cells it could mean; else the id's form.

    Only rows of ``visible`` files are searched, so the hint never names a hidden dataset.
    """
    if ":" in qid:
        return ""
    rows = np.arange(lv.n_rows) if visible is None else lv.rows_of_files(visible)
    ids = lv.ids[rows] if len(rows) else np.zeros(0, dtype=object)
    matches = sorted(str(i) for i in ids if str(i).endswith(":" + qid))
    form = "cell ids have the form 'DATASET@VERSION:BARCODE'"
    if not matches:
        return f" ({form})"
    shown = ", ".join(repr(m) for m in matches[:_MAX_SUGGESTED])
    more = f" and {len(matches) - _MAX_SUGGESTED} more" if len(matches) > _MAX_SUGGESTED else ""
    return f" ({form}; did you mean {shown}{more}?)"


def _as_ids(query_ids: str | Sequence[str]) -> list[str]:
    return [query_ids] if isinstance(query_ids, str) else [str(q) for q in query_ids]


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise UsageError(f"k must be at least 1, got {k}", where="--k")
    return int(k)


# -- the search ----------------------------------------------------------------------------


def _segments(n_matrix: int, candidates: np.ndarray | None) -> list[tuple[int, int, int | None]]:
    """Runs ``(pos_start, pos_end, row_start)`` of candidate positions; ``row_start`` None: gather."""
    if candidates is None:
        return [(0, n_matrix, 0)]
    if len(candidates) == 0:
        return []
    breaks = np.flatnonzero(np.diff(candidates) != 1) + 1
    if len(breaks) >= _MAX_SEGMENTS:
        return [(0, len(candidates), None)]
    starts = np.concatenate([[0], breaks]).tolist()
    ends = [*breaks.tolist(), len(candidates)]
    return [(s, e, int(candidates[s])) for s, e in zip(starts, ends, strict=True)]


def _blocks(matrix: np.ndarray, candidates: np.ndarray | None, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_position, rows_block)`` over the candidates, views where rows are contiguous."""
    for seg_s, seg_e, row_s in _segments(len(matrix), candidates):
        for s in range(seg_s, seg_e, step):
            e = min(seg_e, s + step)
            if row_s is not None:
                r = row_s + (s - seg_s)
                yield s, matrix[r : r + (e - s)]
            else:
                assert candidates is not None
                yield s, matrix[candidates[s:e]]


def search_matrix(
    matrix: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    candidates: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``matrix`` by inner product with each query, most similar first.

    Parameters
    ----------
    matrix
        ``(n, d)`` float32 (normalized rows give cosine similarity).
    queries
        ``(m, d)`` query vectors.
    candidates
        Sorted rows that may be returned (default: all).
    exclude
        One row per query never returned for it (its own row), or ``-1``.

    Returns
    -------
    ``(rows, similarities)``, both ``(m, k)``; where fewer than ``k`` candidates exist the
    tail is padded with row ``-1`` and similarity ``-inf``.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q = q[None, :] if q.ndim == 1 else q
    m = q.shape[0]
    best_s = np.full((m, k), -np.inf, dtype=np.float32)
    best_p = np.full((m, k), -1, dtype=np.int64)
    ex_pos = _exclude_positions(exclude, candidates)
    step = max(256, min(block_rows, _MAX_SCORES // max(m, 1)))
    for s, block in _blocks(matrix, candidates, step):
        b = len(block)
        scores = (block @ q[0])[None, :] if m == 1 else q @ block.T
        if ex_pos is not None:
            hit = np.flatnonzero((ex_pos >= s) & (ex_pos < s + b))
            scores[hit, ex_pos[hit] - s] = -np.inf
        if b > k:
            part = np.argpartition(scores, b - k, axis=1)[:, b - k :]
            top = np.take_along_axis(scores, part, axis=1)
        else:
            part, top = np.broadcast_to(np.arange(b), (m, b)), scores
        cat_s = np.concatenate([best_s, top], axis=1)
        cat_p = np.concatenate([best_p, part + s], axis=1)
        sel = np.argpartition(cat_s, cat_s.shape[1] - k, axis=1)[:, -k:]
        best_s, best_p = np.take_along_axis(cat_s, sel, axis=1), np.take_along_axis(cat_p, sel, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_p = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_p, order, axis=1)
    if candidates is None:
        rows = best_p
    else:
        rows = np.where(best_p >= 0, candidates[np.maximum(best_p, 0)], -1) if len(candidates) else np.full_like(best_p, -1)
    rows = np.where(np.isneginf(best_s), -1, rows)
    return rows, best_s


def _exclude_positions(exclude: np.ndarray | None, candidates: np.ndarray | None) -> np.ndarray | None:
    if exclude is None:
        return None
    ex = np.asarray(exclude, dtype=np.int64)
    if candidates is None or len(candidates) == 0:
        return ex if candidates is None else None
    pos = np.searchsorted(candidates, ex)
    clipped = np.minimum(pos, len(candidates) - 1)
    return np.where((ex >= 0) & (candidates[clipped] == ex), pos, -1)


def to_results(lv: LoadedVersion, query_ids: Sequence[str | None], rows: np.ndarray, sims: np.ndarray, method: Method) -> list[NeighborResult]:
    out = []
    for qid, r, s in zip(query_ids, rows, sims, strict=True):
        keep = r >= 0
        r, s = r[keep], s[keep]
        out.append(NeighborResult(qid, tuple(str(x) for x in lv.ids[r]), tuple(float(x) for x in s), lv.dataset_ids_of(r), method))
    return out


def exact_neighbors(
    lake: Lake,
    ref: str | EmbeddingVersion | LoadedVersion,
    query_ids: str | Sequence[str],
    k: int = 10,
    *,
    allowed_datasets: Iterable[str] | None = None,
    filter_ids: Iterable[str] | None = None,
    metric: Metric = "cosine",
) -> list[NeighborResult]:
    """The exact ``k`` nearest neighbours of stored vectors, one result per query id.

    Parameters
    ----------
    ref
        ``ENTITY:NAME[@VERSION]`` or an :class:`EmbeddingVersion`.
    query_ids
        Ids in the version (cells: the lake's ``obs_id``); the query itself is excluded.
    allowed_datasets
        Datasets the caller may see (cell versions): other partitions do not exist for
        this call. ``None``: no restriction.
    filter_ids
        Only these ids may be returned (ids absent from the version are ignored).
    metric
        ``"cosine"`` (default) or ``"dot"`` (inner product of the stored vectors).

    Raises
    ------
    NotFoundError
        A query id is not in the version, or is in a dataset the caller may not see.
    """
    k = _check_k(k)
    ids = _as_ids(query_ids)
    lv = load_version(lake, ref)
    qrows = query_rows(lv, ids, allowed_datasets)
    cand = candidate_rows(lv, allowed_datasets, filter_ids)
    mat = lv.matrix(metric)
    rows, sims = search_matrix(mat, mat[qrows], k, candidates=cand, exclude=qrows)
    return to_results(lv, ids, rows, sims, "exact")


def neighbors_for_vectors(
    lake: Lake,
    ref: str | EmbeddingVersion | LoadedVersion,
    vectors: np.ndarray,
    k: int = 10,
    *,
    allowed_datasets: Iterable[str] | None = None,
    filter_ids: Iterable[str] | None = None,
    metric: Metric = "cosine",
) -> list[NeighborResult]:
    """The exact ``k`` nearest stored vectors of ad-hoc query vectors ``(m, d)`` or ``(d,)``."""
    k = _check_k(k)
    lv = load_version(lake, ref)
    q = np.array(vectors, dtype=np.float32, ndmin=2)
    if q.ndim != 2 or q.shape[1] != lv.version.dim:
        raise UsageError(f"query vectors have shape {np.shape(vectors)}, expected (m, {lv.version.dim}) for {lv.version.ref}", where="vectors")
    if not np.isfinite(q).all():
        raise UsageError("query vectors contain NaN or infinite values", where="vectors")
    if metric == "cosine":
        normalize_rows(q)
    cand = candidate_rows(lv, allowed_datasets, filter_ids)
    rows, sims = search_matrix(lv.matrix(metric), q, k, candidates=cand)
    return to_results(lv, [None] * len(q), rows, sims, "exact")
