"""A simulated tissue with known spatial domains, expressed by real PBMC cells.

The niche benchmark's ground truth (``benchmarks/bench_niche.py``); importable as
``benchmarks.tissue_sim`` (tests) or ``tissue_sim`` (``sys.path`` = ``benchmarks/``).

The model
---------
1. **Positions.** ``n_samples`` separate tissue sections (``obs['sample']``), each a square
   patch of a hexagonal lattice with ``spacing`` (10 µm, the centre-to-centre distance of
   densely packed cells) whose points are moved by Gaussian jitter (sd ``jitter * spacing``)
   — a Poisson-disc-like pattern: no two cells on top of each other, no visible lattice.
   Every section has its own coordinates starting at (0, 0), as slides do (so a graph built
   without ``groups`` would join cells of different sections).
2. **Domains.** ``n_domains`` domains, the first ``n_domains - n_blob_domains`` of them
   layered bands (as cortical layers), the rest blobs (as follicles or tumour nests), drawn
   per section from smooth Gaussian random fields (random Fourier features, isotropic,
   length-scale ``band_scale`` and ``blob_scale``): bands are equal-count quantile bins of
   ``y / height + band_warp * f(x, y)`` (wavy layers of varying thickness); blob domain
   ``b`` takes the cells where its own field ``g_b`` exceeds its ``1 - blob_fraction``
   quantile (later blob domains win over earlier ones, all over the bands).
3. **Cell types.** Domain ``k`` has cell-type proportions ``p_k ~ Dirichlet(alpha)``
   over the 7 types (redrawn until every pair of domains differs by at least
   ``min_mixture_distance`` in L1), and each cell draws its type from its domain's
   ``p_k`` independently. Domains share types in different proportions, so a cell's type
   alone does not give its domain; ``uns['tissue_sim']['type_oracle_accuracy']`` is the
   accuracy of the best guess of the domain from the type alone.
4. **Expression.** Real cells of scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765
   genes; 10x, Zheng et al. 2017), raw counts ``round(expm1(raw.X) * n_counts / 1e4)``.
   Types are the FACS-sort ``bulk_labels`` merged into 7 coarse ones (:data:`TYPE_MAP`;
   the sort labels are noisy, so types overlap in expression, as real annotations do). A
   cell of type ``t`` copies a random real cell of type ``t``: its counts (``"resample"``)
   or Poisson draws around them (``"poisson"``, the default, so no two cells are equal).

Output: an AnnData with raw counts in ``X`` (CSR float32), ``obsm['spatial']`` (µm),
``obs`` ``sample``, ``domain``, ``cell_type``, ``source_cell``, and the parameters,
mixtures and oracle accuracy in ``uns['tissue_sim']``. Deterministic given ``seed``.

Example
-------
>>> a = simulate_tissue(TissueParams(n_cells=600, n_samples=2, seed=0))  # doctest: +SKIP
>>> a.shape, sorted(a.obs["domain"].unique())  # doctest: +SKIP
((600, 765), ['D0', 'D1', 'D2', 'D3', 'D4'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

#: ``pbmc68k_reduced`` ``bulk_labels`` -> the simulator's cell types
TYPE_MAP: dict[str, str] = {
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD56+ NK": "NK",
    "CD19+ B": "B",
    "CD14+ Monocyte": "CD14 Monocyte",
    "Dendritic": "Dendritic",
    "CD34+": "CD34+",
}
CELL_TYPES: tuple[str, ...] = ("CD4 T", "CD8 T", "NK", "B", "CD14 Monocyte", "Dendritic", "CD34+")


@dataclass(frozen=True)
class TissueParams:
    """Simulator parameters (see the module docstring)."""

    n_cells: int = 20_000
    n_samples: int = 3
    n_domains: int = 5
    n_blob_domains: int = 1
    spacing: float = 10.0
    jitter: float = 0.2
    band_scale: float = 250.0
    band_warp: float = 0.12
    blob_scale: float = 60.0
    blob_fraction: float = 0.15
    alpha: float = 1.0
    min_mixture_distance: float = 0.5
    expression: Literal["poisson", "resample"] = "poisson"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_cells < self.n_samples or self.n_samples < 1:
            raise ValueError(f"need at least one cell per sample, got {self.n_cells} cells in {self.n_samples} samples")
        if not 1 <= self.n_domains - self.n_blob_domains or self.n_blob_domains < 0:
            raise ValueError(f"need at least one band domain, got {self.n_domains} domains with {self.n_blob_domains} blobs")
        if self.expression not in ("poisson", "resample"):
            raise ValueError(f"expression must be 'poisson' or 'resample', got {self.expression!r}")


@lru_cache(maxsize=1)
def pbmc_reference() -> tuple[Any, np.ndarray, np.ndarray, tuple[str, ...]]:
    """The real cells: raw counts (CSR, cells x genes), coarse type per cell, cell names, genes."""
    import scanpy as sc
    from scipy import sparse

    ref = sc.datasets.pbmc68k_reduced()
    logn = sparse.csr_matrix(ref.raw.X)
    counts = logn.copy()
    counts.data = np.expm1(counts.data)
    counts = sparse.diags(ref.obs["n_counts"].to_numpy(np.float64) / 1e4) @ counts
    counts.data = np.round(counts.data)
    counts = sparse.csr_matrix(counts, dtype=np.float32)
    counts.eliminate_zeros()
    types = ref.obs["bulk_labels"].astype(str).map(TYPE_MAP).to_numpy()
    return counts, types, ref.obs_names.to_numpy(), tuple(ref.raw.var_names)


def _hex_patch(n: int, spacing: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` jittered hex-lattice points filling a square-ish patch from (0, 0)."""
    dy = spacing * np.sqrt(3.0) / 2.0
    ncol = max(1, round(float(np.sqrt(n * dy / spacing))))
    nrow = int(np.ceil(n / ncol))
    r, c = np.divmod(np.arange(nrow * ncol), ncol)
    xy = np.stack([c * spacing + (r % 2) * spacing / 2.0, r * dy], axis=1)[:n]
    return xy + rng.normal(0.0, jitter * spacing, size=xy.shape) + spacing


def smooth_field(xy: np.ndarray, scale: float, rng: np.random.Generator, n_features: int = 256) -> np.ndarray:
    """A draw of a stationary Gaussian random field (squared-exponential kernel, length-scale
    ``scale``) at the points, by random Fourier features; standardized to mean 0, sd 1."""
    w = rng.normal(0.0, 1.0 / scale, size=(2, n_features))
    b = rng.uniform(0.0, 2.0 * np.pi, size=n_features)
    f = np.cos(xy @ w + b).sum(axis=1)
    return (f - f.mean()) / (f.std() + 1e-12)


def _domains(xy: np.ndarray, p: TissueParams, rng: np.random.Generator) -> np.ndarray:
    n_bands = p.n_domains - p.n_blob_domains
    height = float(np.ptp(xy[:, 1])) or 1.0
    u = (xy[:, 1] - xy[:, 1].min()) / height + p.band_warp * smooth_field(xy, p.band_scale, rng)
    edges = np.quantile(u, np.linspace(0.0, 1.0, n_bands + 1)[1:-1])
    dom = np.searchsorted(edges, u, side="right")
    for b in range(p.n_blob_domains):
        g = smooth_field(xy, p.blob_scale, rng)
        dom[g > np.quantile(g, 1.0 - p.blob_fraction / p.n_blob_domains)] = n_bands + b
    return dom


def domain_mixtures(p: TissueParams, rng: np.random.Generator) -> np.ndarray:
    """``n_domains x n_types`` cell-type proportions, pairwise L1 >= ``min_mixture_distance``."""
    t = len(CELL_TYPES)
    for _ in range(1000):
        mix = rng.dirichlet(np.full(t, p.alpha), size=p.n_domains)
        d = np.abs(mix[:, None, :] - mix[None, :, :]).sum(-1)
        if p.n_domains < 2 or d[np.triu_indices(p.n_domains, 1)].min() >= p.min_mixture_distance:
            return mix
    raise ValueError(f"could not draw {p.n_domains} mixtures {p.min_mixture_distance} apart; lower min_mixture_distance")


def simulate_tissue(p: TissueParams = TissueParams()) -> Any:
    """The simulated tissue as an AnnData (see the module docstring)."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    rng = np.random.default_rng(p.seed)
    counts, ref_types, ref_names, genes = pbmc_reference()
    mix = domain_mixtures(p, rng)
    sizes = np.full(p.n_samples, p.n_cells // p.n_samples)
    sizes[: p.n_cells % p.n_samples] += 1
    xy_parts, dom_parts, sample = [], [], []
    for s, n_s in enumerate(sizes):
        xy = _hex_patch(int(n_s), p.spacing, p.jitter, rng)
        xy_parts.append(xy)
        dom_parts.append(_domains(xy, p, rng))
        sample += [f"S{s}"] * int(n_s)
    xy, dom = np.concatenate(xy_parts), np.concatenate(dom_parts)
    cum = np.cumsum(mix, axis=1)
    cum[:, -1] = 1.0
    types = (rng.uniform(size=(p.n_cells, 1)) > cum[dom]).sum(axis=1)
    source = np.empty(p.n_cells, dtype=np.int64)
    for t, name in enumerate(CELL_TYPES):
        cells = np.flatnonzero(types == t)
        pool = np.flatnonzero(ref_types == name)
        source[cells] = rng.choice(pool, size=cells.size)
    X = counts[source]
    if p.expression == "poisson":
        X = X.copy()
        X.data = rng.poisson(X.data).astype(np.float32)
        X.eliminate_zeros()
    # the best guess of the domain from the type alone (descriptive)
    joint = np.zeros((p.n_domains, len(CELL_TYPES)))
    np.add.at(joint, (dom, types), 1.0)
    oracle = float(joint.max(axis=0).sum() / p.n_cells)
    obs = pd.DataFrame(
        {
            "sample": pd.Categorical(sample),
            "domain": pd.Categorical([f"D{k}" for k in dom], categories=[f"D{k}" for k in range(p.n_domains)]),
            "cell_type": pd.Categorical([CELL_TYPES[t] for t in types], categories=list(CELL_TYPES)),
            "source_cell": ref_names[source],
        },
        index=[f"cell{i}" for i in range(p.n_cells)],
    )
    uns = {
        "tissue_sim": {
            "params": asdict(p),
            "cell_types": list(CELL_TYPES),
            "mixtures": mix.tolist(),
            "type_oracle_accuracy": oracle,
            "reference": "scanpy.datasets.pbmc68k_reduced (raw counts = round(expm1(raw.X) * n_counts / 1e4))",
        }
    }
    return ad.AnnData(X=sparse.csr_matrix(X, dtype=np.float32), obs=obs, var=pd.DataFrame(index=list(genes)), obsm={"spatial": xy}, uns=uns)


def cell_urs(counts: Any, n_components: int = 50, clip: float = 10.0) -> np.ndarray:
    """PCA cell URs as the lake's ``pca`` embedding job makes them: log-normalized counts
    (``log1p(count / total * 1e4)``), z-scored per gene, clipped at ``clip``, exact PCA
    (eigendecomposition of the covariance; sign: largest loading positive)."""
    from scipy import sparse

    X = sparse.csr_matrix(counts, dtype=np.float64)
    total = np.asarray(X.sum(axis=1)).ravel()
    L = (sparse.diags(1e4 / np.maximum(total, 1.0)) @ X).toarray()
    np.log1p(L, out=L)
    mean, sd = L.mean(axis=0), L.std(axis=0, ddof=1)
    sd[sd == 0] = 1.0
    Z = np.clip((L - mean) / sd, -clip, clip)
    evals, evecs = np.linalg.eigh(Z.T @ Z / max(len(Z) - 1, 1))
    k = min(n_components, Z.shape[1], max(len(Z) - 1, 1))
    comp = evecs[:, np.argsort(evals)[::-1][:k]]
    comp *= np.sign(comp[np.abs(comp).argmax(axis=0), np.arange(k)])
    return (Z @ comp).astype(np.float32)


__all__ = ["CELL_TYPES", "TYPE_MAP", "TissueParams", "cell_urs", "domain_mixtures", "pbmc_reference", "simulate_tissue", "smooth_field"]
