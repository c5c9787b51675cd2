"""SQL views over the lake: names, types, values; the sandbox refuses writes and files."""

from __future__ import annotations

import pytest

from aivc.errors import SqlError
from aivc.ingest.submission import submit
from aivc.store.sql import query


@pytest.fixture
def two_datasets(lake, write_submission):
    h5a, mfa = write_submission()
    h5b, mfb = write_submission(dataset_id="synth-b", seed=9, n_cells=40)
    assert submit(lake, h5a, mfa).status == "committed"
    assert submit(lake, h5b, mfb).status == "committed"
    return lake


def test_views_and_types(two_datasets):
    lake = two_datasets
    ds = query(lake, "SELECT dataset_id, version, n_cells, current, access, organism FROM datasets ORDER BY 1").rows
    assert ds == [("synth-a", 1, 60, True, "public", "NCBITaxon:9606"), ("synth-b", 1, 40, True, "public", "NCBITaxon:9606")]
    types = dict(query(lake, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM cells)").rows)
    assert types["obs_id"] == "VARCHAR" and types["soma_joinid"] == "BIGINT"
    assert types["n_counts"] == "DOUBLE" and types["is_primary_data"] == "BOOLEAN"
    assert types["dataset_version"] == "INTEGER"
    for col in ("cell_type_ontology_term_id", "cell_type", "tissue_ontology_term_id", "donor_id", "assay", "sex"):
        assert col in types
    ids = query(lake, "SELECT obs_id FROM cells WHERE dataset_id = 'synth-b' ORDER BY soma_joinid LIMIT 1").rows[0][0]
    assert ids == "synth-b@1:cell-0000"
    joined = query(lake, "SELECT d.title, count(*) FROM cells c JOIN datasets d USING (dataset_id) GROUP BY 1").rows
    assert joined == [("Synthetic test dataset", 100)]
    g = query(lake, "SELECT count(*), count(DISTINCT soma_joinid), min(n_datasets_measured) FROM genes").rows[0]
    assert g == (120, 120, 2)
    sex = dict(query(lake, "SELECT sex, count(*) FROM cells GROUP BY 1").rows)
    assert set(sex) == {"female", "male"} and sum(sex.values()) == 100


def test_cells_match_soma(two_datasets):
    import tiledbsoma

    lake = two_datasets
    rows = query(lake, "SELECT soma_joinid, obs_id, cell_type_ontology_term_id FROM cells ORDER BY soma_joinid").rows
    with tiledbsoma.Experiment.open(str(lake.root / "soma" / "homo_sapiens")) as exp:
        obs = exp.obs.read(column_names=["soma_joinid", "obs_id", "cell_type_ontology_term_id"]).concat().to_pandas()
    assert [tuple(r) for r in obs.sort_values("soma_joinid").itertuples(index=False)] == [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("ATTACH 'x.db' AS x", "SQL_REFUSED"),
        ("COPY cells TO 'out.csv'", "SQL_REFUSED"),
        ("INSTALL httpfs", "SQL_REFUSED"),
        ("LOAD httpfs", "SQL_REFUSED"),
        ("SET enable_external_access = true", "SQL_REFUSED"),
        ("PRAGMA enable_profiling", "SQL_REFUSED"),
        ("DROP VIEW cells", "SQL_REFUSED"),
        ("INSERT INTO _datasets SELECT * FROM _datasets", "SQL_REFUSED"),
        ("SELECT * FROM read_csv('/etc/passwd')", "SQL_REFUSED"),
        ("SELECT * FROM read_parquet('/tmp/*.parquet')", "SQL_REFUSED"),
        ("SELECT nonsense FROM", "SQL_ERROR"),
        ("SELECT * FROM no_such_view", "SQL_ERROR"),
    ],
)
def test_sandbox_refusals(two_datasets, sql, code):
    with pytest.raises(SqlError) as info:
        query(two_datasets, sql)
    assert info.value.code == code
    assert "\n" not in info.value.message


def test_empty_lake_has_views(lake):
    assert query(lake, "SELECT count(*) FROM cells").rows == [(0,)]
    assert query(lake, "SELECT count(*) FROM datasets").rows == [(0,)]


@pytest.mark.parametrize(
    ("sql", "message", "where"),
    [
        ("SELECT * FROM cell", 'Catalog Error: Table with name cell does not exist! Did you mean "cells"?', "sql line 1, near 'cell'"),
        (
            "SELECT cel_type FROM cells",
            'Binder Error: Referenced column "cel_type" not found in FROM clause! Candidate bindings: "cell_type"',
            "sql line 1, near 'cel_type'",
        ),
    ],
)
def test_duckdb_hints_are_kept_on_one_line(two_datasets, sql, message, where):
    with pytest.raises(SqlError) as info:
        query(two_datasets, sql)
    assert info.value.message.startswith(message)
    assert info.value.where == where
    assert "\n" not in info.value.message


def test_one_statement_at_a_time(two_datasets):
    with pytest.raises(SqlError) as info:
        query(two_datasets, "SELECT 1; SELECT 2")
    assert info.value.message.startswith("one statement at a time: got 2 separated by ';'")
    assert info.value.where == "sql statement 2: 'SELECT 2'"
    assert query(two_datasets, "SELECT 1;").rows == [(1,)]  # a trailing semicolon is one statement
