"""Perturbation screens in memory: conditions, gene URs, the screen, splits, metrics, baselines.

A screen is a dataset whose cells carry ``perturbation_targets`` (see
:mod:`aivc.ingest.perturbation_fields`), held as log-normalized expression with one condition
per cell (``control``, ``TP53`` or ``MYC;TP53``). :func:`split_conditions` holds conditions out
for evaluation, and :func:`pearson_delta`, :func:`mse` and :func:`baseline_effects` score a
prediction next to the ``no_change``, ``mean`` and ``additive`` baselines (see
:mod:`aivc.instruments.manipulator`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import NotFoundError, UsageError
from aivc.store.lineage import Lineage

CONTROL = "control"
DELIMITER = ";"

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
        from aivc.store.features import get_version, read_vectors

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
    feature-store cell URs (``cell_ur_ref``) in the same cell order; ``source`` names the
    dataset version, organism and lake state it was read from.
    """

    expression: np.ndarray
    gene_ids: tuple[str, ...]
    conditions: np.ndarray
    cell_ur: np.ndarray | None = None
    cell_ur_ref: str | None = None
    obs_ids: np.ndarray | None = None
    gene_symbols: tuple[str, ...] | None = None
    source: Lineage = field(default_factory=Lineage)

    @classmethod
    def from_counts(cls, counts: Any, gene_ids: Sequence[str], conditions: Sequence[str], *, target_sum: float = 1e4, **kw: Any) -> PerturbationScreen:
        """Log-normalize raw counts (dense or sparse) into a screen."""
        from aivc.store.read import lognormalize

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
