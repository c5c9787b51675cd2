"""SOMA appends: exact counts across many TileDB tiles, shuffled and new genes, rollback."""

from __future__ import annotations

import numpy as np
import pytest
import pandas as pd
import scipy.sparse as sp

from aivc.store import soma_io as S
from aivc.store.measurements import RNA


def _parts(prefix: str, n: int, genes: list[str], rng: np.random.Generator):
    obs = pd.DataFrame({c: ["x"] * n for c in S.OBS_STRING_COLUMNS}, index=pd.Index([f"{prefix}{i}" for i in range(n)], name="obs_id"))
    obs["dataset_version"] = np.int32(1)
    obs["is_primary_data"] = True
    var = pd.DataFrame({c: ["g"] * len(genes) for c in RNA.var_columns}, index=pd.Index(genes, name="gene_id"))
    X = sp.random(n, len(genes), density=0.02, format="csr", dtype=np.float32, random_state=rng)
    X.data = np.ceil(X.data * 10)
    return obs, var, X


def test_global_order_writes_round_trip_across_tiles(tmp_path):
    rng = np.random.default_rng(0)
    uri = str(tmp_path / "exp")
    genes_a = [f"g{i:05d}" for i in range(5000)]  # > 2 column tiles of 2048
    o, v, X = _parts("a", 5000, genes_a, rng)
    r1 = S.append_dataset(uri, o, v, ((s, X[s : s + 1500]) for s in range(0, 5000, 1500)), timestamp=S.write_timestamp(None))
    hw = S.now_ms()
    # shuffled existing genes plus new ones: var joinids are not increasing in submitted order
    genes_b = list(rng.permutation(genes_a[2000:4500])) + [f"h{i:05d}" for i in range(2600)]
    o2, v2, X2 = _parts("b", 4100, genes_b, rng)
    r2 = S.append_dataset(uri, o2, v2, ((s, X2[s : s + 999]) for s in range(0, 4100, 999)), timestamp=S.write_timestamp(hw))
    hw2 = S.now_ms()
    assert (r1.nnz, r2.nnz) == (X.nnz, X2.nnz)
    assert abs(S.read_rows(uri, hw2, r1.obs_joinids, r1.var_joinids) - X).sum() == 0
    assert abs(S.read_rows(uri, hw2, r2.obs_joinids, r2.var_joinids) - X2).sum() == 0
    assert sorted(r2.var_joinids[: 2500]) == list(range(2000, 4500))
    # the dense reader gives the same matrices, in any row/column order, sparse or clustered rows
    sel_o = rng.permutation(r2.obs_joinids)[:700]
    sel_v = rng.permutation(np.unique(np.concatenate([r1.var_joinids, r2.var_joinids])))[:3000]
    with S.DenseReader(uri, hw2, sel_v) as rd:
        np.testing.assert_array_equal(rd.read(sel_o), S.read_rows(uri, hw2, sel_o, sel_v).toarray())
        far = np.array([r1.obs_joinids[3], r2.obs_joinids[-1]])  # rows far apart: the searchsorted path
        np.testing.assert_array_equal(rd.read(far), S.read_rows(uri, hw2, far, sel_v).toarray())
        assert rd.read(far[:0]).shape == (0, 3000)
    with S.DenseReader(uri, hw, np.sort(r1.var_joinids)[:100]) as rd:  # pinned at the first commit
        np.testing.assert_array_equal(rd.read(r1.obs_joinids[:50]), X[:50].toarray()[:, np.argsort(r1.var_joinids)[:100]])
    # pinned at the first commit, the second append is invisible
    assert S.read_rows(uri, hw, r1.obs_joinids, r1.var_joinids).nnz == X.nnz
    S.rollback_uncommitted(uri, hw)
    import tiledbsoma

    with tiledbsoma.Experiment.open(uri) as exp:
        assert exp.obs.count == 5000
        assert exp.ms["RNA"].X["counts"].nnz == X.nnz


def test_tiledb_config_comes_from_the_aws_variables_and_aivc_tiledb_config(monkeypatch):
    from aivc.errors import UsageError

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AIVC_TILEDB_CONFIG", raising=False)
    cfg = S.tiledb_config("s3://bucket/lake/soma/homo_sapiens")
    assert (cfg["vfs.s3.endpoint_override"], cfg["vfs.s3.scheme"], cfg["vfs.s3.region"], cfg["vfs.s3.use_virtual_addressing"]) == ("127.0.0.1:9999", "http", "eu-west-1", "false")
    assert S.tiledb_config("/local/lake/soma/homo_sapiens") == {}
    monkeypatch.setenv("AIVC_TILEDB_CONFIG", '{"vfs.s3.max_parallel_ops": 8}')
    assert S.tiledb_config("s3://bucket/x")["vfs.s3.max_parallel_ops"] == "8"
    assert S.tiledb_config("/local/x") == {"vfs.s3.max_parallel_ops": "8"}
    monkeypatch.setenv("AIVC_TILEDB_CONFIG", "[1, 2]")
    with pytest.raises(UsageError, match="JSON object"):
        S.tiledb_config("/local/x")
