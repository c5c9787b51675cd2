"""Co-expression gene URs: co-expressed genes point the same way, per-dataset measured genes
are respected, and the published version is unit-norm, deterministic and traceable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from aivc.embeddings.gene_coexpr import embed_gene_coexpression, gene_correlation
from aivc.store.features import get_version, list_versions, read_vectors
from aivc.errors import UsageError
from aivc.store.catalog import Catalog


@pytest.fixture(scope="module")
def co_lake(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame):
    """Two datasets over real genes (``co-a``: 60 cells, 120 genes; ``co-b``: 40 cells without the
    first 10 genes). Genes 30 and 31 have identical counts everywhere; in ``a`` gene 2 (which
    ``b`` did not measure) has the counts of gene 40, which varies independently in ``b``.
    Returns ``(lake, symbol of column j)``."""
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake
    from tests.conftest import base_manifest, make_adata

    root = tmp_path_factory.mktemp("coexpr")
    lake = Lake.init(root / "lake")
    rng = np.random.default_rng(11)

    def shared(n: int) -> np.ndarray:
        return rng.poisson(rng.uniform(0.5, 12.0, size=n)).astype(np.float32)

    a = make_adata(human_genes, n_cells=60, seed=0)
    b = make_adata(human_genes, n_cells=40, seed=4)
    for adata in (a, b):
        X = adata.X.toarray()
        X[:, 30] = X[:, 31] = shared(adata.n_obs)
        X[:, 40] = shared(adata.n_obs)
        X[:, 2] = X[:, 40] if adata is a else shared(adata.n_obs)
        adata.X = type(adata.X)(X)
    b = b[:, 10:].copy()
    for name, adata in (("co-a", a), ("co-b", b)):
        h5, mf = root / f"{name}.h5ad", root / f"{name}.yaml"
        adata.write_h5ad(h5)
        mf.write_text(yaml.safe_dump(base_manifest(name), sort_keys=False))
        assert submit(lake, h5, mf).status == "committed"
    return lake, list(a.var_names)


def _vectors(lake, ref: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    table, vec = read_vectors(lake, ref)
    return dict(zip(table.column("id").to_pylist(), vec, strict=True))


def _gene_ids(lake) -> dict[str, str]:  # noqa: ANN001
    """Submitted symbol -> reference gene id (co-a measured every gene)."""
    cat = Catalog(lake)
    g = pd.read_parquet(cat.artifacts_path(cat.get("co-a")) / "genes.parquet")
    return dict(zip(g["feature_name"], g["gene_id"].astype(str), strict=True))


def test_coexpressed_genes_get_the_same_direction(co_lake):
    lake, symbols = co_lake
    v = embed_gene_coexpression(lake, dim=8)
    assert v.ref == "gene:coexpr@1" and v.entity == "gene" and v.dim == 8 and v.normalization == "l2"
    assert v.ref in [x.ref for x in list_versions(lake, "gene")]
    assert v.source["method"] == "coexpression" and v.source["params"]["dim"] == 8
    cat = Catalog(lake)
    assert v.lineage.datasets == ("co-a@1", "co-b@1") and v.lineage.organism == "homo_sapiens"
    assert v.lineage.lake_state == {"homo_sapiens": cat.high_water("homo_sapiens")}
    vecs = _vectors(lake, v.ref)
    assert len(vecs) == v.n_rows == v.metrics["n_genes"] and all(k.startswith("ENSG") for k in vecs)
    mat = np.stack(list(vecs.values()))
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-5)

    gid = _gene_ids(lake)

    def cos(i: int, j: int) -> float:
        return float(vecs[gid[symbols[i]]] @ vecs[gid[symbols[j]]])

    assert cos(30, 31) > 0.999
    # gene 2 (measured only in co-a, where it equals gene 40) is nearest to gene 40
    near = sorted((cos(2, j), j) for j in range(120) if j != 2 and gid[symbols[j]] in vecs)
    assert near[-1][1] == 40 and near[-1][0] > 0.9
    # ... and most gene pairs are far from parallel
    sims = mat @ mat.T
    assert np.median(np.abs(sims[np.triu_indices(len(mat), 1)])) < 0.5


def test_correlation_pairs_only_cells_that_measured_both_genes(co_lake):
    lake, symbols = co_lake
    c = gene_correlation(lake)
    assert c.datasets == ("co-a@1", "co-b@1") and c.n_cells == 100 and c.n_genes == 120
    assert c.matrix.shape == (len(c.gene_ids), len(c.gene_ids)) and np.allclose(c.matrix, c.matrix.T)
    np.testing.assert_array_equal(np.diag(c.matrix), 1.0)
    pos = {g: i for i, g in enumerate(c.gene_ids)}
    gid = _gene_ids(lake)
    i2, i30, i31, i40 = (pos[gid[symbols[j]]] for j in (2, 30, 31, 40))
    assert c.matrix[i30, i31] == pytest.approx(1.0)
    # co-b did not measure gene 2: its cells count for neither gene of the pair (2, 40);
    # as zeros they would pull the correlation down to about 0.7
    assert c.matrix[i2, i40] == pytest.approx(1.0)
    assert np.abs(c.matrix[np.triu_indices(len(pos), 1)]).max() <= 1.0


def test_deterministic_and_sized_by_n_top_genes(co_lake):
    lake, _ = co_lake
    v1 = embed_gene_coexpression(lake, name="co_twice", dim=6, n_top_genes=50, chunk_rows=17)
    v2 = embed_gene_coexpression(lake, name="co_twice", dim=6, n_top_genes=50, chunk_rows=17)
    assert (v1.version, v2.version) == (1, 2) and v1.n_rows == 50
    a, b = _vectors(lake, v1.ref), _vectors(lake, v2.ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # chunking does not change the result beyond rounding
    c = _vectors(lake, embed_gene_coexpression(lake, name="co_chunks", dim=6, n_top_genes=50, chunk_rows=4096).ref)
    assert c.keys() == a.keys()
    np.testing.assert_allclose(np.stack([c[k] for k in a]), np.stack(list(a.values())), atol=1e-4)
    assert get_version(lake, "gene:co_twice").version == 2


def test_too_few_genes_or_bad_sizes_are_usage_errors(co_lake):
    lake, _ = co_lake
    before = len(list_versions(lake))
    with pytest.raises(UsageError, match=r"genes vary across the cells, fewer than the 500 needed"):
        embed_gene_coexpression(lake, name="bad", dim=500)
    with pytest.raises(UsageError, match="--n-top-genes 4 keeps fewer than the 8 genes needed"):
        embed_gene_coexpression(lake, name="bad", dim=8, n_top_genes=4)
    with pytest.raises(UsageError, match="--dim must be at least 1"):
        embed_gene_coexpression(lake, name="bad", dim=0)
    with pytest.raises(UsageError, match="named twice"):
        embed_gene_coexpression(lake, name="bad", datasets=["co-a", "co-a@1"])
    assert len(list_versions(lake)) == before


def test_cli_embed_coexpr_publishes_and_refuses_bad_input(co_lake):
    import json

    from typer.testing import CliRunner

    from aivc.cli import app
    from tests.conftest import lake_snapshot

    lake, _ = co_lake
    runner = CliRunner()
    before = lake_snapshot(lake.root)
    for args, code, text in (
        (["--dim", "0"], 2, "--dim must be at least 1, got 0"),
        (["--datasets", "nope"], 1, "no dataset 'nope' in this lake"),
    ):
        res = runner.invoke(app, ["embed", "coexpr", "--name", "cli_bad", *args, "--lake", str(lake.root)])
        assert res.exit_code == code and text in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert lake_snapshot(lake.root) == before
    res = runner.invoke(app, ["embed", "coexpr", "--name", "cli_co", "--dim", "4", "--lake", str(lake.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "published" and out["ref"] == "gene:cli_co@1" and out["dim"] == 4
    assert get_version(lake, "gene:cli_co@1").n_rows == out["n_rows"] > 0
