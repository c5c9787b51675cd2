"""Lake-wide per-gene statistics (``aivc stats``) equal NumPy over the submitted real PBMC files."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aivc.cli import app
from aivc.store.gene_stats import lake_gene_stats


@pytest.fixture(scope="module")
def pbmc_lake(pbmc_files, tmp_path_factory: pytest.TempPathFactory):
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake

    lk = Lake.init(tmp_path_factory.mktemp("stats") / "lake")
    for h5, mf in pbmc_files:
        assert submit(lk, h5, mf).status == "committed"
    return lk


def _expected(lake, pbmc_files) -> pd.DataFrame:
    """Per-gene statistics with NumPy over the two submitted h5ad files (dense, in memory)."""
    from aivc.store.read import select_versions, version_features

    parts = []
    by_id = {v.dataset_id: v for v in select_versions(lake)}
    for (h5, _), ds in zip(pbmc_files, ("pbmc68k-part1", "pbmc68k-part2"), strict=True):
        f = version_features(lake, by_id[ds])
        X = ad.read_h5ad(h5).X.toarray().astype(np.float64)[:, f["submitted_position"].to_numpy()]
        tot = X.sum(axis=1, keepdims=True)
        L = np.log1p(X / np.where(tot > 0, tot, 1) * 1e4)
        parts.append(pd.DataFrame({"gene_id": np.repeat(f["gene_id"].to_numpy(), len(X)), "x": X.T.ravel(), "l": L.T.ravel()}))
    df = pd.concat(parts)
    g = df.groupby("gene_id", sort=False)
    return pd.DataFrame(
        {
            "n_cells": g.size(), "nnz": g["x"].apply(lambda s: int((s != 0).sum())), "mean": g["x"].mean(), "var": g["x"].var(ddof=0),
            "mean_log": g["l"].mean(), "var_log": g["l"].var(ddof=0),
        }
    )  # fmt: skip


@pytest.mark.parametrize("chunk_rows,workers", [(64, 2), (16384, 1)])
def test_lake_gene_stats_equal_numpy_over_the_submitted_files(pbmc_lake, pbmc_files, chunk_rows: int, workers: int) -> None:
    got, info = lake_gene_stats(pbmc_lake, chunk_rows=chunk_rows, num_workers=workers)
    assert info["n_cells"] == 700
    assert info["chunks"] == 2 * -(-350 // chunk_rows)
    want = _expected(pbmc_lake, pbmc_files)
    got = got.set_index("gene_id").loc[want.index]
    assert len(got) == info["n_genes"] == len(want)
    np.testing.assert_array_equal(got["n_cells"], want["n_cells"])
    np.testing.assert_array_equal(got["nnz"], want["nnz"])
    for c in ("mean", "var", "mean_log", "var_log"):
        np.testing.assert_allclose(got[c], want[c], rtol=1e-9, atol=1e-12, err_msg=c)
    np.testing.assert_allclose(got["frac_detected"], want["nnz"] / 700)
    assert got["mean"].max() > 1  # real counts, not an empty read


def test_stats_cli_json_out_and_bad_inputs(pbmc_lake, tmp_path: Path) -> None:
    runner = CliRunner()
    lake = str(pbmc_lake.uri)
    out = tmp_path / "stats.parquet"
    res = runner.invoke(app, ["stats", "--lake", lake, "--datasets", "pbmc68k-part1", "--top", "5", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    assert j["n_cells"] == 350 and j["datasets"] == ["pbmc68k-part1@1"] and len(j["genes"]) == 5
    means = [g["mean_log"] for g in j["genes"]]
    assert means == sorted(means, reverse=True)
    saved = pd.read_parquet(out)
    assert len(saved) == j["n_genes"] and saved["n_cells"].eq(350).all()
    assert saved.sort_values("mean_log", ascending=False)["gene_id"].head(5).tolist() == [g["gene_id"] for g in j["genes"]]
    for args, code, msg in (
        (["--out", str(tmp_path / "x.xlsx")], 2, "--out must end in .parquet, .csv or .tsv"),
        (["--chunk-rows", "0"], 2, "--chunk-rows must be at least 1"),
        (["--datasets", "nope"], None, "nope"),
    ):
        bad = runner.invoke(app, ["stats", "--lake", lake, *args])
        assert bad.exit_code in ((1, 2) if code is None else (code,)), (args, bad.output)
        assert len(bad.output.strip().splitlines()) == 1, bad.output
        assert msg in bad.output, bad.output
    assert not (tmp_path / "x.xlsx").exists()
