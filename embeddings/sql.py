"""SQL over the feature store: every embedding version as a DuckDB view, as one principal.

On top of the lake's views (:mod:`aivc.store.sql`) a connection gets:

``embedding_versions``
    One row per published version: ``entity, name, version, ref, dim, n_rows, dtype,
    normalization, source`` (JSON text), ``model``, ``lineage_datasets``,
    ``lineage_restricted, created_at, metrics`` (JSON text), ``view_name, alias_name,
    is_latest``. ``n_rows`` counts the rows *this principal* can read, and
    ``lineage_datasets`` lists only datasets it can see; when a version was computed
    from datasets it cannot see, ``lineage_restricted`` is true and ``metrics`` is NULL
    (they describe hidden data, e.g. its cell count).
``<entity>_<name>_v<N>`` (``EmbeddingVersion.view_name``, e.g. ``cell_pca_v1``)
    The rows of one version, ``vector`` typed ``FLOAT[dim]`` so DuckDB's array functions
    (``array_cosine_similarity``, ``array_distance``, ``array_inner_product``) apply.
    Cells: ``obs_id, soma_joinid, dataset_id, vector`` (only the partitions of visible
    datasets are read; join to ``cells`` / ``cells_all_versions`` on ``obs_id``). Genes:
    ``gene_id, vector`` (reference entities: every version's rows are shown). Niches:
    ``niche_id`` (the centre cell's ``obs_id``), ``soma_joinid``, ``dataset_id``, ``vector``,
    filtered like cells. A version with nothing visible still has its view, empty, with these types.
``<entity>_<name>`` (``EmbeddingVersion.alias_name``, e.g. ``cell_pca``)
    The latest version of each embedding (skipped if that name is already a version view).
``<niche view>_members`` (e.g. ``niche_visium_v1_members``, ``niche_visium_members``)
    Each niche's member cells: ``niche_id`` (the centre cell's ``obs_id``), ``obs_id``,
    ``distance`` (0 for the centre), as the version's graph says; join ``cells`` on ``obs_id``.
``<view>_neighbors(q, k := 10)``
    Table macro: the ``k`` rows most cosine-similar to the row whose id is ``q`` (itself
    excluded), as ``(<id column>, similarity)`` ordered by similarity; for every version
    view and alias, e.g. ``cell_pca_v1_neighbors('ds@1:AAAC-1', 5)``, ``cell_pca_neighbors(…)``.
``<view>_nearest(v, k := 10)``
    Table macro: the ``k`` rows most cosine-similar to a vector ``v`` (e.g. a centroid).

Neighbour search is exact (a scan of the view), so it never returns rows the principal
cannot see: the views do not contain them, and the files they live in are not readable.

Example
-------
>>> import numpy as np, tempfile
>>> from aivc.store.lake import Lake
>>> from aivc.store.features import EmbeddingWriter
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> with EmbeddingWriter(lake, "gene", "demo", dim=2, source={"kind": "import"}) as w:
...     w.write(["G1", "G2", "G3"], np.array([[1, 0], [1, 0.1], [0, 1]], dtype=np.float32))
>>> query(lake, "SELECT gene_id FROM gene_demo_neighbors('G1', 1)").rows
[('G2',)]
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aivc.store.features import PER_DATASET, EmbeddingVersion, latest_versions, list_versions, member_files, parquet_files
from aivc.store.access import Principal
from aivc.store.lake import Lake
from aivc.store.sql import Extend, QueryResult, create_udf, register_arrow, sql_list, sql_str
from aivc.store.sql import connect as _connect
from aivc.store.sql import query as _query

ID_COLUMN = {"cell": "obs_id", "gene": "gene_id", "niche": "niche_id"}
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")


def _lineage_datasets(v: EmbeddingVersion) -> list[str]:
    """Dataset refs (``id@version`` or ``id``) the version was computed from."""
    return list(v.lineage.datasets)


def _dataset_id(ref: str) -> str:
    return ref.partition("@")[0]


def readable_files(lake: Lake, v: EmbeddingVersion, visible: set[str]) -> list[Path]:
    """The Parquet files of ``v`` a principal who sees ``visible`` datasets may read."""
    if v.entity in PER_DATASET:
        return parquet_files(lake, v, visible)
    return parquet_files(lake, v)


def _view_sql(v: EmbeddingVersion, files: list[Path], visible: set[str]) -> str:
    vec = f"FLOAT[{int(v.dim)}]"
    idc = ID_COLUMN[v.entity]
    if v.entity in PER_DATASET:
        if not files:
            return f"SELECT NULL::VARCHAR AS {idc}, NULL::BIGINT AS soma_joinid, NULL::VARCHAR AS dataset_id, NULL::{vec} AS vector WHERE false"
        keep = ", ".join(sql_str(d) for d in sorted(visible))
        return (
            f"SELECT id AS {idc}, soma_joinid, dataset_id, CAST(vector AS {vec}) AS vector "
            f"FROM read_parquet({sql_list(files)}) WHERE dataset_id IN ({keep})"
        )
    if not files:
        return f"SELECT NULL::VARCHAR AS {idc}, NULL::{vec} AS vector WHERE false"
    return f"SELECT id AS {idc}, CAST(vector AS {vec}) AS vector FROM read_parquet({sql_list(files)})"


def _register_knn(con: Any, lake: Lake, visible: set[str]) -> None:
    """``aivc_knn(ref, id, k)``: exact cosine neighbours computed by aivc's in-memory search.

    The vectors of a version are loaded once per process (see
    :mod:`aivc.embeddings.neighbors`); cell versions are restricted to the principal's
    visible datasets. An id that is unknown or hidden fails the query with the same
    ``NOT_FOUND`` as ``aivc neighbors`` (a hidden id reads exactly like a missing one), and
    ``k < 1`` with a usage error; a NULL id yields no rows.
    """
    import duckdb

    from aivc.embeddings.neighbors import exact_neighbors

    allowed = frozenset(visible)

    def knn(ref: str, q: str, k: int) -> list[dict[str, Any]]:
        if ref is None or q is None or k is None:
            return []
        entity = ref.partition(":")[0]
        res = exact_neighbors(lake, ref, [q], int(k), allowed_datasets=allowed if entity in PER_DATASET else None)[0]
        return [{"id": i, "similarity": float(s)} for i, s in zip(res.ids, res.similarities, strict=True)]

    ret = duckdb.list_type(duckdb.struct_type({"id": duckdb.sqltype("VARCHAR"), "similarity": duckdb.sqltype("DOUBLE")}))
    create_udf(con, "aivc_knn", knn, [duckdb.sqltype("VARCHAR"), duckdb.sqltype("VARCHAR"), duckdb.sqltype("BIGINT")], ret)


def _create_macros(con: Any, view: str, entity: str, dim: int, ref: str) -> None:
    idc = ID_COLUMN[entity]
    con.execute(
        f'CREATE MACRO "{view}_neighbors"(q, k := 10) AS TABLE '
        f"SELECT n.id AS {idc}, n.similarity FROM (SELECT unnest(aivc_knn({sql_str(ref)}, q, k)) AS n)"
    )
    con.execute(
        f'CREATE MACRO "{view}_nearest"(v, k := 10) AS TABLE '
        f"SELECT {idc}, similarity FROM ("
        f'SELECT {idc}, array_cosine_similarity(vector, CAST(v AS FLOAT[{int(dim)}])) AS similarity FROM "{view}") '
        f"WHERE NOT isnan(similarity) ORDER BY similarity DESC, {idc} LIMIT k"
    )


def _members_view(con: Any, lake: Lake, view: str, v: EmbeddingVersion, visible: set[str]) -> list[str]:
    """``<niche view>_members``: ``niche_id, obs_id, distance`` (the centre cell itself at
    distance 0), of the niches of the datasets the principal may see (a niche and its
    members are in one dataset: no edge joins two slides)."""
    files = member_files(lake, v, visible)
    if files:
        con.execute(f'CREATE VIEW "{view}_members" AS SELECT niche_id, obs_id, distance FROM read_parquet({sql_list(files)})')
    else:
        con.execute(f'CREATE VIEW "{view}_members" AS SELECT NULL::VARCHAR AS niche_id, NULL::VARCHAR AS obs_id, NULL::DOUBLE AS distance WHERE false')
    return [str(f) for f in files]


def _versions_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("entity", pa.string()), ("name", pa.string()), ("version", pa.int32()), ("ref", pa.string()),
            ("dim", pa.int32()), ("n_rows", pa.int64()), ("dtype", pa.string()), ("normalization", pa.string()),
            ("source", pa.string()), ("model", pa.string()), ("lineage_datasets", pa.list_(pa.string())),
            ("lineage_restricted", pa.bool_()), ("created_at", pa.timestamp("ms", tz="UTC")), ("metrics", pa.string()),
            ("view_name", pa.string()), ("alias_name", pa.string()), ("is_latest", pa.bool_()),
        ]
    )  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def _version_row(v: EmbeddingVersion, n_rows: int, visible: set[str], is_latest: bool) -> dict[str, Any]:
    import datetime as dt

    lineage = _lineage_datasets(v)
    restricted = any(_dataset_id(r) not in visible for r in lineage)
    src = v.source if isinstance(v.source, dict) else {}
    model = src.get("model") or src.get("method") or src.get("kind")
    created = dt.datetime.fromisoformat(v.created_at)
    return {
        "entity": v.entity, "name": v.name, "version": v.version, "ref": v.ref, "dim": v.dim, "n_rows": n_rows,
        "dtype": v.dtype, "normalization": v.normalization, "source": json.dumps(v.source, sort_keys=True, default=str),
        "model": None if model is None else str(model),
        "lineage_datasets": [r for r in lineage if _dataset_id(r) in visible], "lineage_restricted": restricted,
        "created_at": created if created.tzinfo else created.replace(tzinfo=dt.UTC),
        "metrics": None if restricted else json.dumps(v.metrics, sort_keys=True, default=str),
        "view_name": v.view_name, "alias_name": v.alias_name, "is_latest": is_latest,
    }  # fmt: skip


def embedding_views(lake: Lake) -> Extend:
    """The ``extend`` hook of :func:`aivc.store.sql.connect` that adds the embedding views."""

    def extend(con: Any, visible: set[str]) -> list[str]:
        import pyarrow.parquet as pq

        versions = [v for v in list_versions(lake) if v.entity in ID_COLUMN and _IDENT.match(v.view_name)]
        latest = {(v.entity, v.name): v for v in latest_versions(lake) if v.entity in ID_COLUMN and _IDENT.match(v.view_name)}
        _register_knn(con, lake, visible)
        allowed: list[str] = []
        rows: list[dict[str, Any]] = []
        names: set[str] = set()
        for v in versions:
            files = readable_files(lake, v, visible)
            con.execute(f'CREATE VIEW "{v.view_name}" AS {_view_sql(v, files, visible)}')
            _create_macros(con, v.view_name, v.entity, v.dim, v.ref)
            names.add(v.view_name)
            allowed += [str(f) for f in files]
            if v.entity == "niche":
                allowed += _members_view(con, lake, v.view_name, v, visible)
            n_rows = sum(pq.read_metadata(f).num_rows for f in files)
            rows.append(_version_row(v, n_rows, visible, latest[(v.entity, v.name)].version == v.version))
        for v in latest.values():
            if v.alias_name in names:
                continue  # e.g. name "pca_v1" would shadow the view of pca version 1
            con.execute(f'CREATE VIEW "{v.alias_name}" AS SELECT * FROM "{v.view_name}"')
            _create_macros(con, v.alias_name, v.entity, v.dim, v.ref)
            if v.entity == "niche":
                con.execute(f'CREATE VIEW "{v.alias_name}_members" AS SELECT * FROM "{v.view_name}_members"')
        register_arrow(con, "embedding_versions", _versions_table(rows))
        return allowed

    return extend


def connect(lake: Lake, principal: str | Principal | None = None) -> Any:
    """A sandboxed DuckDB connection with the lake's and the feature store's views."""
    return _connect(lake, principal, extend=embedding_views(lake))


def query(lake: Lake, sql: str, principal: str | Principal | None = None, limit: int | None = None) -> QueryResult:
    """Run one read-only SQL statement over the lake's and the feature store's views."""
    return _query(lake, sql, principal, limit, extend=embedding_views(lake))
