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

The code is split by concern: :mod:`~aivc.instruments.perturbation_screen` (the screen in
memory, splits, metrics, baselines), :mod:`~aivc.instruments.perturbation_nets` (the pure
networks), :mod:`~aivc.instruments.perturbation_fit` (fitting) and this module (the
instrument that applies a fitted model, and its evaluation); :mod:`aivc.instruments.perturb`
reads screens from the lake and registers manipulators.

Example
-------
>>> from grn_sim import GrnParams, simulate_screen  # benchmarks/grn_sim.py
>>> from aivc.instruments.perturbation_fit import fit_manipulator
>>> from aivc.instruments.perturbation_screen import PerturbationScreen, coexpression_gene_urs, split_conditions
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

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.instruments.perturbation_nets import Encoder, direct_change, ensemble_forward
from aivc.instruments.perturbation_screen import GeneURs, PerturbationScreen, baseline_effects, mse, pearson_delta, targets_of
from aivc.instruments.registry import InstrumentError, InstrumentRecord, register_loader

KIND = "manipulator"
TYPE = "perturbation"
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
    encoder: Encoder
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
            enc = Encoder(str(rec.config["encoder"]), weights["expr_mean"], comps, weights["decoder"], weights["z_mean"], weights["direct"])
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
