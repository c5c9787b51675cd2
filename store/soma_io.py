"""TileDB-SOMA experiments of the lake: timestamped appends, pinned reads, rollback.

Every append of a submission writes all its TileDB fragments at one timestamp ``T``
chosen above the lake's committed high-water mark. aivc readers open experiments at the
committed high-water mark (``tiledb_timestamp``), so fragments of a write that was not
committed (a killed process) are invisible to them; :func:`rollback_uncommitted` deletes
those fragments under the write lock so plain ``tiledbsoma`` readers never see them
either. Registration (``register_anndatas`` -> ``prepare_experiment`` ->
``from_anndata``) writes obs and var; X is then written in row chunks directly into
the measurement's raw layer (``ms/RNA/X/counts`` for RNA) so memory stays bounded. Every
function takes the :class:`~aivc.store.measurements.MeasurementSpec` it reads or writes
(default RNA).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.schemas.contract import contract
from aivc.store.measurements import RNA, MeasurementSpec

_FRAGMENT_NAME = re.compile(r"^__(\d+)_(\d+)_[0-9a-f]{32}")

#: obs columns of every lake experiment, in order (the obs index is ``obs_id``), from the
#: cell-field contract (schemas/cell_fields.yaml).
OBS_STRING_COLUMNS: tuple[str, ...] = contract().obs_columns


def now_ms() -> int:
    return int(time.time() * 1000)


def write_timestamp(high_water: int | None) -> int:
    """A write timestamp strictly above the committed high-water mark."""
    t = now_ms()
    return max(t, (high_water or 0) + 1)


def tiledb_config(uri: str) -> dict[str, str]:
    """TileDB settings for ``uri``: for ``s3://`` the VFS settings from the AWS variables,
    then any of ``$AIVC_TILEDB_CONFIG`` (a JSON object of TileDB settings, for tuning)."""
    import json
    import os

    cfg: dict[str, str] = {}
    if uri.startswith("s3://"):
        from aivc.store.storage import S3Config

        cfg = S3Config.from_env().tiledb_config()
    extra = os.environ.get("AIVC_TILEDB_CONFIG")
    if extra:
        try:
            cfg |= {str(k): str(v) for k, v in json.loads(extra).items()}
        except (json.JSONDecodeError, AttributeError):
            from aivc.errors import UsageError

            raise UsageError("AIVC_TILEDB_CONFIG must be a JSON object of TileDB settings", where="AIVC_TILEDB_CONFIG") from None
    return cfg


def _context(timestamp: int | None, uri: str = ""):  # noqa: ANN202 - tiledbsoma type
    import tiledbsoma

    cfg = tiledb_config(uri)
    kw: dict = {"tiledb_config": cfg} if cfg else {}
    return tiledbsoma.SOMATileDBContext(timestamp=timestamp, **kw) if timestamp is not None else tiledbsoma.SOMATileDBContext(**kw)


def exists(uri: str) -> bool:
    import tiledbsoma

    if not uri.startswith("s3://") and not Path(uri).exists():
        return False
    return tiledbsoma.Experiment.exists(uri, context=_context(None, uri))


def open_experiment(uri: str, high_water: int):  # noqa: ANN201
    """Open an experiment for reading at the committed state."""
    import tiledbsoma

    return tiledbsoma.Experiment.open(uri, "r", tiledb_timestamp=high_water, context=_context(None, uri))


@dataclass(frozen=True)
class AppendResult:
    obs_joinids: np.ndarray
    var_joinids: np.ndarray
    timestamp: int
    nnz: int


def append_dataset(
    uri: str,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    chunks: Iterable[tuple[int, sp.csr_matrix]],
    *,
    timestamp: int,
    progress: Callable[[int], None] | None = None,
    measurement: MeasurementSpec = RNA,
) -> AppendResult:
    """Append cells to the experiment at ``uri`` (created if absent), all at ``timestamp``.

    Parameters
    ----------
    obs
        Indexed by ``obs_id`` (lake-unique), with the lake's obs columns.
    var
        Indexed by the measurement's ``feature_id`` (reference ids), columns its
        ``var_columns``; the order of its rows is the column order of the chunks.
    chunks
        ``(row_start, csr)`` blocks of raw counts, rows in ``obs`` order.
    """
    import anndata as ad
    import pyarrow as pa
    import tiledbsoma
    import tiledbsoma.io as sio

    ctx = _context(timestamp, uri)
    ms, fid = measurement.name, measurement.feature_id
    skeleton = ad.AnnData(
        X=sp.csr_matrix((len(obs), len(var)), dtype=np.float32),
        obs=obs,
        var=var,
    )
    existing = exists(uri)
    rd = sio.register_anndatas(
        uri if existing else None,
        [skeleton],
        measurement_name=ms,
        obs_field_name="obs_id",
        var_field_name=fid,
        context=ctx,
    )
    if existing:
        rd.prepare_experiment(uri, context=ctx)
    sio.from_anndata(
        uri,
        skeleton,
        ms,
        registration_mapping=rd,
        context=ctx,
        X_layer_name=measurement.raw_layer,
        obs_id_name="obs_id",
        var_id_name=fid,
    )
    mapping = rd.id_mappings_for_anndata(skeleton, measurement_name=ms)
    obs_j = np.asarray(mapping.obs_axis.data, dtype=np.int64)
    var_j = np.asarray(mapping.var_axes[ms].data, dtype=np.int64)
    nnz = 0
    with tiledbsoma.SparseNDArray.open(measurement.x_uri(uri), "w", context=ctx) as X:
        extents = _row_major_extents(X)
        col_order = np.argsort(var_j, kind="stable")
        var_sorted = var_j[col_order]
        identity = bool(np.array_equal(col_order, np.arange(len(col_order))))
        for start, chunk in chunks:
            if not identity:
                chunk = chunk[:, col_order]
            chunk = chunk.tocsr()
            chunk.sum_duplicates()  # also sorts indices
            chunk.eliminate_zeros()
            rows = obs_j[np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr)) + start]
            cols = var_sorted[chunk.indices]
            data = chunk.data.astype(np.float32)
            ordered = extents is not None and (rows.size < 2 or bool(np.all(np.diff(obs_j[start : start + chunk.shape[0]]) > 0)))
            if ordered and rows.size:
                # TileDB global order: tiles row-major, cells row-major inside a tile. CSR rows
                # are already row-major, so a stable sort by tile index is enough.
                ext0, ext1 = extents  # type: ignore[misc]
                n_col_tiles = int(var_sorted.max()) // ext1 + 1
                key = (rows // ext0 - rows[0] // ext0) * n_col_tiles + cols // ext1
                order = np.argsort(key, kind="stable")
                rows, cols, data = rows[order], cols[order], data[order]
            table = pa.Table.from_pydict({"soma_dim_0": pa.array(rows), "soma_dim_1": pa.array(cols), "soma_data": pa.array(data)})
            if table.num_rows:
                X.write(table, platform_config={"tiledb": {"write": {"sort_coords": not ordered}}})
            nnz += table.num_rows
            if progress is not None:
                progress(chunk.shape[0])
    return AppendResult(obs_j, var_j, timestamp, nnz)


@dataclass(frozen=True)
class MeasurementPlan:
    """Where a further measurement's features go: their joinids, the rows ``var`` lacks."""

    measurement: MeasurementSpec
    var_joinids: np.ndarray
    new_var: pd.DataFrame  # rows to add: soma_joinid + feature_id + var_columns
    exists: bool  # ms/<name> was already in the experiment


def plan_measurement(uri: str, var: pd.DataFrame, *, timestamp: int, measurement: MeasurementSpec) -> MeasurementPlan:
    """Give a further measurement's features their joinids (a feature another dataset measured
    keeps its own) and grow ``ms/<name>/var`` for the new ones, at ``timestamp``.

    Call it *before* :func:`append_dataset` appends the cells: that append's registration
    grows every measurement's ``X`` to the new cells and to ``var``'s size, in one schema
    change per array at the same timestamp (two changes of one array at one timestamp are
    not ordered, so this function never resizes an ``X``).
    """
    import tiledbsoma

    fid = measurement.feature_id
    frame = var.reset_index()
    frame[fid] = frame[fid].astype(str)
    have = None
    if exists(uri):
        with tiledbsoma.Experiment.open(uri, "r", context=_context(None, uri)) as exp:
            if measurement.name in exp.ms:
                have = exp.ms[measurement.name].var.read(column_names=["soma_joinid", fid]).concat().to_pandas()
    known = dict(zip(have[fid].astype(str), have["soma_joinid"].astype(np.int64), strict=True)) if have is not None else {}
    nxt = int(have["soma_joinid"].max()) + 1 if have is not None and len(have) else 0
    new = [f for f in frame[fid] if f not in known]
    known.update({f: nxt + i for i, f in enumerate(new)})
    rows = frame.set_index(fid).loc[new].reset_index()
    rows.insert(0, "soma_joinid", np.asarray([known[f] for f in new], dtype=np.int64))
    if have is not None and new:
        with tiledbsoma.Experiment.open(uri, "w", context=_context(timestamp, uri)) as exp:
            v = exp.ms[measurement.name].var
            if nxt + len(new) > int(v.domain[0][1]) + 1:
                v.tiledbsoma_resize_soma_joinid_shape(nxt + len(new))
    return MeasurementPlan(measurement, np.asarray([known[f] for f in frame[fid]], dtype=np.int64), rows, have is not None)


def append_measurement(
    uri: str,
    plan: MeasurementPlan,
    obs_joinids: np.ndarray,
    chunks: Iterable[tuple[int, sp.csr_matrix]],
    *,
    timestamp: int,
    progress: Callable[[int], None] | None = None,
) -> AppendResult:
    """Write a further measurement of cells just appended by :func:`append_dataset` at the
    same ``timestamp`` (e.g. the ADT counts of CITE-seq cells), planned by
    :func:`plan_measurement` before that append.

    tiledbsoma's registration cannot add a second measurement for existing obs ids, so this
    writes it itself: it creates ``ms/<name>`` (``var`` and ``X/<raw layer>``) on first use,
    adds the new features to ``var`` and writes the values.

    Parameters
    ----------
    obs_joinids
        The cells' obs joinids, in the row order of the chunks.
    """
    import pyarrow as pa
    import tiledbsoma

    measurement = plan.measurement
    ctx = _context(timestamp, uri)
    cols = [measurement.feature_id, *measurement.var_columns]
    if not plan.exists:
        with tiledbsoma.Experiment.open(uri, "r", context=ctx) as exp:
            n_obs = int(exp.obs.domain[0][1]) + 1
        n_var = max(len(plan.new_var), 1)
        with tiledbsoma.Experiment.open(uri, "w", context=ctx) as exp:
            ms = exp.ms.add_new_collection(measurement.name, tiledbsoma.Measurement)
            schema = pa.schema([(c, pa.large_string()) for c in cols])
            ms.add_new_dataframe("var", schema=schema, index_column_names=["soma_joinid"], domain=[(0, n_var - 1)])
            ms.add_new_collection("X").add_new_sparse_ndarray(measurement.raw_layer, type=pa.float32(), shape=(n_obs, n_var))
    with tiledbsoma.Experiment.open(uri, "w", context=ctx) as exp:
        ms = exp.ms[measurement.name]
        if len(plan.new_var):
            table = {"soma_joinid": pa.array(plan.new_var["soma_joinid"].to_numpy(dtype=np.int64))}
            table |= {c: pa.array(plan.new_var[c].astype(str).tolist(), pa.large_string()) for c in cols}
            ms.var.write(pa.table(table))
        X = ms.X[measurement.raw_layer]
        obs_j = np.asarray(obs_joinids, dtype=np.int64)
        var_j = plan.var_joinids
        nnz = 0
        for start, chunk in chunks:
            chunk = chunk.tocsr()
            chunk.sum_duplicates()
            chunk.eliminate_zeros()
            rows_j = obs_j[np.repeat(np.arange(chunk.shape[0]), np.diff(chunk.indptr)) + start]
            t = pa.table({"soma_dim_0": pa.array(rows_j), "soma_dim_1": pa.array(var_j[chunk.indices]), "soma_data": pa.array(chunk.data.astype(np.float32))})
            if t.num_rows:
                X.write(t)
            nnz += t.num_rows
            if progress is not None:
                progress(chunk.shape[0])
    return AppendResult(obs_j, var_j, timestamp, nnz)


def _row_major_extents(X) -> tuple[int, int] | None:  # noqa: ANN001 - SparseNDArray
    """Tile extents of a 2-D sparse array when its tile and cell orders are row-major."""
    import json

    try:
        opts = X.schema_config_options()
        if opts.tile_order != "row-major" or opts.cell_order != "row-major":
            return None
        dims = json.loads(opts.dims)
        return int(dims["soma_dim_0"]["tile"]), int(dims["soma_dim_1"]["tile"])
    except (AttributeError, KeyError, ValueError, TypeError):
        return None


def _filesystem(uri: str):  # noqa: ANN202 - (pyarrow FileSystem, root path)
    import pyarrow.fs as pafs

    if uri.startswith("s3://"):
        from aivc.store.storage import S3Config

        return S3Config.from_env().arrow_fs(), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri))


def rollback_uncommitted(uri: str, high_water: int | None) -> list[str]:
    """Delete every TileDB fragment, commit, schema and metadata file written after
    ``high_water`` (the last committed timestamp) under ``uri`` (a folder or ``s3://``).

    With ``high_water`` None (nothing ever committed for this experiment) the whole
    experiment is removed. Returns the paths removed (relative to ``uri``).
    """
    import pyarrow.fs as pafs

    fs, root = _filesystem(uri)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))]
    if not infos:
        return []
    if high_water is None:
        fs.delete_dir(root)
        return ["."]
    rel = {i.path[len(root) + 1 :]: i for i in infos}
    removed: list[str] = []
    gone: set[str] = set()
    for path in sorted(rel, key=lambda p: p.count("/"), reverse=True):
        name = path.rsplit("/", 1)[-1]
        m = _FRAGMENT_NAME.match(name)
        if m and int(m.group(1)) > high_water and not any(path.startswith(g + "/") for g in gone):
            if rel[path].type == pafs.FileType.Directory:
                fs.delete_dir(f"{root}/{path}")
            else:
                fs.delete_file(f"{root}/{path}")
            gone.add(path)
            removed.append(path)
    # arrays or groups created after high_water now have no schema/group entries: drop them
    left = [p for p in rel if not any(p == g or p.startswith(g + "/") for g in gone)]
    for marker in [p for p in left if p.rsplit("/", 1)[-1] == "__schema"]:
        array = marker.rsplit("/", 1)[0] if "/" in marker else ""
        inside = [p for p in left if p.startswith(marker + "/") and _FRAGMENT_NAME.match(p.rsplit("/", 1)[-1])]
        if not inside and array:
            fs.delete_dir(f"{root}/{array}")
            removed.append(array)
    for marker in [p for p in left if p.rsplit("/", 1)[-1] == "__tiledb_group.tdb"]:
        group = marker.rsplit("/", 1)[0] if "/" in marker else ""
        inside = [p for p in left if (p.startswith(f"{group}/__group/") or p.startswith(f"{group}/__meta/")) and _FRAGMENT_NAME.match(p.rsplit("/", 1)[-1])]
        if not inside and group and not any(group.startswith(r + "/") or group == r for r in removed):
            fs.delete_dir(f"{root}/{group}")  # a group (e.g. a spatial Scene) created after high_water
            removed.append(group)
    return removed


def read_var(uri: str, high_water: int, measurement: MeasurementSpec = RNA) -> pd.DataFrame:
    with open_experiment(uri, high_water) as exp:
        return exp.ms[measurement.name].var.read().concat().to_pandas()


class DenseReader:
    """Dense float32 counts of chosen cells over fixed genes, one experiment kept open.

    The same matrix as ``read_rows(...).toarray()`` without the per-call open and the
    COO -> CSR -> dense round trip: coordinates go straight into the output through lookup
    tables. ``var_joinids`` must be unique; ``obs_joinids`` of a call may not repeat
    (callers de-duplicate). Use as a context manager or call :meth:`close`.

    Example
    -------
    >>> with DenseReader(uri, hw, genes) as rd:  # doctest: +SKIP
    ...     x = rd.read(np.array([5, 2, 9]))     # rows in the order given
    """

    def __init__(self, uri: str, high_water: int, var_joinids: np.ndarray, measurement: MeasurementSpec = RNA) -> None:
        var = np.asarray(var_joinids, dtype=np.int64)
        if len(np.unique(var)) != len(var):
            raise ValueError("DenseReader needs unique var joinids")
        self.var = var
        self.col_of = np.full(int(var.max()) + 1 if var.size else 0, -1, dtype=np.int64)
        self.col_of[var] = np.arange(len(var), dtype=np.int64)
        self._exp = open_experiment(uri, high_water) if var.size else None
        self._X = self._exp.ms[measurement.name].X[measurement.raw_layer] if self._exp is not None else None

    def __enter__(self) -> DenseReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._exp is not None:
            self._exp.close()
            self._exp = self._X = None

    def read(self, obs_joinids: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs_joinids, dtype=np.int64)
        out = np.zeros((len(obs), len(self.var)), dtype=np.float32)
        if self._X is None or not len(obs):
            return out
        tbl = self._X.read(coords=(obs, self.var)).tables().concat()
        d0 = tbl["soma_dim_0"].to_numpy()
        first, last = int(obs.min()), int(obs.max())
        if last - first + 1 <= 64 * len(obs):
            row_of = np.full(last - first + 1, -1, dtype=np.int64)
            row_of[obs - first] = np.arange(len(obs), dtype=np.int64)
            rows = row_of[d0 - first]
        else:
            order = np.argsort(obs, kind="stable")
            rows = order[np.searchsorted(obs[order], d0)]
        flat = rows * len(self.var)
        flat += self.col_of[tbl["soma_dim_1"].to_numpy()]
        out.reshape(-1)[flat] = tbl["soma_data"].to_numpy()
        return out


def read_rows(uri: str, high_water: int, obs_joinids: np.ndarray, var_joinids: np.ndarray, measurement: MeasurementSpec = RNA) -> sp.csr_matrix:
    """Raw values (RNA: counts) for the given cells and features, as CSR in the order given."""
    with open_experiment(uri, high_water) as exp:
        X = exp.ms[measurement.name].X[measurement.raw_layer]
        tbl = X.read(coords=(obs_joinids, var_joinids)).tables().concat()
    rows = pd.Index(obs_joinids).get_indexer(tbl["soma_dim_0"].to_numpy())
    cols = pd.Index(var_joinids).get_indexer(tbl["soma_dim_1"].to_numpy())
    data = tbl["soma_data"].to_numpy()
    return sp.csr_matrix((data, (rows, cols)), shape=(len(obs_joinids), len(var_joinids)), dtype=np.float32)
