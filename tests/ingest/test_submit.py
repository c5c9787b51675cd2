"""Submission lifecycle on real PBMC data and small synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.ingest.submission import submit, validate_submission
from aivc.store.catalog import Catalog
from aivc.store.export import load_version_anndata
from aivc.store.sql import query
from tests.conftest import lake_snapshot


def test_pbmc_submission_commits_with_harmonized_labels(lake, pbmc_files):
    import anndata as ad

    h5, mf = pbmc_files[0]
    res = submit(lake, h5, mf, report_dir=lake.root.parent / "r")
    assert res.status == "committed", res.errors
    assert (res.dataset_id, res.version, res.n_cells) == ("pbmc68k-part1", 1, 350)
    submitted = ad.read_h5ad(h5)
    # 700 of the 765 hg19-era symbols are current GENCODE 48 symbols, 59 are outdated ones
    # mapped by Ensembl id; 5 unknown and 1 ambiguous are reported, not silently dropped
    assert res.n_genes == 759
    by_code = {w.code: w.message for w in res.warnings}
    assert by_code["GENES_UNMAPPED"].startswith("5 of 765 identifiers")
    assert by_code["GENES_PREVIOUS_SYMBOL"].startswith("59 outdated symbols")
    genes = pd.read_parquet(Catalog(lake).artifacts_path(Catalog(lake).get("pbmc68k-part1")) / "genes.parquet")
    igj = genes.set_index("submitted_id").loc["IGJ"]
    assert (igj["gene_id"], igj["feature_name"]) == ("ENSG00000132465", "JCHAIN")
    rows = query(lake, "SELECT cell_type_ontology_term_id AS t, cell_type AS l, count(*) AS n FROM cells GROUP BY ALL ORDER BY n DESC").to_dicts()
    expected = submitted.obs["bulk_labels"].value_counts()
    assert rows[0]["n"] == expected.iloc[0]
    by_term = {r["t"]: r for r in rows}
    assert by_term["CL:0000236"]["l"] == "B cell"
    assert by_term["CL:0000236"]["n"] == int((submitted.obs["bulk_labels"] == "CD19+ B").sum())
    assert by_term["CL:0000451"]["n"] == int((submitted.obs["bulk_labels"] == "Dendritic").sum())


def test_export_round_trips_exact_counts(lake, pbmc_files, tmp_path):
    import anndata as ad

    h5, mf = pbmc_files[0]
    assert submit(lake, h5, mf).status == "committed"
    out = tmp_path / "export.h5ad"
    from aivc.store.export import export_h5ad

    info = export_h5ad(lake, "pbmc68k-part1@1", out)
    assert info["n_cells"] == 350
    back = ad.read_h5ad(out)
    sent = ad.read_h5ad(h5)
    genes = pd.read_parquet(Catalog(lake).artifacts_path(Catalog(lake).get("pbmc68k-part1")) / "genes.parquet")
    cols = genes["submitted_position"].to_numpy()
    assert list(back.obs_names) == list(sent.obs_names)
    np.testing.assert_array_equal(back.X.toarray(), sent.X[:, cols].toarray())
    assert list(back.var_names) == genes["gene_id"].tolist()
    np.testing.assert_allclose(back.obsm["X_umap"], sent.obsm["X_umap"], rtol=0, atol=0)
    assert back.obs["bulk_labels"].astype(str).tolist() == sent.obs["bulk_labels"].astype(str).tolist()
    assert back.uns["organism_ontology_term_id"] == "NCBITaxon:9606"


def test_identical_resubmission_is_unchanged_and_changed_is_new_version(lake, write_submission):
    h5, mf = write_submission()
    first = submit(lake, h5, mf)
    assert first.status == "committed" and first.version == 1
    before = lake_snapshot(lake.root)
    again = submit(lake, h5, mf)
    assert (again.status, again.version) == ("unchanged", 1)
    assert lake_snapshot(lake.root) == before

    def bump(adata):
        X = adata.X.toarray()
        X[3, 5] += 7
        adata.X = sp.csr_matrix(X)

    h5b, mfb = write_submission(mutate=bump)
    second = submit(lake, h5b, mfb)
    assert (second.status, second.version) == ("committed", 2)
    cat = Catalog(lake)
    assert [v.version for v in cat.versions("synth-a")] == [1, 2]
    v1, _ = load_version_anndata(lake, "synth-a@1")
    v2, _ = load_version_anndata(lake, "synth-a@2")
    assert v2.X[3, 5] - v1.X[3, 5] == 7
    assert abs(v2.X - v1.X).sum() == 7
    # `cells` shows only the current version; all versions stay addressable
    n = query(lake, "SELECT dataset_version, count(*) FROM cells GROUP BY ALL").rows
    assert n == [(2, 60)]
    n_all = query(lake, "SELECT count(*) FROM cells_all_versions").rows[0][0]
    assert n_all == 120


def test_two_datasets_share_var_union_and_record_measured_genes(lake, write_submission):
    def drop_genes(adata):
        return adata[:, 10:].copy()

    h5a, mfa = write_submission()
    h5b, mfb = write_submission(mutate=drop_genes, dataset_id="synth-b")
    assert submit(lake, h5a, mfa).status == "committed"
    assert submit(lake, h5b, mfb).status == "committed"
    rows = dict(query(lake, "SELECT dataset_id, count(*) FROM dataset_genes GROUP BY ALL").rows)
    assert rows == {"synth-a": 120, "synth-b": 110}
    n_genes = query(lake, "SELECT count(*) FROM genes").rows[0][0]
    assert n_genes == 120
    one = query(lake, "SELECT count(*) FROM genes WHERE n_datasets_measured = 1").rows[0][0]
    assert one == 10


def test_plain_tiledbsoma_reads_the_lake(lake, write_submission):
    import tiledbsoma

    h5, mf = write_submission()
    assert submit(lake, h5, mf).status == "committed"
    with tiledbsoma.Experiment.open(str(lake.root / "soma" / "homo_sapiens")) as exp:
        obs = exp.obs.read().concat().to_pandas()
        assert len(obs) == 60
        assert set(obs["dataset_id"]) == {"synth-a"}
        assert set(obs["cell_type_ontology_term_id"]) == {"CL:0000236", "CL:0000084"}
        X = exp.ms["RNA"].X["counts"]
        assert X.nnz > 0


def test_validate_writes_nothing(lake, write_submission):
    h5, mf = write_submission()
    before = lake_snapshot(lake.root)
    prepared = validate_submission(h5, mf)
    prepared.close()
    assert prepared.report.valid, prepared.report.errors
    assert prepared.report.summary["n_cells"] == 60
    assert lake_snapshot(lake.root) == before


def test_streaming_chunks_give_identical_content(lake, write_submission):
    h5, mf = write_submission(n_cells=200)
    a = validate_submission(h5, mf, chunk_rows=7)
    b = validate_submission(h5, mf, chunk_rows=4096)
    a.close(), b.close()
    assert a.content_hash == b.content_hash
    res = submit(lake, h5, mf, chunk_rows=13)
    assert res.status == "committed"
    back, _ = load_version_anndata(lake, "synth-a")
    import anndata as ad

    sent = ad.read_h5ad(h5)
    np.testing.assert_array_equal(back.X.toarray(), sent.X.toarray())
