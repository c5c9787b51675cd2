"""Training the niche model (``niche-gnn``) with Ray Train and registering it.

:func:`train_niche` reads what the model trains on (:func:`aivc.training.niche_data.niche_inputs`:
the located cells of one cell UR version and their neighbourhood graph, one per dataset
version), puts it in Ray's object store once, and runs :func:`niche_loop_per_worker` on
``workers`` CPU workers with a ``TorchTrainer`` (data-parallel: each worker draws its own masks,
contrastive pairs and, on a large graph, its own BFS balls; ``prepare_model`` averages the
gradients). Each epoch's metrics are appended to the run's ``progress.jsonl`` (shown while the
run goes) and reported to Ray Train; the last epoch carries the checkpoint the driver
registers as ``NAME@V`` (model type ``niche-gnn``) with its lineage: the cell UR version
(``lineage.embedding``), the dataset versions and the graph rule with its parameters
(``lineage.extra["graph"]``).

A run lives in ``<lake>/models/.runs/<run_id>/`` like the cell models' runs (``run.json``,
``progress.jsonl``, ``ray/``); niche runs are minutes long and are not resumed.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from aivc.errors import UsageError
from aivc.store.collection import check_name
from aivc.store.lake import Lake, utcnow, write_json_atomic
from aivc.training.niche_nets import MODEL_TYPE, NicheModelConfig
from aivc.training.run_registration import TrainResult
from aivc.training.runs import RAY_NAME, STATE_FILE, run_dir, run_lock

RUN_SCHEMA = "aivc.training_run"


def parse_settings(pairs: list[str] | None) -> NicheModelConfig:
    """``["epochs=50", "hops=1,2,4"]`` -> a :class:`NicheModelConfig` (bad key or value: :class:`UsageError`)."""
    known = {f.name: f for f in fields(NicheModelConfig)}
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, eq, raw = pair.partition("=")
        key = key.strip()
        if not eq or key not in known:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE with KEY one of {', '.join(known)}", where="--set")
        default = getattr(NicheModelConfig(), key)
        try:
            if isinstance(default, tuple):
                values[key] = tuple(int(v) for v in raw.strip("()[] ").split(",") if v.strip())
            elif isinstance(default, bool):
                values[key] = raw.strip().lower() in ("1", "true", "yes")
            else:
                values[key] = type(default)(raw)
        except ValueError:
            raise UsageError(f"--set {pair!r}: {raw!r} is not a {type(default).__name__}", where="--set") from None
    return NicheModelConfig(**values)


def parse_graph(text: str | None) -> dict[str, Any] | None:
    """``--graph``: ``radius:R``, ``knn:K``, ``delaunay`` or ``delaunay:R`` (None: the default rule)."""
    if text is None:
        return None
    rule, _, arg = text.partition(":")
    try:
        if rule == "radius" and arg:
            return {"rule": "radius", "radius": float(arg)}
        if rule == "knn" and arg:
            return {"rule": "knn", "k": int(arg)}
        if rule == "delaunay":
            return {"rule": "delaunay", "radius": float(arg) if arg else None}
    except ValueError:
        pass
    raise UsageError(f"--graph {text!r}: expected radius:R, knn:K, delaunay or delaunay:R (R in the units of the locations)", where="--graph")


def _progress_line(path: Path, metrics: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(metrics) + "\n")


def niche_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train loop: fit the niche model on the shared inputs; rank 0 checkpoints the last epoch."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from aivc.training.niche_nets import fit_niche_model

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))
    data = loop_config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    config = NicheModelConfig(**{k: tuple(v) if k == "hops" else v for k, v in loop_config["config"].items()})
    rdir = Path(loop_config["run_dir"])
    t0 = [time.perf_counter()]

    def report(metrics: dict[str, float], model: Any) -> None:
        m = {**metrics, "epoch": int(metrics["epoch"]) + 1, "seconds": round(time.perf_counter() - t0[0], 4)}
        t0[0] = time.perf_counter()
        history.append(m)
        last = m["epoch"] == config.epochs
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0 and last:
                torch.save({"model": model.state_dict(), "init": model.init_params, "epoch": m["epoch"], "history": history}, Path(tmp) / STATE_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(m, checkpoint=checkpoint, checkpoint_dir_name=f"epoch_{m['epoch']:06d}" if checkpoint else None)
        if rank == 0:
            _progress_line(rdir / "progress.jsonl", m)

    history: list[dict[str, Any]] = []
    wrap = (lambda m: ray.train.torch.prepare_model(m, parallel_strategy_kwargs={"find_unused_parameters": True})) if ctx.get_world_size() > 1 else None
    fit_niche_model(data["x"], data["graph"], config, rank=rank, wrap=wrap, on_epoch=report)


def train_niche(
    lake: Lake,
    cells: str,
    *,
    name: str = "niche",
    graph: dict[str, Any] | None = None,
    datasets: list[str] | None = None,
    config: NicheModelConfig | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    run_id: str | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a niche model on the located cells of cell UR version ``cells`` and register it as ``name``.

    ``graph``: a :class:`~aivc.training.niche_graph.NicheGraphSpec` as a dict (default: the
    rule :func:`~aivc.training.niche_data.niche_inputs` picks for the technology).
    """
    from aivc.training.niche_data import niche_inputs
    from aivc.training.trainer import _RUN_ID

    config = config if config is not None else NicheModelConfig()
    check_name(name, "model name", where="--name")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}", where="--workers")
    inputs = niche_inputs(lake, cells, graph=graph, datasets=datasets)
    n = len(inputs.obs_ids)
    if n < max(config.n_states, 10):
        raise UsageError(f"{n} located cells are too few for a niche model with {config.n_states} states (need at least {max(config.n_states, 10)})", where="--cells")
    if inputs.graph.n_edges == 0:
        raise UsageError(f"the graph ({inputs.spec.rule}) joins none of the {n} located cells; choose a larger --graph radius or knn:K", where="--graph")
    run_id = run_id or f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{int(time.time() * 1000) % 1000:03d}"
    if not _RUN_ID.match(run_id):
        raise UsageError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'", where="--run-id")
    rdir = run_dir(lake, run_id)
    if (rdir / "run.json").exists():
        raise UsageError(f"run {run_id} exists; niche runs are not resumed, choose another --run-id", where="--run-id")
    rdir.mkdir(parents=True, exist_ok=True)
    summary = {
        "run_id": run_id, "run_dir": str(rdir), "model_type": MODEL_TYPE, "cells": inputs.lineage.embedding, "n_cells": n,
        "n_features": int(inputs.x.shape[1]), "graph": inputs.graph.summary(), "datasets": list(inputs.lineage.datasets), "workers": workers,
    }  # fmt: skip
    with run_lock(rdir):
        try:
            if on_start is not None:
                on_start(summary)
            return _run(lake, inputs, name, graph, config, rdir, run_id, workers, ray_address, on_epoch)
        finally:
            if not (rdir / "run.json").exists():
                import shutil

                shutil.rmtree(rdir, ignore_errors=True)


def _run(lake: Lake, inputs: Any, name: str, graph: dict[str, Any] | None, config: NicheModelConfig, rdir: Path, run_id: str, workers: int, ray_address: str | None, on_epoch: Any) -> TrainResult:
    import ray
    import ray.train
    import torch
    from ray.train.torch import TorchTrainer

    from aivc.ray_local import start_ray
    from aivc.training.registry import register_model
    from aivc.training.trainer import _Tail, fit_run

    started = start_ray(ray_address, workers=workers)
    tail = _Tail(rdir / "progress.jsonl", on_epoch) if on_epoch else None
    try:
        data = ray.put({"x": inputs.x, "graph": inputs.graph})
        trainer = TorchTrainer(
            niche_loop_per_worker,
            train_loop_config={"config": config.to_dict(), "data": data, "run_dir": str(rdir), "threads": 1},
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name=RAY_NAME, storage_path=str(rdir), failure_config=ray.train.FailureConfig(max_failures=0)),
        )
        result = fit_run(trainer, tail, f"niche training run {run_id}", rdir)
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        history = list(state["history"])
        final = {k: v for k, v in history[-1].items() if k != "seconds"}
        lineage = replace(inputs.lineage, extra={**inputs.lineage.extra, "n_cells": int(len(inputs.obs_ids)), "graph_summary": inputs.graph.summary()})
        run_config = {"cells": inputs.lineage.embedding, "graph": inputs.spec.to_dict(), "graph_given": graph, "datasets": list(inputs.lineage.datasets), "model": config.to_dict()}
        rec = register_model(
            lake, name, model_type=MODEL_TYPE, state_dict=state["model"], init=state["init"], config=run_config,
            gene_ids=(), encodings={}, metrics=final, lineage=lineage, history=history,
            training={"run_id": run_id, "epochs": int(state["epoch"]), "workers": workers, "ray_version": ray.__version__, "torch_version": torch.__version__},
        )  # fmt: skip
        write_json_atomic(
            rdir / "run.json",
            {"schema_name": RUN_SCHEMA, "schema_version": 1, "run_id": run_id, "model_type": MODEL_TYPE, "status": "registered",
             "model_ref": rec.ref, "epochs_done": int(state["epoch"]), "config": run_config, "finished_at": utcnow()},
        )  # fmt: skip
        return TrainResult(run_id=run_id, model_ref=rec.ref, resumed_from_epoch=0, epochs=int(state["epoch"]), metrics=rec.metrics)
    finally:
        if started:
            ray.shutdown()


__all__ = ["niche_loop_per_worker", "parse_graph", "parse_settings", "train_niche"]
