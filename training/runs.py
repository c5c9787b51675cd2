"""A training run's folder: its layout, id, lock, record and the checkpoints it resumes from.

A run lives in ``<lake>/models/.runs/<run_id>/``::

    run.json              the run record (schema_name aivc.training_run): config, status, model
                          ref, and ``gene_ur`` (the exact gene UR version) for gene-token models
    plan/                 the training plan (cells, genes, split, pinned lake state)
    progress.jsonl        one line per finished epoch (what the driver shows)
    ray/                  Ray Train's storage (RunConfig(storage_path=<run>, name="ray")):
                          checkpoint_manager_snapshot.json and epoch_NNNNNN/ checkpoints

Starting a run with the id of an existing, unfinished run resumes it (:func:`prepare_run`
reuses the plan and checks the config; only ``optim.epochs`` may change). Ray Train V2
restores the latest checkpoint from the snapshot in the reused ``RunConfig`` storage folder;
Ray writes that snapshot in place, so a kill mid-write can cut it short, and then
:func:`newest_complete_checkpoint` finds the newest complete ``epoch_*`` checkpoint instead.
One process at a time may train a run (:func:`run_lock`, ``<run>/.lock``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

from aivc.errors import LakeBusyError, UsageError
from aivc.store.lake import Lake, utcnow, write_json_atomic
from aivc.training.config import RESUMABLE_CHANGES, TrainingConfig, config_changes, parse_config
from aivc.training.run_plan import build_run_plan

RUN_SCHEMA = "aivc.training_run"
RAY_NAME = "ray"
STATE_FILE = "state.pt"
SNAPSHOT = "checkpoint_manager_snapshot.json"


def runs_root(lake: Lake) -> Path:
    return lake.root / "models" / ".runs"


def run_dir(lake: Lake, run_id: str) -> Path:
    return runs_root(lake) / run_id


def snapshot_epoch(rdir: Path) -> tuple[bool, int | None]:
    """(snapshot readable, epochs of its latest checkpoint); (True, None) when there is none."""
    snap = rdir / RAY_NAME / SNAPSHOT
    if not snap.exists():
        return True, None
    try:
        latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
    except (OSError, json.JSONDecodeError, AttributeError):
        return False, None
    m = re.search(r"epoch_(\d+)", json.dumps(latest)) if latest else None
    return True, int(m.group(1)) if m else None


def newest_complete_checkpoint(rdir: Path) -> tuple[int, Path] | None:
    """The newest ``epoch_*`` checkpoint folder whose state file loads."""
    import torch

    for d in sorted((rdir / RAY_NAME).glob("epoch_*"), reverse=True):
        try:
            state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=False)
            return int(state["epoch"]), d
        except Exception:  # noqa: BLE001 - a checkpoint cut short by a kill: try the one before
            continue
    return None


def latest_checkpoint_epoch(lake: Lake, run_id: str) -> int | None:
    """Epochs completed by the checkpoint a resumed run starts from (None: none yet)."""
    rdir = run_dir(lake, run_id)
    ok, epoch = snapshot_epoch(rdir)
    if ok:
        return epoch
    found = newest_complete_checkpoint(rdir)
    return found[0] if found else None


def prepare_run(lake: Lake, cfg: TrainingConfig, run_id: str) -> tuple[Path, bool, str | None]:
    """Create the run folder and plan, or check a resumed run's config; returns
    (dir, resumed, the exact gene UR ref of a gene-token model, recorded in ``run.json``)."""
    rdir = run_dir(lake, run_id)
    record_path = rdir / "run.json"
    if record_path.is_file():
        rec = json.loads(record_path.read_text())
        old = parse_config(rec["config"])
        changed = [k for k in config_changes(old, cfg) if k not in RESUMABLE_CHANGES]
        if changed:
            raise UsageError(
                f"run {run_id!r} was started with a different config ({', '.join(changed)}); resume it with the same config or use a new --run-id",
                where="--run-id",
            )
        if rec.get("status") == "registered" and (cfg.optim.epochs == "auto" or cfg.optim.epochs <= int(rec.get("epochs_done", 0))):
            raise UsageError(
                f"run {run_id!r} already finished and was registered as {rec.get('model_ref')}; raise optim.epochs to train it further or use a new --run-id",
                where="--run-id",
            )
        return rdir, True, rec.get("gene_ur")
    plan, gene_ur = build_run_plan(lake, cfg)
    plan.save(rdir / "plan")
    record = {"schema_name": RUN_SCHEMA, "schema_version": 1, "run_id": run_id, "created_at": utcnow(), "status": "running", "config": cfg.model_dump(mode="json")}
    if gene_ur is not None:
        record["gene_ur"] = gene_ur
    write_json_atomic(record_path, record)
    return rdir, False, gene_ur


def new_run_id(cfg: TrainingConfig) -> str:
    import uuid

    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def run_lock(rdir: Path) -> Iterator[None]:
    """Hold ``<run>/.lock`` so one process at a time trains (or resumes) a run."""
    import fcntl

    rdir.mkdir(parents=True, exist_ok=True)
    with open(rdir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeBusyError(f"run {rdir.name!r} is being trained by another process; wait for it or use a new --run-id", where=str(rdir)) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
