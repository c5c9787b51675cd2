"""Ray Train jobs: train a scale model on the lake, checkpoint every epoch, resume, register.

:func:`train` is the driver: it prepares the run folder (a new run's plan, or a resumed run's
checked config, :mod:`aivc.training.runs`), reads what the run trains on (the plan, a
gene-token model's gene URs, :mod:`aivc.training.run_plan`), starts Ray, runs
:func:`~aivc.training.train_loop.train_loop_per_worker` on every worker with a
``TorchTrainer`` whose ``RunConfig`` storage is the run folder, shows each epoch as it ends
and registers the model (:mod:`aivc.training.run_registration`).

Starting a run with the id of an existing, unfinished run resumes it: the same plan is
reused and Ray Train V2 restores the latest checkpoint from the snapshot in the reused
``RunConfig`` storage folder (the train loop reads it with ``ray.train.get_checkpoint()``).
Ray writes that snapshot in place, so a kill mid-write can cut it short; then the run
restarts from the newest complete ``epoch_*`` checkpoint instead (V2 dropped
``resume_from_checkpoint``, so the loop is told the folder). One process at a time may
train a run (``<run>/.lock``). Only ``optim.epochs`` may change on resume (to train longer).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aivc.errors import UsageError
from aivc.store.lake import Lake
from aivc.training.config import TrainingConfig
from aivc.training.errors import TrainingError
from aivc.training.run_plan import model_init, run_gene_table
from aivc.training.run_registration import TrainResult, register_run
from aivc.training.runs import RAY_NAME, SNAPSHOT, latest_checkpoint_epoch, new_run_id, newest_complete_checkpoint, prepare_run, run_dir, run_lock, snapshot_epoch
from aivc.training.train_loop import train_loop_per_worker

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")


class _Tail(threading.Thread):
    """Calls ``on_epoch`` for every line appended to ``progress.jsonl`` during the run."""

    def __init__(self, path: Path, on_epoch: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(daemon=True)
        self.path, self.on_epoch = path, on_epoch
        self.offset = path.stat().st_size if path.exists() else 0
        self.stop = threading.Event()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self.offset)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):
                    break
                self.offset += len(line.encode("utf-8"))
                self.on_epoch(json.loads(line))

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.poll()


def train(
    lake: Lake,
    cfg: TrainingConfig,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    run_id: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    object_store_memory: int | None = None,
) -> TrainResult:
    """Train ``cfg`` with Ray Train on ``workers`` CPU workers and register the model.

    Resumes the run ``run_id`` from its latest checkpoint when it exists. ``on_start``
    gets a summary of the run (cells, genes, batches, resumed epoch) before Ray starts;
    ``on_epoch`` gets each finished epoch's metrics while it runs. A gene-token model
    (``cell-transformer``) reads its gene URs (``gene_ur``) from the feature store.
    """

    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}", where="--workers")
    run_id = run_id or new_run_id(cfg)
    if not _RUN_ID.match(run_id):
        raise UsageError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'", where="--run-id")
    rdir = run_dir(lake, run_id)
    with run_lock(rdir):
        try:
            return _train_locked(
                lake, cfg, run_id, workers=workers, ray_address=ray_address, on_epoch=on_epoch, on_start=on_start, object_store_memory=object_store_memory
            )
        finally:
            if not (rdir / "run.json").exists():  # failed before the run was recorded: leave no trace
                import shutil

                shutil.rmtree(rdir, ignore_errors=True)



def _train_locked(
    lake: Lake,
    cfg: TrainingConfig,
    run_id: str,
    *,
    workers: int,
    ray_address: str | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
    object_store_memory: int | None,
) -> TrainResult:
    from aivc.training.config import resolve_epochs
    from aivc.training.data import TrainingPlan

    rdir, resumed, gene_ur = prepare_run(lake, cfg, run_id)
    plan = TrainingPlan.load(rdir / "plan", lake)
    table = run_gene_table(lake, plan, gene_ur, rdir)
    init = model_init(cfg, plan, table, rdir / "plan")
    counts = plan.cells["split"].value_counts()
    epochs, warm = resolve_epochs(cfg.optim, int(counts.get("train", 0)))
    if on_start is not None:
        on_start(
            {
                "run_id": run_id,
                "run_dir": str(rdir),
                "resumed_from_epoch": (latest_checkpoint_epoch(lake, run_id) or 0) if resumed else 0,
                "n_train": int(counts.get("train", 0)),
                "n_validation": int(counts.get("validation", 0)),
                "n_genes": plan.n_genes,
                "batches": list(plan.batch_categories),
                "workers": workers,
                "epochs": epochs,
                "kl_warmup_epochs": warm,
                "model_type": cfg.model_type,
                "gene_ur": gene_ur,
            }
        )

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    resume_from = None
    snapshot_ok, _ = snapshot_epoch(rdir)
    if not snapshot_ok:
        # Ray Train writes its snapshot in place: a kill mid-write leaves it cut short, and
        # Ray would refuse the run. Restart from the newest complete checkpoint instead.
        found = newest_complete_checkpoint(rdir)
        (rdir / RAY_NAME / SNAPSHOT).unlink()
        if found is not None:
            resume_from = str(found[1])  # V2 has no resume_from_checkpoint: the loop reads it
    from aivc.ray_local import start_ray

    started = start_ray(ray_address, workers=workers, object_store_memory=object_store_memory)
    tail = _Tail(rdir / "progress.jsonl", on_epoch) if on_epoch else None
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": cfg.model_dump(mode="json"),
                "init": init,
                "gene_ur": gene_ur,
                "gene_vectors": None if table is None else table.vectors,
                "lake": lake.uri,
                "run_dir": str(rdir),
                "threads": 1,
                "resume_dir": resume_from,
                "epochs": epochs,
                "kl_warmup_epochs": warm,
            },
            # on a cluster (--ray-address) one worker per node where it can, not all on the first node that fits them
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}, placement_strategy="SPREAD" if ray_address else "PACK"),
            run_config=ray.train.RunConfig(
                name=RAY_NAME,
                storage_path=str(rdir),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        result = fit_run(trainer, tail, f"training run {run_id}", rdir, hint=f" (resume it with --run-id {run_id})")
        return register_run(lake, cfg, rdir, run_id, result, workers, init=init, gene_ur=gene_ur)
    finally:
        if started:
            ray.shutdown()


def fit_run(trainer: Any, tail: _Tail | None, what: str, rdir: Path, hint: str = "") -> Any:
    """``trainer.fit()`` with the progress tail running; a failure, or a run that ended
    without a checkpoint, is one :class:`TrainingError` naming ``what``."""
    if tail:
        tail.start()
    try:
        result = trainer.fit()
    except Exception as exc:  # ray.train.TrainingFailedError and controller errors
        raise TrainingError(f"{what} failed: {_first_line(exc)}{hint}", where=str(rdir)) from exc
    finally:
        if tail:
            tail.stop.set()
            tail.join()
            tail.poll()
    if result.checkpoint is None:
        raise TrainingError(f"{what} ended without a checkpoint", where=str(rdir))
    return result


def _first_line(exc: BaseException) -> str:
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner).strip().splitlines()
    last = [ln for ln in text if ln.strip()]
    return f"{type(inner).__name__}: {last[-1] if last else ''}"
