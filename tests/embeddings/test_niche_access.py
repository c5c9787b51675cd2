"""A niche version over a public and a consortium dataset: each principal sees the niches and
members of the datasets it may see, and nothing of the others (rows, members, files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from aivc.embeddings.sql import query
from aivc.errors import SqlError
from aivc.store.features import EmbeddingWriter, member_files
from aivc.store.lineage import Lineage
from tests.store.test_access import build_access_lake


def test_niches_and_members_are_filtered_per_dataset(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame) -> None:
    lake = build_access_lake(tmp_path_factory.mktemp("niche-access"), human_genes)
    cells = pd.DataFrame(query(lake, "SELECT obs_id, soma_joinid, dataset_id FROM cells WHERE dataset_id IN ('pub', 'cons') ORDER BY soma_joinid").to_dicts())
    centres = cells.groupby("dataset_id").head(6).reset_index(drop=True)
    w = EmbeddingWriter(lake, "niche", "mixed", 4, source={"kind": "test"}, lineage=Lineage(datasets=("pub@1", "cons@1")))
    w.write(centres["obs_id"], np.random.default_rng(0).normal(size=(len(centres), 4)).astype(np.float32), soma_joinids=centres["soma_joinid"], dataset_ids=centres["dataset_id"])
    for d, part in centres.groupby("dataset_id"):  # each niche: its centre and the next centre of its dataset
        ids = part["obs_id"].tolist()
        table = pa.table({"niche_id": ids + ids, "obs_id": ids + ids[1:] + ids[:1], "distance": [0.0] * len(ids) + [1.5] * len(ids)})
        w.write_members(str(d), table)
    v = w.commit()
    assert v.partitions == ("dataset=cons", "dataset=pub") and len(member_files(lake, v)) == 2

    def seen(who: str) -> tuple[list, int]:
        rows = query(lake, "SELECT dataset_id, count(*) FROM niche_mixed GROUP BY 1 ORDER BY 1", principal=who).rows
        return rows, query(lake, "SELECT count(*) FROM niche_mixed_members", principal=who).rows[0][0]

    assert seen("alice") == ([("cons", 6), ("pub", 6)], 24)
    assert seen("carol") == ([("pub", 6)], 12)  # the public slide's 6 niches x 2 members
    hidden = member_files(lake, v, {"cons"})[0]
    with pytest.raises(SqlError) as err:
        query(lake, f"SELECT * FROM read_parquet('{hidden}')", principal="carol")
    assert err.value.code == "SQL_REFUSED"
