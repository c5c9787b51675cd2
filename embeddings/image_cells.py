"""The image-derived cell UR: crops of each cell from a dataset's image and segmentation,
a small self-supervised CNN over them, published as ``cell:<name>@V``.

A second view of the same cells: the rows are the cells of one image dataset version
(``obs_id``, ``soma_joinid``, ``dataset_id`` as in every cell UR), so the version joins the
expression URs on ``obs_id`` in SQL. For each cell with a label in the segmentation
(``spatial_cells.label_id``), :func:`cell_crops` reads the ``crop`` x ``crop`` window of level 0
centred on its centroid (:func:`aivc.store.images.read_tile`, one window at a time: a whole
slide is never loaded), zero-padded at the image's edge, each image channel scaled by the
image's 1st and 99.5th percentiles (estimated on the smallest pyramid level of at least 256
px), plus a mask channel that is 1 on the cell's own label. The CNN
(:mod:`aivc.embeddings.image_nets`) trains on those crops (SimCLR) and embeds them.

:func:`morphology_features` is the simple baseline a user would compute first (area,
eccentricity, solidity-free shape moments, per-channel mean and sd inside the mask), reported
next to the CNN by the tests and the benchmark.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

SOURCE_KIND = "image-cnn"


@dataclass
class CellCrops:
    """Crops of the labelled cells of one version, in one order."""

    obs_ids: np.ndarray
    soma_joinids: np.ndarray
    dataset_ids: np.ndarray
    crops: np.ndarray  # float32 n x (channels + 1) x crop x crop; the last channel is the cell's mask
    channels: tuple[str, ...]
    image: str
    version: str
    n_unlabelled: int


def _channel_range(path: str, info: Any) -> tuple[np.ndarray, np.ndarray]:
    from aivc.store.images import read_level

    levels = [i for i, lv in enumerate(info.levels) if min(lv.shape[-2:]) >= 256] or [0]
    small = np.asarray(read_level(path, levels[-1]), dtype=np.float64)
    small = small.reshape(small.shape[0], -1) if small.ndim == 3 else small.reshape(1, -1)
    lo, hi = np.percentile(small, 1.0, axis=1), np.percentile(small, 99.5, axis=1)
    return lo, np.where(hi > lo, hi, lo + 1.0)


def cell_crops(lake: Lake, dataset: str, *, crop: int = 48, image: str | None = None, progress: Progress | None = None) -> CellCrops:
    """The crops of every labelled cell of ``dataset`` (``DATASET[@V]``); see the module docstring."""
    from aivc.store.catalog import Catalog
    from aivc.store.images import image_info, read_tile
    from aivc.store.read import version_cells
    from aivc.store.spatial import image_path, read_locations, spatial_record

    if crop < 8 or crop % 2:
        raise UsageError(f"--crop must be an even number of pixels >= 8, got {crop}", where="--crop")
    progress = progress or NullProgress()
    v = Catalog(lake).get(dataset)
    rec = spatial_record(v)
    if rec is None:
        raise UsageError(f"dataset {v.ref} has no spatial data; an image UR needs an image with a segmentation", where=dataset)
    with_labels = [n for n, i in rec.images.items() if i.get("labels")]
    name = image or (with_labels[0] if with_labels else None)
    if name is None or name not in with_labels:
        raise UsageError(f"dataset {v.ref} has no image with a segmentation of its cells (images: {', '.join(rec.images) or 'none'})", where=dataset)
    path = image_path(lake, v, name)
    info = image_info(path)
    label = rec.images[name]["labels"][0]
    locs = read_locations(lake, v)
    cells = version_cells(lake, v, ["obs_id", "soma_joinid", "dataset_id"]).merge(locs[["obs_id", "x", "y", "label_id"]], on="obs_id", how="left")
    has = cells["label_id"].notna().to_numpy()
    cells = cells[has].reset_index(drop=True)
    lo, hi = _channel_range(path, info)
    n_img = len(lo)
    height, width = info.shape[-2:]
    half = crop // 2
    out = np.zeros((len(cells), n_img + 1, crop, crop), dtype=np.float32)
    progress.phase(f"cropping {len(cells):,} cells ({crop} px) from {v.ref} image {name!r}", total=len(cells))
    for i, (cx, cy, lab) in enumerate(zip(cells["x"].to_numpy(), cells["y"].to_numpy(), cells["label_id"].to_numpy(), strict=True)):
        y0, x0 = int(round(cy)) - half, int(round(cx)) - half
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + crop, height), min(x0 + crop, width)
        if ye <= ys or xe <= xs:
            continue
        win = np.asarray(read_tile(path, 0, ys, xs, ye - ys, xe - xs), dtype=np.float32).reshape(n_img, ye - ys, xe - xs)
        mask = np.asarray(read_tile(path, 0, ys, xs, ye - ys, xe - xs, label=label)).reshape(ye - ys, xe - xs) == int(lab)
        sl = (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))
        out[i, :n_img][(slice(None), *sl)] = (win - lo[:, None, None].astype(np.float32)) / (hi - lo)[:, None, None].astype(np.float32)
        out[i, n_img][sl] = mask
        progress.advance(1)
    return CellCrops(
        obs_ids=cells["obs_id"].to_numpy(dtype=object), soma_joinids=cells["soma_joinid"].to_numpy(np.int64),
        dataset_ids=cells["dataset_id"].to_numpy(dtype=object), crops=out, channels=tuple(rec.images[name].get("channels") or [f"c{i}" for i in range(n_img)]),
        image=name, version=v.ref, n_unlabelled=int((~has).sum()),
    )  # fmt: skip


def morphology_features(crops: np.ndarray) -> np.ndarray:
    """The baseline: per cell, mask area, eccentricity and the second moments' ratio, and each
    image channel's mean and sd inside the mask (``n x (3 + 2 * channels)``, float32)."""
    x = np.asarray(crops, dtype=np.float64)
    mask, img = x[:, -1] > 0.5, x[:, :-1]
    n, s = len(x), x.shape[-1]
    yy, xx = np.mgrid[0:s, 0:s]
    feats = np.zeros((n, 3 + 2 * img.shape[1]))
    for i in range(n):
        m = mask[i]
        area = m.sum()
        if area == 0:
            continue
        cy, cx = yy[m].mean(), xx[m].mean()
        cov = np.cov(np.stack([yy[m] - cy, xx[m] - cx])) if area > 1 else np.zeros((2, 2))
        ev = np.sort(np.linalg.eigvalsh(cov))[::-1] if area > 1 else np.zeros(2)
        ecc = np.sqrt(1 - ev[1] / ev[0]) if ev[0] > 0 else 0.0
        vals = img[i][:, m]
        feats[i] = [area, ecc, np.sqrt(max(ev[0], 0)), *vals.mean(1), *vals.std(1)]
    return feats.astype(np.float32)


def embed_image_cells(
    lake: Lake,
    dataset: str,
    *,
    name: str = "image_cnn",
    crop: int = 48,
    dim: int = 16,
    epochs: int = 30,
    seed: int = 0,
    image: str | None = None,
    progress: Progress | None = None,
) -> Any:
    """Train the crop CNN on ``dataset``'s cells and publish their image URs as ``cell:<name>@N``."""
    import torch

    from aivc.embeddings.image_nets import embed_crops, fit_crop_cnn
    from aivc.store.features import EmbeddingWriter
    from aivc.store.collection import check_name

    check_name(name, "embedding name", where="--name")
    for opt, value, least in (("--dim", dim, 1), ("--epochs", epochs, 1)):
        if value < least:
            raise UsageError(f"{opt} must be at least {least}, got {value}", where=opt)
    progress = progress or NullProgress()
    cc = cell_crops(lake, dataset, crop=crop, image=image, progress=progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic for a seed
    try:
        model, history = fit_crop_cnn(cc.crops, dim=dim, epochs=epochs, seed=seed, progress=progress)
        vectors = embed_crops(model, cc.crops)
    finally:
        torch.set_num_threads(threads)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    lineage = Lineage(
        datasets=(cc.version,),
        extra={"image": cc.image, "channels": list(cc.channels), "crop_px": crop, "mask_channel": True, "model": {**model.init_params, "epochs": epochs, "seed": seed, "method": "SimCLR"}, "weights_sha256": sha},
    )  # fmt: skip
    source = {"kind": SOURCE_KIND, "method": "crop CNN (SimCLR)", "image": cc.image, "sha256": sha}
    writer = EmbeddingWriter(lake, "cell", name, dim, source=source, lineage=lineage)
    try:
        writer.write(cc.obs_ids, vectors, soma_joinids=cc.soma_joinids, dataset_ids=cc.dataset_ids)
        return writer.commit(metrics={"n_cells": int(len(cc.obs_ids)), "cells_without_label": cc.n_unlabelled, "final_loss": history[-1]["loss"], "epochs": epochs})
    except BaseException:
        writer.abort()
        raise


__all__ = ["CellCrops", "cell_crops", "embed_image_cells", "morphology_features"]
