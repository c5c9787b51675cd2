"""DuckDB SQL over the lake's committed state, as one principal, read-only and sandboxed.

Views
-----
``datasets``
    One row per committed dataset version (``current`` marks the newest).
``cells``
    One row per cell of every *current* dataset version, with its harmonized metadata
    and QC (``obs_id`` is the lake-wide cell id; ``soma_joinid`` joins to SOMA).
``cells_all_versions``
    The same for every committed version.
``genes``
    One row per gene of each organism's SOMA ``var`` (reference id, symbol, joinid) with
    the number of current datasets that measured it.
``dataset_genes``
    Which genes each dataset version measured (``dataset_id, version, gene_id``): a gene
    absent here was *not measured*, which is not the same as zero counts.
``dataset_features``
    The same for every measurement a version holds (``dataset_id, version, measurement,
    feature_id, feature_name, soma_joinid``): genes for RNA, antibodies for ADT, ….
``spatial_cells``, ``spatial_cells_all_versions``, ``spatial_datasets``, ``spatial_images``
    Where the spots / cells of spatial versions are, and their images; the table macros
    ``cells_within``, ``cells_within_in``, ``cells_near``, ``cells_in_box`` query them
    (see :mod:`aivc.store.sql_spatial`).
``qc_adt``, ``qc_atac``
    The per-cell QC of each further measurement (``dataset_id, version, obs_id`` and one
    column per metric: protein library size and isotype share; ATAC fragments per cell,
    fraction in peaks, TSS enrichment).

Every view holds only the datasets the principal may see
(:func:`aivc.store.access.visible_datasets`): the rows of other datasets are not in any
view, so no count, join or aggregate can reveal them. The sandbox enforces the same for
files: DuckDB may read exactly the files the views need (``allowed_paths``), nothing else
of the lake (no other dataset's Parquet, not ``lake.json``) and nothing outside it, with
external access, extension loading and configuration changes switched off; only
``SELECT``-like statements are accepted.

A higher layer adds its own views through ``extend(con, visible_datasets)``, which runs
before the connection is locked and returns the extra files those views read
(:mod:`aivc.embeddings.sql` adds the embedding views this way).

Example
-------
>>> import tempfile
>>> from aivc.store.lake import Lake
>>> query(Lake.init(tempfile.mkdtemp() + "/lake"), "SELECT count(*) AS n FROM cells").rows
[(0,)]
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aivc.errors import AivcError, SqlError
from aivc.store import artifacts
from aivc.store.measurements import RNA
from aivc.store.access import AccessConfig, Principal, resolve_principal, visible_datasets
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")

Extend = Callable[[Any, set[str]], Iterable[str | Path]]
"""``extend(con, visible_dataset_ids) -> files the added views read``."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def sql_str(s: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def sql_list(items: Iterable[str | Path]) -> str:
    """A SQL list literal of strings."""
    return "[" + ", ".join(sql_str(s) for s in items) + "]"


def register_arrow(con: Any, name: str, table: Any) -> None:
    """Materialize an Arrow table as an in-memory DuckDB table ``name``."""
    tmp = f"_arrow_{name}"
    con.register(tmp, table)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM {tmp}")
    con.unregister(tmp)


def _utc(iso: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(iso)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _datasets_table(versions: list[DatasetVersion], current: set[str]) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            ("dataset_id", pa.string()), ("version", pa.int32()), ("title", pa.string()), ("organism", pa.string()),
            ("organism_name", pa.string()), ("n_cells", pa.int64()), ("n_genes", pa.int64()), ("nnz", pa.int64()),
            ("access", pa.string()), ("embargo_until", pa.string()), ("license", pa.string()),
            ("committed_at", pa.timestamp("ms", tz="UTC")), ("current", pa.bool_()), ("content_hash", pa.string()),
            ("submission_id", pa.string()),
        ]
    )  # fmt: skip
    rows = [
        {
            "dataset_id": v.dataset_id, "version": v.version, "title": v.title, "organism": v.organism,
            "organism_name": v.organism_name, "n_cells": v.n_cells, "n_genes": v.n_genes, "nnz": v.nnz,
            "access": v.access, "embargo_until": v.embargo_until, "license": v.license,
            "committed_at": _utc(v.committed_at),
            "current": v.ref in current, "content_hash": v.content_hash, "submission_id": v.submission_id,
        }
        for v in versions
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


_CELLS_STUB = "SELECT NULL::VARCHAR AS obs_id, NULL::BIGINT AS soma_joinid, NULL::VARCHAR AS dataset_id, NULL::INTEGER AS dataset_version WHERE false"


def _define_views(con: Any, catalog: Catalog, versions: list[DatasetVersion], current: list[DatasetVersion]) -> list[str]:
    """Create the lake's views over ``versions``; returns the files they read."""
    current_refs = {v.ref for v in current}
    register_arrow(con, "_datasets", _datasets_table(versions, current_refs))
    con.execute("CREATE VIEW datasets AS SELECT * FROM _datasets ORDER BY dataset_id, version")

    lake = catalog.lake
    if not versions:
        # Nothing visible: empty views with the real columns (schema only, read before locking).
        any_version = catalog.all_versions()[:1]
        if any_version:
            src, _ = _scan(con, lake, "_cells_schema", [artifacts.artifact_key(any_version[0], artifacts.CELLS)])
            con.execute(f"CREATE TABLE _cells_empty AS SELECT * FROM {src} LIMIT 0")
        else:
            con.execute(f"CREATE TABLE _cells_empty AS {_CELLS_STUB}")
    files: list[str] = []
    for view, chosen, src_name in (("cells", current, "_cells_current"), ("cells_all_versions", versions, "_cells_all")):
        src, read = _scan(con, lake, src_name, [artifacts.artifact_key(v, artifacts.CELLS) for v in chosen]) if chosen else ("_cells_empty", [])
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM {src}")
        files += read
    files += _define_feature_views(con, lake, versions)
    files += _define_qc_views(con, lake, versions)
    from aivc.store.sql_spatial import define_spatial_views

    files += define_spatial_views(con, lake, versions, current, _scan)
    con.execute(
        "CREATE VIEW genes AS SELECT d.organism_name, g.gene_id, any_value(g.feature_name) AS feature_name, "
        "any_value(g.gene_soma_joinid) AS soma_joinid, "
        "count(DISTINCT g.dataset_id) FILTER (WHERE d.current) AS n_datasets_measured "
        "FROM dataset_genes g JOIN _datasets d USING (dataset_id, version) GROUP BY d.organism_name, g.gene_id"
    )
    return files


def _scan(con: Any, lake: Lake, name: str, keys: list[str]) -> tuple[str, list[str]]:
    """A FROM source over the Parquet tables ``keys`` (columns united by name) and the
    files DuckDB itself reads. Locally DuckDB reads the files; on object storage it scans
    an Arrow dataset over ``pyarrow.fs`` (DuckDB's httpfs would download at run time)."""
    if lake.is_local:
        files = [lake.location(k) for k in keys]
        return f"read_parquet({sql_list(files)}, union_by_name=true)", files
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    fs = lake.storage.arrow("")[0]
    paths = [lake.storage.arrow(k)[1] for k in keys]
    with ThreadPoolExecutor(8) as pool:
        schemas = list(pool.map(lambda p: pq.read_schema(p, filesystem=fs), paths))
    unified = pa.unify_schemas(schemas, promote_options="permissive")
    con.register(name, pads.dataset(paths, schema=unified, filesystem=fs, format="parquet"))
    return name, []


_FEATURE_SCHEMA = (("dataset_id", "VARCHAR"), ("version", "INTEGER"), ("measurement", "VARCHAR"), ("feature_id", "VARCHAR"), ("feature_name", "VARCHAR"), ("soma_joinid", "BIGINT"))


def _define_feature_views(con: Any, lake: Lake, versions: list[DatasetVersion]) -> list[str]:
    """``dataset_features`` (every measurement each version holds) and ``dataset_genes``
    (its RNA rows under their historical names); returns the files DuckDB reads.

    The feature tables are small and immutable, so on object storage DuckDB reads local
    copies (:meth:`Storage.local_file`, downloaded once per machine), as it reads the
    files of a local lake.
    """
    import pyarrow as pa

    from aivc.store import measurements

    selects, files = [], []
    for name in measurements.names():
        spec = measurements.get(name)
        held = [v for v in versions if name in v.measured()]
        if not held:
            continue
        paths = [str(lake.storage.local_file(artifacts.artifact_key(v, artifacts.features_file(spec)))) for v in held]
        register_arrow(
            con,
            f"_files_{name}",
            pa.table({"filename": paths, "dataset_id": [v.dataset_id for v in held], "version": pa.array([v.version for v in held], pa.int32())}),
        )
        label = "g.feature_name" if "feature_name" in spec.var_columns else "NULL"
        selects.append(
            f"SELECT f.dataset_id, f.version, {sql_str(name)} AS measurement, g.{spec.feature_id}::VARCHAR AS feature_id, "
            f"{label}::VARCHAR AS feature_name, g.soma_joinid::BIGINT AS soma_joinid "
            f"FROM read_parquet({sql_list(paths)}, filename=true) g JOIN _files_{name} f USING (filename)"
        )
        files += paths
    if not selects:
        selects.append("SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in _FEATURE_SCHEMA) + " WHERE false")
    con.execute("CREATE VIEW dataset_features AS " + " UNION ALL ".join(selects))
    con.execute(
        "CREATE VIEW dataset_genes AS SELECT dataset_id, version, feature_id AS gene_id, feature_name, soma_joinid AS gene_soma_joinid "
        "FROM dataset_features WHERE measurement = 'RNA'"
    )
    return files


def _define_qc_views(con: Any, lake: Lake, versions: list[DatasetVersion]) -> list[str]:
    """``qc_adt``, ``qc_atac``, …: the per-cell QC of each further measurement (RNA's is in
    ``cells``), one row per cell of every version that holds it; returns the files read."""
    import pyarrow as pa

    from aivc.store import measurements

    files: list[str] = []
    for name in measurements.names():
        if name == RNA.name:
            continue
        spec = measurements.get(name)
        held = [v for v in versions if name in v.measured() and lake.storage.exists(artifacts.artifact_key(v, artifacts.qc_file(spec)))]
        view = f"qc_{name.lower()}"
        if not held:
            metrics = "".join(f", NULL::DOUBLE AS {c}" for c in spec.qc_columns)
            con.execute(f"CREATE VIEW {view} AS SELECT NULL::VARCHAR AS dataset_id, NULL::INTEGER AS version, NULL::VARCHAR AS obs_id{metrics} WHERE false")
            continue
        paths = [str(lake.storage.local_file(artifacts.artifact_key(v, artifacts.qc_file(spec)))) for v in held]
        register_arrow(con, f"_qc_files_{name}", pa.table({"filename": paths, "dataset_id": [v.dataset_id for v in held], "version": pa.array([v.version for v in held], pa.int32())}))
        con.execute(
            f"CREATE VIEW {view} AS SELECT f.dataset_id, f.version, q.* EXCLUDE (filename) "
            f"FROM read_parquet({sql_list(paths)}, filename=true, union_by_name=true) q JOIN _qc_files_{name} f USING (filename)"
        )
        files += paths
    return files


def _lock(con: Any, allowed_paths: list[str]) -> None:
    """Sandbox: read exactly ``allowed_paths`` (and a private spill folder), change nothing."""
    spill = tempfile.mkdtemp(prefix="aivc-sql-")
    weakref.finalize(con, shutil.rmtree, spill, True)
    con.execute(f"SET temp_directory = {sql_str(spill)}")  # the only directory DuckDB may touch
    con.execute(f"SET allowed_paths = {sql_list(sorted(set(allowed_paths)))}")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def connect(lake: Lake, principal: str | Principal | None = None, extend: Extend | None = None) -> Any:
    """A sandboxed DuckDB connection with the views of what ``principal`` may see.

    Parameters
    ----------
    principal
        A user of the lake's access configuration, ``"public"``, or ``None`` for the lake
        owner (who sees everything).
    extend
        ``extend(con, visible_dataset_ids)`` adds more views before the connection is
        locked and returns the files they read (which become readable, and nothing else).
    """
    import duckdb

    cfg = AccessConfig.load(lake)
    who = resolve_principal(lake, principal, cfg)
    visible = visible_datasets(lake, who, config=cfg)
    catalog = Catalog(lake)
    versions = [v for v in catalog.all_versions() if v.dataset_id in visible]
    current = [v for v in catalog.current() if v.dataset_id in visible]
    con = duckdb.connect(":memory:")
    try:
        allowed = _define_views(con, catalog, versions, current)
        if extend is not None:
            allowed += [str(p) for p in extend(con, set(visible))]
        _lock(con, allowed)
    except BaseException:
        con.close()
        raise
    return con


def duckdb_message(exc: BaseException) -> tuple[str, str]:
    """DuckDB's error as one line, and where in the statement it points.

    DuckDB writes the error on its first line, then hints (``Did you mean "cells"?``,
    ``Candidate bindings: …``), then ``LINE n: <text>`` with a caret line under the
    offending token. All of it is kept: the hints join the message, the position becomes
    ``where`` (``sql line 1, near "cell"``).
    """
    lines = str(exc).splitlines()
    head, hints, where = (lines[0] if lines else type(exc).__name__), [], "sql"
    i = 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("LINE ") and ":" in line:
            label, _, text = line.partition(": ")
            caret = lines[i + 1] if i + 1 < len(lines) else ""
            start = caret.find("^") - len(label) - 2
            near = text[start:][: caret.count("^")] if start >= 0 and "^" in caret else ""
            where = f"sql {label.lower()}" + (f", near {near.strip()!r}" if near.strip() else "")
            i += 2
            continue
        if line.strip():
            hints.append(line.strip())
        i += 1
    return " ".join([head, *hints]), where


def check_statement(sql: str) -> None:
    """Refuse anything but one read-only query, with a clear one-line reason."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        message, where = duckdb_message(exc)
        raise SqlError(f"SQL does not parse: {message}", where=where) from None
    if not statements:
        raise SqlError("no SQL statement given", where="sql")
    for st in statements:
        kind = st.type.name
        if kind not in ALLOWED_STATEMENTS:
            words = st.query.strip().split()
            shown = words[0].upper() if words else kind
            raise SqlError(
                f"{shown} statements are not allowed: the lake is queried read-only (SELECT only)",
                where="sql",
                code="SQL_REFUSED",
            )
    if len(statements) > 1:
        raise SqlError(
            f"one statement at a time: got {len(statements)} separated by ';' "
            "(run each on its own, or combine them with UNION ALL or a WITH clause)",
            where=f"sql statement 2: {statements[1].query.strip()[:60]!r}",
        )


_UDF_ERRORS: weakref.WeakKeyDictionary[Any, list[AivcError]] = weakref.WeakKeyDictionary()


def create_udf(con: Any, name: str, fn: Callable[..., Any], params: list[Any], returns: Any) -> None:
    """Register a Python scalar function on ``con`` whose :class:`AivcError` reaches the caller.

    DuckDB turns an exception raised inside a UDF into its own ``InvalidInputException``
    text; :func:`query` re-raises the original error instead (e.g. a ``NOT_FOUND`` for an
    unknown id given to a neighbours macro), so it keeps its code and ``where``.
    """
    import functools

    errors = _UDF_ERRORS.setdefault(con, [])

    @functools.wraps(fn)  # DuckDB reads the parameters from the signature
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except AivcError as exc:
            errors.append(exc)
            raise

    con.create_function(name, call, params, returns, null_handling="special", side_effects=False)


def query(
    lake: Lake,
    sql: str,
    principal: str | Principal | None = None,
    limit: int | None = None,
    extend: Extend | None = None,
) -> QueryResult:
    """Run one read-only SQL statement over the views ``principal`` may see.

    Raises
    ------
    SqlError
        The statement is not one read-only query, or DuckDB refused it (the message keeps
        DuckDB's hints; ``where`` names the line and token).
    NotFoundError
        A table macro was given an id that does not exist or is not visible.
    """
    import duckdb

    check_statement(sql)
    con = connect(lake, principal, extend)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchmany(limit) if limit else cur.fetchall()
    except duckdb.PermissionException as exc:
        message, where = duckdb_message(exc)
        raise SqlError(f"refused by the sandbox: {message}", where=where, code="SQL_REFUSED") from None
    except duckdb.Error as exc:
        raised = _UDF_ERRORS.get(con)
        if raised:
            raise raised[0] from None
        message, where = duckdb_message(exc)
        raise SqlError(message, where=where) from None
    finally:
        con.close()
    return QueryResult(columns, rows)
