"""Niche graphs: radius, knn and Delaunay rules against brute force, groups, caps, specs."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.errors import UsageError
from aivc.training.niche_graph import NicheGraphSpec, build_graph, estimate_spacing, visium_spec


def _edge_set(g) -> set[tuple[int, int]]:  # noqa: ANN001
    src, dst = g.edges()
    return set(zip(src.tolist(), dst.tolist(), strict=True))


def _grid(n: int) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2).astype(float)


def test_radius_equals_brute_force():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (400, 2))
    g = build_graph(xy, NicheGraphSpec(rule="radius", radius=9.0))
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    want = {(i, j) for i, j in zip(*np.nonzero(d <= 9.0), strict=True) if i != j}
    assert _edge_set(g) == want
    src, dst = g.edges()
    np.testing.assert_allclose(g.distances, d[src, dst], rtol=1e-6)
    assert np.all(np.diff(g.indices[g.indptr[0] : g.indptr[1]]) > 0)  # rows sorted by index
    s = g.summary()
    assert s["n_edges"] == len(want) and s["symmetric"] and s["n_isolated"] == int((((d <= 9.0).sum(1) - 1) == 0).sum())
    assert s["mean_degree"] == pytest.approx(len(want) / 400)


def test_knn_equals_brute_force_and_is_directed():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (200, 2))
    g = build_graph(xy, NicheGraphSpec(rule="knn", k=4))
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    for i in range(200):
        assert set(g.neighbours(i).tolist()) == set(np.argsort(d[i])[:4].tolist())
    assert (g.degree == 4).all() and not g.is_symmetric()


@pytest.mark.parametrize("spec", [NicheGraphSpec(rule="radius", radius=30.0), NicheGraphSpec(rule="knn", k=5), NicheGraphSpec()])
def test_no_edges_across_groups(spec: NicheGraphSpec):
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 100, (300, 2))  # the two groups overlap in space
    groups = np.array(["slide-a", "slide-b"])[rng.integers(0, 2, 300)]
    g = build_graph(xy, spec, groups=groups)
    src, dst = g.edges()
    assert g.n_edges > 300 and (groups[src] == groups[dst]).all()
    a = np.flatnonzero(groups == "slide-a")  # each group as if built alone
    alone = build_graph(xy[a], spec)
    assert {(a[i], a[j]) for i, j in _edge_set(alone)} == {(i, j) for i, j in _edge_set(g) if groups[i] == "slide-a"}


def test_delaunay_on_a_square_grid():
    xy = _grid(6)
    g = build_graph(xy, NicheGraphSpec())  # cutoff 2 x median (1): the diagonals (sqrt 2) stay
    lengths = np.unique(np.round(g.distances.astype(np.float64), 5)).tolist()
    assert lengths == [1.0, round(float(np.sqrt(2)), 5)]
    axis = {(i, j) for i in range(36) for j in range(36) if np.abs(xy[i] - xy[j]).sum() == 1}
    edges = _edge_set(g)
    assert axis <= edges  # every 4-neighbour
    diagonals = edges - axis
    assert len(diagonals) == 2 * 25  # one diagonal per unit square, both directions
    corners = {tuple(np.minimum(xy[i], xy[j])) for i, j in diagonals}
    assert len(corners) == 25
    assert _edge_set(build_graph(xy, NicheGraphSpec(rule="delaunay", radius=1.2))) == axis


def test_delaunay_drops_long_edges_across_a_gap():
    left, right = _grid(5), _grid(5) + [20.0, 0.0]
    g = build_graph(np.vstack([left, right]), NicheGraphSpec())
    src, dst = g.edges()
    assert ((src < 25) == (dst < 25)).all() and g.distances.max() < 1.5


def test_max_neighbours_keeps_the_closest():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 50, (150, 2))
    full = build_graph(xy, NicheGraphSpec(rule="radius", radius=12.0))
    capped = build_graph(xy, NicheGraphSpec(rule="radius", radius=12.0, max_neighbours=3))
    assert capped.degree.max() == 3
    for i in range(150):
        nb, dist = full.neighbours(i), full.distances[full.indptr[i] : full.indptr[i + 1]]
        assert set(capped.neighbours(i).tolist()) == set(nb[np.argsort(dist, kind="stable")[:3]].tolist())


def test_visium_default_gives_the_hex_ring():
    r, c = np.divmod(np.arange(15 * 15), 15)
    xy = np.stack([c * 100.0 + (r % 2) * 50.0, r * 100.0 * np.sqrt(3) / 2], axis=1)
    spacing = estimate_spacing(xy)
    assert spacing == pytest.approx(100.0)
    g = build_graph(xy, visium_spec(spacing))
    interior = (r > 0) & (r < 14) & (c > 0) & (c < 14)
    assert (g.degree[interior] == 6).all() and g.distances.max() == pytest.approx(100.0)


def test_isolated_nodes_and_summary():
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])
    s = build_graph(xy, NicheGraphSpec(rule="radius", radius=2.0)).summary()
    assert (s["n_edges"], s["n_isolated"], s["median_degree"], s["max_degree"]) == (2, 1, 1.0, 1)


def test_spec_validation_and_round_trip():
    for kwargs in ({"rule": "radius"}, {"rule": "knn"}, {"rule": "radius", "radius": -1.0}, {"rule": "delaunay", "k": 3}, {"rule": "knn", "k": 0}, {"rule": "grid"}, {"rule": "knn", "k": 3, "radius": 5.0}):
        with pytest.raises(UsageError) as exc:
            NicheGraphSpec(**kwargs)
        assert "\n" not in exc.value.message
    spec = NicheGraphSpec(rule="knn", k=6, max_neighbours=4)
    d = spec.to_dict()
    assert d["schema_name"] == "niche_graph_spec" and d["k"] == 6
    assert NicheGraphSpec.from_dict(d) == spec
    with pytest.raises(UsageError):
        build_graph(np.zeros((4, 3)), spec)
    with pytest.raises(UsageError):
        build_graph(np.zeros((4, 2)), spec, groups=np.zeros(3))
