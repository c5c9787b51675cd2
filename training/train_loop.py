"""The Ray Train loop every worker of a training run runs: one epoch at a time, checkpointed.

:func:`train_loop_per_worker` builds the run's model, restores the latest checkpoint when the
run resumes, trains on its shard of the plan's cells and reports each epoch's metrics with a
checkpoint (rank 0 writes it and appends the metrics to ``progress.jsonl``). Shuffling and
sampling noise are seeded from ``seed`` and the epoch, so a resumed run continues exactly as an
uninterrupted one would.

Every epoch's metrics include ``data_wait_fraction``: the share of the training pass spent
waiting for the loader's next batch (near 0: the loader keeps up with the model).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from aivc.store.lake import Lake
from aivc.training.config import parse_config
from aivc.training.runs import STATE_FILE


#: at most this long between checkpoints (besides the first and the last epoch)
CHECKPOINT_SECONDS = 20.0


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


def _run_epoch(model: Any, loader: Any, *, optimizer: Any = None, kl_weight: float = 1.0, parts: tuple[str, ...] = ()) -> list[float]:
    """Summed (loss, reconstruction, kl) times cells, cells, and seconds spent waiting for
    batches (``iter`` and ``next`` of the loader) and in all, over one pass; then, for each
    name in ``parts``, that measurement's reconstruction (a multimodal loss's ``by_modality``)
    times cells."""
    import torch

    sums = [0.0] * (6 + len(parts))
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
        by = getattr(out, "by_modality", {})
        for i, m in enumerate(parts):
            sums[6 + i] += float(by[m].detach()) * n if m in by else 0.0
    sums[5] = time.perf_counter() - start
    return sums


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train loop of every model type: runs in every worker, reports once per epoch.

    The model is ``model_class(cfg.model_type)(**loop_config["init"])``; a model with
    ``gene_tokens`` gets ``loop_config["gene_vectors"]`` (the URs of ``loop_config["gene_ur"]``,
    in plan gene order, read by the driver) as its gene table. A ``cell-multimodal-vae`` run
    streams :class:`~aivc.training.multimodal_data.MultimodalCellDataset` batches (its other
    measurements read from the run's plan folder); every other type ``CellDataset``'s.
    """
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from aivc.training.data import CellDataset, TrainingPlan, make_loader
    from aivc.training.multimodal import MODEL_TYPE as MULTIMODAL
    from aivc.training.multimodal_data import dataset_maker
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
    best: dict[str, Any] | None = None  # early stopping: the lowest validation loss so far
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and loop_config.get("resume_dir"):
        ckpt = ray.train.Checkpoint.from_directory(loop_config["resume_dir"])
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        best = state.get("best")
    # a multimodal batch may hold no cell of some measurement: its expert and decoder then get
    # no gradient in that step, which DDP must be told to expect
    ddp_kwargs = {"find_unused_parameters": True} if cfg.model_type == MULTIMODAL else None
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs)
    core = model.module if hasattr(model, "module") else model

    bs, chunk = cfg.optim.batch_size, cfg.data.chunk_rows
    parts = tuple(getattr(core, "modalities", ())) if cfg.model_type == MULTIMODAL else ()
    dataset = dataset_maker(cfg.model_type, plan, rdir / "plan")  # CellDataset, or one that adds other measurements
    train_ds = dataset(plan, "train", batch_size=bs, seed=cfg.seed, rank=rank, world_size=world, chunk_rows=chunk, pad=True, shuffle_block=cfg.data.shuffle_block)
    val_ds = dataset(plan, "validation", batch_size=bs, shuffle=False, rank=rank, world_size=world, chunk_rows=chunk)
    def loader(ds: CellDataset) -> Any:
        return make_loader(ds, cfg.data.loader_workers)

    epochs = int(loop_config.get("epochs") or cfg.optim.epochs)  # "auto", resolved by the driver
    warm = int(loop_config.get("kl_warmup_epochs", getattr(cfg.optim, "kl_warmup_epochs", 0)) or 0)
    patience = int(getattr(cfg.optim, "early_stopping_patience", 0))
    last_checkpoint = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)  # sampling noise: resume-exact
        kl_weight = min(1.0, epoch / warm) if warm else 1.0
        train_ds.set_epoch(epoch)
        model.train()
        tr = _allreduce_sum(_run_epoch(model, loader(train_ds), optimizer=optimizer, kl_weight=kl_weight, parts=parts))
        core.eval()
        va = _allreduce_sum(_run_epoch(core, loader(val_ds), kl_weight=1.0, parts=parts))
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
        for i, m in enumerate(parts):  # a multimodal model: each measurement's share of the reconstruction
            metrics[f"train_reconstruction_{m}"] = tr[6 + i] / max(tr[3], 1.0)
            metrics[f"validation_reconstruction_{m}"] = va[6 + i] / va[3] if va[3] else None
        best = _track_best(best, metrics, core, patience, warm)
        history.append(metrics)
        stop = best is not None and best["bad_epochs"] >= patience
        # a checkpoint (and Ray Train's report, which waits for every worker and writes it) on
        # the first and last epoch and every CHECKPOINT_SECONDS between: a small model's epoch
        # takes a fraction of a second, and a checkpoint per epoch cost it several times that.
        # A killed run resumes from the last one and replays the epochs after it exactly
        # (the sampling seeds depend on the epoch only). Every rank must agree: one vote each.
        due = epoch == start_epoch or epoch + 1 == epochs or stop or time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS
        if _allreduce_sum([1.0 if due else 0.0])[0] > 0:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    state = {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "history": history, "best": best}
                    torch.save(state, Path(tmp) / STATE_FILE)
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{epoch + 1:06d}")
            last_checkpoint = time.perf_counter()
        if rank == 0:
            with open(rdir / "progress.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if stop:
            break  # every rank sees the same all-reduced validation loss: all stop together
    return {"resumed_from_epoch": start_epoch, "epochs": epochs}


def _track_best(best: dict[str, Any] | None, metrics: dict[str, Any], core: Any, patience: int, warm: int) -> dict[str, Any] | None:
    """Early stopping's state after one epoch: the best model (lowest validation loss, once
    the KL warm-up is over) and the epochs since it; None when early stopping is off or
    there is no validation set. ``metrics`` gains ``best_epoch`` and ``epochs_without_improvement``."""
    loss = metrics.get("validation_loss")
    if not patience or loss is None or metrics["epoch"] <= warm:
        return best
    if best is None or loss < best["validation_loss"] - 1e-3 * abs(best["validation_loss"]):
        best = {"epoch": metrics["epoch"], "validation_loss": loss, "bad_epochs": 0, "model": {k: v.detach().clone() for k, v in core.state_dict().items()}}
    else:
        best = best | {"bad_epochs": best["bad_epochs"] + 1}
    metrics["best_epoch"], metrics["epochs_without_improvement"] = best["epoch"], best["bad_epochs"]
    return best
