"""The one read API over the lake's committed dataset versions.

In the spirit of tiledbsoma's ``ExperimentAxisQuery``: a :class:`LakeQuery` pins a set of
committed dataset versions of one organism and one measurement (and the SOMA timestamp
that makes exactly their cells visible); it then gives the cells (``obs``) of those
versions, optionally narrowed by a SQL condition, the measurement's features with a
presence mask per version (a feature a dataset did not measure is *missing* there, not
zero), and streams chunks of raw or log-normalized values. Training, embedding jobs and
instruments read the lake through it, so they share one version selection, one
normalization (:func:`lognormalize`) and one variable-feature selection
(:meth:`LakeQuery.variable_features`).

The per-version tables a submission committed (its harmonized cells, the features it
measured, the obs columns as submitted, submitter embeddings) are read with
:func:`version_cells`, :func:`version_features`, :func:`submitted_obs` and
:func:`submitted_obsm`; no code outside ``store/`` opens them by path.

Example
-------
>>> q = LakeQuery.open(lake, datasets=["pbmc@1"])                         # doctest: +SKIP
>>> cells = q.obs(where="cell_type = 'B cell'")                          # doctest: +SKIP
>>> feats = q.features("intersection")                                   # doctest: +SKIP
>>> for rows, L in q.chunks(cells, feats.joinids, normalize=True):       # doctest: +SKIP
...     ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.errors import LakeError, UsageError
from aivc.store import artifacts, soma_io
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake
from aivc.store.measurements import RNA, MeasurementSpec
from aivc.store.measurements import get as get_measurement

__all__ = [
    "FeatureSet",
    "LakeQuery",
    "Options",
    "lognormalize",
    "select_versions",
    "submitted_obs",
    "submitted_obsm",
    "top_variable",
    "version_cells",
    "version_features",
]

FeatureMode = Literal["intersection", "union"]
CELL_COLUMNS: tuple[str, ...] = ("obs_id", "soma_joinid", "dataset_id")


@dataclass(frozen=True)
class Options:
    """How the caller's user names the selection options (for error messages)."""

    organism: str = "--organism"
    organism_fix: str = "choose one with --organism"  # what to do about several organisms
    datasets: str = "--datasets"
    where: str = "--where"
    features: str = "--datasets"
    features_fix: str = "choose fewer datasets"
    purpose: str = "read"


# -- per-version tables ------------------------------------------------------------------
def _table(lake: Lake, v: DatasetVersion, name: str, columns: Sequence[str] | None = None):  # noqa: ANN202 - pyarrow.Table
    return lake.storage.read_parquet(artifacts.artifact_key(v, name), columns=list(columns) if columns else None)


def version_cells(lake: Lake, v: DatasetVersion, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The harmonized cells of one committed version (one row per cell, storage order)."""
    return _table(lake, v, artifacts.CELLS, columns).to_pandas()


def version_features(lake: Lake, v: DatasetVersion, columns: Sequence[str] | None = None, measurement: MeasurementSpec = RNA) -> pd.DataFrame:
    """The features one committed version measured (RNA: ``gene_id``, ``soma_joinid``, …)."""
    key = artifacts.artifact_key(v, artifacts.features_file(measurement))
    if measurement.name != RNA.name and not lake.storage.exists(key):
        raise LakeError(f"dataset version {v.ref} holds no {measurement.name} features", where=v.ref)
    try:
        return _table(lake, v, artifacts.features_file(measurement), columns).to_pandas()
    except FileNotFoundError:
        raise LakeError(f"dataset version {v.ref} holds no {measurement.name} features", where=v.ref) from None


def submitted_obs(lake: Lake, v: DatasetVersion) -> pd.DataFrame:
    """Every obs column exactly as submitted (with ``barcode``)."""
    return _table(lake, v, artifacts.SUBMITTED_OBS).to_pandas()


def submitted_obsm(lake: Lake, v: DatasetVersion, key: str):  # noqa: ANN201 - pyarrow.Table
    """One submitter embedding (``obsm[key]``) as an Arrow table (``obs_id``, ``vector``)."""
    if key not in v.obsm_keys:
        raise LakeError(f"dataset version {v.ref} has no obsm {key!r} (has: {', '.join(v.obsm_keys) or 'none'})", where=v.ref)
    return _table(lake, v, f"{artifacts.OBSM}/{key}.parquet")


# -- version selection -------------------------------------------------------------------
def select_versions(lake: Lake, *, datasets: Sequence[str] | None = None, organism: str | None = None, options: Options = Options()) -> list[DatasetVersion]:
    """The versions a job reads: the ``DATASET[@VERSION]`` named, else every current one.

    One organism (the only one, or ``organism``), one version per dataset, sorted by
    dataset id.
    """
    cat = Catalog(lake)
    chosen = [cat.get(d) for d in datasets] if datasets else cat.current()
    if not chosen:
        raise UsageError(f"the lake has no committed datasets to {options.purpose}; submit one first", where="--lake")
    organisms = sorted({v.organism_name for v in chosen})
    if organism is None:
        if len(organisms) > 1:
            raise UsageError(f"datasets of several organisms ({', '.join(organisms)}); {options.organism_fix}", where=options.organism)
        organism = organisms[0]
    chosen = [v for v in chosen if v.organism_name == organism]
    if not chosen:
        raise UsageError(f"no datasets of organism {organism!r} (the lake has {', '.join(organisms)})", where=options.organism)
    ids = [v.dataset_id for v in chosen]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UsageError(f"dataset {dup[0]!r} is named twice; {options.purpose} one version of each dataset", where=options.datasets)
    return sorted(chosen, key=lambda v: v.dataset_id)


# -- values ------------------------------------------------------------------------------
def lognormalize(X: np.ndarray | sp.spmatrix, target_sum: float = 1e4, totals: np.ndarray | None = None) -> np.ndarray | sp.csr_matrix:
    """``log1p(x / total * target_sum)`` per cell (row); dense in, dense out; sparse in, CSR out.

    ``totals`` defaults to each row's sum over the given features; a row summing to 0 stays 0.
    """
    if totals is None:
        totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    scale = target_sum / np.where(totals > 0, totals, 1.0)
    if sp.issparse(X):
        L = sp.csr_matrix(sp.diags(scale) @ X.astype(np.float64))
        L.data = np.log1p(L.data)
        return L
    return np.log1p(np.asarray(X, dtype=np.float64) * scale[:, None])


@dataclass(frozen=True)
class FeatureSet:
    """Features of a query (by SOMA joinid) and which version measured each.

    ``frame`` has the measurement's ``feature_id`` column and ``soma_joinid`` (sorted by
    joinid); ``present[i, j]`` is true when version ``i`` measured feature ``j``.
    """

    frame: pd.DataFrame
    present: np.ndarray

    @property
    def joinids(self) -> np.ndarray:
        return self.frame["soma_joinid"].to_numpy(np.int64)

    def __len__(self) -> int:
        return len(self.frame)

    def take(self, positions: np.ndarray) -> FeatureSet:
        return FeatureSet(self.frame.iloc[positions].reset_index(drop=True), self.present[:, positions])


@dataclass(frozen=True)
class LakeQuery:
    """Committed dataset versions of one organism, read through one measurement."""

    lake: Lake
    versions: tuple[DatasetVersion, ...]
    organism: str
    high_water: int
    measurement: MeasurementSpec = RNA
    options: Options = Options()

    @classmethod
    def open(
        cls,
        lake: Lake,
        *,
        datasets: Sequence[str] | None = None,
        organism: str | None = None,
        measurement: str | MeasurementSpec = RNA,
        options: Options = Options(),
    ) -> LakeQuery:
        """Pin the versions to read (see :func:`select_versions`) at the committed state."""
        return cls.of(lake, select_versions(lake, datasets=datasets, organism=organism, options=options), measurement=measurement, options=options)

    @classmethod
    def of(
        cls,
        lake: Lake,
        versions: Sequence[DatasetVersion],
        *,
        measurement: str | MeasurementSpec = RNA,
        options: Options = Options(),
        high_water: int | None = None,
    ) -> LakeQuery:
        """A query over exactly ``versions`` (all of one organism), at the lake's committed
        state or at a pinned ``high_water`` (a saved plan's)."""
        organisms = sorted({v.organism_name for v in versions})
        if len(organisms) != 1:
            raise UsageError(f"a query reads one organism, got {', '.join(organisms) or 'none'}", where=options.organism)
        hw = Catalog(lake).high_water(organisms[0]) if high_water is None else high_water
        if hw is None:
            raise LakeError(f"no committed data for {organisms[0]}", where="--lake")
        spec = get_measurement(measurement)
        if not any(spec.name in v.measured() for v in versions):
            from aivc.errors import NotFoundError

            refs = ", ".join(v.ref for v in versions)
            raise NotFoundError(f"none of the selected dataset versions ({refs}) holds an {spec.name} measurement", where=options.datasets)
        return cls(lake, tuple(versions), organisms[0], int(hw), spec, options)

    @property
    def soma_uri(self) -> str:
        return self.lake.soma_uri(self.organism)

    @property
    def refs(self) -> list[str]:
        return [v.ref for v in self.versions]

    # -- axes --------------------------------------------------------------------------
    def obs(self, columns: Sequence[str] = CELL_COLUMNS, where: str | None = None) -> pd.DataFrame:
        """The cells of the versions, sorted by ``soma_joinid``; ``where`` is a SQL condition
        on ``cells_all_versions`` (see :meth:`select_joinids`)."""
        cols = list(dict.fromkeys(["soma_joinid", *columns]))
        cells = pd.concat([version_cells(self.lake, v, cols) for v in self.versions], ignore_index=True)
        cells = cells.sort_values("soma_joinid", kind="stable").reset_index(drop=True)
        if where:
            keep = self.select_joinids(where)
            cells = cells[cells["soma_joinid"].isin(keep)].reset_index(drop=True)
        return cells[list(columns)]

    def runs(self) -> list[list[DatasetVersion]]:
        """The versions in ``soma_joinid`` order, grouped into runs whose joinid ranges
        overlap (the lake gives each committed version fresh joinids, so a run is one
        version): reading run by run yields the cells in :meth:`obs` order while holding
        only one run's cell table."""
        out: list[list[DatasetVersion]] = []
        hi = -1
        for v in sorted(self.versions, key=lambda v: (v.obs_joinid_min, v.obs_joinid_max)):
            if out and v.obs_joinid_min <= hi:
                out[-1].append(v)
            else:
                out.append([v])
            hi = max(hi, v.obs_joinid_max)
        return out

    def iter_obs(self, columns: Sequence[str] = CELL_COLUMNS, where: str | None = None, *, chunk_rows: int = 4096) -> Iterator[pd.DataFrame]:
        """The rows of :meth:`obs` in the same order, in frames of at most ``chunk_rows``
        cells (a chunk never spans two runs of :meth:`runs`). Memory: one version's cell
        table (plus, with ``where``, the selected joinids), not the lake's."""
        keep = self.select_joinids(where) if where else None
        cols = list(dict.fromkeys(["soma_joinid", *columns]))
        step = max(1, int(chunk_rows))
        for run in self.runs():
            cells = pd.concat([version_cells(self.lake, v, cols) for v in run], ignore_index=True)
            cells = cells.sort_values("soma_joinid", kind="stable")
            if keep is not None:
                cells = cells[np.isin(cells["soma_joinid"].to_numpy(np.int64), keep)]
            cells = cells[list(columns)].reset_index(drop=True)
            for start in range(0, len(cells), step):
                yield cells.iloc[start : start + step].reset_index(drop=True)

    def n_cells(self, where: str | None = None) -> int:
        """How many cells :meth:`obs` would return (without reading cell tables when ``where`` is None)."""
        if where is None:
            return int(sum(v.n_cells for v in self.versions))
        return int(self.select_joinids(where).size)

    def obs_joinids(self, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``soma_joinid`` of :meth:`obs`'s rows (same order) and each row's position in
        :attr:`versions`: 8 + 8 bytes a cell, no ids or other columns."""
        keep = self.select_joinids(where) if where else None
        joins, group = [], []
        pos = {id(v): i for i, v in enumerate(self.versions)}
        for run in self.runs():
            j = [version_cells(self.lake, v, ["soma_joinid"])["soma_joinid"].to_numpy(np.int64) for v in run]
            g = np.concatenate([np.full(len(x), pos[id(v)], np.int64) for x, v in zip(j, run, strict=True)])
            jj = np.concatenate(j)
            o = np.argsort(jj, kind="stable")
            jj, g = jj[o], g[o]
            if keep is not None:
                m = np.isin(jj, keep)
                jj, g = jj[m], g[m]
            joins.append(jj)
            group.append(g)
        if not joins:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(joins), np.concatenate(group)

    def select_joinids(self, where: str) -> np.ndarray:
        """``soma_joinid`` of the cells of these versions for which ``where`` is true (sorted)."""
        from aivc.store.sql import query, sql_str
        from aivc.errors import SqlError

        option = self.options.where
        if not where.strip():
            raise UsageError(f"{option} is empty; give a condition such as \"cell_type = 'B cell'\"", where=option)
        pairs = " OR ".join(f"(dataset_id = {sql_str(v.dataset_id)} AND dataset_version = {int(v.version)})" for v in self.versions)
        try:
            res = query(self.lake, f"SELECT soma_joinid FROM cells_all_versions WHERE ({pairs}) AND ({where})")
        except SqlError as exc:
            raise UsageError(f"{option} {where!r} is not a valid condition on cells_all_versions ({exc.message})", where=option) from None
        joinids = np.sort(np.array([r[0] for r in res.rows], dtype=np.int64))
        if joinids.size == 0:
            raise UsageError(f"{option} {where!r} selects no cell of {', '.join(self.refs)}", where=option)
        return joinids

    def features(self, mode: FeatureMode = "intersection", columns: Sequence[str] | None = None) -> FeatureSet:
        """The features every version measured (``intersection``) or any did (``union``)."""
        fid = self.measurement.feature_id
        cols = list(dict.fromkeys([fid, "soma_joinid", *(columns or ())]))
        per = [version_features(self.lake, v, cols, self.measurement) for v in self.versions]
        allf = pd.concat(per).drop_duplicates("soma_joinid")
        if mode == "intersection":
            keep = set(per[0]["soma_joinid"])
            for f in per[1:]:
                keep &= set(f["soma_joinid"])
            allf = allf[allf["soma_joinid"].isin(keep)]
        frame = allf.sort_values("soma_joinid").reset_index(drop=True)
        if frame.empty:
            raise UsageError(f"the chosen datasets measured no {self.measurement.name} feature in common; {self.options.features_fix}", where=self.options.features)
        present = np.stack([frame["soma_joinid"].isin(f["soma_joinid"]).to_numpy() for f in per])
        return FeatureSet(frame, present)

    # -- values ------------------------------------------------------------------------
    def chunks(
        self, cells: pd.DataFrame | np.ndarray, var_joinids: np.ndarray, *, chunk_rows: int = 4096, normalize: bool = False, dense: bool = True
    ) -> Iterator[tuple[slice, np.ndarray | sp.csr_matrix]]:
        """``(rows, values)`` of the cells (a frame with ``soma_joinid``, or joinids) in row
        chunks, over ``var_joinids`` in that order: raw, or log-normalized with the
        measurement's ``target_sum`` (totals over the features read)."""
        if normalize and self.measurement.target_sum is None:
            raise UsageError(f"{self.measurement.name} values are not log-normalized", where="measurement")
        joins = cells["soma_joinid"].to_numpy(np.int64) if isinstance(cells, pd.DataFrame) else np.asarray(cells, dtype=np.int64)
        var_j = np.asarray(var_joinids, dtype=np.int64)
        for start in range(0, len(joins), max(1, int(chunk_rows))):
            sl = slice(start, min(len(joins), start + chunk_rows))
            X = soma_io.read_rows(self.soma_uri, self.high_water, joins[sl], var_j, self.measurement)
            if normalize:
                X = lognormalize(X, float(self.measurement.target_sum))  # type: ignore[arg-type]
            yield sl, (X.toarray() if dense else X.tocsr()) if sp.issparse(X) else X

    def stream(
        self, var_joinids: np.ndarray, *, columns: Sequence[str] = CELL_COLUMNS, where: str | None = None, chunk_rows: int = 4096, normalize: bool = False, dense: bool = True
    ) -> Iterator[tuple[pd.DataFrame, np.ndarray | sp.csr_matrix]]:
        """``(cells, values)`` chunk by chunk over all the query's cells (:meth:`iter_obs`
        order, values as :meth:`chunks` gives them): memory bounded by one chunk and one
        version's cell table, whatever the lake's size."""
        for cells in self.iter_obs(columns, where, chunk_rows=chunk_rows):
            for _, X in self.chunks(cells, var_joinids, chunk_rows=len(cells) or 1, normalize=normalize, dense=dense):
                yield cells, X

    def feature_moments(
        self, cells: pd.DataFrame | None, features: FeatureSet, *, chunk_rows: int = 4096, progress: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of each feature's log-normalized values over the cells whose
        dataset measured it (``cells`` needs ``soma_joinid`` and ``dataset_id``; None: every
        cell of the query, streamed with :meth:`stream`)."""
        g = len(features)
        s1, s2, n = np.zeros(g), np.zeros(g), np.zeros(g)
        row_of = {v.dataset_id: i for i, v in enumerate(self.versions)}
        if cells is not None:
            unknown = sorted(set(cells["dataset_id"]) - set(row_of))
            if unknown:
                raise UsageError(f"cells of dataset {unknown[0]!r}, which is not in the query ({', '.join(self.refs)})", where=self.options.datasets)
            batch = cells["dataset_id"].map(row_of).to_numpy(np.int64)
            parts: Iterator[tuple[np.ndarray, sp.csr_matrix]] = ((batch[sl], L) for sl, L in self.chunks(cells, features.joinids, chunk_rows=chunk_rows, normalize=True, dense=False))
        else:
            parts = ((c["dataset_id"].map(row_of).to_numpy(np.int64), L) for c, L in self.stream(features.joinids, columns=("soma_joinid", "dataset_id"), chunk_rows=chunk_rows, normalize=True, dense=False))
        for b, L in parts:
            m = features.present[b]
            s1 += np.asarray(L.multiply(m).sum(axis=0)).ravel()
            s2 += np.asarray(L.multiply(L).multiply(m).sum(axis=0)).ravel()
            n += m.sum(axis=0)
            if progress is not None:
                progress(L.shape[0])
        mean = s1 / np.maximum(n, 1)
        return mean, np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0)

    def variable_features(self, cells: pd.DataFrame, features: FeatureSet, n_top: int, *, chunk_rows: int = 4096) -> np.ndarray:
        """Positions (in ``features`` order) of the ``n_top`` features with the highest
        variance of log-normalized values (:meth:`feature_moments`); a feature without
        variance is never chosen."""
        return top_variable(self.feature_moments(cells, features, chunk_rows=chunk_rows)[1], n_top)


def top_variable(variance: np.ndarray, n_top: int) -> np.ndarray:
    """Sorted positions of the ``n_top`` largest variances (ties: lower position first),
    leaving out zero variance."""
    k = min(int(n_top), int((variance > 0).sum()))
    return np.sort(np.argsort(-variance, kind="stable")[:k])
