"""Real CITE-seq cells (RNA + TotalSeq-B antibodies) from submission to export, on both backends.

The data are the real 10x PBMC files shipped in ``schemas/examples`` (see
``schemas/build_examples.py``): two AnnData files with the protein counts in ``obsm`` and a
Cell Ranger 3 matrix folder with Gene Expression and Antibody Capture features.
"""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.io
import scipy.sparse as sp
import yaml

from aivc.ingest.submission import submit
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.read import LakeQuery, version_features
from aivc.store.sql import query

EXAMPLES = Path(str(resources.files("aivc.schemas").joinpath("examples")))
OBS = {
    "assay": {"value": "EFO:0030008"},
    "cell_type": {"value": "unknown"},
    "development_stage": {"value": "unknown"},
    "disease": {"value": "PATO:0000461"},
    "self_reported_ethnicity": {"value": "unknown"},
    "sex": {"value": "unknown"},
    "tissue": {"value": "UBERON:0000178"},
    "suspension_type": {"value": "cell"},
    "donor_id": {"value": "pbmc"},
}


def cite_manifest(dataset_id: str, **over: Any) -> dict[str, Any]:
    """The demo's CITE-seq manifest (RNA top-level, ADT from obsm), with keys replaced by ``over``."""
    from aivc.demo_multimodal import cite_manifest as demo_manifest

    return {**demo_manifest(dataset_id), **over}


def write_manifest(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_cite_seq_h5ad_round_trips_every_measurement(lake_uri: str, tmp_path: Path) -> None:
    lake = Lake.init(lake_uri)
    src = ad.read_h5ad(EXAMPLES / "cite_pbmc10k.h5ad")
    res = submit(lake, EXAMPLES / "cite_pbmc10k.h5ad", write_manifest(tmp_path / "m.yaml", cite_manifest("cite-10k")), report_dir=tmp_path / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    assert res.measurements == {"ADT": 14} and res.to_dict()["measurements"]["ADT"] == 14
    v = Catalog(Lake.open(lake_uri)).get("cite-10k")
    held = v.measured()
    assert (held["ADT"].n_features, held["ADT"].n_cells, held["ADT"].nnz) == (14, 200, int(np.count_nonzero(src.obsm["protein_expression"])))
    assert v.obsm_keys == ()  # a measurement source is not also a submitter embedding

    # the read API: ADT of the same cells as RNA, exact
    q = LakeQuery.open(lake, datasets=["cite-10k"], measurement="ADT")
    feats = q.features()
    assert feats.frame["feature_id"].tolist()[:4] == ["CD3", "CD4", "CD8a", "CD14"]
    got = np.vstack([c for _, c in q.chunks(q.obs(), feats.joinids, chunk_rows=64)])
    np.testing.assert_array_equal(got, src.obsm["protein_expression"].astype(np.float32))

    # SQL: the antibodies with their targets, the per-cell protein QC
    rows = dict(query(lake, "SELECT feature_name, feature_id FROM dataset_features WHERE measurement = 'ADT'").rows)
    assert rows["CD3_TotalSeqB"] == "CD3" and rows["PD-1_TotalSeqB"] == "PD-1" and len(rows) == 14
    qc = query(lake, "SELECT obs_id, n_protein_counts FROM qc_adt ORDER BY obs_id").rows
    expected = dict(zip(src.obs_names, src.obsm["protein_expression"].sum(axis=1), strict=True))
    assert len(qc) == 200 and all(n == expected[o.split(":", 1)[1]] for o, n in qc)

    # export: one .h5mu with both modalities, counts exact
    import mudata as md

    from aivc.store.export_multimodal import export_h5mu

    out = tmp_path / "cite.h5mu"
    info = export_h5mu(lake, "cite-10k", out)
    assert info["modalities"] == {"rna": [200, v.n_genes], "prot": [200, 14]}
    m = md.read_h5mu(out)
    np.testing.assert_array_equal(m["prot"].X.toarray(), src.obsm["protein_expression"])
    assert m["prot"].var.loc["PD-1", "target_symbol"] == "PDCD1" and m["prot"].var.loc["CD3", "feature_name"] == "CD3_TotalSeqB"
    submitted = dict(zip(src.var_names, range(src.n_vars), strict=True))
    cols = [submitted[s] for s in version_features(lake, v)["submitted_id"]]
    np.testing.assert_array_equal(m["rna"].X.toarray(), sp.csr_matrix(src.X)[:, cols].toarray())
    assert m.obs_names.tolist() == src.obs_names.tolist()


def test_two_panels_share_their_antibodies_across_datasets(tmp_path: Path) -> None:
    lake = Lake.init(str(tmp_path / "lake"))
    for name in ("cite_pbmc10k", "cite_pbmc5k"):
        res = submit(lake, EXAMPLES / f"{name}.h5ad", write_manifest(tmp_path / f"{name}.yaml", cite_manifest(name.replace("_", "-"))), report_dir=tmp_path / name)
        assert res.status == "committed", [str(e) for e in res.errors]
    shared = query(
        lake,
        "SELECT a.feature_id, a.soma_joinid = b.soma_joinid FROM dataset_features a JOIN dataset_features b USING (feature_id) "
        "WHERE a.measurement = 'ADT' AND b.measurement = 'ADT' AND a.dataset_id = 'cite-pbmc10k' AND b.dataset_id = 'cite-pbmc5k'",
    ).rows
    assert len(shared) == 14 and all(same for _, same in shared)  # one lake feature per antibody
    n = query(lake, "SELECT count(DISTINCT feature_id) FROM dataset_features WHERE measurement = 'ADT'").rows[0][0]
    assert n == 29  # the 5k panel holds the 10k one
    # reading ADT over both: the 10k cells did not measure the 15 antibodies only the 5k has
    q = LakeQuery.open(lake, measurement="ADT")
    fs = q.features("union")
    assert fs.present.shape == (2, 29) and sorted(fs.present.sum(axis=1).tolist()) == [14, 29]


def _read_mtx(folder: Path) -> tuple[sp.csr_matrix, list[list[str]], list[str]]:
    with gzip.open(folder / "matrix.mtx.gz", "rb") as fh:
        full = sp.csr_matrix(scipy.io.mmread(fh).T)  # cells x features
    with gzip.open(folder / "features.tsv.gz", "rt") as fh:
        features = [line.rstrip("\n").split("\t") for line in fh]
    with gzip.open(folder / "barcodes.tsv.gz", "rt") as fh:
        barcodes = [line.strip() for line in fh]
    return full, features, barcodes


def _write_10x_h5(path: Path, X: sp.csr_matrix, features: list[list[str]], barcodes: list[str]) -> None:
    """The Cell Ranger 3+ feature-barcode HDF5 layout (matrix: features x barcodes, CSC)."""
    import h5py

    csc = sp.csr_matrix(X)  # CSR by barcode is CSC of the features x barcodes matrix
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = csc.data.astype(np.int32), csc.indices.astype(np.int64), csc.indptr.astype(np.int64)
        g["shape"] = np.array([X.shape[1], X.shape[0]], dtype=np.int32)
        fg = g.create_group("features")
        fg["id"] = np.array([r[0] for r in features], dtype="S")
        fg["name"] = np.array([r[1] for r in features], dtype="S")
        fg["feature_type"] = np.array([r[2] for r in features], dtype="S")
        fg["genome"] = np.array(["GRCh38"] * len(features), dtype="S")


TENX_MEASUREMENTS = {
    "RNA": {"modality": "rna", "source": "mod:rna", "genes": {"id_type": "ensembl", "column": "gene_ids"}},
    "ADT": {"modality": "protein", "source": "mod:prot"},
}


def _tenx_manifest(dataset_id: str) -> dict[str, Any]:
    m = cite_manifest(dataset_id, measurements=TENX_MEASUREMENTS)
    del m["genes"], m["counts"]
    return m


def test_cell_ranger_folder_and_h5_with_antibody_capture(tmp_path: Path) -> None:
    folder = EXAMPLES / "pbmc10k_protein_v3"
    full, features, barcodes = _read_mtx(folder)
    rna_cols = [i for i, r in enumerate(features) if r[2] == "Gene Expression"]
    adt_cols = [i for i, r in enumerate(features) if r[2] == "Antibody Capture"]
    empty = np.flatnonzero(np.asarray(full[:, rna_cols].sum(axis=1)).ravel() == 0)
    lake = Lake.init(str(tmp_path / "lake"))
    # the real folder: 8 of its 1,024 cells have no count on its 100 genes, which RNA refuses
    res = submit(lake, folder, write_manifest(tmp_path / "m.yaml", _tenx_manifest("tenx-10k")), report_dir=tmp_path / "r0")
    assert res.status == "rejected" and [e.code for e in res.errors] == ["MATRIX_EMPTY_CELLS", "QC_EMPTY_CELL", "QC_N_GENES_RANGE"]
    assert res.errors[0].where.startswith(f"matrix[Gene Expression] cell {barcodes[empty[0]]!r}") and len(empty) == 8
    # the same cells without those 8, as Cell Ranger's HDF5 file
    keep = np.setdiff1d(np.arange(len(barcodes)), empty)
    h5 = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x_h5(h5, full[keep], features, [barcodes[i] for i in keep])
    res = submit(lake, h5, tmp_path / "m.yaml", report_dir=tmp_path / "r1")
    assert res.status == "committed", [str(e) for e in res.errors]
    assert (res.n_cells, res.n_genes, res.measurements) == (1016, 97, {"ADT": 17})  # 3 of the 100 Ensembl ids are not in GENCODE 48
    q = LakeQuery.open(lake, datasets=["tenx-10k"], measurement="ADT")
    panel = q.features(columns=["feature_name", "is_isotype"]).frame
    assert sorted(panel.loc[panel["is_isotype"], "feature_name"]) == ["IgG1_control_TotalSeqB", "IgG2a_control_TotalSeqB", "IgG2b_control_TotalSeqB"]
    got = np.vstack([c for _, c in q.chunks(q.obs(), q.features().joinids, chunk_rows=300)])
    np.testing.assert_array_equal(got, full[keep][:, adt_cols].toarray())
    iso = query(lake, "SELECT count(*), sum(isotype_counts) FROM qc_adt").rows
    assert iso == [(1016, int(full[keep][:, [adt_cols[i] for i in np.flatnonzero(panel["is_isotype"].to_numpy())]].sum()))]
