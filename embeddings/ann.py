"""Approximate nearest neighbours: one faiss HNSW index per embedding version.

Layout, beside the version's Parquet files (which it never changes)::

    <lake>/features/<entity>/<name>/v000001/_index/
        hnsw.faiss    faiss IndexHNSWFlat, inner product over L2-normalized vectors (cosine);
                      index row i is row i of the version in parquet_files() order
        hnsw.json     the record (schema_name aivc.ann_index): parameters, build time and the
                      recall@10 measured against exact search when it was built

The index is derived data: it can be deleted and rebuilt at any time. Both files are
written under temporary names and published with ``os.replace``, the record last; a
record whose files, row count or index size do not match is ignored (the index is
treated as missing), so a reader never uses a half-written or foreign index.

``efSearch`` is tuned at build time: the smallest value of :data:`EF_SEARCH_CHOICES` whose
recall@10 on a sample of queries (default 200, exact search as the truth) reaches the
target (default 0.97, i.e. 0.95 plus a margin for the sample's error).

Example
-------
>>> from aivc.embeddings.ann import approximate_neighbors, index_info  # doctest: +SKIP
>>> approximate_neighbors(lake, "cell:pca@1", ["ds@1:cell-0001"], k=10, build_if_missing=True)  # doctest: +SKIP
>>> index_info(lake, "cell:pca@1").recall_at_10  # doctest: +SKIP
0.978
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aivc.embeddings.neighbors import (
    LoadedVersion,
    Metric,
    NeighborResult,
    _as_ids,
    _check_k,
    candidate_rows,
    load_version,
    query_rows,
    search_matrix,
    to_results,
)
from aivc.store.features import EmbeddingVersion, version_dir
from aivc.errors import AivcError, NotFoundError, UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake, utcnow, write_json_atomic

INDEX_DIR = "_index"
INDEX_FILE = "hnsw.faiss"
RECORD_FILE = "hnsw.json"
RECORD_SCHEMA = "aivc.ann_index"
EF_SEARCH_CHOICES: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
RECALL_K = 10
OVERFETCH = 2.0  # with a filter keeping a fraction f of rows, fetch k * OVERFETCH / f candidates
MAX_FETCH = 1024  # beyond this, the filtered rows are few: search them exactly instead
SMALL_EXACT = 20_000  # this many candidate rows or fewer: exact search is as fast


@dataclass(frozen=True)
class HnswParams:
    """How an index is built; ``m`` links per node, ``ef_construction`` build-time beam."""

    m: int = 32
    ef_construction: int = 100
    target_recall: float = 0.97
    recall_queries: int = 200
    seed: int = 0
    add_batch: int = 65_536


@dataclass(frozen=True)
class IndexInfo:
    """The record of a built index (``hnsw.json``)."""

    ref: str
    kind: str
    metric: str
    m: int
    ef_construction: int
    ef_search: int
    n_rows: int
    dim: int
    files: tuple[str, ...]
    index_bytes: int
    build_seconds: float
    recall_at_10: float
    recall_queries: int
    recall_by_ef_search: dict[str, float]
    target_recall: float
    faiss_version: str
    created_at: str

    def to_record(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return {"schema_name": RECORD_SCHEMA, "schema_version": 1, **d}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> IndexInfo:
        if d.get("schema_name") != RECORD_SCHEMA or int(d.get("schema_version", 0)) != 1:
            raise AivcError(f"unknown index record format {d.get('schema_name')}/{d.get('schema_version')}")
        d = {k: v for k, v in d.items() if k not in ("schema_name", "schema_version")}
        d["files"] = tuple(d["files"])
        return cls(**d)

    def summary(self) -> str:
        return f"HNSW M={self.m} efSearch={self.ef_search}, recall@10 {self.recall_at_10:.3f} measured on {self.recall_queries} queries"


def index_paths(lake: Lake, v: EmbeddingVersion) -> tuple[Path, Path]:
    folder = version_dir(lake, v.entity, v.name, v.version) / INDEX_DIR
    return folder / INDEX_FILE, folder / RECORD_FILE


def _relative_files(lake: Lake, lv: LoadedVersion) -> tuple[str, ...]:
    root = version_dir(lake, lv.version.entity, lv.version.name, lv.version.version)
    return tuple(str(f.relative_to(root)) for f in lv.files)


def index_info(lake: Lake, ref: str | EmbeddingVersion | LoadedVersion) -> IndexInfo | None:
    """The record of the version's index, or ``None`` when it has no usable index."""
    import json

    lv = load_version(lake, ref)
    path, rec = index_paths(lake, lv.version)
    try:
        info = IndexInfo.from_record(json.loads(rec.read_text()))
        size = path.stat().st_size
    except (OSError, ValueError, TypeError, KeyError, AivcError):
        return None
    ok = info.n_rows == lv.n_rows and info.dim == lv.version.dim and info.files == _relative_files(lake, lv) and info.index_bytes == size
    return info if ok else None


# -- building ------------------------------------------------------------------------------


def build_index(lake: Lake, ref: str | EmbeddingVersion | LoadedVersion, *, params: HnswParams | None = None, progress: Progress | None = None) -> IndexInfo:
    """Build (or rebuild) the HNSW index of a version, measure its recall, publish it."""
    return _build(lake, ref, params, progress)[1]


def _build(lake: Lake, ref: str | EmbeddingVersion | LoadedVersion, params: HnswParams | None, progress: Progress | None) -> tuple[Any, IndexInfo]:
    import faiss

    params = params or HnswParams()
    progress = progress or NullProgress()
    lv = load_version(lake, ref)
    v = lv.version
    progress.phase(f"reading vectors of {v.ref}")
    mat = lv.matrix("cosine")
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(v.dim, params.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    progress.phase(f"building HNSW index of {v.ref}", total=lv.n_rows)
    for s in range(0, lv.n_rows, params.add_batch):
        index.add(mat[s : s + params.add_batch])
        progress.advance(min(params.add_batch, lv.n_rows - s))
    build_seconds = time.perf_counter() - t0
    progress.phase(f"measuring recall@{RECALL_K} of {v.ref}")
    ef, recall, by_ef = _tune_ef_search(index, mat, params)
    path, rec = index_paths(lake, v)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    info = IndexInfo(
        ref=v.ref,
        kind="hnsw",
        metric="cosine",
        m=params.m,
        ef_construction=params.ef_construction,
        ef_search=ef,
        n_rows=lv.n_rows,
        dim=v.dim,
        files=_relative_files(lake, lv),
        index_bytes=path.stat().st_size,
        build_seconds=round(build_seconds, 3),
        recall_at_10=round(recall, 4),
        recall_queries=min(params.recall_queries, lv.n_rows),
        recall_by_ef_search={str(k): round(r, 4) for k, r in by_ef.items()},
        target_recall=params.target_recall,
        faiss_version=faiss.__version__,
        created_at=utcnow(),
    )
    write_json_atomic(rec, info.to_record())
    with _INDEX_LOCK:
        _INDEXES.pop(str(path), None)
    return index, info


def _tune_ef_search(index: Any, mat: np.ndarray, params: HnswParams) -> tuple[int, float, dict[int, float]]:
    """Smallest efSearch whose sampled recall@10 reaches the target (else the best tried)."""
    n = len(mat)
    rng = np.random.default_rng(params.seed)
    rows = np.sort(rng.choice(n, size=min(params.recall_queries, n), replace=False))
    truth, _ = search_matrix(mat, mat[rows], RECALL_K, exclude=rows)
    by_ef: dict[int, float] = {}
    for ef in EF_SEARCH_CHOICES:
        got, _ = _hnsw_search(index, mat[rows], RECALL_K + 1, ef)
        by_ef[ef] = _recall(truth, got, rows)
        if by_ef[ef] >= params.target_recall or ef >= n:
            break
    best = next((ef for ef, r in by_ef.items() if r >= params.target_recall), max(by_ef, key=lambda e: (by_ef[e], -e)))
    return best, by_ef[best], by_ef


def _recall(truth: np.ndarray, got: np.ndarray, self_rows: np.ndarray) -> float:
    hits = total = 0
    for t, g, r in zip(truth, got, self_rows, strict=True):
        t = t[t >= 0]
        g = g[(g >= 0) & (g != r)][: len(t)]
        hits += len(np.intersect1d(t, g))
        total += len(t)
    return hits / total if total else 1.0


def _remove_stale_tmp(folder: Path) -> None:
    """Delete temporary files left by index builds of processes that no longer run."""
    for tmp in folder.glob(".*.tmp"):
        parts = tmp.name.split(".")
        with contextlib.suppress(ValueError, IndexError):
            pid = int(parts[-3])
            try:
                os.kill(pid, 0)
                continue
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except PermissionError:
                continue


# -- loading and searching -----------------------------------------------------------------

_INDEXES: dict[str, tuple[tuple[int, ...] | None, Any, IndexInfo]] = {}
_INDEX_LOCK = threading.Lock()


def open_index(
    lake: Lake,
    ref: str | EmbeddingVersion | LoadedVersion,
    *,
    build_if_missing: bool = False,
    params: HnswParams | None = None,
    progress: Progress | None = None,
) -> tuple[Any, IndexInfo]:
    """The version's loaded faiss index and record (cached per process)."""
    import faiss

    lv = load_version(lake, ref)
    path, rec = index_paths(lake, lv.version)
    stamp = _stamp(path, rec)
    with _INDEX_LOCK:
        hit = _INDEXES.get(str(path))
        if hit is not None and stamp is not None and hit[0] == stamp:
            return hit[1], hit[2]
    info = index_info(lake, lv)
    if info is None:
        if not build_if_missing:
            raise NotFoundError(
                f"embedding {lv.version.ref} has no approximate index yet; build it with `aivc neighbors {lv.version.ref} ID --approx`",
                where=lv.version.ref,
            )
        index, info = _build(lake, lv, params, progress)
        stamp = _stamp(path, rec)
    else:
        index = faiss.read_index(str(path))
    with _INDEX_LOCK:
        _INDEXES.clear()  # one index at a time: they are as large as the vectors
        _INDEXES[str(path)] = (stamp, index, info)
    return index, info


def _stamp(*paths: Path) -> tuple[int, ...] | None:
    try:
        return tuple(x for p in paths for st in [p.stat()] for x in (st.st_ino, st.st_size, st.st_mtime_ns))
    except OSError:
        return None


def stored_vectors(index: Any) -> np.ndarray:
    """The normalized vectors inside an ``IndexHNSWFlat`` as a read-only ``(n, d)`` view."""
    import faiss

    flat = faiss.downcast_index(index.storage)
    view = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
    view.flags.writeable = False
    return view


def _hnsw_search(index: Any, queries: np.ndarray, fetch: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    sp = faiss.SearchParametersHNSW()
    sp.efSearch = max(int(ef_search), int(fetch))
    dist, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(fetch), params=sp)
    return rows.astype(np.int64, copy=False), dist


def approximate_neighbors(
    lake: Lake,
    ref: str | EmbeddingVersion | LoadedVersion,
    query_ids: str | Sequence[str],
    k: int = 10,
    *,
    allowed_datasets: Iterable[str] | None = None,
    filter_ids: Iterable[str] | None = None,
    metric: Metric = "cosine",
    build_if_missing: bool = False,
    progress: Progress | None = None,
) -> list[NeighborResult]:
    """Like :func:`~aivc.embeddings.neighbors.exact_neighbors`, through the HNSW index.

    With ``allowed_datasets`` or ``filter_ids``, ``k * OVERFETCH / fraction kept`` candidates
    are fetched and filtered; a query left with fewer than ``k`` (or a filter keeping few
    rows) is answered exactly (its result says ``method="exact"``).

    Raises
    ------
    NotFoundError
        A query id is missing or hidden, or the version has no index and
        ``build_if_missing`` is false.
    """
    if metric != "cosine":
        raise UsageError(f"the approximate index supports cosine similarity only, not {metric!r}; drop --approx", where="metric")
    k = _check_k(k)
    ids = _as_ids(query_ids)
    lv = load_version(lake, ref)
    qrows = query_rows(lv, ids, allowed_datasets)
    index, info = open_index(lake, lv, build_if_missing=build_if_missing, progress=progress)
    xb = stored_vectors(index)
    cand = candidate_rows(lv, allowed_datasets, filter_ids)
    n_cand = lv.n_rows if cand is None else len(cand)
    fetch = min(lv.n_rows, k + 1 if cand is None else math.ceil((k + 1) * OVERFETCH * lv.n_rows / max(n_cand, 1)))
    if cand is not None and (fetch > MAX_FETCH or n_cand <= SMALL_EXACT):
        rows, sims = search_matrix(xb, xb[qrows], k, candidates=cand, exclude=qrows)
        return to_results(lv, ids, rows, sims, "exact")
    got, dist = _hnsw_search(index, xb[qrows], fetch, info.ef_search)
    ok = (got >= 0) & (got != qrows[:, None])
    if cand is not None:
        keep = np.zeros(lv.n_rows, dtype=bool)
        keep[cand] = True
        ok &= keep[np.maximum(got, 0)]
    results = _first_k(lv, ids, got, dist, ok, k)
    short = [i for i, r in enumerate(results) if len(r.ids) < min(k, n_cand - int(_in(cand, qrows[i])))]
    if short:
        rows, sims = search_matrix(xb, xb[qrows[short]], k, candidates=cand, exclude=qrows[short])
        for i, res in zip(short, to_results(lv, [ids[i] for i in short], rows, sims, "exact"), strict=True):
            results[i] = res
    return results


def _in(cand: np.ndarray | None, row: int) -> bool:
    if cand is None:
        return True
    pos = int(np.searchsorted(cand, row))
    return pos < len(cand) and int(cand[pos]) == int(row)


def _first_k(lv: LoadedVersion, ids: list[str], got: np.ndarray, dist: np.ndarray, ok: np.ndarray, k: int) -> list[NeighborResult]:
    rows = np.full((len(ids), k), -1, dtype=np.int64)
    sims = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for i in range(len(ids)):
        sel = np.flatnonzero(ok[i])[:k]
        rows[i, : len(sel)] = got[i, sel]
        sims[i, : len(sel)] = dist[i, sel]
    return to_results(lv, ids, rows, sims, "hnsw")
