"""Finishing a training run: register its model from the last checkpoint and mark the run registered.

:func:`register_run` registers the model (weights, init, genes, encodings, metrics, history and
lineage, see :mod:`aivc.training.registry`) and records ``status: registered`` with the model
ref in the run's ``run.json``; it returns the :class:`TrainResult` of the run. A
``cell-multimodal-vae`` model records its RNA genes as ``gene_ids`` and every other
measurement's features under ``encodings["features:<M>"]``
(:func:`aivc.training.multimodal.record_fields`), and its lineage names the dataset versions
each measurement came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aivc.store.lake import Lake, utcnow, write_json_atomic
from aivc.training.config import TrainingConfig
from aivc.training.runs import STATE_FILE


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_id: str
    model_ref: str
    resumed_from_epoch: int
    epochs: int
    metrics: dict[str, Any]


def register_run(lake: Lake, cfg: TrainingConfig, rdir: Path, run_id: str, result: Any, workers: int, *, init: dict[str, Any], gene_ur: str | None) -> TrainResult:
    import ray
    import torch

    from aivc.training.data import TrainingPlan
    from aivc.training.registry import register_model

    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    plan = TrainingPlan.load(rdir / "plan", lake)
    history = list(state["history"])
    final = history[-1]
    best = state.get("best")  # early stopping: register the epoch with the lowest validation loss
    weights = state["model"] if best is None else best["model"]
    chosen = final if best is None else next(m for m in history if m["epoch"] == best["epoch"])
    resumed = int(final.get("resumed_from_epoch", 0))
    unmeasured = {ds: [g for g, m in zip(plan.gene_ids, plan.masks[b], strict=True) if not m] for b, ds in enumerate(plan.batch_categories)}
    base = plan.lineage()
    notes = {"validation": plan.validation, "genes_mode": plan.genes_mode, "unmeasured_genes": {k: v for k, v in unmeasured.items() if v}}
    fields: dict[str, Any] = {"gene_ids": plan.gene_ids, "encodings": {"batch": list(plan.batch_categories)}}
    from aivc.training.multimodal import MODEL_TYPE, record_fields

    if cfg.model_type == MODEL_TYPE:  # per-measurement feature lists; which versions gave each measurement
        from aivc.training.multimodal_data import load_measurements

        mm = load_measurements(rdir / "plan", plan)
        fields = record_fields(mm.features(), plan.batch_categories)
        notes["measurements"] = mm.lineage_notes()
    lineage = replace(base, gene_ur=gene_ur, extra=base.extra | notes)  # gene_ur: the exact version whose vectors are the gene tokens
    rec = register_model(
        lake,
        cfg.name,
        model_type=cfg.model_type,
        state_dict=weights,
        init=init,
        config=cfg.model_dump(mode="json"),
        gene_ids=fields["gene_ids"],
        encodings=fields["encodings"],
        metrics={k: v for k, v in chosen.items() if k not in ("seconds",)},
        lineage=lineage,
        history=history,
        training={"run_id": run_id, "epochs": int(state["epoch"]), "resumed_from_epoch": resumed, "workers": workers, **_stopping(best, cfg), "ray_version": ray.__version__, "torch_version": torch.__version__},
    )
    rec_path = rdir / "run.json"
    run = json.loads(rec_path.read_text())
    run.update({"status": "registered", "model_ref": rec.ref, "epochs_done": int(state["epoch"]), "config": cfg.model_dump(mode="json"), "finished_at": utcnow()})
    write_json_atomic(rec_path, run)
    return TrainResult(run_id=run_id, model_ref=rec.ref, resumed_from_epoch=resumed, epochs=int(state["epoch"]), metrics=rec.metrics)


def _stopping(best: dict[str, Any] | None, cfg: TrainingConfig) -> dict[str, Any]:
    """The record's early-stopping fields: which epoch's weights were registered and whether
    the run stopped (``patience`` epochs without improvement) before its planned last epoch."""
    if best is None:
        return {}
    patience = int(getattr(cfg.optim, "early_stopping_patience", 0))
    return {"best_epoch": int(best["epoch"]), "stopped_early": bool(patience) and int(best["bad_epochs"]) >= patience}
