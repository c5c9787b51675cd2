"""The perturbation-response manipulator: a control cell's UR plus target genes -> the perturbed cell.

A manipulator is a Virtual Instrument of kind ``manipulator`` (type ``perturbation``). It learns,
from a perturbation screen (a dataset whose cells carry ``perturbation_targets``, see
:mod:`aivc.ingest.perturbation_fields`), the map

    (control-cell UR ``z``, perturbation embedding ``p``) -> UR shift ``dz``

where ``p`` is the sum of the target genes' molecular URs read from a gene embedding version of
the feature store (``gene:NAME@VERSION``), so a gene never perturbed in training can still be
perturbed in silico. The perturbed cell is ``z + dz``; its expression (a log-normalized mean
profile, ``log1p(1e4 * counts / total)``) is decoded linearly from the UR.

* **Cell URs** are, by default, a PCA of the screen's log-normalized expression fitted on the
  training cells (stored with the instrument, so cells of any dataset measuring the genes can be
  projected); or, given ``--cell-ur cell:NAME@VERSION``, read from the feature store, with a
  ridge decoder from UR to expression fitted on the training cells.
* **The direct effect** (``direct_effect=True``): a knockdown keeps a fraction of the target's own
  transcript. That fraction (the knockdown efficiency) is fitted first, by least squares on the
  observed change of each trained single target's own gene, and applied to every target the
  manipulator models: the change ``log1p(f * expm1(x)) - x`` at the target's level ``x`` enters
  the UR through the decoder's pseudo-inverse, and the part outside the UR's span is added to
  the decoded expression. Co-expression URs alone cannot tell a gene from its correlates, so
  without this an unseen target's own drop is mostly missed.
* **The learned response**: per member, an MLP ``[(z - z_center) / z_scale, p / p_scale] -> dz``
  on top of the direct effect (the downstream response). Training examples pair each training
  condition's mean UR shift from the control cells with a random control cell (and a "no
  target, no change" anchor); the loss is the squared error of the shift and of its decoded
  expression change.
* **Uncertainty**: a deep ensemble of ``n_members`` MLPs (different initial weights and batches;
  knockdown efficiencies on bootstrap samples of the targets); every prediction reports the
  members' mean and standard deviation per gene and per UR dimension. Disagreement grows for
  perturbation embeddings unlike those seen in training. Training runs in torch (one thread),
  inference in NumPy from the stored arrays.
* **Evaluation** on held-out conditions (a fraction of the single-gene perturbations, and
  combinations whose singles were trained on or not) reports the Pearson correlation of
  predicted and observed expression change from control (``pearson_delta``) and the mean squared
  error of the profile (``mse``), always next to three baselines: ``no_change`` (the control
  mean), ``mean`` (the mean change of the training perturbations) and ``additive`` (for
  combinations: the sum of the observed single effects, where all were trained on).

The registered model is the one evaluated (trained without the held-out conditions), so its
metrics are honest. Cells are modelled in memory (screens of up to some 10^5 cells x 2,000 genes).

Command line (see :mod:`aivc.cli_perturb`)::

    aivc manipulator train --dataset SCREEN[@V] --gene-ur gene:NAME@V [--cell-ur cell:NAME@V] --name NAME
    aivc perturb --instrument NAME@V --genes TP53[,MYC] [--dataset DS] [--cell-type "T cell"] [--json]

Example
-------
>>> from aivc.instruments.grn_sim import GrnParams, simulate_screen
>>> sim = simulate_screen(GrnParams(n_genes=40, n_regulators=8, seed=3), n_control=150, n_doubles=3)
>>> screen = PerturbationScreen.from_counts(sim.counts, sim.gene_names, sim.obs["perturbation_targets"])
>>> urs = coexpression_gene_urs(screen, dim=8)
>>> train, test = split_conditions(screen.condition_names, 0.25, seed=0)
>>> m = fit_manipulator(screen, urs, ManipulatorParams(steps=150, n_members=3), train_conditions=train)
>>> pred = m.predict(m.encode(screen.control_expression), ["G0001"])
>>> pred.delta.shape, bool((pred.delta_std > 0).all())
((40,), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import NotFoundError, UsageError
from aivc.instruments.registry import InstrumentError, InstrumentRecord, register_loader

KIND = "manipulator"
TYPE = "perturbation"
CONTROL = "control"
DELIMITER = ";"
#: The methods an :class:`Evaluation` compares: the manipulator and its baselines.
METHODS: tuple[str, ...] = ("manipulator", "no_change", "mean", "additive")
register_loader(KIND, TYPE, "aivc.instruments.manipulator:PerturbationManipulator.load")


@dataclass(frozen=True)
class ManipulatorParams:
    """Training parameters (checked when created)."""

    n_components: int = 32
    n_top_genes: int = 2000
    hidden: int = 128
    n_members: int = 5
    steps: int = 600
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    min_cells: int = 5
    ridge: float = 1e-2
    direct_effect: bool = True
    target_sum: float = 1e4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_components", "n_top_genes", "hidden", "n_members", "steps", "batch_size", "min_cells"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}", where=f"--{name.replace('_', '-')}")
        if self.lr <= 0 or self.weight_decay < 0 or self.ridge < 0:
            raise UsageError("lr must be > 0, weight_decay and ridge >= 0", where="ManipulatorParams")


# -- inputs ------------------------------------------------------------------------------------
def targets_of(condition: str) -> tuple[str, ...]:
    """``"A;B"`` -> ``("A", "B")``; ``"control"`` -> ``()``."""
    return () if condition in ("", CONTROL) else tuple(condition.split(DELIMITER))


def condition_of(targets: Iterable[str]) -> str:
    """The canonical condition name of a set of targets (sorted, ``;``-joined; ``"control"`` if none)."""
    t = sorted(set(targets))
    return DELIMITER.join(t) if t else CONTROL


@dataclass(frozen=True, eq=False)
class GeneURs:
    """Molecular URs of genes: ``vectors[i]`` is the UR of ``ids[i]``; ``ref`` names its version."""

    ids: tuple[str, ...]
    vectors: np.ndarray
    ref: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", pd.Index(self.ids))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def missing(self, genes: Iterable[str]) -> list[str]:
        return [g for g in genes if g not in self._index]  # type: ignore[attr-defined]

    def embed(self, targets: Sequence[str], where: str = "--genes") -> np.ndarray:
        """The perturbation embedding: the sum of the targets' URs (zeros for a control)."""
        absent = self.missing(targets)
        if absent:
            raise NotFoundError(
                f"gene {absent[0]!r} has no UR in {self.ref or 'the gene URs'}; only genes with a molecular UR can be perturbed",
                where=where,
            )
        if not targets:
            return np.zeros(self.dim, dtype=np.float32)
        return self.vectors[self._index.get_indexer(list(targets))].sum(axis=0).astype(np.float32)  # type: ignore[attr-defined]

    @classmethod
    def from_store(cls, lake: Any, ref: str) -> GeneURs:
        """Read a gene embedding version (``gene:NAME[@VERSION]``; latest when no version)."""
        from aivc.embeddings.store import get_version, read_vectors

        v = get_version(lake, ref)
        if v.entity != "gene":
            raise UsageError(f"{v.ref} holds {v.entity} URs; the manipulator needs gene URs (gene:NAME@VERSION)", where="--gene-ur")
        table, vectors = read_vectors(lake, v)
        return cls(tuple(str(i) for i in table.column("id").to_pylist()), vectors.astype(np.float32), v.ref)


@dataclass(frozen=True, eq=False)
class PerturbationScreen:
    """Cells of a perturbation screen in memory.

    ``expression`` is log-normalized (cells x genes, float32); ``conditions`` names each cell's
    condition (``"control"`` or sorted target ids joined by ``;``); ``cell_ur`` optionally holds
    feature-store cell URs (``cell_ur_ref``) in the same cell order.
    """

    expression: np.ndarray
    gene_ids: tuple[str, ...]
    conditions: np.ndarray
    cell_ur: np.ndarray | None = None
    cell_ur_ref: str | None = None
    obs_ids: np.ndarray | None = None
    gene_symbols: tuple[str, ...] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, counts: Any, gene_ids: Sequence[str], conditions: Sequence[str], *, target_sum: float = 1e4, **kw: Any) -> PerturbationScreen:
        """Log-normalize raw counts (dense or sparse) into a screen."""
        from aivc.instruments.grn_sim import lognormalize

        dense = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
        conds = np.array([condition_of(targets_of(str(c))) for c in conditions], dtype=object)
        return cls(lognormalize(dense, target_sum).astype(np.float32), tuple(map(str, gene_ids)), conds, **kw)

    @property
    def is_control(self) -> np.ndarray:
        return self.conditions == CONTROL

    @property
    def control_expression(self) -> np.ndarray:
        return self.expression[self.is_control]

    @property
    def condition_names(self) -> list[str]:
        """The perturbed conditions, sorted."""
        return sorted({str(c) for c in self.conditions if c != CONTROL})

    def mean_expression(self, condition: str) -> np.ndarray:
        return self.expression[self.conditions == condition].mean(axis=0)

    def observed_effects(self, conditions: Iterable[str]) -> dict[str, np.ndarray]:
        """Mean log-normalized change from the control cells, per condition."""
        ctrl = self.mean_expression(CONTROL)
        return {c: self.mean_expression(c) - ctrl for c in conditions}


def coexpression_gene_urs(screen: PerturbationScreen, dim: int = 16, ref: str = "") -> GeneURs:
    """Gene URs from the control cells' gene-gene correlation (top eigenvectors, scaled).

    ``vectors @ vectors.T`` approximates the correlation matrix. Meant for tests and benchmarks;
    the lake's co-expression URs come from an embedding job.
    """
    x = screen.control_expression.astype(np.float64)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    corr = z.T @ z / max(len(x) - 1, 1)
    evals, evecs = np.linalg.eigh(corr)
    order = np.argsort(evals)[::-1][: min(dim, len(evals))]
    vecs = evecs[:, order] * np.sqrt(np.maximum(evals[order], 0.0))
    vecs *= np.sign(vecs[np.abs(vecs).argmax(axis=0), np.arange(vecs.shape[1])])
    return GeneURs(screen.gene_ids, vecs.astype(np.float32), ref)


def split_conditions(conditions: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out ``fraction`` of the single-gene conditions, and of the combinations.

    A combination with a held-out target is held out too (nothing about that gene is trained on).

    Examples
    --------
    >>> split_conditions(["A", "B", "C", "D", "A;B", "C;D"], 0.25, seed=1)
    (['A', 'C', 'D'], ['A;B', 'B', 'C;D'])
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"holdout fraction must be between 0 and 1, got {fraction}", where="--holdout-fraction")
    rng = np.random.default_rng(seed)
    singles = sorted(c for c in set(conditions) if len(targets_of(c)) == 1)
    combos = sorted(c for c in set(conditions) if len(targets_of(c)) > 1)
    test = set(rng.choice(singles, size=max(1, round(fraction * len(singles))), replace=False).tolist()) if singles else set()
    held = {t for c in test for t in targets_of(c)}
    test |= {c for c in combos if held & set(targets_of(c))}
    seen = [c for c in combos if c not in test]
    if seen:
        test |= set(rng.choice(seen, size=max(1, round(fraction * len(seen))), replace=False).tolist())
    return sorted(set(conditions) - test), sorted(test)


# -- metrics and baselines --------------------------------------------------------------------
def pearson_delta(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson correlation of predicted and true change from control (0.0 for a constant prediction)."""
    p, t = np.asarray(pred, np.float64) - np.mean(pred), np.asarray(true, np.float64) - np.mean(true)
    den = float(np.sqrt((p * p).sum() * (t * t).sum()))
    return float((p * t).sum() / den) if den > 0 else 0.0


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error (of profiles, or equivalently of changes from the same control)."""
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(true, np.float64)) ** 2))


def baseline_effects(condition: str, train_effects: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """The baselines' predicted change for ``condition`` given the training conditions' changes.

    ``no_change``: zeros; ``mean``: the mean training change; ``additive``: for a combination whose
    every single target was trained on, the sum of their changes (else ``None``).

    Examples
    --------
    >>> b = baseline_effects("A;B", {"A": np.array([1.0, 0.0]), "B": np.array([0.0, 2.0])})
    >>> b["additive"].tolist(), b["mean"].tolist()
    ([1.0, 2.0], [0.5, 1.0])
    """
    n_genes = len(next(iter(train_effects.values())))
    targets = targets_of(condition)
    additive = None
    if len(targets) > 1 and all(t in train_effects for t in targets):
        additive = np.sum([train_effects[t] for t in targets], axis=0)
    return {
        "no_change": np.zeros(n_genes),
        "mean": np.mean(list(train_effects.values()), axis=0),
        "additive": additive,
    }


# -- the model (training in torch, inference in NumPy) -----------------------------------------
def _init_layers(sizes: Sequence[int], n_members: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        gain = 0.1 if i == len(sizes) - 2 else np.sqrt(2.0)  # small last layer: start near "no change"
        W = rng.normal(0.0, gain / np.sqrt(fan_in), size=(n_members, fan_in, fan_out)).astype(np.float32)
        layers.append((W, np.zeros((n_members, 1, fan_out), dtype=np.float32)))
    return layers


def ensemble_forward(layers: Sequence[tuple[Any, Any]], x: Any, relu: Any = None) -> Any:
    """All members' MLPs at once: ``x`` is ``(members, batch, d_in)`` (NumPy or torch), returns ``(members, batch, d_out)``."""
    h = x
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        if i < len(layers) - 1:
            h = relu(h) if relu is not None else np.maximum(h, 0.0)
    return h


def direct_change(xhat: Any, remaining: Any, lib: Any = np) -> Any:
    """Log-normalized change of a transcript at level ``xhat`` (log1p units) kept at fraction ``remaining``."""
    x = lib.clip(xhat, 0.0, None) if lib is np else xhat.clamp(min=0.0)
    return lib.log1p(remaining * lib.expm1(x)) - x


@dataclass(frozen=True)
class _Encoder:
    """Cell UR <-> expression: PCA (``components`` set) or feature-store URs with a ridge decoder.

    ``direct[g]`` is the UR direction whose decoding best changes gene ``g`` alone (the rows of
    the decoder's pseudo-inverse): how a knockdown of ``g`` shows up in the UR.
    """

    kind: str  # "pca" or "store"
    mean: np.ndarray  # expression mean of the training cells (G,)
    components: np.ndarray | None  # (G, k) for PCA
    decoder: np.ndarray  # (k, G): expression = mean + (z - z_mean) @ decoder
    z_mean: np.ndarray  # (k,)
    direct: np.ndarray  # (G, k)

    def encode(self, expression: np.ndarray) -> np.ndarray:
        if self.components is None:
            raise UsageError("this manipulator reads cell URs from the feature store; pass URs, not expression", where="encode")
        return ((np.asarray(expression, np.float32) - self.mean) @ self.components).astype(np.float32)

    def decode_shift(self, dz: np.ndarray) -> np.ndarray:
        return dz @ self.decoder

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.mean + (np.asarray(z, np.float32) - self.z_mean) @ self.decoder


def _fit_encoder(screen: PerturbationScreen, rows: np.ndarray, params: ManipulatorParams) -> tuple[_Encoder, np.ndarray]:
    """The encoder and every cell's UR; fitted on the training cells ``rows`` only."""
    X = screen.expression[rows].astype(np.float64)
    mean = X.mean(axis=0)
    if screen.cell_ur is None:
        k = max(1, min(params.n_components, X.shape[0] - 1, X.shape[1]))
        _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
        comps = vt[:k].T
        comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
        c32 = comps.astype(np.float32)
        enc = _Encoder("pca", mean.astype(np.float32), c32, np.ascontiguousarray(c32.T), np.zeros(k, np.float32), c32)
        return enc, enc.encode(screen.expression)
    Z = screen.cell_ur.astype(np.float64)
    z_mean = Z[rows].mean(axis=0)
    Zc = Z[rows] - z_mean
    lam = params.ridge * np.trace(Zc.T @ Zc) / max(Zc.shape[1], 1)
    decoder = np.linalg.solve(Zc.T @ Zc + lam * np.eye(Zc.shape[1]), Zc.T @ (X - mean))
    direct = np.linalg.pinv(decoder).astype(np.float32)
    enc = _Encoder("store", mean.astype(np.float32), None, decoder.astype(np.float32), z_mean.astype(np.float32), direct)
    return enc, screen.cell_ur.astype(np.float32)


@dataclass(frozen=True)
class _Fitted:
    layers: list[tuple[np.ndarray, np.ndarray]]
    remaining_logit: np.ndarray  # (members,)


@dataclass(frozen=True)
class _TrainData:
    """Training tensors: control cells (``z`` scaled URs, ``xhat`` decoded target levels) and,
    per condition, the perturbation input ``P``, knocked targets ``T`` (columns of ``direct`` /
    ``outside``) and the observed mean shifts ``dZ`` / ``dX``; the networks' outputs are in units
    of ``d_scale``."""

    z: Any
    xhat: Any
    P: Any
    T: Any
    direct: Any
    outside: Any
    dZ: Any
    dX: Any
    decoder: Any
    remaining: Any
    d_scale: float
    var_z: float
    var_x: float


def _train(
    z_in: np.ndarray,
    xhat: np.ndarray,
    P: np.ndarray,
    T: np.ndarray,
    direct: np.ndarray,
    dZ: np.ndarray,
    dX: np.ndarray,
    decoder: np.ndarray,
    tcols: Sequence[int],
    remaining_logit: np.ndarray,
    d_scale: float,
    params: ManipulatorParams,
) -> _Fitted:
    """Fit every member on (random control cell, training condition) pairs (see :class:`_TrainData`)."""
    import torch

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    M, h = params.n_members, params.hidden
    init = _init_layers([z_in.shape[1] + P.shape[1], h, h, dZ.shape[1]], M, np.random.default_rng(params.seed))
    layers = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)) for W, b in init]
    outside = np.eye(decoder.shape[1], dtype=np.float32)[list(tcols)] - direct @ decoder  # target transcripts outside the UR
    data = _TrainData(
        t(z_in), t(xhat), t(P), t(T), t(direct), t(outside), t(dZ), t(dX), t(decoder),
        t(1.0 / (1.0 + np.exp(-remaining_logit.reshape(M, 1, 1)))), d_scale, float(np.mean(dZ**2)) or 1.0, float(np.mean(dX**2)) or 1.0,
    )  # fmt: skip
    opt = torch.optim.AdamW([p for pair in layers for p in pair], lr=params.lr, weight_decay=params.weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more intra-op threads only add contention (40x slower on a busy host)
    try:
        _steps(layers, opt, data, params)
    finally:
        torch.set_num_threads(threads)
    return _Fitted([(W.detach().numpy().copy(), b.detach().numpy().copy()) for W, b in layers], remaining_logit)


def _steps(layers: Any, opt: Any, d: _TrainData, params: ManipulatorParams) -> None:
    """The optimisation loop: squared error of the UR shift and of the decoded expression change."""
    import torch

    gen = torch.Generator().manual_seed(params.seed)
    M, B = params.n_members, params.batch_size
    for _ in range(params.steps):
        rows = torch.randint(len(d.P), (M, B), generator=gen)
        cells = torch.randint(len(d.z), (M, B), generator=gen)
        dz = ensemble_forward(layers, torch.cat([d.z[cells], d.P[rows]], dim=-1), torch.relu) * d.d_scale
        dx = dz @ d.decoder
        if params.direct_effect:
            knock = direct_change(d.xhat[cells], d.remaining, torch) * d.T[rows]
            dz = dz + knock @ d.direct
            dx = dz @ d.decoder + knock @ d.outside
        loss = (dz - d.dZ[rows]).pow(2).mean() / d.var_z + (dx - d.dX[rows]).pow(2).mean() / d.var_x
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fit_remaining(xhat: np.ndarray, observed: np.ndarray, n_members: int, seed: int) -> np.ndarray:
    """Per member, the knockdown efficiency (logit of the remaining fraction) that best explains the
    observed change of each single target's own transcript, on a bootstrap sample of the targets.

    ``xhat``: decoded levels of the targets in the control cells ``(cells, targets)``;
    ``observed``: each target's observed mean change when knocked down alone ``(targets,)``.
    """
    grid = np.linspace(-7.0, 7.0, 281)
    fractions = 1.0 / (1.0 + np.exp(-grid))
    predicted = np.stack([direct_change(xhat, f).mean(axis=0) for f in fractions])  # (grid, targets)
    rng = np.random.default_rng(seed)
    out = np.zeros(n_members, dtype=np.float32)
    for m in range(n_members):
        pick = rng.integers(0, len(observed), len(observed)) if m else np.arange(len(observed))
        out[m] = grid[int(np.argmin(((predicted[:, pick] - observed[pick]) ** 2).sum(axis=1)))]
    return out


# -- the instrument ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PerturbationPrediction:
    """A predicted perturbation of a set of cells: mean profiles, changes and ensemble spread.

    ``control`` is the decoded mean profile of the cells, ``delta`` the predicted mean change per
    gene (log-normalized units) and ``delta_std`` its standard deviation across ensemble members;
    ``ur_shift`` / ``ur_shift_std`` the same in UR space.
    """

    targets: tuple[str, ...]
    gene_ids: tuple[str, ...]
    symbols: tuple[str, ...]
    n_cells: int
    control: np.ndarray
    delta: np.ndarray
    delta_std: np.ndarray
    ur_shift: np.ndarray
    ur_shift_std: np.ndarray

    @property
    def perturbed(self) -> np.ndarray:
        """The predicted mean profile (log-normalized, floored at 0)."""
        return np.maximum(self.control + self.delta, 0.0)

    def top(self, n: int = 20) -> pd.DataFrame:
        """The ``n`` genes with the largest predicted change (by absolute value)."""
        order = np.argsort(-np.abs(self.delta), kind="stable")[:n]
        return pd.DataFrame(
            {
                "gene_id": np.asarray(self.gene_ids, dtype=object)[order],
                "symbol": np.asarray(self.symbols, dtype=object)[order],
                "control": self.control[order],
                "perturbed": self.perturbed[order],
                "delta": self.delta[order],
                "std": self.delta_std[order],
            }
        )


@dataclass(frozen=True, eq=False)
class PerturbationManipulator:
    """A trained perturbation manipulator (see the module docstring); apply with :meth:`predict`.

    The UR shift of a cell ``z`` under a knockdown of ``targets`` is, for each member ``m``,
    ``mlp_m([(z - z_center) / z_scale, sum of target URs / p_scale]) * d_scale`` plus, with
    ``direct_effect``, the direct change of each modelled target's own transcript at the member's
    learned remaining fraction ``sigmoid(remaining_logit[m])``, mapped into the UR.
    """

    gene_ids: tuple[str, ...]
    symbols: tuple[str, ...]
    encoder: _Encoder
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    remaining_logit: np.ndarray
    z_center: np.ndarray
    z_scale: float
    p_scale: float
    d_scale: float
    gene_urs: GeneURs
    params: ManipulatorParams
    cell_ur_ref: str | None = None
    train_conditions: tuple[str, ...] = ()
    record: InstrumentRecord | None = None

    @property
    def n_members(self) -> int:
        return int(self.layers[0][0].shape[0])

    @property
    def remaining_fraction(self) -> np.ndarray:
        """Each member's learned fraction of a target's transcript left after knockdown."""
        return 1.0 / (1.0 + np.exp(-self.remaining_logit))

    def encode(self, expression: np.ndarray) -> np.ndarray:
        """Cell URs of log-normalized expression over :attr:`gene_ids` (PCA manipulators only)."""
        return self.encoder.encode(expression)

    def _member_effects(self, z: np.ndarray, targets: Sequence[str], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every member's UR shift of every cell ``(members, cells, dim)``, the direct changes of
        the modelled targets ``(members, cells, n)`` and their gene positions ``(n,)``."""
        z = np.asarray(z, dtype=np.float32)
        p = self.gene_urs.embed(list(targets), where) / self.p_scale
        x = np.concatenate([(z - self.z_center) / self.z_scale, np.broadcast_to(p, (len(z), p.size))], axis=1)
        dz = ensemble_forward(self.layers, np.broadcast_to(x, (self.n_members, *x.shape))) * self.d_scale
        idx = pd.Index(self.gene_ids).get_indexer(list(targets))
        idx = idx[idx >= 0] if self.params.direct_effect else idx[:0]
        d = direct_change(self.encoder.decode(z)[None][..., idx], self.remaining_fraction[:, None, None])
        return (dz + d @ self.encoder.direct[idx]).astype(np.float32), d.astype(np.float32), idx

    def member_shifts(self, z: np.ndarray, targets: Sequence[str], where: str = "--genes") -> np.ndarray:
        """Every member's UR shift of every cell: ``(members, cells, dim)``."""
        return self._member_effects(z, targets, where)[0]

    def apply(self, vectors: np.ndarray, *, genes: Sequence[str]) -> np.ndarray:
        """The perturbed URs of cells (the registry's manipulator protocol): ``z`` + mean member shift."""
        return np.asarray(vectors, np.float32) + self.member_shifts(vectors, genes).mean(axis=0)

    def predict(self, z: np.ndarray, targets: Sequence[str], where: str = "--genes") -> PerturbationPrediction:
        """Predict knocking down ``targets`` (reference gene ids) in cells with URs ``z``.

        The expression change is the decoded UR shift plus the part of each target transcript's
        direct change that lies outside the UR's span (set explicitly, as it is known); a gene's
        predicted mean never falls below 0.
        """
        if len(z) == 0:
            raise UsageError("no cells to perturb; choose cells that exist", where="--cells")
        dz, d, idx = self._member_effects(z, targets, where)
        shifts = dz.mean(axis=1)  # (members, dim): mean over cells
        outside = np.eye(len(self.gene_ids), dtype=np.float32)[idx] - self.encoder.direct[idx] @ self.encoder.decoder
        control = self.encoder.decode(np.asarray(z, np.float32).mean(axis=0))
        deltas = self.encoder.decode_shift(shifts) + d.mean(axis=1) @ outside  # (members, genes)
        deltas = np.maximum(deltas, -np.maximum(control, 0.0))  # a mean log-expression cannot fall below 0
        return PerturbationPrediction(
            targets=tuple(targets),
            gene_ids=self.gene_ids,
            symbols=self.symbols,
            n_cells=len(z),
            control=control,
            delta=deltas.mean(axis=0),
            delta_std=deltas.std(axis=0),
            ur_shift=shifts.mean(axis=0),
            ur_shift_std=shifts.std(axis=0),
        )

    # -- persistence (the registry stores arrays; gene URs are re-read from the feature store) --
    def weights(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {
            "gene_ids": np.array(self.gene_ids, dtype=str),
            "symbols": np.array(self.symbols, dtype=str),
            "expr_mean": self.encoder.mean,
            "decoder": self.encoder.decoder,
            "direct": self.encoder.direct,
            "z_mean": self.encoder.z_mean,
            "z_center": self.z_center,
            "scales": np.array([self.z_scale, self.p_scale, self.d_scale], dtype=np.float64),
            "remaining_logit": self.remaining_logit,
            "n_layers": np.array(len(self.layers)),
        }
        if self.encoder.components is not None:
            out["components"] = self.encoder.components
        for i, (W, b) in enumerate(self.layers):
            out[f"W{i}"], out[f"b{i}"] = W, b
        return out

    def config(self) -> dict[str, Any]:
        return {
            "params": asdict(self.params),
            "encoder": self.encoder.kind,
            "cell_ur": self.cell_ur_ref,
            "gene_ur": self.gene_urs.ref,
            "n_genes": len(self.gene_ids),
            "ur_dim": int(self.z_center.size),
            "remaining_fraction": [round(float(f), 4) for f in self.remaining_fraction],
            "train_conditions": list(self.train_conditions),
        }

    @classmethod
    def load(cls, lake: Any, rec: InstrumentRecord, weights: Mapping[str, np.ndarray]) -> PerturbationManipulator:
        """The registry's loader (``load_instrument`` calls it); reads the gene URs it names."""
        try:
            comps = weights["components"] if "components" in weights else None
            enc = _Encoder(str(rec.config["encoder"]), weights["expr_mean"], comps, weights["decoder"], weights["z_mean"], weights["direct"])
            layers = tuple((weights[f"W{i}"], weights[f"b{i}"]) for i in range(int(weights["n_layers"])))
            z_scale, p_scale, d_scale = (float(s) for s in weights["scales"])
            return cls(
                gene_ids=tuple(str(g) for g in weights["gene_ids"]), symbols=tuple(str(s) for s in weights["symbols"]),
                encoder=enc, layers=layers, remaining_logit=weights["remaining_logit"], z_center=weights["z_center"],
                z_scale=z_scale, p_scale=p_scale, d_scale=d_scale, gene_urs=GeneURs.from_store(lake, rec.reads),
                params=ManipulatorParams(**rec.config["params"]), cell_ur_ref=rec.config.get("cell_ur"),
                train_conditions=tuple(rec.config.get("train_conditions", ())), record=rec,
            )  # fmt: skip
        except KeyError as exc:
            raise InstrumentError(f"{rec.ref} lacks {exc.args[0]!r}; it is not a perturbation manipulator", where=rec.ref) from None


def fit_manipulator(
    screen: PerturbationScreen,
    gene_urs: GeneURs,
    params: ManipulatorParams = ManipulatorParams(),
    *,
    train_conditions: Sequence[str] | None = None,
) -> PerturbationManipulator:
    """Train a manipulator on the control cells and the ``train_conditions`` (default: all).

    Conditions with fewer than ``params.min_cells`` cells, or a target without a gene UR, are
    left out of training (see :attr:`PerturbationManipulator.train_conditions`).
    """
    wanted = screen.condition_names if train_conditions is None else list(train_conditions)
    counts = pd.Series(screen.conditions).value_counts()
    usable = sorted(c for c in wanted if counts.get(c, 0) >= params.min_cells and not gene_urs.missing(targets_of(c)))
    if int(counts.get(CONTROL, 0)) < params.min_cells:
        raise UsageError(f"the screen has {int(counts.get(CONTROL, 0))} control cells; at least {params.min_cells} are needed", where="control")
    if not usable:
        raise UsageError(
            f"none of the {len(wanted)} training conditions has >= {params.min_cells} cells and gene URs for all its targets "
            f"({gene_urs.ref or 'gene URs'}); check that the gene UR ids are the screen's gene ids",
            where="--gene-ur",
        )
    rows = np.flatnonzero(np.isin(screen.conditions, [CONTROL, *usable]))
    encoder, Z = _fit_encoder(screen, rows, params)
    ctrl = screen.is_control
    z_center = Z[ctrl].mean(axis=0)
    dZ = np.stack([Z[screen.conditions == c].mean(axis=0) - z_center for c in usable])
    effects = screen.observed_effects(usable)
    dX = np.stack([effects[c] for c in usable])
    z_scale = float(np.sqrt(((Z[ctrl] - z_center) ** 2).sum(axis=1).mean())) or 1.0
    p_scale = float(np.sqrt((gene_urs.vectors.astype(np.float64) ** 2).sum(axis=1).mean())) or 1.0
    d_scale = float(np.sqrt((dZ**2).sum(axis=1).mean())) or 1.0
    P = np.stack([gene_urs.embed(targets_of(c), where=c) for c in usable]) / p_scale
    gene_index = pd.Index(screen.gene_ids)
    tcols = sorted({i for c in usable for i in gene_index.get_indexer(list(targets_of(c))) if i >= 0})
    T = np.zeros((len(usable), len(tcols)), dtype=np.float32)
    for r, c in enumerate(usable):
        for i in gene_index.get_indexer(list(targets_of(c))):
            if i >= 0:
                T[r, tcols.index(i)] = 1.0
    # anchor: the control condition (p = 0, no target) does not move the cell
    P, T = np.vstack([P, np.zeros((1, P.shape[1]))]), np.vstack([T, np.zeros((1, T.shape[1]))])
    dZ, dX = np.vstack([dZ, np.zeros((1, dZ.shape[1]))]), np.vstack([dX, np.zeros((1, dX.shape[1]))])
    xhat = encoder.decode(Z[ctrl])[:, tcols]
    singles = [(r, tcols.index(int(gene_index.get_indexer([c])[0]))) for r, c in enumerate(usable) if len(targets_of(c)) == 1 and c in gene_index]
    if params.direct_effect and singles:
        rows_, cols_ = (np.array(a) for a in zip(*singles, strict=True))
        observed_self = dX[rows_, np.asarray(tcols)[cols_]]
        remaining_logit = _fit_remaining(xhat[:, cols_], observed_self, params.n_members, params.seed)
    else:
        remaining_logit = np.zeros(params.n_members, dtype=np.float32)
    fitted = _train(
        (Z[ctrl] - z_center) / z_scale, xhat, P, T, encoder.direct[tcols], dZ, dX, encoder.decoder, tcols, remaining_logit, d_scale, params
    )
    return PerturbationManipulator(
        gene_ids=screen.gene_ids,
        symbols=screen.gene_symbols or screen.gene_ids,
        encoder=encoder,
        layers=tuple(fitted.layers),
        remaining_logit=fitted.remaining_logit,
        z_center=z_center.astype(np.float32),
        z_scale=z_scale,
        p_scale=p_scale,
        d_scale=d_scale,
        gene_urs=gene_urs,
        params=params,
        cell_ur_ref=screen.cell_ur_ref,
        train_conditions=tuple(usable),
    )


# -- evaluation ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Evaluation:
    """Held-out metrics of the manipulator and the baselines.

    ``table`` has one row per (condition, method): ``condition``, ``n_targets``, ``group``
    (``single`` / ``combo``), ``method``, ``pearson_delta``, ``mse``; ``deltas[condition][method]``
    holds the predicted changes (for benchmarks), ``observed[condition]`` the observed ones.
    """

    table: pd.DataFrame
    deltas: dict[str, dict[str, np.ndarray]]
    observed: dict[str, np.ndarray]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{group: {method: {metric: mean over held-out conditions, "n": count}}}``."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for (group, method), g in self.table.groupby(["group", "method"], sort=True):
            out.setdefault(str(group), {})[str(method)] = {
                "pearson_delta": round(float(g["pearson_delta"].mean()), 4),
                "mse": round(float(g["mse"].mean()), 6),
                "n": int(len(g)),
            }
        return out


def evaluate(
    manipulator: PerturbationManipulator,
    screen: PerturbationScreen,
    test_conditions: Sequence[str],
    train_conditions: Sequence[str] | None = None,
) -> Evaluation:
    """Compare the manipulator with the baselines on ``test_conditions`` of ``screen``.

    The manipulator perturbs the screen's control cells; baselines use the observed changes of
    ``train_conditions`` (default: what the manipulator was trained on).
    """
    train = list(train_conditions if train_conditions is not None else manipulator.train_conditions)
    train_effects = screen.observed_effects(train)
    observed = screen.observed_effects(test_conditions)
    ctrl = screen.control_expression
    z = screen.cell_ur[screen.is_control] if manipulator.encoder.kind == "store" and screen.cell_ur is not None else manipulator.encode(ctrl)
    rows, deltas = [], {}
    for c in test_conditions:
        targets = targets_of(c)
        if manipulator.gene_urs.missing(targets):
            continue
        preds: dict[str, np.ndarray | None] = {"manipulator": manipulator.predict(z, targets, where=c).delta}
        preds |= baseline_effects(c, train_effects)
        deltas[c] = {k: v for k, v in preds.items() if v is not None}
        for method, d in deltas[c].items():
            rows.append(
                {
                    "condition": c, "n_targets": len(targets), "group": "single" if len(targets) == 1 else "combo",
                    "method": method, "pearson_delta": pearson_delta(d, observed[c]), "mse": mse(d, observed[c]),
                }
            )  # fmt: skip
    return Evaluation(pd.DataFrame(rows), deltas, observed)
