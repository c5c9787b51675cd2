"""Spatial neighbourhood graphs of cells or spots: the input of the niche scale.

A :class:`NicheGraphSpec` declares how neighbours are chosen; :func:`build_graph` applies it
to 2-D positions and returns a :class:`NicheGraph`, a CSR adjacency (row ``i`` lists the
neighbours of node ``i``, sorted by index, with their distances). Edges never join two
nodes of different ``groups`` (samples, slides): each group is built on its own.

Rules
-----
``radius``
    Every other node at distance ``<= radius`` (scipy ``cKDTree``). Symmetric.
``knn``
    The ``k`` nearest other nodes. Row ``i`` lists ``i``'s nearest, so ``j`` may list
    ``i`` without ``i`` listing ``j`` (directed).
``delaunay``
    The edges of the Delaunay triangulation (``scipy.spatial.Delaunay``), minus the long
    edges a triangulation draws across gaps and along the convex hull: an edge is dropped
    when longer than ``radius`` if one is given, else longer than
    :data:`DELAUNAY_CUTOFF_FACTOR` (2) times the median Delaunay edge length of its group.
    Symmetric. On a square lattice this keeps the 4 axis neighbours plus the one diagonal
    per square that the triangulation draws (ratio sqrt(2) < 2).

``max_neighbours`` (any rule) keeps only the closest ones of a row (ties: lower index),
which can make a symmetric rule directed. No rule ever gives self-loops.

Example
-------
>>> import numpy as np
>>> xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
>>> g = build_graph(xy, NicheGraphSpec(rule="radius", radius=1.5))
>>> g.neighbours(0).tolist(), g.summary()["n_isolated"]
([1, 2], 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from aivc.errors import UsageError

GraphRule = Literal["radius", "knn", "delaunay"]
RULES: tuple[str, ...] = ("radius", "knn", "delaunay")
#: without a ``radius``, a Delaunay edge longer than this times its group's median edge length is dropped
DELAUNAY_CUTOFF_FACTOR = 2.0
#: a Visium spot's neighbours lie within this times the spot centre spacing (the 6 of the hex lattice)
VISIUM_RADIUS_FACTOR = 1.5
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class NicheGraphSpec:
    """How a niche graph is built; validated on creation.

    Parameters
    ----------
    rule
        ``"radius"``, ``"knn"`` or ``"delaunay"`` (see the module docstring).
    radius
        ``radius``: the neighbourhood radius (required). ``delaunay``: the longest edge kept
        (optional). In the units of the positions.
    k
        ``knn``: the number of neighbours (required; only for ``knn``).
    max_neighbours
        Optional cap on a row's neighbours, the closest kept.
    """

    rule: GraphRule = "delaunay"
    radius: float | None = None
    k: int | None = None
    max_neighbours: int | None = None

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UsageError(f"unknown graph rule {self.rule!r}; use one of {', '.join(RULES)}", where="rule")
        if self.rule == "radius" and self.radius is None:
            raise UsageError("the radius rule needs a radius (in the units of the positions), e.g. radius=30.0", where="radius")
        if self.radius is not None and not (np.isfinite(self.radius) and self.radius > 0):
            raise UsageError(f"radius must be a positive number, got {self.radius}", where="radius")
        if self.rule == "knn" and self.k is None:
            raise UsageError("the knn rule needs k, the number of neighbours, e.g. k=6", where="k")
        if self.rule != "knn" and self.k is not None:
            raise UsageError(f"k applies to the knn rule only, not {self.rule!r}; leave it out or use rule='knn'", where="k")
        if self.rule == "knn" and self.radius is not None:
            raise UsageError("radius does not apply to the knn rule; use max_neighbours or rule='radius'", where="radius")
        for name, v in (("k", self.k), ("max_neighbours", self.max_neighbours)):
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
                raise UsageError(f"{name} must be a whole number >= 1, got {v}", where=name)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for lineage (``schema_version`` included)."""
        return {"schema_name": "niche_graph_spec", "schema_version": SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NicheGraphSpec:
        """The spec :meth:`to_dict` wrote."""
        fields = {k: v for k, v in d.items() if k not in ("schema_name", "schema_version")}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise UsageError(f"not a niche graph spec: {exc}", where="graph") from None


def visium_spec(spot_spacing: float) -> NicheGraphSpec:
    """The default graph of Visium spots: radius ``1.5 x`` the centre-to-centre spacing.

    On the hex lattice that is the ring of 6 touching spots (the next ring is at sqrt(3)).

    >>> visium_spec(100.0).radius
    150.0
    """
    if not (np.isfinite(spot_spacing) and spot_spacing > 0):
        raise UsageError(f"spot spacing must be a positive number, got {spot_spacing}", where="spot_spacing")
    return NicheGraphSpec(rule="radius", radius=VISIUM_RADIUS_FACTOR * float(spot_spacing))


def estimate_spacing(xy: np.ndarray) -> float:
    """The median nearest-neighbour distance of the positions (e.g. Visium spacing in pixels)."""
    from scipy.spatial import cKDTree

    xy = _check_xy(xy)
    if len(xy) < 2:
        raise UsageError("need at least two positions to estimate their spacing", where="xy")
    d, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(d[:, 1]))


@dataclass(frozen=True, eq=False)
class NicheGraph:
    """A CSR adjacency: the neighbours of node ``i`` are ``indices[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray  # int64 [n_nodes + 1]
    indices: np.ndarray  # int64 [n_edges]
    distances: np.ndarray  # float32 [n_edges]
    n_nodes: int
    spec: NicheGraphSpec

    @property
    def n_edges(self) -> int:
        """Directed entries (a symmetric graph counts each edge twice)."""
        return int(self.indices.size)

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def neighbours(self, i: int) -> np.ndarray:
        return self.indices[self.indptr[i] : self.indptr[i + 1]]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """``(src, dst)``: one entry per directed edge, ``dst`` a neighbour of ``src``."""
        return np.repeat(np.arange(self.n_nodes, dtype=np.int64), self.degree), self.indices

    def to_scipy(self) -> Any:
        """The adjacency as a ``scipy.sparse.csr_matrix`` of distances."""
        from scipy import sparse

        return sparse.csr_matrix((self.distances, self.indices, self.indptr), shape=(self.n_nodes, self.n_nodes))

    def is_symmetric(self) -> bool:
        a = self.to_scipy().astype(bool).astype(np.int8)
        return bool((a != a.T).nnz == 0)

    def summary(self) -> dict[str, Any]:
        """Edge and degree statistics, plain values."""
        deg = self.degree
        n = max(self.n_nodes, 1)
        return {
            "rule": self.spec.rule,
            "n_nodes": int(self.n_nodes),
            "n_edges": self.n_edges,
            "symmetric": self.is_symmetric(),
            "mean_degree": float(deg.mean()) if deg.size else 0.0,
            "median_degree": float(np.median(deg)) if deg.size else 0.0,
            "max_degree": int(deg.max()) if deg.size else 0,
            "n_isolated": int((deg == 0).sum()),
            "fraction_isolated": float((deg == 0).sum() / n),
            "median_distance": float(np.median(self.distances)) if self.distances.size else 0.0,
        }


def _check_xy(xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise UsageError(f"positions must be an n x 2 array, got shape {xy.shape}", where="xy")
    if not np.isfinite(xy).all():
        raise UsageError(f"positions hold {int((~np.isfinite(xy)).any(axis=1).sum())} rows with NaN or infinite values; drop or fix them", where="xy")
    return xy


def _pairs_radius(xy: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    p = cKDTree(xy).query_pairs(r, output_type="ndarray")
    return np.concatenate([p[:, 0], p[:, 1]]), np.concatenate([p[:, 1], p[:, 0]])


def _pairs_knn(xy: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    n = len(xy)
    kk = min(k + 1, n)
    if kk < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, idx = cKDTree(xy).query(xy, k=kk)
    idx = idx.reshape(n, kk)
    own = idx == np.arange(n)[:, None]
    # drop self (duplicate points can put it anywhere in the row), else the farthest
    own[~own.any(axis=1), -1] = True
    keep = idx[~own].reshape(n, kk - 1)
    return np.repeat(np.arange(n), kk - 1), keep.ravel()


def _pairs_delaunay(xy: np.ndarray, cutoff: float | None) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import Delaunay, QhullError

    n = len(xy)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n == 2:
        e = np.array([[0, 1]])
    else:
        try:
            simplices = Delaunay(xy).simplices
        except QhullError:  # collinear or repeated points: joggle them
            simplices = Delaunay(xy, qhull_options="QJ Qbb Qc").simplices
        e = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [0, 2]]])
        e = np.unique(np.sort(e, axis=1), axis=0)
    d = np.linalg.norm(xy[e[:, 0]] - xy[e[:, 1]], axis=1)
    limit = cutoff if cutoff is not None else DELAUNAY_CUTOFF_FACTOR * float(np.median(d))
    e = e[d <= limit]
    return np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]])


def build_graph(xy: np.ndarray, spec: NicheGraphSpec, *, groups: np.ndarray | None = None) -> NicheGraph:
    """The neighbourhood graph of 2-D positions under ``spec``; no edge joins two groups.

    Parameters
    ----------
    xy
        ``n x 2`` positions (e.g. ``obsm['spatial']``).
    spec
        The rule (see the module docstring).
    groups
        Optional length-``n`` labels (sample, slide); each group is built on its own.
    """
    xy = _check_xy(xy)
    n = len(xy)
    if groups is None:
        codes = np.zeros(n, dtype=np.int64)
    else:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise UsageError(f"groups must hold one label per position ({n}), got shape {groups.shape}", where="groups")
        codes = np.unique(groups.astype(str), return_inverse=True)[1].ravel()
    srcs, dsts = [], []
    for g in np.unique(codes):
        members = np.flatnonzero(codes == g)
        sub = xy[members]
        if spec.rule == "radius":
            s, d = _pairs_radius(sub, float(spec.radius))  # type: ignore[arg-type]
        elif spec.rule == "knn":
            s, d = _pairs_knn(sub, int(spec.k))  # type: ignore[arg-type]
        else:
            s, d = _pairs_delaunay(sub, spec.radius)
        srcs.append(members[s])
        dsts.append(members[d])
    src = np.concatenate(srcs).astype(np.int64) if srcs else np.zeros(0, np.int64)
    dst = np.concatenate(dsts).astype(np.int64) if dsts else np.zeros(0, np.int64)
    dist = np.linalg.norm(xy[src] - xy[dst], axis=1)
    if spec.max_neighbours is not None:
        order = np.lexsort((dst, dist, src))  # by row, then distance, then index
        src, dst, dist = src[order], dst[order], dist[order]
        start = np.searchsorted(src, src, side="left")
        keep = (np.arange(src.size) - start) < spec.max_neighbours
        src, dst, dist = src[keep], dst[keep], dist[keep]
    order = np.lexsort((dst, src))
    src, dst, dist = src[order], dst[order], dist[order]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    return NicheGraph(indptr=indptr, indices=dst, distances=dist.astype(np.float32), n_nodes=n, spec=spec)


__all__ = ["DELAUNAY_CUTOFF_FACTOR", "NicheGraph", "NicheGraphSpec", "build_graph", "estimate_spacing", "visium_spec"]
