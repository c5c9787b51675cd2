"""Feature store: publish/read round trip, immutability, atomic publish, PCA and import."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aivc.store.features import EmbeddingError, EmbeddingWriter, get_version, list_versions, read_vectors, version_dir
from aivc.ingest.submission import submit
from aivc.store.sql import query
from aivc.store.lineage import Lineage
from tests.conftest import lake_snapshot


@pytest.fixture
def lake2(lake, write_submission):
    h5a, mfa = write_submission()
    h5b, mfb = write_submission(dataset_id="synth-b", seed=4, n_cells=40)
    assert submit(lake, h5a, mfa).status == "committed"
    assert submit(lake, h5b, mfb).status == "committed"
    return lake


def _cells(lake):
    return pd.DataFrame(query(lake, "SELECT obs_id, soma_joinid, dataset_id FROM cells ORDER BY soma_joinid").to_dicts())


def test_round_trip_by_id_dataset_and_all(lake2):
    cells = _cells(lake2)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(len(cells), 8)).astype(np.float32)
    w = EmbeddingWriter(lake2, "cell", "rand", 8, source={"kind": "test"}, lineage=Lineage(datasets=("synth-a@1", "synth-b@1")), rows_per_file=30)
    for start in range(0, len(cells), 25):  # several batches, files rolled every 30 rows
        part = cells.iloc[start : start + 25]
        w.write(part["obs_id"].to_numpy(), vec[start : start + 25], soma_joinids=part["soma_joinid"].to_numpy(), dataset_ids=part["dataset_id"].to_numpy())
    v = w.commit(metrics={"note": 1})
    assert (v.ref, v.dim, v.n_rows, v.partitions) == ("cell:rand@1", 8, 100, ("dataset=synth-a", "dataset=synth-b"))
    assert get_version(lake2, "cell:rand").ref == "cell:rand@1"
    # plain pyarrow reads the files: fixed-size float32 lists
    files = sorted(version_dir(lake2, "cell", "rand", 1).rglob("*.parquet"))
    assert len(files) == 3  # synth-a rolled after 50 rows (25+25 >= 30), synth-b in one file
    t = pq.read_table(files[0])
    assert t.schema.field("vector").type == pa.list_(pa.float32(), 8)
    # all
    meta, mat = read_vectors(lake2, "cell:rand@1")
    order = np.argsort(meta.column("id").to_numpy(zero_copy_only=False))
    expect = dict(zip(cells["obs_id"], vec, strict=True))
    got = dict(zip(meta.column("id").to_pylist(), mat, strict=True))
    assert set(got) == set(expect)
    for k in list(expect)[:20]:
        np.testing.assert_array_equal(got[k], expect[k])
    assert len(order) == 100
    # by id
    ids = cells["obs_id"].iloc[[3, 50, 77]].tolist()
    meta, mat = read_vectors(lake2, "cell:rand@1", ids=ids)
    assert sorted(meta.column("id").to_pylist()) == sorted(ids)
    for i, k in enumerate(meta.column("id").to_pylist()):
        np.testing.assert_array_equal(mat[i], expect[k])
    # by dataset
    meta, mat = read_vectors(lake2, "cell:rand@1", datasets={"synth-b"})
    assert len(meta) == 40 and set(meta.column("id").to_pylist()) == set(cells.loc[cells.dataset_id == "synth-b", "obs_id"])


def test_versions_are_immutable_and_numbered(lake2):
    ids = _cells(lake2)
    for i in range(2):
        with EmbeddingWriter(lake2, "cell", "x", 2, source={"kind": "test"}) as w:
            w.write(ids["obs_id"].to_numpy(), np.full((len(ids), 2), i, np.float32), soma_joinids=ids["soma_joinid"].to_numpy(), dataset_ids=ids["dataset_id"].to_numpy())
    assert [v.ref for v in list_versions(lake2, "cell", "x")] == ["cell:x@1", "cell:x@2"]
    _, m1 = read_vectors(lake2, "cell:x@1")
    _, m2 = read_vectors(lake2, "cell:x@2")
    assert (m1 == 0).all() and (m2 == 1).all()


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        (["a", "b"], np.array([[1.0, np.nan], [0, 0]]), "NaN"),
        (["a", "b"], np.ones((2, 3)), "expected (n, 2)"),
        (["a"], np.ones((2, 2)), "1 ids but 2 vectors"),
    ],
)
def test_writer_rejects_bad_batches(lake, ids, vectors, message):
    w = EmbeddingWriter(lake, "gene", "bad", 2, source={"kind": "test"})
    with pytest.raises(EmbeddingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        w.write(ids, vectors)
    w.abort()
    assert list_versions(lake) == []


def test_duplicate_ids_refused_at_commit(lake):
    before = lake_snapshot(lake.root)
    w = EmbeddingWriter(lake, "gene", "dup", 2, source={"kind": "test"})
    w.write(["g1", "g2"], np.ones((2, 2)))
    w.write(["g3", "g1"], np.ones((2, 2)))
    with pytest.raises(EmbeddingError, match="'g1' \\(2 times\\)"):
        w.commit()
    w.abort()
    assert list_versions(lake) == []
    assert {k for k, v in lake_snapshot(lake.root).items() if v != "dir"} == {k for k, v in before.items() if v != "dir"}


def test_cell_rows_partitioned_in_order_and_cross_partition_duplicates_refused(lake, monkeypatch):
    """Batches of mixed datasets, cut in slices smaller than a batch: each partition keeps its
    rows in write order; a cell id written twice (other batch, other dataset) is refused."""
    from aivc.store import features as F

    monkeypatch.setattr(F, "SLICE_ROWS", 4)
    w = EmbeddingWriter(lake, "cell", "mixed", 2, source={"kind": "test"})
    ids = [f"c{i:02d}" for i in range(22)]
    ds = ["b" if i % 3 else "a" for i in range(22)]
    vec = np.arange(44, dtype=np.float32).reshape(22, 2)
    for lo in (0, 10):
        hi = 10 if lo == 0 else 22
        w.write(ids[lo:hi], vec[lo:hi], soma_joinids=np.arange(lo, hi), dataset_ids=ds[lo:hi])
    v = w.commit()
    for d in ("a", "b"):
        t = pq.read_table(version_dir(lake, "cell", "mixed", v.version) / f"dataset={d}" / "part-00000.parquet")
        want = [i for i in range(22) if ds[i] == d]
        assert t.column("id").to_pylist() == [ids[i] for i in want] and t.column("soma_joinid").to_pylist() == want
        np.testing.assert_array_equal(np.stack(t.column("vector").to_numpy(zero_copy_only=False)), vec[want])
    w = EmbeddingWriter(lake, "cell", "mixed", 2, source={"kind": "test"})
    w.write(["x1", "x2"], np.ones((2, 2)), soma_joinids=np.arange(2), dataset_ids=["a", "b"])
    w.write(["x3", "x2"], np.ones((2, 2)), soma_joinids=np.arange(2, 4), dataset_ids=["a", "a"])
    with pytest.raises(EmbeddingError, match="'x2' \\(2 times\\)"):
        w.commit()
    w.abort()
    with pytest.raises(EmbeddingError, match="dataset_ids must not be null"):
        EmbeddingWriter(lake, "cell", "nulls", 2, source={"kind": "test"}).write(["y"], np.ones((1, 2)), soma_joinids=[0], dataset_ids=[None])


def test_killed_publish_leaves_nothing_and_retry_works(lake2, tmp_path):
    script = tmp_path / "w.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from aivc.store.lake import Lake\n"
        "from aivc.store.features import EmbeddingWriter\n"
        "lake = Lake.open(sys.argv[1])\n"
        "w = EmbeddingWriter(lake, 'gene', 'k', 4, source={'kind': 'test'})\n"
        "w.write(['g%d' % i for i in range(1000)], np.ones((1000, 4)))\n"
        "print(w.commit().ref)\n"
    )
    env = {**os.environ, "AIVC_FAULT": "before_embedding_publish"}
    p = subprocess.run([sys.executable, str(script), str(lake2.root)], env=env, capture_output=True, text=True)
    assert p.returncode == 97
    assert list_versions(lake2, "gene") == []
    from aivc.store.recovery import recover

    with lake2.write_lock():
        removed = recover(lake2)
    assert any(".staging" in r for r in removed)
    p = subprocess.run([sys.executable, str(script), str(lake2.root)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "gene:k@1"


def test_pca_over_the_lake_matches_dense_pca(lake2):
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.store.export import load_version_anndata

    v = embed_pca(lake2, params=PcaParams(n_components=5, n_top_genes=50, chunk_rows=17))
    assert (v.entity, v.name, v.dim, v.n_rows) == ("cell", "pca", 5, 100)
    assert v.lineage.datasets == ("synth-a@1", "synth-b@1")
    assert 0 < v.metrics["explained_variance_total"] <= 1
    # recompute densely from the exported counts
    a, _ = load_version_anndata(lake2, "synth-a")
    b, _ = load_version_anndata(lake2, "synth-b")
    X = np.vstack([a.X.toarray(), b.X.toarray()]).astype(np.float64)
    L = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    var = L.var(axis=0)
    top = np.sort(np.argsort(-var, kind="stable")[:50])
    Z = np.clip((L[:, top] - L[:, top].mean(0)) / L[:, top].std(0), -10, 10)
    _, _, vt = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
    ref_scores = Z @ vt[:5].T
    meta, mat = read_vectors(lake2, v)
    ids = np.concatenate([[f"synth-a@1:{x}" for x in a.obs_names], [f"synth-b@1:{x}" for x in b.obs_names]])
    pos = {k: i for i, k in enumerate(meta.column("id").to_pylist())}
    got = mat[[pos[i] for i in ids]]
    for j in range(5):  # equal up to sign
        c = np.corrcoef(got[:, j], ref_scores[:, j])[0, 1]
        assert abs(c) > 0.999, (j, c)


def test_import_validates_and_publishes(lake2, tmp_path):
    from aivc.embeddings.importer import ImportError_, import_embeddings

    genes = [r[0] for r in query(lake2, "SELECT gene_id FROM genes ORDER BY gene_id").rows]
    rng = np.random.default_rng(1)
    df = pd.DataFrame(rng.normal(size=(len(genes), 6)), columns=[f"d{i}" for i in range(6)])
    df.insert(0, "gene_id", genes)
    good = tmp_path / "g.csv"
    df.to_csv(good, index=False)
    v = import_embeddings(lake2, good, entity="gene", name="esm")
    assert (v.ref, v.dim, v.n_rows) == ("gene:esm@1", 6, len(genes))
    meta, mat = read_vectors(lake2, v, ids=genes[:3])
    got = dict(zip(meta.column("id").to_pylist(), mat, strict=True))
    np.testing.assert_allclose(got[genes[0]], df.iloc[0, 1:].to_numpy(np.float32))

    cases = {
        "IMPORT_UNKNOWN_ID": df.assign(gene_id=["ENSG00000000000"] + genes[1:]),
        "IMPORT_DUPLICATE_ID": df.assign(gene_id=[genes[1]] + genes[1:]),
        "IMPORT_NOT_FINITE": df.assign(d3=[np.nan] + [0.0] * (len(genes) - 1)),
    }
    for code, bad in cases.items():
        path = tmp_path / f"{code}.csv"
        bad.to_csv(path, index=False)
        with pytest.raises(ImportError_) as info:
            import_embeddings(lake2, path, entity="gene", name="esm")
        assert info.value.code == code
        assert "row" in info.value.where
    assert [x.ref for x in list_versions(lake2, "gene")] == ["gene:esm@1"]
    # parquet with a ragged vector column
    t = pa.table({"gene_id": genes[:2], "vector": pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32()))})
    pq.write_table(t, tmp_path / "ragged.parquet")
    with pytest.raises(ImportError_) as info:
        import_embeddings(lake2, tmp_path / "ragged.parquet", entity="gene", name="esm")
    assert info.value.code == "IMPORT_DIMENSION_MISMATCH"
