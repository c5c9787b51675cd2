"""Training data from the lake: a plan of cells and genes, streamed from SOMA in row chunks.

:func:`build_plan` selects the current dataset versions of one organism (optionally only
some datasets), fixes the gene vocabulary (genes every selected dataset measured, or
their union with per-dataset measured-gene masks: a gene a dataset did not measure is not
a zero), optionally keeps the most variable genes, draws the validation split (by
dataset, donor or cell fraction, with a seed) and pins the lake state: the organism's
committed SOMA high-water mark. A :class:`TrainingPlan` is small (one row per cell, one
per gene) and is saved with a run, so a resumed run trains on exactly the same data.

:class:`CellDataset` streams a plan's cells as batches of tensors with
:func:`aivc.store.soma_io.read_rows`, reshuffled every epoch from ``seed + epoch``,
partitioned by ``(rank, world_size)`` of the training job and then by DataLoader worker::

    {"x": float32 [B, G] raw counts, "batch": int64 [B] dataset index,
     "library": float32 [B, 1] counts over the vocabulary, "mask": bool [B, G] measured,
     "index": int64 [B] soma_joinid}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from aivc.errors import LakeError, UsageError
from aivc.store import read, soma_io
from aivc.store.catalog import Catalog
from aivc.store.read import Options
from aivc.store.lake import Lake, write_json_atomic
from aivc.store.lineage import Lineage
from aivc.training.config import DataConfig

PLAN_SCHEMA = "aivc.training_plan"
Split = Literal["train", "validation", "all"]


@dataclass(frozen=True, eq=False)
class TrainingPlan:
    """The cells and genes a model trains on, pinned to one lake state.

    ``cells``: ``soma_joinid`` (int64), ``obs_id``, ``dataset_id``, ``donor_id``,
    ``batch`` (int, index into ``batch_categories``) and ``split`` (``train`` /
    ``validation``), ordered by ``soma_joinid``. ``masks[b, g]`` says whether dataset
    ``batch_categories[b]`` measured gene ``gene_ids[g]``.
    """

    organism: str
    soma_uri: str
    high_water: int
    datasets: tuple[str, ...]
    batch_categories: tuple[str, ...]
    gene_ids: tuple[str, ...]
    gene_joinids: np.ndarray
    masks: np.ndarray
    cells: pd.DataFrame
    genes_mode: str = "intersection"
    validation: dict[str, Any] = field(default_factory=dict)

    @property
    def n_genes(self) -> int:
        return len(self.gene_ids)

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories)

    def split_cells(self, split: Split) -> pd.DataFrame:
        return self.cells if split == "all" else self.cells[self.cells["split"] == split]

    def lineage(self) -> Lineage:
        """The datasets, organism and pinned lake state the plan reads (plus its cell and gene counts)."""
        return Lineage(
            datasets=self.datasets,
            organism=self.organism,
            lake_state={self.organism: int(self.high_water)},
            extra={"n_cells": int(len(self.cells)), "n_genes": self.n_genes},
        )

    # -- persistence -------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write ``plan.json``, ``cells.parquet`` and ``genes.parquet`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.cells.to_parquet(folder / "cells.parquet", index=False)
        genes = pd.DataFrame({"gene_id": list(self.gene_ids), "soma_joinid": self.gene_joinids})
        for b, ds in enumerate(self.batch_categories):
            genes[f"measured:{ds}"] = self.masks[b]
        genes.to_parquet(folder / "genes.parquet", index=False)
        write_json_atomic(
            folder / "plan.json",
            {
                "schema_name": PLAN_SCHEMA,
                "schema_version": 1,
                "organism": self.organism,
                "high_water": int(self.high_water),
                "datasets": list(self.datasets),
                "batch_categories": list(self.batch_categories),
                "genes_mode": self.genes_mode,
                "validation": self.validation,
            },
        )

    @classmethod
    def load(cls, folder: Path, lake: Lake) -> TrainingPlan:
        try:
            meta = json.loads((folder / "plan.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LakeError(f"training plan is unreadable ({exc})", where=str(folder)) from None
        if meta.get("schema_name") != PLAN_SCHEMA or int(meta.get("schema_version", 0)) != 1:
            raise LakeError(f"unknown training plan format {meta.get('schema_name')}/{meta.get('schema_version')}", where=str(folder))
        import pyarrow as pa

        try:
            genes = pd.read_parquet(folder / "genes.parquet")
            cells = pd.read_parquet(folder / "cells.parquet")
            cats = tuple(meta["batch_categories"])
            masks = np.stack([genes[f"measured:{ds}"].to_numpy(bool) for ds in cats]) if cats else np.zeros((0, len(genes)), bool)
        except (OSError, KeyError, pa.ArrowException) as exc:
            raise LakeError(f"training plan is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); start a new run", where=str(folder)) from None
        return cls(
            organism=meta["organism"],
            soma_uri=lake.soma_uri(meta["organism"]),
            high_water=int(meta["high_water"]),
            datasets=tuple(meta["datasets"]),
            batch_categories=cats,
            gene_ids=tuple(genes["gene_id"].astype(str)),
            gene_joinids=genes["soma_joinid"].to_numpy(np.int64),
            masks=masks,
            cells=cells,
            genes_mode=meta["genes_mode"],
            validation=meta["validation"],
        )


# -- plan building -------------------------------------------------------------------------
OPTIONS = Options(
    organism="data.organism",
    organism_fix="choose one with --set data.organism=NAME",
    datasets="data.datasets",
    where="data.where",
    features="data.genes",
    features_fix="use --set data.genes=union or fewer datasets",
    purpose="train on",
)


def _draw(units: list[str], fraction: float, rng: np.random.Generator, what: str) -> set[str]:
    if len(units) < 2:
        raise UsageError(f"validation by {what} needs at least 2 {what}s, the data has {len(units)}; use --set data.validation.by=fraction", where="data.validation.by")
    n = min(len(units) - 1, max(1, int(round(fraction * len(units)))))
    return set(rng.permutation(np.array(sorted(units), dtype=object))[:n].tolist())


def _split(cells: pd.DataFrame, cfg: DataConfig, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    v = cfg.validation
    rng = np.random.default_rng(v.seed if v.seed is not None else seed)
    info: dict[str, Any] = {"by": v.by}
    if v.by == "none":
        return np.zeros(len(cells), bool), info
    if v.by == "fraction":
        n = int(round(v.fraction * len(cells)))
        n = min(len(cells) - 1, max(1, n)) if len(cells) > 1 else 0
        val = np.zeros(len(cells), bool)
        val[rng.permutation(len(cells))[:n]] = True
        return val, info | {"fraction": v.fraction, "n_cells": int(n)}
    key = cells["dataset_id"] if v.by == "dataset" else cells["dataset_id"] + "/" + cells["donor_id"].astype(str)
    units = sorted(set(key))
    if v.holdout is not None:
        unknown = sorted(set(v.holdout) - set(units))
        if unknown:
            raise UsageError(f"held-out {v.by} {unknown[0]!r} is not in the training data (have: {', '.join(units[:10])})", where="data.validation.holdout")
        chosen = set(v.holdout)
    else:
        chosen = _draw(units, v.fraction, rng, v.by)
    return key.isin(chosen).to_numpy(), info | {"holdout": sorted(chosen)}


def top_genes(lake: Lake, plan_versions: tuple[str, ...], high_water: int, cells: pd.DataFrame, genes: pd.DataFrame, masks: np.ndarray, n_top: int, chunk_rows: int) -> np.ndarray:
    """Positions of the ``n_top`` most variable genes (the read API's one selection:
    variance of log-normalized counts, each gene over the cells whose dataset measured it),
    in vocabulary order."""
    cat = Catalog(lake)
    q = read.LakeQuery.of(lake, [cat.get(r) for r in plan_versions], options=OPTIONS, high_water=high_water)
    return q.variable_features(cells, read.FeatureSet(genes, masks), n_top, chunk_rows=chunk_rows)


def build_plan(lake: Lake, cfg: DataConfig, seed: int = 0) -> TrainingPlan:
    """Select the cells, genes, batches and validation split of a training run."""
    q = read.LakeQuery.open(lake, datasets=cfg.datasets, organism=cfg.organism, options=OPTIONS)
    versions, org, hw = list(q.versions), q.organism, q.high_water
    uri = q.soma_uri
    cats = tuple(v.dataset_id for v in versions)
    cells = q.obs(["obs_id", "soma_joinid", "dataset_id", "donor_id"], where=cfg.where)
    cells["batch"] = pd.Categorical(cells["dataset_id"], categories=list(cats)).codes.astype(np.int32)
    feats = q.features(cfg.genes)
    if cfg.n_top_genes is not None and cfg.n_top_genes < len(feats):
        feats = feats.take(q.variable_features(cells, feats, cfg.n_top_genes, chunk_rows=cfg.chunk_rows))
        if not len(feats):
            raise UsageError("no gene varies across the chosen cells, so data.n_top_genes keeps none; choose other cells or drop data.n_top_genes", where="data.n_top_genes")
    genes, masks = feats.frame, feats.present
    val, info = _split(cells, cfg, seed)
    cells["split"] = np.where(val, "validation", "train")
    if not (~val).any():
        raise UsageError("the validation split leaves no training cells; lower data.validation.fraction", where="data.validation")
    return TrainingPlan(
        organism=org,
        soma_uri=uri,
        high_water=int(hw),
        datasets=tuple(v.ref for v in versions),
        batch_categories=cats,
        gene_ids=tuple(genes["gene_id"].astype(str)),
        gene_joinids=genes["soma_joinid"].to_numpy(np.int64),
        masks=masks,
        cells=cells,
        genes_mode=cfg.genes,
        validation=info | {"n_validation_cells": int(val.sum())},
    )


# -- streaming -------------------------------------------------------------------------------
def rank_order(n: int, *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int, pad: bool, block: int = 1) -> np.ndarray:
    """Positions (into the split's cells) that one rank visits in one epoch.

    The order is a permutation drawn from ``seed + epoch`` (or the identity); with
    ``block > 1`` it permutes runs of ``block`` consecutive cells instead of single cells
    (reads of nearby cells are several times faster from TileDB; the loader shuffles the
    cells within each read, so batches still mix many blocks). Rank ``r``
    takes every ``world_size``-th position starting at ``r``. With ``pad`` the order is
    first extended by repeating its head so every rank gets the same number of cells
    (needed by data-parallel training, where ranks must run the same number of steps);
    without it every cell goes to exactly one rank.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    if not shuffle:
        order = np.arange(n)
    elif block > 1:
        starts = np.random.default_rng(seed + epoch).permutation(-(-n // block)) * block
        order = (starts[:, None] + np.arange(block)[None, :]).ravel()
        order = order[order < n]
    else:
        order = np.random.default_rng(seed + epoch).permutation(n)
    if pad and n % world_size:
        extra = world_size - n % world_size
        order = np.concatenate([order, np.resize(order, extra)]) if n else order
    return order[rank::world_size]


class CellDataset(torch.utils.data.IterableDataset):
    """Batches of one split of a plan, streamed from SOMA; use with ``batch_size=None``.

    Examples
    --------
    >>> ds = CellDataset(plan, "train", batch_size=256, seed=0, rank=0, world_size=1)  # doctest: +SKIP
    >>> ds.set_epoch(3)  # doctest: +SKIP
    >>> loader = make_loader(ds, num_workers=2)  # doctest: +SKIP

    TileDB is not fork-safe: DataLoader workers must be spawned (:func:`make_loader`),
    a forked worker of a process that has read SOMA can hang.
    """

    def __init__(
        self,
        plan: TrainingPlan,
        split: Split = "train",
        *,
        batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk_rows: int = 4096,
        pad: bool = False,
        shuffle_block: int = 1,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        # whole batches per read: no batch straddles two reads
        self.chunk_rows = max(1, int(chunk_rows) // self.batch_size) * self.batch_size
        self.pad = pad
        self.shuffle_block = max(1, int(shuffle_block))
        self.epoch = 0
        cells = plan.split_cells(split)
        self._joinids = cells["soma_joinid"].to_numpy(np.int64)
        self._batch = cells["batch"].to_numpy(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (call before iterating; DataLoader workers see it)."""
        self.epoch = int(epoch)

    def _positions(self) -> np.ndarray:
        return rank_order(
            len(self._joinids), epoch=self.epoch, seed=self.seed, shuffle=self.shuffle, rank=self.rank, world_size=self.world_size, pad=self.pad, block=self.shuffle_block
        )

    def _chunk_bounds(self, n: int) -> list[tuple[int, int]]:
        """Reads of an epoch: one batch first (the only read nothing can prefetch, so it
        is small), then doubling (2, 4, ... batches) up to ``chunk_rows`` at a time; every
        read holds whole batches. The ramp lets each read overlap the model's steps on the
        read before it from the second batch on: a read of ``2k`` batches takes less time
        than ``k`` training steps, while a full ``chunk_rows`` read right after the first
        batch would leave the model waiting for most of it at the start of every epoch."""
        bounds, start = [], 0
        size = min(self.batch_size, self.chunk_rows)
        while start < n:
            bounds.append((start, min(n, start + size)))
            start += size
            size = min(2 * size, self.chunk_rows)
        return bounds

    def __len__(self) -> int:
        """Batches this rank yields per epoch (over all DataLoader workers)."""
        return sum(-(-(hi - lo) // self.batch_size) for lo, hi in self._chunk_bounds(len(self._positions())))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        pos = self._positions()
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        masks = torch.from_numpy(self.plan.masks)
        with soma_io.DenseReader(self.plan.soma_uri, self.plan.high_water, self.plan.gene_joinids) as reader:
            yield from self._chunks(pos, wid, nw, masks, reader)

    def _chunks(self, pos: np.ndarray, wid: int, nw: int, masks: torch.Tensor, reader: Any) -> Iterator[dict[str, torch.Tensor]]:
        for ci, (lo, hi) in enumerate(self._chunk_bounds(len(pos))):
            if ci % nw != wid:
                continue
            chunk = pos[lo:hi]
            if self.shuffle and self.shuffle_block > 1:  # mix the blocks of this read
                chunk = chunk[np.random.default_rng([self.seed, self.epoch, ci]).permutation(len(chunk))]
            joins = self._joinids[chunk]
            uniq, inverse = np.unique(joins, return_inverse=True)
            dense = reader.read(uniq)[inverse]
            batch = self._batch[chunk]
            extra = self._chunk_extra(joins, batch)
            for b0 in range(0, len(chunk), self.batch_size):
                sl = slice(b0, b0 + self.batch_size)
                x = torch.from_numpy(np.ascontiguousarray(dense[sl]))
                bt = torch.from_numpy(batch[sl])
                yield {
                    "x": x,
                    "batch": bt,
                    "library": x.sum(dim=1, keepdim=True),
                    "mask": masks[bt],
                    "index": torch.from_numpy(joins[sl]),
                    **{k: torch.from_numpy(np.ascontiguousarray(v[sl])) for k, v in extra.items()},
                }

    def _chunk_extra(self, joins: np.ndarray, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Further per-cell arrays of one read (rows aligned with ``joins``), sliced into its
        batches under their keys; none here (a subclass adds other measurements)."""
        return {}


class Prefetcher:
    """Iterate a :class:`CellDataset` in a background thread, ``depth`` batches ahead.

    TileDB reads and the dense conversion release the GIL, so reading the next chunk
    overlaps the model's step on the main thread without another process (and without the
    spawn start-up of DataLoader workers). Errors in the reader re-raise in the consumer.
    """

    _DONE = object()

    def __init__(self, ds: CellDataset, depth: int = 4) -> None:
        self.ds, self.depth = ds, max(1, int(depth))

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        import queue
        import threading

        q: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self.ds:
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(self._DONE)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                q.put(exc)

        t = threading.Thread(target=produce, name="aivc-prefetch", daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            t.join(timeout=5)


def make_loader(ds: CellDataset, num_workers: int = 0, prefetch: int | None = None) -> Any:
    """Iterate ``ds`` in ``num_workers`` spawned processes, or (``num_workers=0``) in a
    background thread ``prefetch`` batches ahead (``prefetch=0``: plainly in-process).

    The default ``prefetch`` is one read's worth of batches (``chunk_rows / batch_size``,
    at least 4): the thread can then hand over all batches of a read and start the next
    read while the model still has a whole read's steps queued, instead of only the last
    few (with 4 batches queued a 4,096-cell read barely finished in time). Memory: at most
    the queued read plus the one being read (two reads of ``chunk_rows`` cells, dense).
    """
    if num_workers <= 0:
        if prefetch is None:
            prefetch = max(4, ds.chunk_rows // max(1, ds.batch_size))
        return Prefetcher(ds, prefetch) if prefetch > 0 else ds
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, multiprocessing_context="spawn")
