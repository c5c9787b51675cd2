"""The multimodal model's training data from the lake: RNA as for ``cell-vae``, plus ADT / ATAC.

:func:`build_multimodal_plan` starts from the RNA :class:`~aivc.training.data.TrainingPlan`
(:func:`~aivc.training.data.build_plan`: cells, genes, batches, split, pinned lake state) and
adds, for every measurement of ``cfg.measurements``, a :class:`MeasurementPlan`: the plan's
dataset versions that hold it, its feature vocabulary (``union`` with per-batch feature
masks, or ``intersection``; optionally the ``n_top`` most variable proteins, by variance of
``log1p`` counts, or the most often open peaks), and which batches (dataset versions) hold
it, so which cells have it. Both are computed in one streaming pass each, a chunk of cells at
a time, as are the decoders' starting biases (:func:`stream_init_stats`, the values of
:func:`aivc.training.multimodal.init_stats` over the training cells). The whole
:class:`MultimodalPlan` is saved with the run (``plan/measurements.json`` and
``plan/features_<M>.parquet`` beside the RNA plan's files), so a resumed run reads the same.

:class:`MultimodalCellDataset` streams the same cells as
:class:`~aivc.training.data.CellDataset` and adds, per measurement ``M``, ``x_M`` (float32
counts), ``mask_M`` (bool, the features the cell's batch measured) and ``present_M`` (bool,
the cell's dataset version holds ``M``), exactly as
:meth:`aivc.training.multimodal.MultimodalArrays.rows` builds them: the rows of a cell
without ``M`` are zeros, flagged absent, and never read by the model.

Example
-------
>>> mm = build_multimodal_plan(lake, CellMultimodalVaeConfig())      # doctest: +SKIP
>>> mm.save(run_dir / "plan")                                         # doctest: +SKIP
>>> ds = MultimodalCellDataset(mm.rna, "train", measurements=mm.measurements, batch_size=128)  # doctest: +SKIP
>>> sorted(next(iter(ds)))                                            # doctest: +SKIP
['batch', 'index', 'library', 'mask', 'mask_ADT', 'present_ADT', 'x', 'x_ADT']
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from aivc.errors import LakeError, UsageError
from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake, write_json_atomic
from aivc.store.measurements import get as get_measurement
from aivc.store.read import FeatureSet, LakeQuery, Options, top_variable
from aivc.training.data import CellDataset, TrainingPlan, build_plan
from aivc.training.multimodal import OTHER_MEASUREMENTS, CellMultimodalVaeConfig, MeasurementInput, MultimodalArrays, init_stats

MEASUREMENTS_SCHEMA = "aivc.training_measurements"
MEASUREMENTS_FILE = "measurements.json"
#: at most this many training cells (evenly spaced) give the decoders' starting biases
STATS_MAX_CELLS = 50_000


@dataclass(frozen=True, eq=False)
class MeasurementPlan:
    """One measurement besides RNA of a multimodal run, aligned with the RNA plan's batches.

    ``feature_ids`` / ``feature_joinids``: the vocabulary in input order (the measurement's
    SOMA var joinids). ``masks[b, f]``: batch ``b`` measured feature ``f`` (all False for a
    batch without the measurement). ``held[b]``: batch ``b``'s dataset version holds it, so
    its cells have it (``present``).
    """

    name: str
    feature_ids: tuple[str, ...]
    feature_joinids: np.ndarray
    masks: np.ndarray
    held: np.ndarray
    datasets: tuple[str, ...]
    features_mode: str = "union"
    n_top: int | None = None

    @property
    def n_features(self) -> int:
        return len(self.feature_ids)

    def present(self, batch: np.ndarray) -> np.ndarray:
        """Per cell of batch codes ``batch``: whether it has this measurement."""
        return self.held[np.asarray(batch, dtype=np.int64)]


@dataclass(frozen=True, eq=False)
class MultimodalPlan:
    """The RNA plan of a ``cell-multimodal-vae`` run plus its other measurements and starting biases."""

    rna: TrainingPlan
    measurements: tuple[MeasurementPlan, ...]
    init_stats: dict[str, list[float]] = field(default_factory=dict)

    def features(self) -> dict[str, tuple[str, ...]]:
        """The feature ids of every measurement, RNA first (what the model record lists)."""
        return {"RNA": self.rna.gene_ids, **{m.name: m.feature_ids for m in self.measurements}}

    def n_features(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.features().items()}

    def lineage_notes(self) -> dict[str, Any]:
        """Per measurement: the dataset versions that hold it, its vocabulary and the features each batch lacks."""
        out: dict[str, Any] = {}
        for m in self.measurements:
            lacks = {
                ds: [f for f, ok in zip(m.feature_ids, m.masks[b], strict=True) if not ok]
                for b, ds in enumerate(self.rna.batch_categories)
                if m.held[b]
            }
            out[m.name] = {
                "datasets": list(m.datasets),
                "n_features": m.n_features,
                "features_mode": m.features_mode,
                "n_top": m.n_top,
                "n_cells": int(m.present(self.rna.cells["batch"].to_numpy()).sum()),
                "unmeasured_features": {k: v for k, v in lacks.items() if v},
            }
        return out

    # -- persistence ------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write the RNA plan and ``measurements.json`` + ``features_<M>.parquet`` into ``folder``."""
        self.rna.save(folder)
        meta: list[dict[str, Any]] = []
        for m in self.measurements:
            frame = pd.DataFrame({"feature_id": list(m.feature_ids), "soma_joinid": m.feature_joinids})
            for b, ds in enumerate(self.rna.batch_categories):
                frame[f"measured:{ds}"] = m.masks[b]
            frame.to_parquet(folder / f"features_{m.name}.parquet", index=False)
            held = [ds for b, ds in enumerate(self.rna.batch_categories) if m.held[b]]
            meta.append({"name": m.name, "held_by": held, "datasets": list(m.datasets), "features_mode": m.features_mode, "n_top": m.n_top})
        write_json_atomic(folder / MEASUREMENTS_FILE, {"schema_name": MEASUREMENTS_SCHEMA, "schema_version": 1, "measurements": meta, "init_stats": self.init_stats})


def load_measurements(folder: Path, plan: TrainingPlan) -> MultimodalPlan:
    """The :class:`MultimodalPlan` a run saved in ``folder`` (whose RNA plan is ``plan``)."""
    try:
        meta = json.loads((folder / MEASUREMENTS_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LakeError(f"the run's measurement plan is unreadable ({exc}); start a new run", where=str(folder)) from None
    if meta.get("schema_name") != MEASUREMENTS_SCHEMA or int(meta.get("schema_version", 0)) != 1:
        raise LakeError(f"unknown measurement plan format {meta.get('schema_name')}/{meta.get('schema_version')}", where=str(folder))
    cats = plan.batch_categories
    out = []
    for d in meta["measurements"]:
        try:
            frame = pd.read_parquet(folder / f"features_{d['name']}.parquet")
            masks = np.stack([frame[f"measured:{ds}"].to_numpy(bool) for ds in cats]) if cats else np.zeros((0, len(frame)), bool)
        except (OSError, KeyError) as exc:
            raise LakeError(f"the run's {d['name']} features are unreadable ({type(exc).__name__}); start a new run", where=str(folder)) from None
        out.append(
            MeasurementPlan(
                name=d["name"],
                feature_ids=tuple(frame["feature_id"].astype(str)),
                feature_joinids=frame["soma_joinid"].to_numpy(np.int64),
                masks=masks,
                held=np.array([ds in set(d["held_by"]) for ds in cats], dtype=bool),
                datasets=tuple(d["datasets"]),
                features_mode=d["features_mode"],
                n_top=d["n_top"],
            )
        )
    return MultimodalPlan(rna=plan, measurements=tuple(out), init_stats={k: list(v) for k, v in meta.get("init_stats", {}).items()})


# -- building ---------------------------------------------------------------------------------
def _options(name: str) -> Options:
    return Options(
        organism="data.organism",
        organism_fix="choose one with --set data.organism=NAME",
        datasets="data.datasets",
        features="measurements",
        features_fix=f"use features: union for {name} in measurements, or fewer datasets",
        purpose="train on",
    )


def feature_scores(q: LakeQuery, cells: pd.DataFrame, features: FeatureSet, *, chunk_rows: int = 4096) -> np.ndarray:
    """Per feature, the score its ``n_top`` selection ranks by, over the cells whose dataset
    measured it, in one pass of ``chunk_rows`` cells: proteins (and other counts) the variance
    of ``log1p(count)``, chromatin peaks the fraction of cells in which the peak is open."""
    row_of = {v.dataset_id: i for i, v in enumerate(q.versions)}
    batch = cells["dataset_id"].map(row_of).to_numpy(np.int64)
    g = len(features)
    s1, s2, n = np.zeros(g), np.zeros(g), np.zeros(g)
    chromatin = q.measurement.modality == "chromatin"
    for sl, X in q.chunks(cells, features.joinids, chunk_rows=chunk_rows, dense=False):
        m = features.present[batch[sl]]
        V = (X > 0).astype(np.float64) if chromatin else X.astype(np.float64).log1p()
        s1 += np.asarray(V.multiply(m).sum(axis=0)).ravel()
        s2 += np.asarray(V.multiply(V).multiply(m).sum(axis=0)).ravel()
        n += m.sum(axis=0)
    mean = s1 / np.maximum(n, 1)
    return mean if chromatin else np.maximum(s2 / np.maximum(n, 1) - mean**2, 0.0)


def _measurement_plan(lake: Lake, plan: TrainingPlan, inp: MeasurementInput, chunk_rows: int) -> MeasurementPlan:
    cat = Catalog(lake)
    versions = [cat.get(ref) for ref in plan.datasets]
    holding = [v for v in versions if inp.name in v.measured()]
    if not holding:
        raise UsageError(
            f"none of the training datasets ({', '.join(plan.datasets)}) measured {inp.name}; add datasets that did, or leave it out of measurements (e.g. --set measurements=[])",
            where="measurements",
        )
    q = LakeQuery.of(lake, holding, measurement=inp.name, options=_options(inp.name), high_water=plan.high_water)
    feats = q.features(inp.features)
    if inp.n_top is not None and inp.n_top < len(feats):
        cells = plan.cells[plan.cells["dataset_id"].isin({v.dataset_id for v in holding})]
        feats = feats.take(top_variable(feature_scores(q, cells, feats, chunk_rows=chunk_rows), inp.n_top))
        if not len(feats):
            raise UsageError(f"no {inp.name} feature varies across the chosen cells, so n_top keeps none; drop n_top of {inp.name}", where="measurements")
    row_of = {v.dataset_id: i for i, v in enumerate(holding)}
    masks = np.zeros((plan.n_batches, len(feats)), dtype=bool)
    held = np.zeros(plan.n_batches, dtype=bool)
    for b, ds in enumerate(plan.batch_categories):
        if ds in row_of:
            masks[b], held[b] = feats.present[row_of[ds]], True
    spec = q.measurement
    return MeasurementPlan(
        name=inp.name,
        feature_ids=tuple(feats.frame[spec.feature_id].astype(str)),
        feature_joinids=feats.joinids,
        masks=masks,
        held=held,
        datasets=tuple(v.ref for v in holding),
        features_mode=inp.features,
        n_top=inp.n_top,
    )


def stats_cells(plan: TrainingPlan, max_cells: int = STATS_MAX_CELLS) -> pd.DataFrame:
    """The training cells the starting biases come from: all, or ``max_cells`` evenly spaced."""
    train = plan.split_cells("train")
    if len(train) > max_cells:
        train = train.iloc[np.linspace(0, len(train) - 1, max_cells).round().astype(np.int64)]
    return train


def stream_init_stats(plan: TrainingPlan, measurements: tuple[MeasurementPlan, ...], *, chunk_rows: int = 4096, max_cells: int = STATS_MAX_CELLS) -> dict[str, list[float]]:
    """:func:`aivc.training.multimodal.init_stats` of the training cells, read a chunk at a time.

    RNA and ATAC need only sums over cells (exact in float64 for counts); ADT needs each
    protein's median, so its counts (few features) of at most ``max_cells`` cells are kept.
    """
    cells = stats_cells(plan, max_cells)
    joins, batch = cells["soma_joinid"].to_numpy(np.int64), cells["batch"].to_numpy(np.int64)
    out: dict[str, list[float]] = {}
    if not len(joins):
        return out
    sums = np.zeros(plan.n_genes)
    with soma_io.DenseReader(plan.soma_uri, plan.high_water, plan.gene_joinids) as rd:
        for lo in range(0, len(joins), chunk_rows):
            sums += rd.read(joins[lo : lo + chunk_rows]).sum(axis=0, dtype=np.float64)
    out["RNA"] = np.log((sums + 1.0) / (sums.sum() + plan.n_genes)).tolist()
    for m in measurements:
        sel = joins[m.present(batch)]
        if not len(sel):
            continue
        parts: list[np.ndarray] = []
        opened, depth = np.zeros(m.n_features), 0.0
        with soma_io.DenseReader(plan.soma_uri, plan.high_water, m.feature_joinids, measurement=get_measurement(m.name)) as rd:
            for lo in range(0, len(sel), chunk_rows):
                x = rd.read(sel[lo : lo + chunk_rows])
                if m.name == "ATAC":
                    opened += (x > 0).sum(axis=0)
                    depth += float(np.log1p((x > 0).sum(axis=1)).sum())
                else:
                    parts.append(x)
        if m.name == "ATAC":
            frac = (opened + 0.5) / (len(sel) + 1.0)
            out["ATAC"] = np.log(frac / (1.0 - frac)).tolist()
            out["ATAC_log_depth"] = [depth / len(sel)]
        else:  # the median needs the values: the one formula, on the kept cells
            x = np.concatenate(parts)
            out.update(init_stats(MultimodalArrays(counts={m.name: x}, batch=np.zeros(len(x), np.int64))))
    return out


def build_multimodal_plan(lake: Lake, cfg: CellMultimodalVaeConfig) -> MultimodalPlan:
    """The RNA plan of ``cfg.data`` plus every measurement of ``cfg.measurements`` and the starting biases."""
    plan = build_plan(lake, cfg.data, cfg.seed)
    by_name = {m.name: m for m in cfg.measurements}
    ms = tuple(_measurement_plan(lake, plan, by_name[name], cfg.data.chunk_rows) for name in OTHER_MEASUREMENTS if name in by_name)
    return MultimodalPlan(rna=plan, measurements=ms, init_stats=stream_init_stats(plan, ms, chunk_rows=cfg.data.chunk_rows))


# -- streaming --------------------------------------------------------------------------------
class MultimodalCellDataset(CellDataset):
    """:class:`~aivc.training.data.CellDataset` batches plus ``x_M``, ``mask_M``, ``present_M``
    of every measurement in ``measurements``, for the same cells (one
    :class:`~aivc.store.soma_io.DenseReader` per measurement, one read per chunk, of the
    chunk's cells that have it; the others' rows are zeros flagged absent)."""

    def __init__(self, plan: TrainingPlan, split: Any = "train", *, measurements: tuple[MeasurementPlan, ...], **kwargs: Any) -> None:
        super().__init__(plan, split, **kwargs)
        for m in measurements:
            if m.masks.shape != (plan.n_batches, m.n_features) or m.held.shape != (plan.n_batches,):
                raise ValueError(f"{m.name} plan has masks {m.masks.shape} for {plan.n_batches} batches")
        self.measurements = tuple(measurements)
        self._readers: dict[str, soma_io.DenseReader] = {}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        with contextlib.ExitStack() as stack:
            self._readers = {
                m.name: stack.enter_context(soma_io.DenseReader(self.plan.soma_uri, self.plan.high_water, m.feature_joinids, measurement=get_measurement(m.name)))
                for m in self.measurements
            }
            try:
                yield from super().__iter__()
            finally:
                self._readers = {}

    def _chunk_extra(self, joins: np.ndarray, batch: np.ndarray) -> dict[str, np.ndarray]:
        from aivc.training.multimodal_nets import batch_keys

        out: dict[str, np.ndarray] = {}
        for m in self.measurements:
            xk, mk, pk = batch_keys(m.name)
            present = m.present(batch)
            mask = m.masks[batch]
            x = np.zeros((len(joins), m.n_features), dtype=np.float32)
            rows = np.flatnonzero(present)
            if rows.size:
                uniq, inverse = np.unique(joins[rows], return_inverse=True)
                x[rows] = self._readers[m.name].read(uniq)[inverse]
            x *= present[:, None] & mask  # what a cell lacks is never read
            out[xk], out[mk], out[pk] = x, mask, present
        return out


def dataset_maker(model_type: str, plan: TrainingPlan, folder: Path) -> Any:
    """The dataset class a run of ``model_type`` streams (measurements bound for a multimodal run)."""
    from functools import partial

    from aivc.training.multimodal import MODEL_TYPE

    if model_type != MODEL_TYPE:
        return CellDataset
    return partial(MultimodalCellDataset, measurements=load_measurements(folder, plan).measurements)


__all__ = [
    "MeasurementPlan",
    "MultimodalCellDataset",
    "MultimodalPlan",
    "build_multimodal_plan",
    "dataset_maker",
    "feature_scores",
    "load_measurements",
    "stream_init_stats",
]
