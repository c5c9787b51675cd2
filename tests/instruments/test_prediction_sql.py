"""Prediction versions in SQL: views joined to cells, the versions table, and access control."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from aivc.errors import SqlError
from aivc.instruments.annotate import annotate
from aivc.instruments.predictions import parquet_files
from aivc.instruments.sql import query
from tests.instruments.support import run_cli
from tests.store.test_access import EXPECTED, N_CELLS, build_access_lake


@pytest.fixture(scope="module")
def slake(pbmc_base, tmp_path_factory):
    """The PBMC lake with two prediction versions of part 2 (celltype@1, in-process engine)."""
    import shutil

    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("sql") / "lake"
    shutil.copytree(pbmc_base.root, root, symlinks=True)
    lake = Lake.open(root)
    annotate(lake, "celltype@1", datasets=["pbmc68k-part2"], engine="local", report=False)
    annotate(lake, "celltype@1", all_datasets=True, engine="local")
    return lake


def test_views_join_cells(slake):
    res = query(slake, "SELECT column_name, column_type FROM (DESCRIBE predictions_celltype_v1)")
    assert dict(res.rows) == {
        "obs_id": "VARCHAR", "soma_joinid": "BIGINT", "dataset_id": "VARCHAR", "predicted_term_id": "VARCHAR", "predicted_label": "VARCHAR",
        "probability": "FLOAT", "prediction_set": "VARCHAR[]", "set_size": "INTEGER", "novelty": "FLOAT", "abstain": "BOOLEAN",
    }  # fmt: skip
    n = query(slake, "SELECT count(*) FROM predictions_celltype_v1 p JOIN cells c USING (obs_id)").rows[0][0]
    assert n == 350
    assert query(slake, "SELECT count(*) FROM predictions_celltype").rows[0][0] == 700  # the alias is the latest version
    by_type = query(
        slake,
        "SELECT c.cell_type, count(*) AS n, sum((p.predicted_term_id = c.cell_type_ontology_term_id)::INT) AS exact, "
        "sum(list_contains(p.prediction_set, c.cell_type_ontology_term_id)::INT) AS covered "
        "FROM predictions_celltype_v1 p JOIN cells c USING (obs_id) GROUP BY ALL ORDER BY n DESC",
    ).to_pandas()
    assert by_type["n"].sum() == 350 and by_type.iloc[0]["cell_type"] == "dendritic cell"
    v2 = json.loads(query(slake, "SELECT summary FROM prediction_versions WHERE version = 2").rows[0][0])
    rows = query(slake, "SELECT p.predicted_term_id = c.cell_type_ontology_term_id FROM predictions_celltype_v2 p JOIN cells c USING (obs_id)").rows
    assert v2["exact_fraction"] == pytest.approx(sum(r[0] for r in rows) / 700, abs=1e-6)


def test_versions_table(slake, cli_app):
    rows = query(slake, "SELECT instrument, version, ref, instrument_ref, embedding_ref, datasets, restricted, n_rows, view_name, alias_name, is_latest FROM prediction_versions ORDER BY version").rows
    assert rows == [
        ("celltype", 1, "predictions:celltype@1", "celltype@1", "cell:pca@1", ["pbmc68k-part2@1"], False, 350, "predictions_celltype_v1", "predictions_celltype", False),
        ("celltype", 2, "predictions:celltype@2", "celltype@1", "cell:pca@1", ["pbmc68k-part1@1", "pbmc68k-part2@1"], False, 700, "predictions_celltype_v2", "predictions_celltype", True),
    ]  # fmt: skip
    # `aivc sql` has the embedding views and the prediction views
    code, out = run_cli(cli_app, "sql", "SELECT count(*) AS n FROM predictions_celltype p JOIN cell_pca e USING (obs_id) WHERE p.abstain", "--lake", str(slake.root))
    assert code == 0 and out["rows"][0]["n"] == query(slake, "SELECT count(*) FROM predictions_celltype WHERE abstain").rows[0][0] > 0


@pytest.fixture(scope="module")
def access_lake(tmp_path_factory, human_genes):
    """tests/store/test_access.py's four datasets (public, consortium, embargoed, lifted) with predictions of all."""
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_model import CellTypeConfig

    lake = build_access_lake(tmp_path_factory.mktemp("pacc"), human_genes)
    emb = embed_pca(lake, params=PcaParams(n_components=8, n_top_genes=50))
    train_celltype(lake, emb.ref, config=CellTypeConfig(steps=50))
    annotate(lake, "celltype@1", all_datasets=True, engine="local", report=False)
    return lake


@pytest.mark.parametrize("who", list(EXPECTED))
def test_principals_see_only_visible_datasets(access_lake, who):
    seen = {r[0] for r in query(access_lake, "SELECT DISTINCT dataset_id FROM predictions_celltype", principal=who).rows}
    assert seen == EXPECTED[who]
    row = query(access_lake, "SELECT n_rows, datasets, restricted, summary FROM prediction_versions", principal=who).to_dicts()[0]
    assert row["n_rows"] == sum(N_CELLS[d] for d in EXPECTED[who])
    assert {d.partition("@")[0] for d in row["datasets"]} == EXPECTED[who]
    assert row["restricted"] == (EXPECTED[who] != set(N_CELLS))
    assert (row["summary"] is None) == row["restricted"]


def test_hidden_prediction_files_are_not_readable(access_lake):
    from aivc.instruments.predictions import get_prediction_version

    hidden = parquet_files(access_lake, get_prediction_version(access_lake, "celltype@1"), {"cons"})[0]
    with pytest.raises(SqlError, match="refused by the sandbox|Permission"):
        query(access_lake, f"SELECT count(*) FROM read_parquet('{hidden}')", principal="public")
    assert query(access_lake, f"SELECT count(*) FROM read_parquet('{hidden}')").rows[0][0] == N_CELLS["cons"]  # the owner may
    joined = pd.DataFrame(query(access_lake, "SELECT p.dataset_id, c.access FROM predictions_celltype p JOIN datasets c USING (dataset_id)", principal="alice").rows)
    assert set(joined[1]) == {"public", "consortium", "embargoed"}  # alice: pub, cons and the lifted embargo
