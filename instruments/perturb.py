"""Perturbation manipulators over the lake: read a screen, train and register, run experiments.

* :func:`load_screen` reads a perturbation screen (a dataset version whose cells
  has ``perturbation_targets``) from the lake: counts from SOMA (log-normalized over all genes
  the dataset measured, then the most variable genes and every measured target kept), and
  optionally its cell URs from the feature store.
* :func:`train_manipulator` trains a :class:`~aivc.instruments.manipulator.PerturbationManipulator`
  on it, evaluates it on held-out conditions next to the baselines and registers it as an
  instrument of kind ``manipulator`` (type ``perturbation``): ``reads`` is the gene UR version,
  ``config["cell_ur"]`` the cell UR version (``None``: a PCA fitted on the screen and stored
  with the instrument); ``metrics["held_out"]`` the evaluation; ``lineage`` the screen version,
  the lake state and the lineage of the gene URs.
* :func:`perturb` runs an in-silico experiment: knock down genes (symbols or Ensembl ids) in the
  control cells of a dataset (by default the training screen), optionally of one cell type.

Example
-------
>>> # aivc manipulator train --dataset screen --gene-ur gene:coexpr@1 --name knockdown
>>> # aivc perturb --instrument knockdown@1 --genes TP53,MYC --json
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import NotFoundError, UsageError
from aivc.instruments.manipulator import KIND, TYPE, Evaluation, ManipulatorParams, PerturbationManipulator, PerturbationPrediction, evaluate
from aivc.instruments.perturbation_fit import fit_manipulator
from aivc.instruments.perturbation_screen import CONTROL, GeneURs, PerturbationScreen, condition_of, split_conditions, targets_of
from aivc.instruments.registry import InstrumentRecord, get_instrument, load_instrument, register_instrument
from aivc.progress import NullProgress, Progress
from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage
from aivc.store.read import LakeQuery, lognormalize, version_cells, version_features

FIELD = "perturbation_targets"


def _dataset_cells(lake: Lake, dataset: str) -> tuple[DatasetVersion, pd.DataFrame, pd.DataFrame]:
    """A dataset version, its cells and the genes it measured."""
    v = Catalog(lake).get(dataset)
    return v, version_cells(lake, v), version_features(lake, v, ["gene_id", "soma_joinid", "feature_name"])


def _lognormalized(lake: Lake, v: DatasetVersion, joinids: np.ndarray, genes: pd.DataFrame, chunk_rows: int, target_sum: float) -> Any:
    """Log-normalized counts (CSR) of cells over all genes of ``genes`` (totals over those genes)."""
    import scipy.sparse as sp

    q = LakeQuery.of(lake, [v])
    gj = genes["soma_joinid"].to_numpy(np.int64)
    parts = [lognormalize(X, target_sum).astype(np.float32) for _, X in q.chunks(joinids, gj, chunk_rows=chunk_rows, dense=False)]
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, len(gj)), dtype=np.float32)


def load_screen(
    lake: Lake,
    dataset: str,
    *,
    cell_ur: str | None = None,
    n_top_genes: int = 2000,
    target_sum: float = 1e4,
    chunk_rows: int = 8192,
) -> PerturbationScreen:
    """Read a perturbation screen (``DATASET[@VERSION]``) from the lake into memory.

    Raises
    ------
    UsageError
        If the dataset has no ``perturbation_targets`` (code ``NOT_A_SCREEN``), or cells lack URs
        in ``cell_ur``.
    """
    v, cells, genes = _dataset_cells(lake, dataset)
    if FIELD not in cells.columns:
        raise UsageError(
            f"dataset {v.ref} has no {FIELD}: it is not a perturbation screen (declare obs.{FIELD} in its manifest)",
            where="--dataset",
            code="NOT_A_SCREEN",
        )
    conditions = np.array([condition_of(targets_of(str(c))) for c in cells[FIELD].fillna(CONTROL)], dtype=object)
    X = _lognormalized(lake, v, cells["soma_joinid"].to_numpy(np.int64), genes, chunk_rows, target_sum)
    mean = np.asarray(X.mean(axis=0)).ravel()
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    targets = {t for c in set(conditions.tolist()) for t in targets_of(c)}
    keep = set(np.argsort(-var, kind="stable")[:n_top_genes].tolist()) | set(np.flatnonzero(genes["gene_id"].isin(targets)).tolist())
    cols = np.array(sorted(keep), dtype=np.int64)
    ur = None
    ref = None
    if cell_ur is not None:
        ur, ref = _cell_urs(lake, cell_ur, cells["obs_id"].to_numpy(), v.ref)
    return PerturbationScreen(
        expression=np.asarray(X[:, cols].toarray(), dtype=np.float32),
        gene_ids=tuple(genes["gene_id"].to_numpy()[cols].astype(str)),
        conditions=conditions,
        cell_ur=ur,
        cell_ur_ref=ref,
        obs_ids=cells["obs_id"].to_numpy(),
        gene_symbols=tuple(genes["feature_name"].to_numpy()[cols].astype(str)),
        source=Lineage(dataset=v.ref, organism=v.organism_name, lake_state={v.organism_name: Catalog(lake).high_water(v.organism_name)}),
    )


def _cell_urs(lake: Lake, ref: str, obs_ids: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """URs of ``obs_ids`` (in that order) from a cell embedding version; every cell must have one."""
    from aivc.store.features import get_version, read_vectors

    ev = get_version(lake, ref)
    if ev.entity != "cell":
        raise UsageError(f"{ev.ref} holds {ev.entity} URs; --cell-ur needs a cell embedding (cell:NAME@VERSION)", where="--cell-ur")
    table, vectors = read_vectors(lake, ev, ids=list(obs_ids))
    pos = pd.Index(table.column("id").to_pylist()).get_indexer(obs_ids)
    if (pos < 0).any():
        missing = obs_ids[pos < 0]
        raise UsageError(
            f"{len(missing)} of {len(obs_ids)} cells of {what} have no UR in {ev.ref} (e.g. {missing[0]!r}); embed them first, e.g. `aivc embed pca`",
            where="--cell-ur",
        )
    return vectors[pos].astype(np.float32), ev.ref


@dataclass(frozen=True)
class TrainResult:
    """A registered manipulator and its held-out evaluation."""

    record: InstrumentRecord
    manipulator: PerturbationManipulator
    evaluation: Evaluation
    test_conditions: tuple[str, ...]


def train_manipulator(
    lake: Lake,
    name: str,
    *,
    dataset: str,
    gene_ur: str,
    cell_ur: str | None = None,
    params: ManipulatorParams = ManipulatorParams(),
    holdout_fraction: float = 0.2,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a perturbation manipulator on a screen, evaluate it on held-out conditions, register it.

    Parameters
    ----------
    name
        Instrument name (lower-case letters, digits, ``_``); each call makes a new version.
    dataset
        The screen, ``DATASET[@VERSION]`` (latest when no version).
    gene_ur
        Gene UR version, ``gene:NAME[@VERSION]`` (resolved to an exact version and recorded).
    cell_ur
        Cell UR version to read instead of fitting a PCA on the screen.
    holdout_fraction
        Fraction of single-gene conditions (and of combinations) held out for the evaluation.
    """
    from aivc.store.features import get_version
    from aivc.instruments.registry import check_name

    check_name(name)
    progress = progress or NullProgress()
    progress.phase("reading the screen")
    screen = load_screen(lake, dataset, cell_ur=cell_ur, n_top_genes=params.n_top_genes, target_sum=params.target_sum)
    gene_urs = GeneURs.from_store(lake, gene_ur)
    train, test = split_conditions(screen.condition_names, holdout_fraction, seed=params.seed)
    progress.phase(f"training {params.n_members} ensemble members on {len(train)} conditions")
    m = fit_manipulator(screen, gene_urs, params, train_conditions=train)
    progress.phase(f"evaluating on {len(test)} held-out conditions")
    ev = evaluate(m, screen, test)
    gv = get_version(lake, gene_urs.ref)
    metrics = {
        "held_out": ev.summary(),
        "test_conditions": list(test),
        "n_train_conditions": len(m.train_conditions),
        "n_cells": int(len(screen.conditions)),
        "n_control_cells": int(screen.is_control.sum()),
        "remaining_fraction": [round(float(f), 4) for f in m.remaining_fraction],
    }
    notes = {
        "gene_ur": {"ref": gv.ref, "source": gv.source, "lineage": gv.lineage.to_record()},  # the gene URs and their own lineage
        "cell_ur": screen.cell_ur_ref or "pca fitted on the training cells (stored with the instrument)",
    }
    lineage = replace(screen.source, extra=screen.source.extra | notes)
    outputs = {
        "ur_shift": {"space": screen.cell_ur_ref or "pca", "dim": int(m.z_center.size)},
        "expression": {"units": "log1p(1e4 * counts / total)", "n_genes": len(m.gene_ids)},
        "uncertainty": f"std across {m.n_members} ensemble members",
    }
    rec = register_instrument(
        lake, name, kind=KIND, type=TYPE, reads=gene_urs.ref, weights=m.weights(), outputs=outputs, metrics=metrics,
        lineage=lineage, config=m.config(), description=f"perturbation manipulator trained on {screen.source.dataset}",
    )  # fmt: skip
    return TrainResult(rec, m, ev, tuple(test))


@dataclass(frozen=True)
class PerturbResult:
    """An in-silico experiment: which genes, on which cells, and the prediction."""

    instrument: str
    dataset: str
    cell_type: str | None
    genes: tuple[dict[str, str], ...]
    prediction: PerturbationPrediction
    n_genes_not_measured: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        p = self.prediction
        return {
            "status": "ok",
            "instrument": self.instrument,
            "dataset": self.dataset,
            "cell_type": self.cell_type,
            "n_cells": p.n_cells,
            "genes": list(self.genes),
            "n_genes_not_measured": self.n_genes_not_measured,
            "ur_shift_norm": round(float(np.linalg.norm(p.ur_shift)), 4),
            "ur_shift_std_mean": round(float(p.ur_shift_std.mean()), 4),
            "top": [{k: (round(float(v), 4) if isinstance(v, float | np.floating) else v) for k, v in r.items()} for r in p.top(top).to_dict("records")],
        }


def _resolve_targets(m: PerturbationManipulator, genes: Sequence[str], organism: str) -> list[dict[str, str]]:
    from aivc.ingest.perturbation_fields import resolve_gene

    out = []
    for g in genes:
        r = resolve_gene(g, organism)
        if r.gene_id is None:
            raise NotFoundError(r.message, where=f"--genes {g}", code=r.code)
        if m.gene_urs.missing([r.gene_id]):
            raise NotFoundError(
                f"{g} ({r.gene_id}) has no UR in {m.gene_urs.ref}; the manipulator can only perturb genes with a molecular UR",
                where=f"--genes {g}",
            )
        out.append({"input": g, "gene_id": r.gene_id, "symbol": r.symbol})
    return out


def perturb(
    lake: Lake,
    instrument: str,
    genes: Sequence[str],
    *,
    dataset: str | None = None,
    cell_type: str | None = None,
    chunk_rows: int = 8192,
) -> PerturbResult:
    """Knock down ``genes`` in silico in the control cells of ``dataset`` (default: the training screen).

    Cells are the dataset's control cells if it is a screen (else all its cells), optionally
    only those whose ``cell_type`` label or term id is ``cell_type``.
    """
    if not genes:
        raise UsageError("name at least one gene to knock down, e.g. --genes TP53", where="--genes")
    rec = get_instrument(lake, instrument)
    if (rec.kind, rec.type) != (KIND, TYPE):
        raise UsageError(f"{rec.ref} is a {rec.kind} of type {rec.type!r}; aivc perturb needs a perturbation manipulator", where="--instrument")
    m: PerturbationManipulator = load_instrument(lake, rec)
    trained_on = rec.lineage.organism
    targets = _resolve_targets(m, genes, trained_on or "homo_sapiens")
    dataset = dataset or rec.lineage.dataset
    if dataset is None:
        raise UsageError(f"{rec.ref} records no dataset it was trained on; name one with --dataset", where="--dataset")
    v, cells, dgenes = _dataset_cells(lake, dataset)
    if trained_on is not None and v.organism_name != trained_on:
        raise UsageError(f"{v.ref} is {v.organism_name} but {rec.ref} was trained on {trained_on}", where="--dataset")
    chosen = cells[cells[FIELD].fillna(CONTROL) == CONTROL] if FIELD in cells.columns else cells
    if cell_type is not None:
        chosen = chosen[(chosen["cell_type"] == cell_type) | (chosen["cell_type_ontology_term_id"] == cell_type)]
        if chosen.empty:
            have = ", ".join(sorted(map(str, cells["cell_type"].unique()))[:10])
            raise UsageError(f"no {'control ' if FIELD in cells.columns else ''}cells of {v.ref} have cell type {cell_type!r} (there: {have})", where="--cell-type")
    n_missing = 0
    if m.encoder.kind == "store":
        z, _ = _cell_urs(lake, str(m.cell_ur_ref), chosen["obs_id"].to_numpy(), v.ref)
    else:
        X = _lognormalized(lake, v, chosen["soma_joinid"].to_numpy(np.int64), dgenes, chunk_rows, m.params.target_sum)
        pos = pd.Index(dgenes["gene_id"].astype(str)).get_indexer(list(m.gene_ids))
        n_missing = int((pos < 0).sum())
        expr = np.broadcast_to(m.encoder.mean, (X.shape[0], len(m.gene_ids))).copy()  # unmeasured genes: the mean (no pull)
        expr[:, pos >= 0] = X[:, pos[pos >= 0]].toarray()
        z = m.encode(expr)
    pred = m.predict(z, [t["gene_id"] for t in targets])
    return PerturbResult(rec.ref, v.ref, cell_type, tuple(targets), pred, n_missing)
