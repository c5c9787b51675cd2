"""The one read API (aivc.store.read) and measurement specs (aivc.store.measurements)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.errors import NotFoundError, UsageError
from aivc.store import measurements, soma_io
from aivc.store.catalog import Catalog
from aivc.store.read import FeatureSet, LakeQuery, lognormalize, select_versions, top_variable, version_cells, version_features


def _raw(q: LakeQuery, joins: np.ndarray, var_j: np.ndarray) -> np.ndarray:
    return soma_io.read_rows(q.soma_uri, q.high_water, joins, var_j).toarray().astype(np.float64)


def test_lognormalize_dense_and_sparse_agree():
    X = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 2.0]])
    dense = lognormalize(X, 10.0)
    np.testing.assert_allclose(dense, np.log1p(X / np.array([[4.0], [1.0], [4.0]]) * 10.0))
    assert (dense[1] == 0).all()  # an empty row stays zero
    np.testing.assert_allclose(lognormalize(sp.csr_matrix(X), 10.0).toarray(), dense)
    np.testing.assert_allclose(lognormalize(X, 10.0, totals=np.array([8.0, 0.0, 8.0]))[0], np.log1p(X[0] / 8.0 * 10.0))


def test_top_variable_skips_zero_variance_and_keeps_order():
    assert top_variable(np.array([0.0, 3.0, 1.0, 3.0, 0.0]), 3).tolist() == [1, 2, 3]
    assert top_variable(np.array([0.0, 2.0, 0.0]), 5).tolist() == [1]


def test_query_axes_and_values_match_the_lake(train_lake):
    q = LakeQuery.open(train_lake)
    assert [v.ref for v in q.versions] == ["synth-a@1", "synth-b@1"] and q.organism == "homo_sapiens"
    cells = q.obs()
    assert list(cells.columns) == ["obs_id", "soma_joinid", "dataset_id"]
    assert len(cells) == 100 and cells["soma_joinid"].is_monotonic_increasing
    # features: synth-b did not measure synth-a's first 10 genes (missing, not zero)
    inter, union = q.features("intersection"), q.features("union")
    assert (len(inter), len(union)) == (110, 120)
    assert inter.present.all()
    genes_a = version_features(train_lake, q.versions[0], ["gene_id"])["gene_id"]
    genes_b = version_features(train_lake, q.versions[1], ["gene_id"])["gene_id"]
    assert union.present[0].tolist() == union.frame["gene_id"].isin(genes_a).tolist()
    assert union.present[1].sum() == 110 and not union.frame["gene_id"][~union.present[1]].isin(genes_b).any()
    # chunks: raw values equal SOMA's; normalized equal lognormalize over the features read
    joins = cells["soma_joinid"].to_numpy()
    raw = _raw(q, joins, union.joinids)
    got = np.vstack([x for _, x in q.chunks(cells, union.joinids, chunk_rows=17)])
    np.testing.assert_array_equal(got, raw)
    norm = np.vstack([x for _, x in q.chunks(cells, union.joinids, chunk_rows=33, normalize=True)])
    np.testing.assert_allclose(norm, lognormalize(raw), rtol=1e-12)
    sparse = [x for _, x in q.chunks(joins[:5], inter.joinids, dense=False)]
    assert len(sparse) == 1 and sp.issparse(sparse[0]) and sparse[0].shape == (5, 110)


def test_feature_moments_count_only_cells_that_measured_the_gene(train_lake):
    q = LakeQuery.open(train_lake)
    cells = q.obs()
    union = q.features("union")
    mean, var = q.feature_moments(cells, union, chunk_rows=13)
    L = lognormalize(_raw(q, cells["soma_joinid"].to_numpy(), union.joinids))
    measured = union.present[(cells["dataset_id"] == "synth-b").to_numpy().astype(int)]
    for j in (0, 15, 119):  # gene 0 only synth-a measured; 15 and 119 both
        col = L[measured[:, j], j]
        assert col.size == (60 if j == 0 else 100)
        np.testing.assert_allclose([mean[j], var[j]], [col.mean(), col.var()], rtol=1e-9, atol=1e-12)
    top = q.variable_features(cells, union, 7)
    assert top.tolist() == sorted(np.argsort(-var, kind="stable")[:7].tolist())
    sub = union.take(top)
    assert isinstance(sub, FeatureSet) and len(sub) == 7 and sub.present.shape == (2, 7)


def test_obs_where_and_selection_errors(train_lake):
    q = LakeQuery.open(train_lake, datasets=["synth-a"])
    d1 = q.obs(["obs_id", "soma_joinid", "donor_id"], where="donor_id = 'd1'")
    want = version_cells(train_lake, q.versions[0], ["obs_id", "donor_id"])
    assert sorted(d1["obs_id"]) == sorted(want.loc[want["donor_id"] == "d1", "obs_id"])
    assert (d1["donor_id"] == "d1").all() and list(d1.columns) == ["obs_id", "soma_joinid", "donor_id"]
    with pytest.raises(UsageError, match="selects no cell of synth-a@1"):
        q.obs(where="donor_id = 'nobody'")
    with pytest.raises(UsageError, match="not a valid condition"):
        q.obs(where="no_such_column = 1")
    with pytest.raises(UsageError, match="named twice"):
        select_versions(train_lake, datasets=["synth-a@1", "synth-a"])
    with pytest.raises(UsageError, match="no datasets of organism 'mus_musculus'"):
        select_versions(train_lake, organism="mus_musculus")
    with pytest.raises(NotFoundError, match="no measurement 'NOPE'"):
        LakeQuery.open(train_lake, measurement="NOPE")
    with pytest.raises(NotFoundError, match="holds an ATAC measurement"):
        LakeQuery.open(train_lake, measurement="ATAC")


def test_pinned_high_water_reads_the_plan_state(train_lake):
    cat = Catalog(train_lake)
    v = cat.get("synth-a")
    q = LakeQuery.of(train_lake, [v], high_water=v.soma_high_water)
    assert q.high_water == v.soma_high_water
    assert len(q.obs()) == 60


def test_a_second_measurement_is_only_a_spec(tmp_path):
    """A two-feature "HTO" measurement: written and read back exactly through its spec."""
    adt = measurements.register(
        measurements.MeasurementSpec(name="HTO", modality="protein", feature_reference="TotalSeq-B panel", feature_id="feature_id", var_columns=("feature_name",))
    )
    try:
        assert measurements.get("HTO") is adt and measurements.names() == ["RNA", "ADT", "ATAC", "GENE_ACTIVITY", "HTO"]
        assert measurements.register(adt) is adt  # the same spec again is a no-op
        with pytest.raises(UsageError, match="already registered"):
            measurements.register(measurements.MeasurementSpec(name="HTO", modality="protein", feature_reference="other", feature_id="feature_id"))
        uri = str(tmp_path / "exp")
        obs = pd.DataFrame({c: ["x"] * 3 for c in soma_io.OBS_STRING_COLUMNS}, index=pd.Index(["c0", "c1", "c2"], name="obs_id"))
        obs["dataset_version"] = np.int32(1)
        obs["is_primary_data"] = True
        var = pd.DataFrame({"feature_name": ["CD3", "CD19"]}, index=pd.Index(["CD3_TotalSeqB", "CD19_TotalSeqB"], name="feature_id"))
        X = sp.csr_matrix(np.array([[5, 0], [0, 7], [2, 3]], dtype=np.float32))
        res = soma_io.append_dataset(uri, obs, var, [(0, X)], timestamp=soma_io.write_timestamp(None), measurement=adt)
        hw = soma_io.now_ms()
        got = soma_io.read_rows(uri, hw, res.obs_joinids, res.var_joinids, measurement=adt)
        np.testing.assert_array_equal(got.toarray(), X.toarray())
        assert soma_io.read_var(uri, hw, measurement=adt)["feature_id"].tolist() == ["CD3_TotalSeqB", "CD19_TotalSeqB"]
        with soma_io.DenseReader(uri, hw, res.var_joinids[::-1], measurement=adt) as rd:
            np.testing.assert_array_equal(rd.read(res.obs_joinids[[2, 0]]), X.toarray()[[2, 0]][:, ::-1])
        import tiledbsoma

        with tiledbsoma.Experiment.open(uri) as exp:  # plain tiledbsoma sees ms/HTO, not ms/RNA
            assert set(exp.ms.keys()) == {"HTO"}
    finally:
        measurements.unregister("HTO")
    assert measurements.names() == ["RNA", "ADT", "ATAC", "GENE_ACTIVITY"]
    with pytest.raises(UsageError, match="built-in ADT"):
        measurements.unregister("ADT")
    with pytest.raises(UsageError, match="must be a letter"):
        measurements.MeasurementSpec(name="bad name", modality="rna", feature_reference="x", feature_id="gene_id")


def test_streamed_cells_equal_obs_without_the_lake_wide_table(train_lake):
    """iter_obs / obs_joinids / stream give obs()'s rows in obs()'s order, a version at a time."""
    q = LakeQuery.open(train_lake)
    cells = q.obs()
    assert [[v.ref for v in run] for run in q.runs()] == [["synth-a@1"], ["synth-b@1"]]
    parts = list(q.iter_obs(chunk_rows=17))
    assert max(len(p) for p in parts) == 17 and all(len(set(p["dataset_id"])) == 1 for p in parts)  # a chunk never spans two versions
    pd.testing.assert_frame_equal(pd.concat(parts, ignore_index=True), cells)
    joins, group = q.obs_joinids()
    np.testing.assert_array_equal(joins, cells["soma_joinid"].to_numpy())
    assert np.array([q.versions[g].dataset_id for g in group]).tolist() == cells["dataset_id"].tolist()
    assert q.n_cells() == 100
    union = q.features("union")
    got = [(c, x) for c, x in q.stream(union.joinids, chunk_rows=33, normalize=True)]
    np.testing.assert_allclose(np.vstack([x for _, x in got]), lognormalize(_raw(q, cells["soma_joinid"].to_numpy(), union.joinids)), rtol=1e-12)
    # the streamed moments equal those over the whole table
    for a, b in zip(q.feature_moments(None, union, chunk_rows=13), q.feature_moments(cells, union, chunk_rows=13), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    sel = q.obs(where="donor_id = 'd1'")
    j, g = q.obs_joinids(where="donor_id = 'd1'")
    np.testing.assert_array_equal(j, sel["soma_joinid"].to_numpy())
    assert q.n_cells(where="donor_id = 'd1'") == len(sel) < 100
    pd.testing.assert_frame_equal(pd.concat(q.iter_obs(where="donor_id = 'd1'"), ignore_index=True), sel)
