"""Training data loader benchmark: does streaming cells from the lake keep the model busy?

Usage::

    /work/venv/bin/python benchmarks/bench_loader.py [--cells 20000] [--genes 2000]
        [--epochs N] [--workdir DIR] [--json]

What it does
------------
1. Makes (or reuses) a synthetic raw-count submission with ``benchmarks/synth.py``
   (default 20,000 cells x 2,000 genes, ~1,500 UMIs and ~400 detected genes per cell) and
   submits it into a lake in ``--workdir`` (default ``/work/bench-scratch/loader``; reused
   by later runs with the same parameters, ``--fresh`` rebuilds it).
2. Trains ``cell-vae`` with the **default settings** (the packaged
   ``schemas/configs/cell-vae.yaml``: latent 16, hidden 128, batch size 256, 20 epochs,
   chunks of 4,096 cells read from SOMA, ``loader_workers: 0``, 10 % of cells held out)
   with :func:`aivc.training.trainer.train` on one Ray Train worker (one torch thread).
   Only ``name`` (``bench-loader``) is changed, and ``optim.epochs`` with ``--epochs``;
   ``--set KEY=VALUE`` (as ``aivc train --set``) tries other settings, e.g.
   ``--set data.loader_workers=2``.
3. Reads the registered model's per-epoch history and reports:

   - ``data_wait_fraction``: the share of each epoch's training pass spent waiting for the
     loader's next batch (SOMA reads, densifying, shuffling; measured by the trainer),
     mean over epochs (and without the first epoch, whose reads start cold), against the
     target **< 10 %**;
   - the time per training step: the epoch's wall time (training pass, validation pass)
     divided by its training steps, and the same without the measured data wait.

4. Peer, in the same run: the same model (same init, batch size, one torch thread) trained
   for one epoch by a plain PyTorch loop over the training cells held **in memory** as one
   dense tensor (read from the lake beforehand, not timed), shuffled each epoch: the step
   time with no loading at all. Printed with the ratio aivc step / in-memory step
   (information; the target is the data-wait fraction).

5. Loader peer, in the same run (``--peer-epochs``, default 2; needs ``tiledbsoma-ml`` from the
   ``bench`` extra): ``tiledbsoma_ml.ExperimentDataset`` + ``experiment_dataloader`` against
   aivc's ``CellDataset`` + ``make_loader`` on the run's training cells and genes at the same
   pinned timestamp, same batch size and shuffle granularity, in this process; the peer once
   with aivc's read size (``io_batch_size = chunk_rows``) and once with its default (65,536).
   Samples/s loading alone and training the same model (same init, one torch thread), each
   loader warmed by one untimed pass first, orders alternated. Target: aivc training
   samples/s **>= 1.0x** each peer configuration.

``--json`` prints one JSON object instead. Exit status 1 when training failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WAIT_TARGET = 0.10
LOADER_TARGET = 1.0  # aivc samples/s over tiledbsoma-ml's, training the same job


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_lake(work: Path, a: argparse.Namespace) -> tuple[Any, str, dict[str, Any]]:
    from synth import SynthSpec, make_submission

    from aivc.ingest.submission import submit
    from aivc.store.catalog import Catalog
    from aivc.store.lake import Lake

    spec = SynthSpec(n_cells=a.cells, n_genes=a.genes, seed=a.seed, mean_umis=a.mean_umis, mean_genes=a.mean_genes)
    name = f"synth-{a.cells}x{a.genes}-s{a.seed}-u{a.mean_umis:g}-g{a.mean_genes:g}"
    lake_path = work / f"lake-{name}"
    dataset_id = f"synth-{a.cells}x{a.genes}"
    if a.fresh:
        shutil.rmtree(lake_path, ignore_errors=True)
    h5, mf, info = make_submission(work / "data" / name, spec, dataset_id=dataset_id, log=_log)
    lake = Lake.init(lake_path)
    if not Catalog(lake).versions(dataset_id):
        t0 = time.perf_counter()
        res = submit(lake, h5, mf, report_dir=work / "reports")
        if res.status != "committed":
            raise RuntimeError(f"submit: {res.status}: {[str(e) for e in res.errors[:3]]}")
        _log(f"bench: submitted {res.dataset_id}@{res.version}: {res.n_cells} cells x {res.n_genes} genes in {time.perf_counter() - t0:.0f}s")
    else:
        _log(f"bench: reusing lake {lake_path}")
    return lake, dataset_id, info["stats"]


def default_config(epochs: int | None, overrides: list[str]) -> Any:
    from aivc.training.config import apply_overrides, load_config

    try:
        cfg = load_config(model_type="cell-vae")
    except TypeError:  # an aivc whose load_config has no model_type
        cfg = load_config()
    over = ["name=bench-loader"] + ([f"optim.epochs={epochs}"] if epochs else []) + list(overrides)
    return apply_overrides(cfg, over)


def in_memory_peer(lake: Any, cfg: Any, run_dir: Path, epochs: int = 1) -> dict[str, Any]:
    """Plain PyTorch loop over the run's training cells held in memory: seconds per step."""
    import torch

    from aivc.store import soma_io
    from aivc.training.data import TrainingPlan
    from aivc.training.models.cell_vae import CellVAE

    plan = TrainingPlan.load(run_dir / "plan", lake)
    cells = plan.split_cells("train")
    joins = cells["soma_joinid"].to_numpy(np.int64)
    t0 = time.perf_counter()
    X = np.vstack([soma_io.read_rows(plan.soma_uri, plan.high_water, joins[i : i + 4096], plan.gene_joinids).toarray() for i in range(0, len(joins), 4096)])
    read_s = time.perf_counter() - t0
    x_all = torch.from_numpy(X.astype(np.float32))
    b_all = torch.from_numpy(cells["batch"].to_numpy(np.int64))
    masks = torch.from_numpy(plan.masks)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray Train worker
    try:
        torch.manual_seed(cfg.seed)
        model = CellVAE(plan.n_genes, plan.n_batches, **cfg.model.model_dump())
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        bs = cfg.optim.batch_size
        steps, t0 = 0, time.perf_counter()
        model.train()
        for epoch in range(epochs):
            order = torch.from_numpy(np.random.default_rng(cfg.seed + epoch).permutation(len(joins)))
            for s in range(0, len(joins), bs):
                idx = order[s : s + bs]
                x, b = x_all[idx], b_all[idx]
                out = model({"x": x, "batch": b, "library": x.sum(dim=1, keepdim=True), "mask": masks[b]})
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
                steps += 1
        secs = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    return {"steps": steps, "seconds": secs, "step_s": secs / steps, "read_s_untimed": read_s, "n_train": int(len(joins))}


def _batch_dict(x: np.ndarray, bt: np.ndarray, masks: Any) -> dict[str, Any]:
    """The model's input from a peer's mini-batch (what aivc's loader hands over ready-made)."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    b = torch.from_numpy(bt)
    return {"x": xt, "batch": b, "library": xt.sum(dim=1, keepdim=True), "mask": masks[b]}


def loader_peer(lake: Any, cfg: Any, run_dir: Path, epochs: int = 2) -> dict[str, Any]:
    """tiledbsoma-ml's loader against aivc's on the run's training cells: samples/s.

    All stream the same cells (the plan's training split) and genes from the same SOMA
    experiment at the same pinned timestamp, in this process, with the same batch size and
    shuffle granularity (``shuffle_block`` / ``shuffle_chunk_size``). aivc:
    :class:`CellDataset` through :func:`make_loader`, as the Ray Train worker does. Peers:
    ``tiledbsoma_ml.ExperimentDataset`` over an ``axis_query`` of those cells and genes,
    through ``experiment_dataloader`` (eager fetch of the next IO batch, no worker processes,
    dense X), once with aivc's read size (``io_batch_size = chunk_rows``) and once with its
    own default (65,536 cells per IO batch: more memory, fewer reads); its mini-batches are
    turned into the model's input dict in the loop (aivc's loader yields it ready-made).
    Each loader first runs one untimed pass (numba compiles tiledbsoma-ml's kernels on first
    use; TileDB opens warm up), then: loading alone (one epoch, twice, alternating order)
    and training (the same model, init and one torch thread, ``epochs`` epochs each,
    alternating order).
    """
    import tiledbsoma
    import tiledbsoma_ml
    import torch
    from tiledbsoma_ml.dataset import DEFAULT_IO_BATCH_SIZE

    from aivc.training.data import CellDataset, TrainingPlan, make_loader
    from aivc.training.models.cell_vae import CellVAE
    from aivc.training.train_loop import _run_epoch

    plan = TrainingPlan.load(run_dir / "plan", lake)
    cells = plan.split_cells("train")
    joins = cells["soma_joinid"].to_numpy(np.int64)
    batch_of = np.zeros(int(joins.max()) + 1, dtype=np.int64)
    batch_of[joins] = cells["batch"].to_numpy(np.int64)
    masks = torch.from_numpy(plan.masks)
    bs, chunk, block = cfg.optim.batch_size, cfg.data.chunk_rows, cfg.data.shuffle_block
    aivc_ds = CellDataset(plan, "train", batch_size=bs, seed=cfg.seed, chunk_rows=chunk, pad=True, shuffle_block=block)
    exp = tiledbsoma.Experiment.open(plan.soma_uri, tiledb_timestamp=plan.high_water)
    query = exp.axis_query("RNA", obs_query=tiledbsoma.AxisQuery(coords=(joins,)), var_query=tiledbsoma.AxisQuery(coords=(plan.gene_joinids,)))
    io_sizes = {"peer": max(block, chunk // block * block), "peer_default_io": DEFAULT_IO_BATCH_SIZE}
    peer_ds = {k: tiledbsoma_ml.ExperimentDataset(query, layer_name="counts", batch_size=bs, io_batch_size=v, shuffle=True, shuffle_chunk_size=block, seed=cfg.seed) for k, v in io_sizes.items()}

    def aivc_batches(epoch: int) -> Any:
        aivc_ds.set_epoch(epoch)
        return make_loader(aivc_ds, cfg.data.loader_workers)

    def peer_batches(name: str) -> Any:
        def make(epoch: int) -> Any:
            peer_ds[name].set_epoch(epoch)
            for x, obs in tiledbsoma_ml.experiment_dataloader(peer_ds[name]):
                yield _batch_dict(x, batch_of[obs["soma_joinid"].to_numpy()], masks)

        return make

    makers = {"aivc": aivc_batches, **{k: peer_batches(k) for k in peer_ds}}
    tools = list(makers)
    first: dict[str, float] = {}
    load: dict[str, list[float]] = {t: [] for t in tools}
    n_seen: dict[str, int] = {}

    def one_pass(tool: str, epoch: int) -> float:
        t0, n = time.perf_counter(), 0
        for b in makers[tool](epoch):
            n += int(b["x"].shape[0])
        n_seen[tool] = n
        return n / (time.perf_counter() - t0)

    try:
        for tool in tools:
            first[tool] = one_pass(tool, 99)
        for rep in range(2):
            for tool in (tools if rep == 0 else tools[::-1]):
                load[tool].append(one_pass(tool, 100 + rep))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the Ray Train worker
        models, train = {}, {t: [0, 0.0, 0.0] for t in tools}  # samples, seconds, waiting
        for tool in tools:
            torch.manual_seed(cfg.seed)
            m = CellVAE(plan.n_genes, plan.n_batches, **cfg.model.model_dump())
            models[tool] = (m, torch.optim.Adam(m.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay))
        try:
            for epoch in range(epochs):
                for tool in (tools if epoch % 2 == 0 else tools[::-1]):
                    m, opt = models[tool]
                    m.train()
                    sums = _run_epoch(m, makers[tool](epoch), optimizer=opt)
                    train[tool][0] += int(sums[3])
                    train[tool][1] += sums[5]
                    train[tool][2] += sums[4]
        finally:
            torch.set_num_threads(threads)
    finally:
        exp.close()
    out: dict[str, Any] = {"n_train": int(len(joins)), "io_batch_size": io_sizes, "shuffle_chunk_size": block, "batch_size": bs, "epochs": epochs, "version": tiledbsoma_ml.__version__}
    for tool in tools:
        smp, secs, wait = train[tool]
        out[tool] = {
            "first_pass_samples_per_s": first[tool],
            "load_samples_per_s": statistics.fmean(load[tool]),
            "load_samples_per_s_runs": load[tool],
            "samples_per_epoch": n_seen[tool],
            "train_samples_per_s": smp / secs,
            "train_seconds": secs,
            "train_data_wait_fraction": wait / secs,
        }
    for k in peer_ds:
        out[f"load_ratio_vs_{k}"] = out["aivc"]["load_samples_per_s"] / out[k]["load_samples_per_s"]
        out[f"train_ratio_vs_{k}"] = out["aivc"]["train_samples_per_s"] / out[k]["train_samples_per_s"]
    out["pass"] = all(out[f"train_ratio_vs_{k}"] >= LOADER_TARGET for k in peer_ds)
    return out


def run(a: argparse.Namespace) -> dict[str, Any]:
    from aivc.training.data import TrainingPlan
    from aivc.training.registry import get_model
    from aivc.training.runs import run_dir
    from aivc.training.trainer import train

    work = Path(a.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    lake, dataset_id, stats = build_lake(work, a)
    cfg = default_config(a.epochs, a.set)
    _log(f"bench: training {cfg.name} with the default config ({cfg.optim.epochs} epochs, batch size {cfg.optim.batch_size}, chunk_rows {cfg.data.chunk_rows}, loader_workers {cfg.data.loader_workers}) ...")
    t0 = time.perf_counter()
    res = train(lake, cfg, workers=1, on_epoch=lambda m: _log(f"bench:   epoch {m['epoch']}: {m['seconds']:.1f}s, data wait {100 * m.get('data_wait_fraction', float('nan')):.1f} %, train loss {m['train_loss']:.1f}"))
    train_s = time.perf_counter() - t0
    rec = get_model(lake, res.model_ref)
    hist = list(rec.history)
    if not hist or "data_wait_fraction" not in hist[0]:
        raise RuntimeError(f"{rec.ref} records no data_wait_fraction per epoch (this aivc's trainer does not measure it)")
    plan = TrainingPlan.load(run_dir(lake, res.run_id) / "plan", lake)
    n_train = int((plan.cells["split"] == "train").sum())
    steps = math.ceil(n_train / cfg.optim.batch_size)
    waits = [float(h["data_wait_fraction"]) for h in hist]
    secs = [float(h["seconds"]) for h in hist]
    step_s = [s / steps for s in secs]
    compute_step_s = [s * (1 - w) / steps for s, w in zip(secs, waits, strict=True)]
    _log("bench: peer: the same model, one epoch over the training cells in memory ...")
    peer = in_memory_peer(lake, cfg, run_dir(lake, res.run_id))
    peers = None
    if a.peer_epochs > 0:
        _log(f"bench: peer: tiledbsoma-ml's loader against aivc's on the same training cells ({a.peer_epochs} training epochs each) ...")
        peers = loader_peer(lake, cfg, run_dir(lake, res.run_id), epochs=a.peer_epochs)
    mean_wait = statistics.fmean(waits)
    mean_wait_warm = statistics.fmean(waits[1:]) if len(waits) > 1 else mean_wait
    step_med = statistics.median(step_s)
    return {
        "benchmark": "loader",
        "dataset": {"dataset_id": dataset_id, "n_cells": stats["n_cells"], "n_genes": stats["n_genes"], "nnz": stats["nnz"], "mean_umis": stats["mean_umis"], "mean_detected_genes": stats["mean_detected_genes"]},
        "model": rec.ref,
        "overrides": list(a.set),
        "config": {"epochs": cfg.optim.epochs, "batch_size": cfg.optim.batch_size, "chunk_rows": cfg.data.chunk_rows, "loader_workers": cfg.data.loader_workers, "n_train": n_train, "steps_per_epoch": steps},
        "train_call_s": round(train_s, 1),
        "epochs": [{"epoch": h["epoch"], "seconds": h["seconds"], "data_wait_fraction": h["data_wait_fraction"], "train_loss": h["train_loss"]} for h in hist],
        "data_wait_fraction_mean": mean_wait,
        "data_wait_fraction_mean_after_first": mean_wait_warm,
        "data_wait_fraction_max": max(waits),
        "step_s_median": step_med,
        "compute_step_s_median": statistics.median(compute_step_s),
        "peer_in_memory": peer,
        "step_ratio_vs_in_memory": step_med / peer["step_s"],
        "loader_peer": peers,
        "target": {"data_wait_fraction": WAIT_TARGET, "samples_per_s_vs_tiledbsoma_ml": LOADER_TARGET},
        "pass_data_wait": mean_wait < WAIT_TARGET,
        "pass_loader_peer": None if peers is None else peers["pass"],
        "pass": mean_wait < WAIT_TARGET and (peers is None or peers["pass"]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg": os.getloadavg()},
    }


def print_human(r: dict[str, Any]) -> None:
    d, c, p = r["dataset"], r["config"], r["peer_in_memory"]
    print()
    print(f"dataset: {d['n_cells']:,} cells x {d['n_genes']:,} genes, {d['nnz']:,} non-zeros; mean {d['mean_umis']:.0f} UMIs, {d['mean_detected_genes']:.0f} genes per cell")
    over = f"; overrides {' '.join(r['overrides'])}" if r["overrides"] else ""
    print(f"model: {r['model']} (cell-vae, default config{over}: {c['epochs']} epochs, batch size {c['batch_size']}, chunk_rows {c['chunk_rows']}, loader_workers {c['loader_workers']}); {c['n_train']:,} training cells, {c['steps_per_epoch']} steps per epoch")
    la = r["machine"]["load_avg"]
    print(f"machine: {r['machine']['cpus']} CPUs; python {r['machine']['python']}; load average at the end {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}; train() call {r['train_call_s']:.1f}s")
    print()
    print(f"{'epoch':>5} {'seconds':>8} {'data wait':>10} {'step ms':>8} {'train loss':>11}")
    for e in r["epochs"]:
        print(f"{e['epoch']:>5} {e['seconds']:>8.2f} {100 * e['data_wait_fraction']:>9.1f}% {1000 * e['seconds'] / c['steps_per_epoch']:>8.1f} {e['train_loss']:>11.1f}")
    print()
    print(f"step time (epoch wall incl. validation / train steps): median {1000 * r['step_s_median']:.1f} ms; without the data wait {1000 * r['compute_step_s_median']:.1f} ms")
    print(f"peer (in-memory tensor, plain loop, 1 thread): {p['steps']} steps in {p['seconds']:.1f}s, {1000 * p['step_s']:.1f} ms per step")
    print(f"aivc step / in-memory step: {r['step_ratio_vs_in_memory']:.2f}x (information)")
    print(f"data_wait_fraction: mean {100 * r['data_wait_fraction_mean']:.1f} % (after the first epoch {100 * r['data_wait_fraction_mean_after_first']:.1f} %, max {100 * r['data_wait_fraction_max']:.1f} %)   target < {100 * WAIT_TARGET:.0f} %   {'PASS' if r['pass_data_wait'] else 'FAIL'}")
    lp = r.get("loader_peer")
    if lp:
        print()
        print(f"loaders on the same {lp['n_train']:,} training cells (batch {lp['batch_size']}, shuffle blocks of {lp['shuffle_chunk_size']}; tiledbsoma-ml {lp['version']}, same process, 1 torch thread for training):")
        names = {"aivc": f"aivc CellDataset + make_loader (reads of {c['chunk_rows']})", "peer": f"tiledbsoma-ml, io_batch_size {lp['io_batch_size']['peer']:,} (aivc's read size)", "peer_default_io": f"tiledbsoma-ml, io_batch_size {lp['io_batch_size']['peer_default_io']:,} (its default)"}
        print(f"  {'loader':<58} {'load samples/s':>14} {'train samples/s':>15} {'train wait':>10}")
        for k, label in names.items():
            t = lp[k]
            print(f"  {label:<58} {t['load_samples_per_s']:>14,.0f} {t['train_samples_per_s']:>15,.0f} {100 * t['train_data_wait_fraction']:>9.1f}%")
        for k in ("peer", "peer_default_io"):
            ok = lp[f"train_ratio_vs_{k}"] >= LOADER_TARGET
            print(f"  aivc / {names[k]}: training {lp[f'train_ratio_vs_{k}']:.2f}x   target >= {LOADER_TARGET:.1f}x   {'PASS' if ok else 'FAIL'}   (loading alone {lp[f'load_ratio_vs_{k}']:.2f}x, information)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="cell-vae training with default settings on a synthetic lake: data-wait fraction and step time.")
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--mean-umis", type=float, default=1500.0)
    p.add_argument("--mean-genes", type=float, default=400.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="override optim.epochs (default: the config's, 20)")
    p.add_argument("--workdir", default="/work/bench-scratch/loader")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as `aivc train --set` (e.g. data.loader_workers=2); repeatable")
    p.add_argument("--peer-epochs", type=int, default=2, help="training epochs of each loader in the tiledbsoma-ml comparison (0: skip it)")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    r = run(a)
    if a.json:
        print(json.dumps(r, indent=2, default=str))
    else:
        print_human(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
