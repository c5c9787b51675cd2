"""Embedding versions in SQL: views, types, neighbour macros, aliases, and access control over them."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc.embeddings.sql import query
from aivc.store.features import EmbeddingWriter, version_dir
from aivc.errors import NotFoundError, SqlError, UsageError
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from tests.store.test_access import EXPECTED, N_CELLS, build_access_lake

README = Path(__file__).resolve().parents[2] / "README.md"
README_CELL = "pbmc68k-part1@1:AAAGCCTGGCTAAC-1"  # the cell the README's examples use
DIM = 8


def _write_cells(lake: Lake, name: str, cells: pd.DataFrame, vec: np.ndarray, lineage: list[str], metrics: dict | None = None) -> None:
    w = EmbeddingWriter(lake, "cell", name, vec.shape[1], source={"kind": "test", "method": "random"}, lineage=Lineage(datasets=tuple(lineage)))
    w.write(cells["obs_id"].to_numpy(), vec, soma_joinids=cells["soma_joinid"].to_numpy(), dataset_ids=cells["dataset_id"].to_numpy())
    w.commit(metrics=metrics or {})


@pytest.fixture(scope="module")
def elake(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame):
    """The access lake of tests/store/test_access.py plus embedding versions.

    ``cell:pca`` v1 and v2 (dim 8, all 100 cells; five ``cons`` cells are the nearest
    neighbours of the query cell ``pub@1:cell-0000`` in v1), ``cell:secret`` v1 (only
    ``cons`` cells), ``gene:co`` v1 (dim 4), ``niche:nb`` v1 (lineage ``cons``) and
    ``niche:open`` v1 (lineage ``pub``).
    """
    lake = build_access_lake(tmp_path_factory.mktemp("emb"), human_genes)
    cells = pd.DataFrame(query(lake, "SELECT obs_id, soma_joinid, dataset_id FROM cells ORDER BY soma_joinid").to_dicts())
    assert len(cells) == 100
    rng = np.random.default_rng(7)
    v1 = rng.normal(size=(100, DIM)).astype(np.float32)
    q = int(np.flatnonzero(cells["obs_id"] == "pub@1:cell-0000")[0])
    near = np.flatnonzero(cells["dataset_id"] == "cons")[:5]
    v1[near] = v1[q] + 0.01 * rng.normal(size=(5, DIM)).astype(np.float32)
    v2 = (v1 + 0.3 * rng.normal(size=v1.shape)).astype(np.float32)
    refs = [f"{d}@1" for d in sorted(N_CELLS)]
    _write_cells(lake, "pca", cells, v1, refs, {"n_cells": 100})
    _write_cells(lake, "pca", cells, v2, refs, {"n_cells": 100})
    cons = cells[cells["dataset_id"] == "cons"]
    _write_cells(lake, "secret", cons, rng.normal(size=(len(cons), 3)).astype(np.float32), ["cons@1"])
    genes = [r[0] for r in query(lake, "SELECT gene_id FROM genes ORDER BY gene_id LIMIT 20").rows]
    gvec = rng.normal(size=(len(genes), 4)).astype(np.float32)
    with EmbeddingWriter(lake, "gene", "co", 4, source={"kind": "import", "model": "esm2"}) as w:
        w.write(genes, gvec)
    for name, ds in (("nb", "cons@1"), ("open", "pub@1")):  # niches centred on 5 cells of one dataset
        centres = cells[cells["dataset_id"] == ds.partition("@")[0]].head(5)
        with EmbeddingWriter(lake, "niche", name, 3, source={"kind": "test"}, lineage=Lineage(datasets=(ds,))) as w:
            w.write(centres["obs_id"], rng.normal(size=(5, 3)).astype(np.float32), soma_joinids=centres["soma_joinid"], dataset_ids=centres["dataset_id"])
    return {"lake": lake, "cells": cells, "v1": v1, "v2": v2, "q": q, "near": near, "genes": genes, "gvec": gvec}


def numpy_topk(ids: np.ndarray, vec: np.ndarray, q: int, k: int) -> list[tuple[str, float]]:
    x = vec.astype(np.float64)
    sims = x @ x[q] / (np.linalg.norm(x, axis=1) * np.linalg.norm(x[q]))
    order = [i for i in np.lexsort((ids, -sims)) if i != q][:k]
    return [(str(ids[i]), float(sims[i])) for i in order]


# -- views and types -------------------------------------------------------------------
def test_views_names_and_types(elake):
    lake = elake["lake"]
    names = {r[0] for r in query(lake, "SELECT view_name FROM duckdb_views() WHERE NOT internal").rows}
    assert {"cell_pca_v1", "cell_pca_v2", "cell_pca", "cell_secret_v1", "cell_secret", "gene_co_v1", "gene_co", "niche_nb_v1", "niche_open"} <= names
    types = lambda view: dict(query(lake, f"SELECT column_name, column_type FROM (DESCRIBE {view})").rows)  # noqa: E731
    assert types("cell_pca_v1") == {"obs_id": "VARCHAR", "soma_joinid": "BIGINT", "dataset_id": "VARCHAR", "vector": f"FLOAT[{DIM}]"}
    assert types("cell_secret_v1")["vector"] == "FLOAT[3]"
    assert types("gene_co_v1") == {"gene_id": "VARCHAR", "vector": "FLOAT[4]"}
    assert types("niche_nb_v1") == {"niche_id": "VARCHAR", "soma_joinid": "BIGINT", "dataset_id": "VARCHAR", "vector": "FLOAT[3]"}
    rows = query(lake, "SELECT obs_id, soma_joinid, dataset_id, vector FROM cell_pca_v1 ORDER BY soma_joinid").rows
    cells = elake["cells"]
    assert [r[0] for r in rows] == cells["obs_id"].tolist() and [r[1] for r in rows] == cells["soma_joinid"].tolist()
    np.testing.assert_array_equal(np.array([r[3] for r in rows], dtype=np.float32), elake["v1"])
    g = dict(query(lake, "SELECT gene_id, vector FROM gene_co_v1").rows)
    np.testing.assert_array_equal(np.array([g[x] for x in elake["genes"]], dtype=np.float32), elake["gvec"])


def test_embedding_versions_table(elake):
    lake = elake["lake"]
    res = query(lake, "SELECT * FROM embedding_versions ORDER BY entity, name, version").to_dicts()
    assert [r["ref"] for r in res] == ["cell:pca@1", "cell:pca@2", "cell:secret@1", "gene:co@1", "niche:nb@1", "niche:open@1"]
    pca1, pca2 = res[0], res[1]
    assert (pca1["dim"], pca1["n_rows"], pca1["view_name"], pca1["alias_name"], pca1["is_latest"]) == (DIM, 100, "cell_pca_v1", "cell_pca", False)
    assert pca2["is_latest"] is True and pca2["view_name"] == "cell_pca_v2"
    assert pca1["lineage_datasets"] == ["cons@1", "emb@1", "lifted@1", "pub@1"] and pca1["lineage_restricted"] is False
    assert json.loads(pca1["metrics"]) == {"n_cells": 100} and json.loads(pca1["source"]) == {"kind": "test", "method": "random"}
    assert pca1["model"] == "random" and res[3]["model"] == "esm2"
    assert pca1["normalization"] == "none" and pca1["created_at"] is not None
    # metrics are JSON text DuckDB can take apart
    assert query(lake, "SELECT metrics::JSON->>'n_cells' FROM embedding_versions WHERE ref = 'cell:pca@1'").rows == [("100",)]


def test_neighbors_macro_equals_numpy(elake):
    lake, cells, q = elake["lake"], elake["cells"], elake["q"]
    ids = cells["obs_id"].to_numpy()
    qid = ids[q]
    for view, vec in (("cell_pca_v1", elake["v1"]), ("cell_pca_v2", elake["v2"]), ("cell_pca", elake["v2"])):
        got = query(lake, f"SELECT obs_id, similarity FROM {view}_neighbors('{qid}', 7)").rows
        want = numpy_topk(ids, vec, q, 7)
        assert [g[0] for g in got] == [w[0] for w in want], view
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-5)
        by_hand = query(
            lake,
            f"SELECT b.obs_id FROM {view} a, {view} b WHERE a.obs_id = '{qid}' AND b.obs_id <> a.obs_id "
            "ORDER BY array_cosine_similarity(a.vector, b.vector) DESC, b.obs_id LIMIT 7",
        ).rows
        assert [r[0] for r in by_hand] == [w[0] for w in want]
    assert len(query(lake, f"SELECT * FROM cell_pca_v1_neighbors('{qid}')").rows) == 10  # k defaults to 10
    with pytest.raises(NotFoundError) as info:  # as `aivc neighbors` says, not an empty table
        query(lake, "SELECT * FROM cell_pca_v1_neighbors('pub@1:no-such-cell', 5)")
    assert info.value.message == "no cell (obs_id) 'pub@1:no-such-cell' in embedding cell:pca@1"
    assert query(lake, "SELECT * FROM cell_pca_v1_neighbors(NULL, 5)").rows == []
    with pytest.raises(UsageError, match="k must be at least 1, got 0"):
        query(lake, f"SELECT * FROM cell_pca_v1_neighbors('{qid}', 0)")
    # the nearest-to-a-vector macro: the query cell's own vector finds the query cell first
    top = query(lake, f"SELECT obs_id FROM cell_pca_v1_nearest((SELECT vector FROM cell_pca_v1 WHERE obs_id = '{qid}'), 3)").rows
    assert top[0][0] == qid
    genes = np.array(elake["genes"], dtype=object)
    got = query(lake, f"SELECT gene_id FROM gene_co_neighbors('{genes[0]}', 5)").rows
    assert [r[0] for r in got] == [w[0] for w in numpy_topk(genes, elake["gvec"], 0, 5)]


def test_alias_follows_latest_version(lake):
    vecs = []
    for i in range(3):
        vec = np.eye(3, dtype=np.float32) * (i + 1)
        vecs.append(vec)
        with EmbeddingWriter(lake, "gene", "co", 3, source={"kind": "test"}) as w:
            w.write(["A", "B", "C"], vec)
        latest = query(lake, "SELECT gene_id, vector FROM gene_co ORDER BY gene_id").rows
        assert [r[0] for r in latest] == ["A", "B", "C"]
        np.testing.assert_array_equal(np.array([r[1] for r in latest], dtype=np.float32), vec)
        assert query(lake, "SELECT count(*) FROM gene_co_neighbors('A', 5)").rows == [(2,)]
        assert query(lake, "SELECT ref FROM embedding_versions WHERE is_latest").rows == [(f"gene:co@{i + 1}",)]
    assert query(lake, "SELECT max(vector[1]) FROM gene_co_v1").rows == [(1.0,)]
    assert query(lake, "SELECT count(*) FROM gene_co_v2").rows == [(3,)]


def test_empty_lake_has_the_embedding_table(lake):
    assert query(lake, "SELECT count(*) FROM embedding_versions").rows == [(0,)]
    assert query(lake, "SELECT count(*) FROM cells").rows == [(0,)]


# -- access control over the embedding views ----------------------------------------------
@pytest.mark.parametrize("who", list(EXPECTED))
def test_no_query_shape_leaks_hidden_cells(elake, who):
    lake, cells = elake["lake"], elake["cells"]
    seen = EXPECTED[who]
    n = sum(N_CELLS[d] for d in seen)
    q = lambda sql: query(lake, sql, principal=who).rows  # noqa: E731
    assert q("SELECT count(*) FROM cell_pca_v1") == [(n,)]
    assert q("SELECT count(*) FROM cell_pca") == [(n,)]
    assert {r[0] for r in q("SELECT DISTINCT dataset_id FROM cell_pca_v2")} == seen
    assert q("SELECT count(*) FROM cell_pca_v1 e JOIN cells_all_versions c USING (obs_id)") == [(n,)]
    assert q("SELECT count(*) FROM cell_pca_v1 a JOIN cell_pca_v2 b USING (obs_id)") == [(n,)]
    assert dict(q("SELECT c.dataset_id, count(*) FROM cell_pca e JOIN cells c USING (obs_id) GROUP BY 1")) == {d: N_CELLS[d] for d in seen}
    assert q("SELECT count(*) FROM cell_secret_v1") == [(N_CELLS["cons"] if "cons" in seen else 0,)]
    # no vector of a hidden cell appears anywhere, not even in aggregates over all rows
    hidden = ~cells["dataset_id"].isin(seen).to_numpy()
    rows = q("SELECT obs_id, vector FROM cell_pca_v1")
    assert {r[0] for r in rows} == set(cells["obs_id"][~hidden])
    shown = {tuple(np.float32(x) for x in r[1]) for r in rows}
    assert not shown & {tuple(v) for v in elake["v1"][hidden]}
    total = np.array([r[1] for r in q("SELECT i, sum(x) FROM (SELECT generate_subscripts(vector, 1) AS i, unnest(vector) AS x FROM cell_pca_v1) GROUP BY i ORDER BY i")])
    np.testing.assert_allclose(total, elake["v1"][~hidden].astype(np.float64).sum(axis=0), rtol=1e-4, atol=1e-4)
    # neighbours: exactly NumPy's top-k among the visible cells, never a hidden one
    ids = cells["obs_id"].to_numpy()
    qid = "pub@1:cell-0000"
    vis = np.flatnonzero(~hidden)
    got = q(f"SELECT obs_id FROM cell_pca_v1_neighbors('{qid}', 8)")
    want = numpy_topk(ids[vis], elake["v1"][vis], int(np.flatnonzero(ids[vis] == qid)[0]), 8)
    assert [r[0] for r in got] == [w[0] for w in want]
    assert {r[0] for r in got} <= set(ids[vis])
    near_ids = set(ids[elake["near"]])  # the cons cells planted next to the query cell
    assert (near_ids <= {r[0] for r in got}) == ("cons" in seen)
    # a hidden cell as the query reads exactly like a cell that does not exist
    hidden_q = ids[elake["near"][0]]
    if "cons" in seen:
        assert q(f"SELECT count(*) FROM cell_pca_v1_neighbors('{hidden_q}', 5)") == [(5,)]
    else:
        with pytest.raises(NotFoundError) as hidden_err:
            q(f"SELECT count(*) FROM cell_pca_v1_neighbors('{hidden_q}', 5)")
        with pytest.raises(NotFoundError) as missing_err:
            q("SELECT count(*) FROM cell_pca_v1_neighbors('cons@1:cell-9999', 5)")
        assert hidden_err.value.message == missing_err.value.message.replace("cell-9999", hidden_q.rpartition(":")[2])


def test_embedding_versions_redact_for_restricted_principals(elake):
    lake = elake["lake"]
    res = {r["ref"]: r for r in query(lake, "SELECT * FROM embedding_versions", principal="carol").to_dicts()}
    assert set(res) == {"cell:pca@1", "cell:pca@2", "cell:secret@1", "gene:co@1", "niche:nb@1", "niche:open@1"}
    pca = res["cell:pca@1"]
    assert pca["n_rows"] == N_CELLS["pub"] and pca["lineage_datasets"] == ["pub@1"]
    assert pca["lineage_restricted"] is True and pca["metrics"] is None  # its metrics describe hidden cells
    assert res["cell:secret@1"]["n_rows"] == 0
    assert res["gene:co@1"]["n_rows"] == 20 and res["gene:co@1"]["lineage_restricted"] is False
    assert res["niche:open@1"]["n_rows"] == 5 and res["niche:nb@1"]["n_rows"] == 0
    alice = {r[0]: r[1] for r in query(lake, "SELECT ref, n_rows FROM embedding_versions", principal="alice").rows}
    assert alice["niche:nb@1"] == 5 and alice["cell:pca@1"] == 80


def test_views_of_invisible_versions_exist_empty_and_typed(elake):
    lake = elake["lake"]
    for who in ("carol", "public"):
        types = dict(query(lake, "SELECT column_name, column_type FROM (DESCRIBE cell_secret_v1)", principal=who).rows)
        assert types == {"obs_id": "VARCHAR", "soma_joinid": "BIGINT", "dataset_id": "VARCHAR", "vector": "FLOAT[3]"}
        assert query(lake, "SELECT count(*) FROM cell_secret", principal=who).rows == [(0,)]
        with pytest.raises(NotFoundError, match="no cell"):
            query(lake, "SELECT * FROM cell_secret_v1_neighbors('cons@1:cell-0000', 3)", principal=who)
        assert dict(query(lake, "SELECT column_name, column_type FROM (DESCRIBE niche_nb_v1)", principal=who).rows)["vector"] == "FLOAT[3]"
        assert query(lake, "SELECT count(*) FROM niche_nb", principal=who).rows == [(0,)]
        assert query(lake, "SELECT count(*) FROM gene_co", principal=who).rows == [(20,)]


def test_hidden_embedding_files_cannot_be_read(elake):
    lake = elake["lake"]
    root = version_dir(lake, "cell", "pca", 1)
    pub_part = next((root / "dataset=pub").glob("*.parquet"))
    cons_part = next((root / "dataset=cons").glob("*.parquet"))
    nb_part = next(version_dir(lake, "niche", "nb", 1).rglob("*.parquet"))
    assert query(lake, f"SELECT count(*) FROM read_parquet('{pub_part}')", principal="carol").rows == [(40,)]
    for sql in (
        f"SELECT * FROM read_parquet('{cons_part}')",
        f"SELECT * FROM read_parquet('{root}/*/*.parquet')",
        f"SELECT * FROM read_parquet('{nb_part}')",
        f"SELECT * FROM read_json_auto('{root}/_version.json')",
        f"SELECT * FROM read_text('{lake.root}/lake.json')",
        "SELECT * FROM read_text('/etc/passwd')",
    ):
        with pytest.raises(SqlError) as info:
            query(lake, sql, principal="carol")
        assert info.value.code == "SQL_REFUSED", sql
    assert query(lake, f"SELECT count(*) FROM read_parquet('{cons_part}')", principal="alice").rows == [(30,)]


# -- README examples and the CLI ----------------------------------------------------------
def readme_sql_examples() -> list[tuple[str, str | None]]:
    text = README.read_text()
    section = text[text.index("\n## SQL") : text.index("\n## ", text.index("\n## SQL") + 5)]
    out = []
    for line in section.splitlines():
        if line.startswith("aivc sql "):
            args = shlex.split(line)
            principal = args[args.index("--principal") + 1] if "--principal" in args else None
            out.append((args[2], principal))
    return out


def test_readme_sql_examples_run(elake):
    examples = readme_sql_examples()
    assert len(examples) >= 8
    assert any("_neighbors(" in sql for sql, _ in examples) and any("cell_pca_v2" in sql for sql, _ in examples)
    for sql, principal in examples:
        sql = sql.replace(README_CELL, "pub@1:cell-0000")
        res = query(elake["lake"], sql, principal=principal)
        assert res.rows, sql
    # the centroid example gives the mean vector of each cell type
    centroid_sql = next(sql for sql, _ in examples if "centroid" in sql)
    got = {r[0]: np.array(r[1]) for r in query(elake["lake"], centroid_sql).rows}
    cells = elake["cells"].merge(
        pd.DataFrame(query(elake["lake"], "SELECT obs_id, cell_type FROM cells").to_dicts()), on="obs_id"
    )
    for ct, grp in cells.groupby("cell_type"):
        np.testing.assert_allclose(got[ct], elake["v2"][grp.index].astype(np.float64).mean(axis=0), rtol=1e-4, atol=1e-5)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("AIVC_PRINCIPAL", None)
    return subprocess.run([sys.executable, "-m", "aivc.cli", *args], capture_output=True, text=True, env=env)


def test_cli_sql_principal(elake):
    lk = str(elake["lake"].root)
    sql = "SELECT count(*) AS n, count(DISTINCT dataset_id) AS d FROM cell_pca"
    for who, n in (("carol", 40), ("alice", 80), ("bob", 60)):
        p = cli("sql", sql, "--principal", who, "--lake", lk, "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout) == {"columns": ["n", "d"], "rows": [{"n": n, "d": len(EXPECTED[who])}]}
    owner = json.loads(cli("sql", sql, "--lake", lk, "--json").stdout)
    assert owner["rows"] == [{"n": 100, "d": 4}]
    env_p = subprocess.run(
        [sys.executable, "-m", "aivc.cli", "sql", sql, "--lake", lk, "--json"],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled", "AIVC_PRINCIPAL": "carol"},
    )  # fmt: skip
    assert json.loads(env_p.stdout)["rows"] == [{"n": 40, "d": 1}]
    vec = json.loads(cli("sql", "SELECT vector FROM cell_pca_v1 WHERE obs_id = 'pub@1:cell-0000'", "--lake", lk, "--json").stdout)
    np.testing.assert_allclose(vec["rows"][0]["vector"], elake["v1"][elake["q"]], rtol=1e-6)
    bad = cli("sql", "SELECT 1", "--principal", "mallory", "--lake", lk, "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["errors"][0]["code"] == "UNKNOWN_PRINCIPAL"
    refused = cli("sql", f"SELECT * FROM read_parquet('{lk}/features/cell/pca/v000001/dataset=cons/part-00000.parquet')", "--principal", "carol", "--lake", lk)
    assert refused.returncode == 1 and "SQL_REFUSED" in refused.stderr and "Traceback" not in refused.stderr
    text = cli("sql", "SELECT view_name FROM embedding_versions ORDER BY 1", "--principal", "carol", "--lake", lk)
    assert text.returncode == 0 and re.search(r"cell_pca_v1", text.stdout)


def test_bare_barcode_names_the_visible_cells_it_could_mean(elake):
    lake = elake["lake"]
    with pytest.raises(NotFoundError) as info:  # 'cell-0000' is a barcode of pub and of cons
        query(lake, "SELECT * FROM cell_pca_v1_neighbors('cell-0000', 3)")
    assert info.value.message == (
        "no cell (obs_id) 'cell-0000' in embedding cell:pca@1 (cell ids have the form 'DATASET@VERSION:BARCODE'; "
        "did you mean 'cons@1:cell-0000', 'emb@1:cell-0000', 'lifted@1:cell-0000' and 1 more?)"
    )
    with pytest.raises(NotFoundError) as info:  # carol sees only pub: the hint names no hidden dataset
        query(lake, "SELECT * FROM cell_pca_v1_neighbors('cell-0000', 3)", principal="carol")
    assert info.value.message.endswith("did you mean 'pub@1:cell-0000'?)")
    with pytest.raises(NotFoundError) as info:
        query(lake, "SELECT * FROM cell_pca_v1_neighbors('zzz', 3)", principal="carol")
    assert info.value.message.endswith("(cell ids have the form 'DATASET@VERSION:BARCODE')")
