"""Nearest neighbours: exact search equals NumPy, filters and access hold, HNSW recall, CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from aivc.embeddings import ann
from aivc.embeddings.neighbors import clear_cache, exact_neighbors, load_version, neighbors_for_vectors, search_matrix
from aivc.store.features import EmbeddingWriter
from aivc.errors import NotFoundError, UsageError
from aivc.store.lake import Lake

DATASETS = ("ds-a", "ds-b", "ds-c")
CELL_TYPES = ("B cell", "T cell", "monocyte")


def clustered(n: int, d: int, seed: int, n_clusters: int = 20, latent: int = 8) -> np.ndarray:
    """Vectors near a low-dimensional mixture of clusters, like learned embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, latent))
    z = centers[rng.integers(0, n_clusters, n)] + 0.4 * rng.normal(size=(n, latent))
    return (z @ rng.normal(size=(latent, d)) + 0.05 * rng.normal(size=(n, d))).astype(np.float32)


def write_cells(lake: Lake, name: str, x: np.ndarray, batch: int = 700) -> tuple[list[str], np.ndarray]:
    n = len(x)
    ids = [f"{DATASETS[i % 3]}@1:cell-{i:05d}" for i in range(n)]
    ds = np.array([DATASETS[i % 3] for i in range(n)], dtype=object)
    with EmbeddingWriter(lake, "cell", name, x.shape[1], source={"kind": "test"}) as w:
        for s in range(0, n, batch):
            w.write(ids[s : s + batch], x[s : s + batch], soma_joinids=np.arange(s, min(n, s + batch)), dataset_ids=ds[s : s + batch])
    return ids, ds


def numpy_top(x: np.ndarray, q: np.ndarray, k: int, exclude: int | None = None, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ (q / np.linalg.norm(q))
    if exclude is not None:
        s[exclude] = -np.inf
    if keep is not None:
        s[~keep] = -np.inf
    order = np.argsort(-s, kind="stable")[:k]
    order = order[np.isfinite(s[order])]
    return order, s[order]


@pytest.fixture
def cells(lake: Lake) -> dict[str, Any]:
    x = clustered(3000, 16, seed=1)
    ids, ds = write_cells(lake, "toy", x)
    return {"lake": lake, "ref": "cell:toy@1", "x": x, "ids": ids, "ds": ds}


def test_exact_equals_numpy_argsort(cells: dict[str, Any]) -> None:
    x, ids = cells["x"], cells["ids"]
    queries = [0, 17, 999, 1500, 2999]
    res = exact_neighbors(cells["lake"], cells["ref"], [ids[i] for i in queries], k=10)
    assert len(res) == len(queries)
    for qi, r in zip(queries, res, strict=True):
        order, sims = numpy_top(x, x[qi], 10, exclude=qi)
        assert r.query_id == ids[qi] and r.method == "exact"
        assert list(r.ids) == [ids[j] for j in order]
        np.testing.assert_allclose(r.similarities, sims, rtol=1e-5, atol=1e-6)
        assert ids[qi] not in r.ids
        assert list(r.dataset_ids) == [cells["ds"][j] for j in order]


def test_blocked_search_equals_one_block(cells: dict[str, Any]) -> None:
    mat = load_version(cells["lake"], cells["ref"]).matrix()
    q = mat[[3, 40, 2000]]
    one = search_matrix(mat, q, 10, exclude=np.array([3, 40, 2000]))
    blocked = search_matrix(mat, q, 10, exclude=np.array([3, 40, 2000]), block_rows=256)
    np.testing.assert_array_equal(one[0], blocked[0])
    np.testing.assert_allclose(one[1], blocked[1], rtol=1e-6)


def test_query_itself_excluded_and_short_versions(lake: Lake) -> None:
    x = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)  # two identical vectors
    with EmbeddingWriter(lake, "gene", "tiny", 2, source={"kind": "test"}) as w:
        w.write(["g0", "g1", "g2", "g3"], x)
    (r,) = exact_neighbors(lake, "gene:tiny", ["g0"], k=10)
    assert r.ids == ("g1", "g2", "g3") and r.dataset_ids == ()
    np.testing.assert_allclose(r.similarities, [1.0, 0.0, -1.0], atol=1e-6)
    (d,) = exact_neighbors(lake, "gene:tiny", "g2", k=1, metric="dot")
    assert d.query_id == "g2" and d.similarities[0] == pytest.approx(0.0)


def test_filter_ids_restrict_candidates(cells: dict[str, Any]) -> None:
    x, ids = cells["x"], cells["ids"]
    rng = np.random.default_rng(5)
    keep = rng.random(len(ids)) < 0.3  # scattered rows: the gathered path
    chosen = [ids[i] for i in np.flatnonzero(keep)] + ["not-in-the-version"]
    res = exact_neighbors(cells["lake"], cells["ref"], [ids[7], ids[8]], k=10, filter_ids=chosen)
    for qi, r in zip([7, 8], res, strict=True):
        order, sims = numpy_top(x, x[qi], 10, exclude=qi, keep=keep)
        assert list(r.ids) == [ids[j] for j in order]
        np.testing.assert_allclose(r.similarities, sims, rtol=1e-5, atol=1e-6)
    (empty,) = exact_neighbors(cells["lake"], cells["ref"], [ids[7]], k=5, filter_ids=[])
    assert empty.ids == ()


def test_unknown_id_names_id_and_version(cells: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError) as exc:
        exact_neighbors(cells["lake"], cells["ref"], [cells["ids"][0], "nope"], k=3)
    assert exc.value.where == "nope" and "cell:toy@1" in exc.value.message
    with pytest.raises(UsageError):
        exact_neighbors(cells["lake"], cells["ref"], [cells["ids"][0]], k=0)


def test_allowed_datasets_hide_partitions(cells: dict[str, Any]) -> None:
    x, ids, ds = cells["x"], cells["ids"], cells["ds"]
    allowed = {"ds-a", "ds-c"}
    (r,) = exact_neighbors(cells["lake"], cells["ref"], [ids[0]], k=10, allowed_datasets=allowed)
    order, sims = numpy_top(x, x[0], 10, exclude=0, keep=np.isin(ds, list(allowed)))
    assert list(r.ids) == [ids[j] for j in order]
    np.testing.assert_allclose(r.similarities, sims, rtol=1e-5, atol=1e-6)
    assert set(r.dataset_ids) <= allowed
    with pytest.raises(NotFoundError) as hidden:
        exact_neighbors(cells["lake"], cells["ref"], [ids[1]], k=10, allowed_datasets=allowed)  # ids[1] is in ds-b
    with pytest.raises(NotFoundError) as missing:
        exact_neighbors(cells["lake"], cells["ref"], ["ds-b@1:cell-99999"], k=10, allowed_datasets=allowed)
    assert hidden.value.message.replace(ids[1], "X") == missing.value.message.replace("ds-b@1:cell-99999", "X")
    with pytest.raises(NotFoundError):
        exact_neighbors(cells["lake"], cells["ref"], [ids[0]], k=10, allowed_datasets=set())


def test_neighbors_for_vectors(cells: dict[str, Any]) -> None:
    x, ids = cells["x"], cells["ids"]
    q = x[[10, 20]] * 3.0 + 0.01
    res = neighbors_for_vectors(cells["lake"], cells["ref"], q, k=5, allowed_datasets={"ds-b"})
    for qv, r in zip(q, res, strict=True):
        order, sims = numpy_top(x, qv, 5, keep=cells["ds"] == "ds-b")
        assert r.query_id is None and list(r.ids) == [ids[j] for j in order]
        np.testing.assert_allclose(r.similarities, sims, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError):
        neighbors_for_vectors(cells["lake"], cells["ref"], np.zeros((1, 3)), k=5)


# -- approximate ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    lake = Lake.init(tmp_path_factory.mktemp("ann") / "lake")
    x = clustered(20_000, 32, seed=2, n_clusters=50)
    ids, ds = write_cells(lake, "big", x, batch=5000)
    info = ann.build_index(lake, "cell:big@1")
    return {"lake": lake, "ref": "cell:big@1", "x": x, "ids": ids, "ds": ds, "info": info}


def test_hnsw_recall_and_record(big: dict[str, Any]) -> None:
    info = big["info"]
    assert info.recall_at_10 >= 0.95 and info.recall_queries == 200 and info.m == 32
    path, rec = ann.index_paths(big["lake"], load_version(big["lake"], big["ref"]).version)
    assert path.is_file() and json.loads(rec.read_text())["recall_at_10"] == info.recall_at_10
    assert not list(path.parent.glob(".*.tmp"))
    rng = np.random.default_rng(11)
    queries = [big["ids"][i] for i in rng.choice(len(big["ids"]), 100, replace=False)]
    approx = ann.approximate_neighbors(big["lake"], big["ref"], queries, k=10)
    exact = exact_neighbors(big["lake"], big["ref"], queries, k=10)
    recall = np.mean([len(set(a.ids) & set(e.ids)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95
    assert all(a.method == "hnsw" and a.query_id not in a.ids and len(a.ids) == 10 for a in approx)
    sims = np.array([a.similarities for a in approx])
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def test_hnsw_index_persisted_and_reloaded(big: dict[str, Any]) -> None:
    lake, ref = big["lake"], big["ref"]
    path, _ = ann.index_paths(lake, load_version(lake, ref).version)
    before = path.stat().st_mtime_ns
    first = ann.approximate_neighbors(lake, ref, [big["ids"][5]], k=10)
    ann._INDEXES.clear()
    clear_cache()
    again = ann.approximate_neighbors(lake, ref, [big["ids"][5]], k=10)
    assert again == first and path.stat().st_mtime_ns == before
    assert ann.index_info(lake, ref) == big["info"]


def test_hnsw_filters_and_access(big: dict[str, Any]) -> None:
    lake, ref, ids = big["lake"], big["ref"], big["ids"]
    res = ann.approximate_neighbors(lake, ref, [ids[0], ids[3]], k=10, allowed_datasets={"ds-a"})
    assert all(set(r.dataset_ids) == {"ds-a"} and len(r.ids) == 10 for r in res)
    with pytest.raises(NotFoundError):
        ann.approximate_neighbors(lake, ref, [ids[1]], k=10, allowed_datasets={"ds-a"})
    few = [ids[i] for i in range(0, 600, 3)]  # 200 rows: answered exactly
    (r,) = ann.approximate_neighbors(lake, ref, [ids[1]], k=10, filter_ids=few)
    (e,) = exact_neighbors(lake, ref, [ids[1]], k=10, filter_ids=few)
    assert r.method == "exact" and r.ids == e.ids
    half = [ids[i] for i in range(len(ids)) if i % 2 == 0]
    res = ann.approximate_neighbors(lake, ref, [ids[1], ids[2]], k=10, filter_ids=half)
    assert all(len(r.ids) == 10 and set(r.ids) <= set(half) for r in res)


def test_hnsw_missing_index(cells: dict[str, Any]) -> None:
    with pytest.raises(NotFoundError):
        ann.approximate_neighbors(cells["lake"], cells["ref"], [cells["ids"][0]], k=5)
    with pytest.raises(UsageError):
        ann.approximate_neighbors(cells["lake"], cells["ref"], [cells["ids"][0]], k=5, metric="dot")


# -- CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    from aivc.cli_neighbors import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Throwaway app holding only the registered command."""

    register(app)
    return app


@pytest.fixture
def cells_view(cells: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The ``cells`` SQL view with metadata for the test cells, evaluated by real DuckDB."""
    import duckdb
    import pandas as pd

    from aivc.store import sql

    types = {cid: CELL_TYPES[i % 3 if i % 7 else 0] for i, cid in enumerate(cells["ids"])}
    frame = pd.DataFrame({"obs_id": list(types), "dataset_id": list(cells["ds"]), "cell_type": list(types.values())})

    def fake_query(lake: Lake, statement: str, principal: str | None = None, **kw: Any) -> sql.QueryResult:
        con = duckdb.connect()
        con.register("cells", frame)
        cur = con.execute(statement)
        return sql.QueryResult([d[0] for d in cur.description], cur.fetchall())

    monkeypatch.setattr(sql, "query", fake_query)
    return types


def invoke(app: typer.Typer, *args: str) -> Any:
    return CliRunner().invoke(app, ["neighbors", *args])


def test_cli_json_exact_with_metadata(cli: typer.Typer, cells: dict[str, Any], cells_view: dict[str, str]) -> None:
    lake_dir = str(cells["lake"].root)
    qid = cells["ids"][4]
    out = invoke(cli, "cell:toy@1", qid, "--k", "5", "--lake", lake_dir, "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    (e,) = exact_neighbors(cells["lake"], "cell:toy@1", [qid], k=5)
    assert got["method"] == "exact" and got["index"] is None and got["query_id"] == qid
    assert [r["obs_id"] for r in got["neighbors"]] == list(e.ids)
    assert [r["rank"] for r in got["neighbors"]] == [1, 2, 3, 4, 5]
    assert [r["cell_type"] for r in got["neighbors"]] == [cells_view[i] for i in e.ids]
    assert [r["dataset_id"] for r in got["neighbors"]] == list(e.dataset_ids)
    np.testing.assert_allclose([r["similarity"] for r in got["neighbors"]], e.similarities, atol=1e-6)


def test_cli_where_filters_cells(cli: typer.Typer, cells: dict[str, Any], cells_view: dict[str, str]) -> None:
    out = invoke(cli, "cell:toy@1", cells["ids"][4], "--where", "cell_type = 'B cell'", "--lake", str(cells["lake"].root), "--json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)["neighbors"]
    assert len(rows) == 10 and {r["cell_type"] for r in rows} == {"B cell"}
    b_cells = [i for i, t in cells_view.items() if t == "B cell"]
    (e,) = exact_neighbors(cells["lake"], "cell:toy@1", [cells["ids"][4]], k=10, filter_ids=b_cells)
    assert [r["obs_id"] for r in rows] == list(e.ids)


def test_cli_approx_builds_index_and_reports_recall(cli: typer.Typer, cells: dict[str, Any], cells_view: dict[str, str]) -> None:
    out = invoke(cli, "cell:toy@1", cells["ids"][9], "--approx", "--lake", str(cells["lake"].root), "--json")
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["method"] == "hnsw" and got["index"]["recall_at_10"] >= 0.95 and len(got["neighbors"]) == 10
    text = invoke(cli, "cell:toy@1", cells["ids"][9], "--approx", "--lake", str(cells["lake"].root))
    assert text.exit_code == 0 and "recall@10" in text.stdout


def test_cli_errors_and_principal(cli: typer.Typer, cells: dict[str, Any]) -> None:
    lake_dir = str(cells["lake"].root)
    out = invoke(cli, "cell:toy@1", "nope", "--lake", lake_dir, "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["errors"][0]["code"] == "NOT_FOUND"
    # 'public' sees no dataset of this lake (none is committed): the query cell does not exist for it
    out = invoke(cli, "cell:toy@1", cells["ids"][0], "--principal", "public", "--lake", lake_dir, "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["errors"][0]["code"] == "NOT_FOUND"
    out = invoke(cli, "cell:toy@1", cells["ids"][0], "--principal", "mallory", "--lake", lake_dir, "--json")
    assert out.exit_code == 1 and json.loads(out.stdout)["errors"][0]["code"] == "UNKNOWN_PRINCIPAL"
    out = invoke(cli, "cell:toy@1", cells["ids"][0], "--k", "0", "--lake", lake_dir)
    assert out.exit_code == 2


def test_no_index_files_among_parquet(big: dict[str, Any]) -> None:
    root = Path(big["lake"].root) / "features" / "cell" / "big" / "v000001"
    assert sorted(p.name for p in (root / "_index").iterdir()) == ["hnsw.faiss", "hnsw.json"]
    assert all("_index" not in str(f) for f in load_version(big["lake"], big["ref"]).files)
