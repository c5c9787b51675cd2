"""Ray Train jobs: train a scale model on the lake, checkpoint every epoch, resume, register.

One loop serves every model type (``cfg.model_type``, built with
:func:`aivc.training.models.model_class`). A model with ``gene_tokens`` (``cell-transformer``)
reads genes through gene URs, which live in the feature store (:mod:`aivc.store.features`,
read with :func:`~aivc.store.features.gene_table`). The driver resolves ``cfg.gene_ur`` to one
exact version, keeps only the genes that have a vector in it, records the version in the
run and in the registered model's ``lineage.gene_ur``, reads the vectors in plan gene
order and hands them to every worker, which sets them as the model's (non-persistent)
gene table.

A run lives in ``<lake>/models/.runs/<run_id>/``::

    run.json              the run record (schema_name aivc.training_run): config, status, model
                          ref, and ``gene_ur`` (the exact gene UR version) for gene-token models
    plan/                 the training plan (cells, genes, split, pinned lake state)
    progress.jsonl        one line per finished epoch (what the driver shows)
    ray/                  Ray Train's storage (RunConfig(storage_path=<run>, name="ray")):
                          checkpoint_manager_snapshot.json and epoch_NNNNNN/ checkpoints

Starting a run with the id of an existing, unfinished run resumes it: the same plan is
reused and Ray Train V2 restores the latest checkpoint from the snapshot in the reused
``RunConfig`` storage folder (the train loop reads it with ``ray.train.get_checkpoint()``).
Ray writes that snapshot in place, so a kill mid-write can cut it short; then the run
restarts from the newest complete ``epoch_*`` checkpoint instead (V2 dropped
``resume_from_checkpoint``, so the loop is told the folder). One process at a time may
train a run (``<run>/.lock``). Only ``optim.epochs`` may change on resume (to train longer). Shuffling and sampling noise
are seeded from ``seed`` and the epoch, so a resumed run continues exactly as an
uninterrupted one would.

Every epoch's metrics include ``data_wait_fraction``: the share of the training pass spent
waiting for the loader's next batch (near 0: the loader keeps up with the model).
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aivc.errors import LakeBusyError, UsageError
from aivc.store.lake import Lake, utcnow, write_json_atomic
from aivc.training.config import RESUMABLE_CHANGES, TrainingConfig, config_changes, parse_config
from aivc.training.errors import TrainingError
from aivc.store.features import GeneTable, gene_table

RUN_SCHEMA = "aivc.training_run"
RAY_NAME = "ray"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
STATE_FILE = "state.pt"
#: fewest plan genes with a gene UR that a ``gene_tokens`` model (cell-transformer) trains on
MIN_GENE_TOKENS = 50


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_id: str
    model_ref: str
    resumed_from_epoch: int
    epochs: int
    metrics: dict[str, Any]


def runs_root(lake: Lake) -> Path:
    return lake.root / "models" / ".runs"


def run_dir(lake: Lake, run_id: str) -> Path:
    return runs_root(lake) / run_id


SNAPSHOT = "checkpoint_manager_snapshot.json"


def _snapshot_epoch(rdir: Path) -> tuple[bool, int | None]:
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


def _newest_complete_checkpoint(rdir: Path) -> tuple[int, Path] | None:
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
    ok, epoch = _snapshot_epoch(rdir)
    if ok:
        return epoch
    found = _newest_complete_checkpoint(rdir)
    return found[0] if found else None


# -- the per-worker loop ---------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _allreduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _run_epoch(model: Any, loader: Any, *, optimizer: Any = None, kl_weight: float = 1.0) -> list[float]:
    """Summed (loss, reconstruction, kl) times cells, cells, and seconds spent waiting for
    batches (``iter`` and ``next`` of the loader) and in all, over one pass."""
    import torch

    sums = [0.0] * 6
    start = time.perf_counter()
    it = iter(loader)
    sums[4] += time.perf_counter() - start
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        sums[4] += time.perf_counter() - t0
        if batch is None:
            break
        n = float(batch["x"].shape[0])
        if optimizer is not None:
            out = model(batch, kl_weight=kl_weight)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                out = model(batch, kl_weight=kl_weight)
        sums[0] += float(out.loss.detach()) * n
        sums[1] += float(out.reconstruction.detach()) * n
        sums[2] += float(out.kl.detach()) * n
        sums[3] += n
    sums[5] = time.perf_counter() - start
    return sums


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train loop of every model type: runs in every worker, reports once per epoch.

    The model is ``model_class(cfg.model_type)(**loop_config["init"])``; a model with
    ``gene_tokens`` gets ``loop_config["gene_vectors"]`` (the URs of ``loop_config["gene_ur"]``,
    in plan gene order, read by the driver) as its gene table.
    """
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from aivc.training.data import CellDataset, TrainingPlan, make_loader
    from aivc.training.models import model_class

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = parse_config(loop_config["config"])
    lake = Lake.open(loop_config["lake"])
    rdir = Path(loop_config["run_dir"])
    plan = TrainingPlan.load(rdir / "plan", lake)
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))

    _seed_everything(cfg.seed)  # identical initial weights on every rank
    cls = model_class(cfg.model_type)
    model = cls(**loop_config["init"])
    if getattr(cls, "gene_tokens", False):  # a copy: what Ray hands over may be read-only
        model.set_gene_table(torch.from_numpy(np.array(loop_config["gene_vectors"], dtype=np.float32)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    start_epoch, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and loop_config.get("resume_dir"):
        ckpt = ray.train.Checkpoint.from_directory(loop_config["resume_dir"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model

    bs, chunk = cfg.optim.batch_size, cfg.data.chunk_rows
    train_ds = CellDataset(plan, "train", batch_size=bs, seed=cfg.seed, rank=rank, world_size=world, chunk_rows=chunk, pad=True, shuffle_block=cfg.data.shuffle_block)
    val_ds = CellDataset(plan, "validation", batch_size=bs, shuffle=False, rank=rank, world_size=world, chunk_rows=chunk)
    def loader(ds: CellDataset) -> Any:
        return make_loader(ds, cfg.data.loader_workers)

    for epoch in range(start_epoch, cfg.optim.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)  # sampling noise: resume-exact
        warm = getattr(cfg.optim, "kl_warmup_epochs", 0)
        kl_weight = min(1.0, epoch / warm) if warm else 1.0
        train_ds.set_epoch(epoch)
        model.train()
        tr = _allreduce_sum(_run_epoch(model, loader(train_ds), optimizer=optimizer, kl_weight=kl_weight))
        core.eval()
        va = _allreduce_sum(_run_epoch(core, loader(val_ds), kl_weight=1.0))
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": tr[0] / max(tr[3], 1.0),
            "train_reconstruction": tr[1] / max(tr[3], 1.0),
            "train_kl": tr[2] / max(tr[3], 1.0),
            "kl_weight": kl_weight,
            "validation_loss": va[0] / va[3] if va[3] else None,
            "validation_reconstruction": va[1] / va[3] if va[3] else None,
            "validation_kl": va[2] / va[3] if va[3] else None,
            "data_wait_fraction": round(tr[4] / tr[5], 4) if tr[5] > 0 else 0.0,
            "seconds": round(time.perf_counter() - t0, 4),
            "resumed_from_epoch": start_epoch,
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "history": history}
                torch.save(state, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch + 1:06d}")
        if rank == 0:
            with open(rdir / "progress.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
    return {"resumed_from_epoch": start_epoch, "epochs": cfg.optim.epochs}


# -- the driver ---------------------------------------------------------------------------------
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


def _build_plan(lake: Lake, cfg: TrainingConfig) -> tuple[Any, str | None]:
    """The run's training plan and, for a ``gene_tokens`` model, the exact gene UR ref.

    A gene-token model trains only on genes with a UR in ``cfg.gene_ur`` (read from the
    feature store); the most variable genes (``data.n_top_genes``) are chosen among those.
    """
    from dataclasses import replace

    import numpy as np
    import pandas as pd

    from aivc.training.data import build_plan, top_genes
    from aivc.training.models import model_class

    if not getattr(model_class(cfg.model_type), "gene_tokens", False):
        return build_plan(lake, cfg.data, cfg.seed), None
    assert cfg.gene_ur is not None  # the config requires it
    plan = build_plan(lake, cfg.data.model_copy(update={"n_top_genes": None}), cfg.seed)
    table = gene_table(lake, cfg.gene_ur, plan.gene_ids)
    keep = np.isin(np.asarray(plan.gene_ids, dtype=object), np.asarray(table.gene_ids, dtype=object))
    if int(keep.sum()) < MIN_GENE_TOKENS:
        raise UsageError(
            f"only {int(keep.sum())} of the {plan.n_genes} genes of the training data have a vector in {table.ref}; "
            f"{cfg.model_type} needs at least {MIN_GENE_TOKENS} (use gene URs computed over these datasets)",
            where="gene_ur",
        )
    plan = replace(plan, gene_ids=tuple(np.asarray(plan.gene_ids, dtype=object)[keep]), gene_joinids=plan.gene_joinids[keep], masks=plan.masks[:, keep])
    n_top = cfg.data.n_top_genes
    if n_top is not None and n_top < plan.n_genes:
        genes = pd.DataFrame({"gene_id": list(plan.gene_ids), "soma_joinid": plan.gene_joinids})
        top = top_genes(lake, plan.datasets, plan.high_water, plan.cells, genes, plan.masks, n_top, cfg.data.chunk_rows)
        if top.size < MIN_GENE_TOKENS:  # only genes that vary are kept
            raise UsageError(f"only {top.size} of the genes with a vector in {table.ref} vary across the cells; {cfg.model_type} needs at least {MIN_GENE_TOKENS}", where="data.n_top_genes")
        plan = replace(plan, gene_ids=tuple(plan.gene_ids[i] for i in top), gene_joinids=plan.gene_joinids[top], masks=plan.masks[:, top])
    return plan, table.ref


def _model_init(cfg: TrainingConfig, plan: Any, table: GeneTable | None) -> dict[str, Any]:
    """The JSON-able constructor arguments of the run's model (registered as ``init``)."""
    if table is None:
        return {"n_genes": plan.n_genes, "n_batches": plan.n_batches, **cfg.model.model_dump()}
    return {"gene_dim": table.dim, **cfg.model.model_dump()}


def _run_gene_table(lake: Lake, plan: Any, gene_ur: str | None, rdir: Path) -> GeneTable | None:
    """The gene table of a gene-token run (the URs of ``gene_ur`` in plan gene order), else None."""
    if gene_ur is None:
        return None
    table = gene_table(lake, gene_ur, plan.gene_ids)
    if table.gene_ids != plan.gene_ids:
        raise TrainingError(f"{table.ref} has no vector for some genes of the run's plan", where=str(rdir))
    return table


def _prepare_run(lake: Lake, cfg: TrainingConfig, run_id: str) -> tuple[Path, bool, str | None]:
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
        if rec.get("status") == "registered" and cfg.optim.epochs <= int(rec.get("epochs_done", 0)):
            raise UsageError(
                f"run {run_id!r} already finished and was registered as {rec.get('model_ref')}; raise optim.epochs to train it further or use a new --run-id",
                where="--run-id",
            )
        return rdir, True, rec.get("gene_ur")
    plan, gene_ur = _build_plan(lake, cfg)
    plan.save(rdir / "plan")
    record = {"schema_name": RUN_SCHEMA, "schema_version": 1, "run_id": run_id, "created_at": utcnow(), "status": "running", "config": cfg.model_dump(mode="json")}
    if gene_ur is not None:
        record["gene_ur"] = gene_ur
    write_json_atomic(record_path, record)
    return rdir, False, gene_ur


def new_run_id(cfg: TrainingConfig) -> str:
    import uuid

    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


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
    with _run_lock(rdir):
        try:
            return _train_locked(
                lake, cfg, run_id, workers=workers, ray_address=ray_address, on_epoch=on_epoch, on_start=on_start, object_store_memory=object_store_memory
            )
        finally:
            if not (rdir / "run.json").exists():  # failed before the run was recorded: leave no trace
                import shutil

                shutil.rmtree(rdir, ignore_errors=True)


@contextlib.contextmanager
def _run_lock(rdir: Path) -> Iterator[None]:
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
    from aivc.training.data import TrainingPlan

    rdir, resumed, gene_ur = _prepare_run(lake, cfg, run_id)
    plan = TrainingPlan.load(rdir / "plan", lake)
    table = _run_gene_table(lake, plan, gene_ur, rdir)
    init = _model_init(cfg, plan, table)
    if on_start is not None:
        counts = plan.cells["split"].value_counts()
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
                "model_type": cfg.model_type,
                "gene_ur": gene_ur,
            }
        )

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    resume_from = None
    snapshot_ok, _ = _snapshot_epoch(rdir)
    if not snapshot_ok:
        # Ray Train writes its snapshot in place: a kill mid-write leaves it cut short, and
        # Ray would refuse the run. Restart from the newest complete checkpoint instead.
        found = _newest_complete_checkpoint(rdir)
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
            },
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(
                name=RAY_NAME,
                storage_path=str(rdir),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                failure_config=ray.train.FailureConfig(max_failures=0),
            ),
        )
        if tail:
            tail.start()
        try:
            result = trainer.fit()
        except Exception as exc:  # ray.train.TrainingFailedError and controller errors
            raise TrainingError(f"training run {run_id} failed: {_first_line(exc)} (resume it with --run-id {run_id})", where=str(rdir)) from exc
        finally:
            if tail:
                tail.stop.set()
                tail.join()
                tail.poll()
        if result.checkpoint is None:
            raise TrainingError(f"training run {run_id} ended without a checkpoint", where=str(rdir))
        return _register(lake, cfg, rdir, run_id, result, workers, init=init, gene_ur=gene_ur)
    finally:
        if started:
            ray.shutdown()


def _first_line(exc: BaseException) -> str:
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = str(inner).strip().splitlines()
    last = [ln for ln in text if ln.strip()]
    return f"{type(inner).__name__}: {last[-1] if last else ''}"


def _register(lake: Lake, cfg: TrainingConfig, rdir: Path, run_id: str, result: Any, workers: int, *, init: dict[str, Any], gene_ur: str | None) -> TrainResult:
    import ray
    import torch

    from aivc.training.data import TrainingPlan
    from aivc.training.registry import register_model

    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    plan = TrainingPlan.load(rdir / "plan", lake)
    history = list(state["history"])
    final = history[-1]
    resumed = int(final.get("resumed_from_epoch", 0))
    unmeasured = {ds: [g for g, m in zip(plan.gene_ids, plan.masks[b], strict=True) if not m] for b, ds in enumerate(plan.batch_categories)}
    base = plan.lineage()
    notes = {"validation": plan.validation, "genes_mode": plan.genes_mode, "unmeasured_genes": {k: v for k, v in unmeasured.items() if v}}
    lineage = replace(base, gene_ur=gene_ur, extra=base.extra | notes)  # gene_ur: the exact version whose vectors are the gene tokens
    rec = register_model(
        lake,
        cfg.name,
        model_type=cfg.model_type,
        state_dict=state["model"],
        init=init,
        config=cfg.model_dump(mode="json"),
        gene_ids=plan.gene_ids,
        encodings={"batch": list(plan.batch_categories)},
        metrics={k: v for k, v in final.items() if k not in ("seconds",)},
        lineage=lineage,
        history=history,
        training={"run_id": run_id, "epochs": int(state["epoch"]), "resumed_from_epoch": resumed, "workers": workers, "ray_version": ray.__version__, "torch_version": torch.__version__},
    )
    rec_path = rdir / "run.json"
    run = json.loads(rec_path.read_text())
    run.update({"status": "registered", "model_ref": rec.ref, "epochs_done": int(state["epoch"]), "config": cfg.model_dump(mode="json"), "finished_at": utcnow()})
    write_json_atomic(rec_path, run)
    return TrainResult(run_id=run_id, model_ref=rec.ref, resumed_from_epoch=resumed, epochs=int(state["epoch"]), metrics=rec.metrics)
