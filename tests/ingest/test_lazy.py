"""Lazy (Dask, anndata ``read_elem_lazy``) QC equals the eager streaming checker on real files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.ingest.lazy import lazy_counts, lazy_qc
from aivc.ingest.matrix import MatrixChecker
from aivc.ingest.readers import UnreadableDataError, open_anndata


def _eager(h5: Path) -> pd.DataFrame:
    with open_anndata(h5) as data:
        mito = np.flatnonzero(data.var.index.str.startswith("MT-"))
        chk = MatrixChecker(cell_ids=data.obs.index, gene_names=data.var.index, keep_cols=np.arange(data.n_vars), mito_cols=mito)
        for start, chunk in data.iter_chunks(64):
            chk.update(start, chunk)
        return chk.qc_frame()


@pytest.mark.parametrize("chunk_rows", [37, 4096])
def test_lazy_qc_equals_the_validation_checker_on_real_pbmc(pbmc_files, chunk_rows: int) -> None:
    h5 = pbmc_files[0][0]
    want = _eager(h5)
    got = lazy_qc(h5, chunk_rows=chunk_rows)
    assert got.cells.index.equals(want.index)
    assert len(got.cells) == 350
    np.testing.assert_allclose(got.cells["n_counts"], want["n_counts"])
    np.testing.assert_array_equal(got.cells["n_genes"], want["n_genes"])
    np.testing.assert_allclose(got.cells["pct_mito"], want["pct_mito"])
    assert got.cells["pct_mito"].max() > 0  # MT- genes are present in the real data
    # blocks follow chunk_rows
    assert got.chunks[0][0] == min(chunk_rows, 350)
    assert got.blocks == -(-350 // chunk_rows)
    # per-gene numbers against anndata's eager read
    X = ad.read_h5ad(h5).X
    np.testing.assert_array_equal(got.genes["n_cells"], np.asarray((X != 0).sum(axis=0)).ravel())
    np.testing.assert_allclose(got.genes["total_counts"], np.asarray(X.sum(axis=0)).ravel())
    assert got.cells["n_counts"].sum() == pytest.approx(float(X.sum()))


def test_lazy_qc_reads_csc_and_zarr_to_the_same_numbers(pbmc_files, tmp_path: Path) -> None:
    h5 = pbmc_files[1][0]
    want = lazy_qc(h5, chunk_rows=100)
    a = ad.read_h5ad(h5)
    a.X = sp.csc_matrix(a.X)
    csc = tmp_path / "csc.h5ad"
    a.write_h5ad(csc)
    a.X = sp.csr_matrix(a.X)
    z = tmp_path / "x.zarr"
    a.write_zarr(z)
    got_csc = lazy_qc(csc, chunk_rows=200)
    assert len(got_csc.chunks[1]) == -(-a.n_vars // 200)  # CSC is read by column blocks
    for got in (got_csc, lazy_qc(z, chunk_rows=64)):
        pd.testing.assert_frame_equal(got.cells, want.cells)
        pd.testing.assert_frame_equal(got.genes, want.genes)


def test_lazy_counts_is_lazy_and_chunked(pbmc_files) -> None:
    import h5py

    with h5py.File(pbmc_files[0][0], "r") as f:
        X = lazy_counts(f, "X", chunk_rows=100)
        assert X.shape == (350, 765)
        assert X.chunks[0] == (100, 100, 100, 50)
        block = X.blocks[1].compute()
        assert sp.issparse(block) and block.shape == (100, 765)
        eager = ad.read_h5ad(pbmc_files[0][0]).X[100:200]
        assert (block != eager).nnz == 0


def test_lazy_qc_bad_inputs(pbmc_files, tmp_path: Path) -> None:
    with pytest.raises(UnreadableDataError, match="does not exist"):
        lazy_qc(tmp_path / "missing.h5ad")
    with pytest.raises(UnreadableDataError, match="no raw/X"):
        lazy_qc(pbmc_files[0][0], element="raw/X")
    with pytest.raises(ValueError, match="mito mask has 3 entries for 765 columns"):
        lazy_qc(pbmc_files[0][0], mito=np.zeros(3, dtype=bool))
