"""A gene-regulatory-network simulator of perturbation screens with known ground truth.

The model, in words (every draw comes from one seed, so a screen is reproducible bit for bit):

1. **Network.** Genes are in topological order; the first ``n_regulators`` are regulators. Each
   gene draws up to ``max_parents`` parents among the regulators before it (a sparse DAG), each
   edge an activator (weight ``w > 0``, with probability ``activator_fraction``) or a repressor
   (``w < 0``), ``|w|`` uniform in ``weight_range``. Every gene has a baseline expression rate
   ``b_g`` (log-normal), which is its noise-free steady state.
2. **Steady state of one cell.** Each cell draws intrinsic noise ``eps_g`` (log-normal, mean 1;
   larger for regulators) and genes are computed in order from their parents' relative levels
   ``r_p = x_p / b_p``:

   * ``response="hill"`` (linear-nonlinear): ``u_g = sum_p w_pg log r_p`` and
     ``x_g = b_g eps_g sigma(a_g + u_g) / sigma(a_g)``, a sigmoid normalized to 1 at ``u = 0``
     whose offset ``a_g`` sets how saturated the gene is (so double perturbations interact);
   * ``response="linear"``: ``x_g = b_g (eps_g + sum_p w_pg (r_p - 1))``, where effects of
     perturbations with no ancestor relation between their targets add up exactly.

   A **knockdown** of gene ``t`` multiplies ``x_t`` by ``knockdown_fraction`` after it is
   computed, and the change propagates to every descendant through the equations above; genes
   that are not descendants of a target are untouched.
3. **Counts.** A cell's rates ``max(x, 0)`` are scaled to its library size (log-normal around
   ``library_size``) and sampled as negative-binomial counts (``dispersion`` = inverse
   overdispersion theta; ``None``: Poisson).

The screen holds control cells and cells of single and double knockdowns. Ground truth is
computed on ``n_truth_cells`` noise draws shared by all conditions (common random numbers, so a
gene outside a target's descendants has an effect of exactly 0): ``true_means`` (mean steady
state per condition), ``true_effects`` (minus the control's) and ``true_lognorm_effects`` (the
same for the expected log-normalized profile ``log1p(1e4 x / sum x)`` before sampling noise).

Example
-------
>>> screen = simulate_screen(GrnParams(n_genes=30, n_regulators=6, seed=1), n_control=40,
...                          n_cells_per_perturbation=10, n_doubles=2)
>>> screen.counts.shape, screen.obs["perturbation_targets"].iloc[0]
((120, 30), 'control')
>>> t = screen.var.index[0]
>>> bool((screen.true_effects.loc[t].drop(list(screen.descendants(t)) + [t]) == 0).all())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from aivc.errors import UsageError

CONTROL = "control"
DELIMITER = ";"


@dataclass(frozen=True)
class GrnParams:
    """Parameters of the network, the cells and the counts (see the module docstring)."""

    n_genes: int = 100
    n_regulators: int = 20
    max_parents: int = 3
    activator_fraction: float = 0.7
    weight_range: tuple[float, float] = (0.5, 1.5)
    response: Literal["hill", "linear"] = "hill"
    offset_range: tuple[float, float] = (-1.0, 1.0)
    knockdown_fraction: float = 0.1
    baseline_mean: float = 1.0
    baseline_sd: float = 1.0
    cell_noise: float = 0.25
    regulator_noise: float = 0.5
    library_size: float = 5000.0
    library_sd: float = 0.3
    dispersion: float | None = 20.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = [
            (self.n_genes >= 2, "n_genes", f"must be at least 2, got {self.n_genes}"),
            (1 <= self.n_regulators <= self.n_genes, "n_regulators", f"must be between 1 and n_genes ({self.n_genes}), got {self.n_regulators}"),
            (0.0 <= self.knockdown_fraction < 1.0, "knockdown_fraction", f"must be in [0, 1), got {self.knockdown_fraction}"),
            (self.response in ("hill", "linear"), "response", f"must be 'hill' or 'linear', got {self.response!r}"),
            (self.dispersion is None or self.dispersion > 0, "dispersion", f"must be > 0 or None (Poisson), got {self.dispersion}"),
        ]
        for ok, name, message in problems:
            if not ok:
                raise UsageError(f"{name} {message}", where=f"GrnParams.{name}")


@dataclass(frozen=True)
class Network:
    """The regulatory DAG: ``weights[p, g]`` is the effect of gene ``p`` on gene ``g`` (0: none)."""

    weights: np.ndarray
    baseline: np.ndarray
    offset: np.ndarray
    noise_sd: np.ndarray
    params: GrnParams

    @property
    def n_genes(self) -> int:
        return int(self.baseline.size)

    def parents(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.weights[:, g])

    def descendants(self, g: int) -> set[int]:
        """Genes downstream of ``g`` (not ``g`` itself)."""
        seen: set[int] = set()
        stack = [g]
        while stack:
            for child in np.flatnonzero(self.weights[stack.pop()]):
                if int(child) not in seen:
                    seen.add(int(child))
                    stack.append(int(child))
        return seen


def _streams(seed: int) -> list[np.random.SeedSequence]:
    """Independent random streams of a screen: network, double pairs, ground truth, cells."""
    return np.random.SeedSequence(seed).spawn(4)


def make_network(params: GrnParams, rng: np.random.Generator | None = None) -> Network:
    """Draw a random sparse DAG over ``params.n_genes`` genes (regulators first).

    Without ``rng``, the network :func:`simulate_screen` draws for ``params.seed``.
    """
    rng = rng if rng is not None else np.random.default_rng(_streams(params.seed)[0])
    G, K = params.n_genes, params.n_regulators
    weights = np.zeros((G, G))
    for g in range(1, G):
        pool = np.arange(min(g, K))
        lo = 0 if g < K else 1  # regulators may be roots; target genes have a regulator
        k = min(int(rng.integers(lo, params.max_parents + 1)), pool.size)
        if k == 0:
            continue
        parents = rng.choice(pool, size=k, replace=False)
        sign = np.where(rng.random(k) < params.activator_fraction, 1.0, -1.0)
        weights[parents, g] = sign * rng.uniform(*params.weight_range, size=k)
    baseline = np.exp(rng.normal(np.log(params.baseline_mean), params.baseline_sd, size=G))
    offset = rng.uniform(*params.offset_range, size=G)
    noise_sd = np.where(np.arange(G) < K, params.regulator_noise, params.cell_noise)
    return Network(weights, baseline, offset, noise_sd, params)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def draw_noise(net: Network, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Per-cell intrinsic noise ``eps`` (log-normal with mean 1), shape ``(n_cells, n_genes)``."""
    sd = net.noise_sd[None, :]
    return np.exp(rng.normal(0.0, 1.0, size=(n_cells, net.n_genes)) * sd - 0.5 * sd**2)


def steady_state(net: Network, eps: np.ndarray, knocked: Sequence[int] = ()) -> np.ndarray:
    """The steady state of cells with noise ``eps`` under knockdown of the genes ``knocked``.

    Examples
    --------
    >>> net = make_network(GrnParams(n_genes=5, n_regulators=2), np.random.default_rng(0))
    >>> np.allclose(steady_state(net, np.ones((1, 5)))[0], net.baseline)
    True
    """
    p = net.params
    x = np.empty_like(eps, dtype=np.float64)
    knocked_set = set(int(k) for k in knocked)
    for g in range(net.n_genes):
        parents = net.parents(g)
        if parents.size == 0:
            x[:, g] = net.baseline[g] * eps[:, g]
        else:
            ratio = x[:, parents] / net.baseline[parents]
            w = net.weights[parents, g]
            if p.response == "hill":
                u = np.log(np.maximum(ratio, 1e-9)) @ w
                x[:, g] = net.baseline[g] * eps[:, g] * _sigmoid(net.offset[g] + u) / _sigmoid(net.offset[g])
            else:
                x[:, g] = net.baseline[g] * (eps[:, g] + (ratio - 1.0) @ w)
        if g in knocked_set:
            x[:, g] *= p.knockdown_fraction
    return x


def lognormalize(counts_or_rates: np.ndarray, target_sum: float = 1e4) -> np.ndarray:
    """``log1p(target_sum * x / sum(x))`` per cell (rows summing to 0 stay 0)."""
    x = np.maximum(np.asarray(counts_or_rates, dtype=np.float64), 0.0)
    totals = x.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    return np.log1p(x / totals * target_sum)


def sample_counts(rates: np.ndarray, params: GrnParams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial (or Poisson) counts of cells with ``rates``; returns ``(counts, library sizes)``."""
    r = np.maximum(rates, 0.0)
    totals = r.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    library = params.library_size * np.exp(rng.normal(0.0, params.library_sd, size=(r.shape[0], 1)))
    mu = r / totals * library
    if params.dispersion is not None:
        mu = rng.gamma(params.dispersion, mu / params.dispersion)
    return rng.poisson(mu).astype(np.int64), library[:, 0]


def condition_key(names: Sequence[str]) -> str:
    """The ``perturbation_targets`` value of a set of target gene names (``"control"`` if none)."""
    return DELIMITER.join(sorted(names)) if names else CONTROL


@dataclass(frozen=True, eq=False)
class SimulatedScreen:
    """A simulated screen: counts, cell and gene metadata, the network and the ground truth.

    ``obs`` has ``perturbation_targets`` (target names joined by ``;``, or ``"control"``),
    ``n_targets`` and ``library_size``; ``var`` (indexed by gene name) has ``is_regulator``,
    ``baseline``, ``n_parents`` and ``n_children``. The truth tables are indexed by condition
    (the ``perturbation_targets`` values) with one column per gene.
    """

    counts: np.ndarray
    obs: pd.DataFrame
    var: pd.DataFrame
    network: Network
    true_means: pd.DataFrame
    true_effects: pd.DataFrame
    true_lognorm_effects: pd.DataFrame
    params: GrnParams
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gene_names(self) -> list[str]:
        return [str(g) for g in self.var.index]

    @property
    def conditions(self) -> list[str]:
        return [str(c) for c in self.true_means.index]

    def descendants(self, gene: str) -> set[str]:
        """Names of the genes downstream of ``gene``."""
        names = self.gene_names
        return {names[i] for i in self.network.descendants(names.index(gene))}

    def lognormalized(self, target_sum: float = 1e4) -> np.ndarray:
        return lognormalize(self.counts, target_sum)

    def to_anndata(self) -> Any:
        """The screen as an ``AnnData`` (raw counts in ``X``, truth tables in ``uns``)."""
        import anndata as ad
        import scipy.sparse as sp

        adata = ad.AnnData(X=sp.csr_matrix(self.counts.astype(np.float32)), obs=self.obs.copy(), var=self.var.copy())
        adata.uns["true_effects"] = self.true_effects
        adata.uns["true_lognorm_effects"] = self.true_lognorm_effects
        return adata


def simulate_screen(
    params: GrnParams = GrnParams(),
    *,
    n_control: int = 300,
    n_cells_per_perturbation: int = 50,
    perturbed: Sequence[int] | None = None,
    n_doubles: int = 10,
    doubles: Sequence[tuple[int, int]] | None = None,
    n_truth_cells: int = 2000,
    gene_names: Sequence[str] | None = None,
) -> SimulatedScreen:
    """Simulate a knockdown screen with control cells, single and double perturbations.

    Parameters
    ----------
    params
        Network, noise and count parameters (including the seed).
    n_control, n_cells_per_perturbation
        Cells of the control condition and of every perturbation.
    perturbed
        Indices of the genes knocked down one at a time (default: every regulator).
    n_doubles, doubles
        Double knockdowns: explicit index pairs, else ``n_doubles`` distinct random pairs of
        ``perturbed`` genes.
    n_truth_cells
        Noise draws the ground truth is averaged over.
    gene_names
        Names of the genes (default ``G0000``, ``G0001``, ...), e.g. real symbols.

    Returns
    -------
    SimulatedScreen
    """
    seeds = _streams(params.seed)
    net = make_network(params)
    G = params.n_genes
    names = list(gene_names) if gene_names is not None else [f"G{i:04d}" for i in range(G)]
    if len(names) != G or len(set(names)) != G:
        raise UsageError(f"gene_names must be {G} distinct names, got {len(names)} ({len(set(names))} distinct)", where="gene_names")
    singles = [int(i) for i in (perturbed if perturbed is not None else range(params.n_regulators))]
    if doubles is None:
        rng_pairs = np.random.default_rng(seeds[1])
        all_pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
        pick = rng_pairs.choice(len(all_pairs), size=min(n_doubles, len(all_pairs)), replace=False) if all_pairs else []
        doubles = [all_pairs[int(i)] for i in sorted(pick)]
    conditions: list[tuple[int, ...]] = [(), *[(s,) for s in singles], *[tuple(sorted(d)) for d in doubles]]

    truth_eps = draw_noise(net, n_truth_cells, np.random.default_rng(seeds[2]))
    rng = np.random.default_rng(seeds[3])
    keys, means, lognorm, blocks, libs, labels, n_targets = [], [], [], [], [], [], []
    for cond in conditions:
        key = condition_key([names[i] for i in cond])
        state = steady_state(net, truth_eps, cond)
        keys.append(key)
        means.append(state.mean(axis=0))
        lognorm.append(lognormalize(state).mean(axis=0))
        n = n_control if not cond else n_cells_per_perturbation
        counts, lib = sample_counts(steady_state(net, draw_noise(net, n, rng), cond), params, rng)
        blocks.append(counts)
        libs.append(lib)
        labels += [key] * n
        n_targets += [len(cond)] * n
    true_means = pd.DataFrame(np.vstack(means), index=pd.Index(keys, name="condition"), columns=names)
    true_log = pd.DataFrame(np.vstack(lognorm), index=true_means.index, columns=names)
    obs = pd.DataFrame(
        {"perturbation_targets": labels, "n_targets": np.asarray(n_targets, dtype=np.int64), "library_size": np.concatenate(libs)},
        index=pd.Index([f"cell-{i:05d}" for i in range(len(labels))]),
    )
    var = pd.DataFrame(
        {
            "is_regulator": np.arange(G) < params.n_regulators,
            "baseline": net.baseline,
            "n_parents": (net.weights != 0).sum(axis=0),
            "n_children": (net.weights != 0).sum(axis=1),
        },
        index=pd.Index(names),
    )
    return SimulatedScreen(
        counts=np.vstack(blocks),
        obs=obs,
        var=var,
        network=net,
        true_means=true_means,
        true_effects=(true_means - true_means.loc[CONTROL]).drop(index=CONTROL),
        true_lognorm_effects=(true_log - true_log.loc[CONTROL]).drop(index=CONTROL),
        params=params,
    )
