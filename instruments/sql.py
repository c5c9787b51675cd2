"""SQL over prediction versions, on top of the lake's and the feature store's views.

A connection (:func:`connect`, :func:`query`; ``aivc sql`` uses them) has every view of
:mod:`aivc.embeddings.sql` plus:

``prediction_versions``
    One row per published prediction version: ``instrument, version, ref,
    instrument_ref, instrument_type, embedding_ref, datasets`` (only those the principal
    can see), ``restricted`` (true when the version covers datasets it cannot see; then
    ``summary`` is NULL, as it describes hidden cells), ``n_rows`` (rows it can read),
    ``created_at, summary`` (JSON text), ``view_name, alias_name, is_latest``.
``predictions_<instrument>_v<N>`` (e.g. ``predictions_celltype_v1``)
    The rows of one version: ``obs_id, soma_joinid, dataset_id`` and the decoder's output
    columns (``predicted_term_id, predicted_label, probability, prediction_set``
    (``VARCHAR[]``), ``set_size, novelty, abstain``), only of the datasets the principal
    can see (the files of other datasets are neither in the view nor readable). Join
    ``cells`` (or ``cells_all_versions``) on ``obs_id``.
``predictions_<instrument>``
    The latest version of each instrument's predictions.

Example
-------
>>> query(lake, "SELECT c.cell_type, p.predicted_label, count(*) FROM predictions_celltype p "
...       "JOIN cells c USING (obs_id) GROUP BY ALL").rows  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aivc.instruments.predictions import PredictionVersion, list_prediction_versions, parquet_files, predictions
from aivc.store.access import Principal
from aivc.store.lake import Lake
from aivc.store.sql import Extend, QueryResult, register_arrow, sql_list, sql_str
from aivc.store.sql import connect as _connect
from aivc.store.sql import query as _query

_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_EMPTY = (
    "SELECT NULL::VARCHAR AS obs_id, NULL::BIGINT AS soma_joinid, NULL::VARCHAR AS dataset_id, NULL::VARCHAR AS predicted_term_id, "
    "NULL::VARCHAR AS predicted_label, NULL::FLOAT AS probability, NULL::VARCHAR[] AS prediction_set, NULL::INTEGER AS set_size, "
    "NULL::FLOAT AS novelty, NULL::BOOLEAN AS abstain WHERE false"
)


def _dataset_id(ref: str) -> str:
    return ref.partition("@")[0]


def _versions_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("instrument", pa.string()), ("version", pa.int32()), ("ref", pa.string()), ("instrument_ref", pa.string()),
            ("instrument_type", pa.string()), ("embedding_ref", pa.string()), ("datasets", pa.list_(pa.string())),
            ("restricted", pa.bool_()), ("n_rows", pa.int64()), ("created_at", pa.timestamp("ms", tz="UTC")),
            ("summary", pa.string()), ("view_name", pa.string()), ("alias_name", pa.string()), ("is_latest", pa.bool_()),
        ]
    )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def _row(v: PredictionVersion, n_rows: int, visible: set[str], is_latest: bool) -> dict[str, Any]:
    import datetime as dt

    restricted = any(_dataset_id(d) not in visible for d in v.datasets)
    created = dt.datetime.fromisoformat(v.created_at)
    return {
        "instrument": v.instrument, "version": v.version, "ref": v.ref, "instrument_ref": v.instrument_ref,
        "instrument_type": v.instrument_type, "embedding_ref": v.embedding_ref,
        "datasets": [d for d in v.datasets if _dataset_id(d) in visible], "restricted": restricted, "n_rows": n_rows,
        "created_at": created if created.tzinfo else created.replace(tzinfo=dt.UTC),
        "summary": None if restricted else json.dumps(v.summary, sort_keys=True, default=str),
        "view_name": v.view_name, "alias_name": v.alias_name, "is_latest": is_latest,
    }  # fmt: skip


def _empty_view(con: Any, lake: Lake, v: PredictionVersion) -> str:
    """The SELECT of a view without visible rows, with the version's own columns (a niche-domain
    version's are not the cell-type decoder's): its schema, read from any of its files."""
    import pyarrow.parquet as pq

    every = parquet_files(lake, v)
    if not every:
        return _EMPTY
    name = f"_empty_{v.view_name}"
    register_arrow(con, name, pq.read_schema(every[0]).remove_metadata().empty_table())
    return f'SELECT * FROM "{name}"'


def prediction_views(lake: Lake) -> Extend:
    """The ``extend`` hook of :func:`aivc.store.sql.connect` that adds the prediction views."""

    def extend(con: Any, visible: set[str]) -> list[str]:
        import pyarrow.parquet as pq

        versions = [v for v in list_prediction_versions(lake) if _IDENT.match(v.view_name)]
        latest = {v.instrument: v for v in predictions(lake).latest() if _IDENT.match(v.view_name)}
        allowed: list[str] = []
        rows: list[dict[str, Any]] = []
        names: set[str] = set()
        for v in versions:
            files: list[Path] = parquet_files(lake, v, visible)
            if files:
                keep = ", ".join(sql_str(d) for d in sorted(visible))
                sql = f"SELECT * FROM read_parquet({sql_list(files)}, hive_partitioning = false) WHERE dataset_id IN ({keep})"
            else:
                sql = _empty_view(con, lake, v)
            con.execute(f'CREATE VIEW "{v.view_name}" AS {sql}')
            names.add(v.view_name)
            allowed += [str(f) for f in files]
            rows.append(_row(v, sum(pq.read_metadata(f).num_rows for f in files), visible, latest[v.instrument].version == v.version))
        for v in latest.values():
            if v.alias_name not in names:
                con.execute(f'CREATE VIEW "{v.alias_name}" AS SELECT * FROM "{v.view_name}"')
        register_arrow(con, "prediction_versions", _versions_table(rows))
        return allowed

    return extend


def lake_views(lake: Lake) -> Extend:
    """The combined ``extend`` hook: embedding views, then prediction views."""
    from aivc.embeddings.sql import embedding_views

    parts = [embedding_views(lake), prediction_views(lake)]

    def extend(con: Any, visible: set[str]) -> list[str]:
        files: list[str] = []
        for part in parts:
            files += [str(f) for f in part(con, visible)]
        return files

    return extend


def connect(lake: Lake, principal: str | Principal | None = None) -> Any:
    """A sandboxed DuckDB connection with the lake's, the feature store's and the prediction views."""
    return _connect(lake, principal, extend=lake_views(lake))


def query(lake: Lake, sql: str, principal: str | Principal | None = None, limit: int | None = None) -> QueryResult:
    """Run one read-only SQL statement over every view (lake, embeddings, predictions)."""
    return _query(lake, sql, principal, limit, extend=lake_views(lake))
