"""A toy second measurement (a two-feature "HTO") round-trips through the store with no change
outside its spec: the store's writer, the read API, SQL and export, on a local folder and on S3."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.store import measurements, soma_io
from aivc.store.artifacts import VersionWriter
from aivc.store.catalog import Catalog, DatasetVersion, Measured
from aivc.store.export import export_h5ad, load_version_anndata
from aivc.store.lake import Lake, utcnow
from aivc.store.read import LakeQuery
from aivc.store.sql import query

X = np.array([[5, 0], [0, 7], [2, 3], [0, 0]], dtype=np.float32)
FEATURES = ["CD3_TotalSeqB", "CD19_TotalSeqB"]


@pytest.fixture
def adt():  # noqa: ANN201
    spec = measurements.register(
        measurements.MeasurementSpec(
            name="HTO", modality="protein", feature_reference="TotalSeq-B panel", feature_id="feature_id", var_columns=("feature_name",), target_sum=None
        )
    )
    yield spec
    measurements.unregister("HTO")


def _write_adt_version(lake: Lake, spec: measurements.MeasurementSpec) -> DatasetVersion:
    """What a protein-only submission would commit, written through the store alone."""
    barcodes = [f"b{i}" for i in range(len(X))]
    obs = pd.DataFrame({c: ["unknown"] * len(X) for c in soma_io.OBS_STRING_COLUMNS}, index=pd.Index([f"prot@1:{b}" for b in barcodes], name="obs_id"))
    obs["dataset_id"], obs["barcode"] = "prot", barcodes
    obs["cell_type"] = ["T cell", "B cell", "T cell", "B cell"]
    obs["dataset_version"] = np.int32(1)
    obs["is_primary_data"] = True
    var = pd.DataFrame({"feature_name": ["CD3", "CD19"]}, index=pd.Index(FEATURES, name="feature_id"))
    catalog = Catalog(lake)
    with lake.write_lock():
        ts = soma_io.write_timestamp(catalog.high_water("homo_sapiens"))
        res = soma_io.append_dataset(lake.soma_uri("homo_sapiens"), obs, var, [(0, sp.csr_matrix(X))], timestamp=ts, measurement=spec)
        w = VersionWriter(lake, "prot", 1)
        cells = obs.reset_index()
        cells.insert(1, "soma_joinid", res.obs_joinids)
        w.write_cells(cells)
        w.write_features(pd.DataFrame({"feature_id": FEATURES, "soma_joinid": res.var_joinids, "feature_name": ["CD3", "CD19"]}), measurement=spec)
        w.write_submitted_obs(pd.DataFrame({"barcode": barcodes, "gate": ["a", "b", "a", "b"]}))
        record = DatasetVersion(
            dataset_id="prot", version=1, title="toy protein panel", description="", license="CC-BY-4.0", access="public", embargo_until=None,
            organism="NCBITaxon:9606", organism_name="homo_sapiens", n_cells=len(X), n_genes=0, nnz=res.nnz, content_hash="toy",
            submission_id="sub-toy", committed_at=utcnow(), soma_timestamp=ts, soma_high_water=max(soma_io.now_ms(), ts),
            obs_joinid_min=int(res.obs_joinids.min()), obs_joinid_max=int(res.obs_joinids.max()), artifacts=w.artifacts,
            measurements={"HTO": Measured(len(FEATURES), len(X), res.nnz, spec.layers).to_record()},
        )  # fmt: skip
        w.commit(record)
    return record


def test_toy_adt_round_trip(lake_uri: str, adt: measurements.MeasurementSpec, tmp_path) -> None:  # noqa: ANN001
    lake = Lake.init(lake_uri)
    v = _write_adt_version(lake, adt)
    assert Catalog(Lake.open(lake_uri)).get("prot").measured() == {"HTO": Measured(2, 4, 4, ("counts",))}

    # read API: the measurement's features (presence masks) and its raw values, by a condition
    q = LakeQuery.open(lake, datasets=["prot"], measurement="HTO")
    fs = q.features()
    assert fs.frame["feature_id"].tolist() == FEATURES and fs.present.all()
    cells = q.obs(where="cell_type = 'T cell'")
    assert cells["obs_id"].tolist() == ["prot@1:b0", "prot@1:b2"]
    got = np.vstack([c for _, c in q.chunks(cells, fs.joinids, chunk_rows=1)])
    np.testing.assert_array_equal(got, X[[0, 2]])
    with pytest.raises(Exception, match="not log-normalized"):
        next(iter(q.chunks(cells, fs.joinids, normalize=True)))

    # SQL: the cells and the features each version holds, per measurement
    r = query(lake, "SELECT measurement, feature_id, feature_name FROM dataset_features ORDER BY feature_id")
    assert r.rows == [("HTO", "CD19_TotalSeqB", "CD19"), ("HTO", "CD3_TotalSeqB", "CD3")]
    assert query(lake, "SELECT count(*) FROM dataset_genes").rows == [(0,)]  # RNA is not what it holds
    assert query(lake, "SELECT cell_type, count(*) FROM cells GROUP BY 1 ORDER BY 1").rows == [("B cell", 2), ("T cell", 2)]

    # export: X and var from the spec, obs as for RNA
    adata, _ = load_version_anndata(lake, "prot", measurement="HTO")
    assert adata.var_names.tolist() == FEATURES and adata.var["feature_name"].tolist() == ["CD3", "CD19"]
    np.testing.assert_array_equal(adata.X.toarray(), X)
    assert adata.obs_names.tolist() == ["b0", "b1", "b2", "b3"] and adata.obs["gate"].tolist() == ["a", "b", "a", "b"]
    res = export_h5ad(lake, "prot@1", tmp_path / "prot.h5ad", measurement="HTO")
    assert (res["measurement"], res["n_cells"], res["n_genes"]) == ("HTO", 4, 2)
    with pytest.raises(Exception, match="holds no RNA measurement"):
        load_version_anndata(lake, "prot")
    assert v.ref == "prot@1"
