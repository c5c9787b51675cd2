"""DuckDB SQL over the lake's committed state, read-only and sandboxed.

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

User SQL runs on a connection whose file access is limited to the lake folder, with
external access, extension loading and configuration changes switched off; only
``SELECT``-like statements are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from aivc.errors import SqlError
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _datasets_frame(versions: list[DatasetVersion], current: set[str]) -> pd.DataFrame:
    rows = [
        {
            "dataset_id": v.dataset_id,
            "version": v.version,
            "title": v.title,
            "organism": v.organism,
            "organism_name": v.organism_name,
            "n_cells": v.n_cells,
            "n_genes": v.n_genes,
            "nnz": v.nnz,
            "access": v.access,
            "embargo_until": v.embargo_until,
            "license": v.license,
            "committed_at": pd.Timestamp(v.committed_at),
            "current": v.ref in current,
            "content_hash": v.content_hash,
            "submission_id": v.submission_id,
        }
        for v in versions
    ]
    cols = ["dataset_id", "version", "title", "organism", "organism_name", "n_cells", "n_genes", "nnz", "access", "embargo_until", "license", "committed_at", "current", "content_hash", "submission_id"]
    return pd.DataFrame(rows, columns=cols)


def connect(lake: Lake):  # noqa: ANN201 - duckdb connection
    """A sandboxed DuckDB connection with the lake's views defined."""
    import duckdb

    catalog = Catalog(lake)
    versions = catalog.all_versions()
    current = catalog.current()
    current_refs = {v.ref for v in current}
    con = duckdb.connect(":memory:")
    con.register("_datasets_df", _datasets_frame(versions, current_refs))
    con.execute("CREATE TABLE _datasets AS SELECT * FROM _datasets_df")
    con.unregister("_datasets_df")
    con.execute("CREATE VIEW datasets AS SELECT * FROM _datasets ORDER BY dataset_id, version")

    def files(vs: list[DatasetVersion], name: str) -> str:
        return "[" + ", ".join(_sql_str(str(catalog.artifacts_path(v) / name)) for v in vs) + "]"

    if versions:
        con.execute(f"CREATE VIEW cells AS SELECT * FROM read_parquet({files(current, 'cells.parquet')}, union_by_name=true)")
        con.execute(f"CREATE VIEW cells_all_versions AS SELECT * FROM read_parquet({files(versions, 'cells.parquet')}, union_by_name=true)")
        con.execute(
            "CREATE VIEW dataset_genes AS SELECT regexp_extract(filename, 'datasets/([^/]+)/v', 1) AS dataset_id, "
            "CAST(regexp_extract(filename, '/v(\\d+)/genes', 1) AS INTEGER) AS version, gene_id, feature_name, soma_joinid AS gene_soma_joinid "
            f"FROM read_parquet({files(versions, 'genes.parquet')}, filename=true)"
        )
        con.execute(
            "CREATE VIEW genes AS SELECT d.organism_name, g.gene_id, any_value(g.feature_name) AS feature_name, "
            "any_value(g.gene_soma_joinid) AS soma_joinid, "
            "count(DISTINCT g.dataset_id) FILTER (WHERE d.current) AS n_datasets_measured "
            "FROM dataset_genes g JOIN _datasets d USING (dataset_id, version) GROUP BY d.organism_name, g.gene_id"
        )
    else:
        con.execute("CREATE VIEW cells AS SELECT NULL::VARCHAR AS obs_id, NULL::BIGINT AS soma_joinid, NULL::VARCHAR AS dataset_id WHERE false")
        con.execute("CREATE VIEW cells_all_versions AS SELECT * FROM cells")
        con.execute("CREATE VIEW dataset_genes AS SELECT NULL::VARCHAR AS dataset_id, NULL::INTEGER AS version, NULL::VARCHAR AS gene_id WHERE false")
        con.execute("CREATE VIEW genes AS SELECT NULL::VARCHAR AS organism_name, NULL::VARCHAR AS gene_id, NULL::VARCHAR AS feature_name WHERE false")
    root = str(lake.root)
    con.execute(f"SET allowed_directories = [{_sql_str(root + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def check_statement(sql: str) -> None:
    """Refuse anything but read-only queries, with a clear one-line reason."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise SqlError(f"SQL does not parse: {str(exc).splitlines()[0]}", where="sql") from None
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


def query(lake: Lake, sql: str, *, limit: int | None = None) -> QueryResult:
    """Run one read-only SQL statement over the lake's views."""
    import duckdb

    check_statement(sql)
    con = connect(lake)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchmany(limit) if limit else cur.fetchall()
    except duckdb.PermissionException as exc:
        raise SqlError(f"refused by the sandbox: {str(exc).splitlines()[0]}", where="sql", code="SQL_REFUSED") from None
    except duckdb.Error as exc:
        raise SqlError(str(exc).splitlines()[0], where="sql") from None
    finally:
        con.close()
    return QueryResult(columns, rows)
