"""A small CNN that turns cell crops into morphology URs, trained self-supervised (pure torch).

Input: crops ``n x C x S x S`` float32, the image channels of a window centred on each cell
(normalized per channel) plus one channel with the cell's own mask (1 inside its label, 0
elsewhere), so the network knows which of the pixels are the cell.

Network (:class:`CropCNN`): three blocks of 3x3 convolution, batch norm, ReLU and 2x2 max
pooling (16, 32, 64 channels), global average pooling, a linear layer to the UR (``dim``).

Training (:func:`fit_crop_cnn`): SimCLR (Chen et al. 2020). Each crop is seen under two random
views (flips, 90-degree rotations, a shift of up to 2 px, intensity scale and offset jitter on
the image channels) and the normalized-temperature cross-entropy over a batch makes the two
views of a crop closer to each other than to any other crop's, through a 2-layer projection
head that is dropped afterwards. What survives every view is the cell's shape, size and
texture, not its orientation or brightness. Deterministic for a given seed on one thread.

Example
-------
>>> import numpy as np
>>> crops = np.random.default_rng(0).random((40, 2, 32, 32), dtype=np.float32)
>>> model, history = fit_crop_cnn(crops, dim=8, epochs=2, seed=0)
>>> embed_crops(model, crops).shape, len(history)
((40, 8), 2)
"""

from __future__ import annotations


import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress


class CropCNN(nn.Module):
    """Crops ``B x C x S x S`` -> URs ``B x dim`` (and a projection head for training)."""

    def __init__(self, in_channels: int, dim: int = 16, width: int = 16) -> None:
        super().__init__()
        self.init_params = {"in_channels": int(in_channels), "dim": int(dim), "width": int(width)}
        blocks: list[nn.Module] = []
        c = in_channels
        for k in (1, 2, 4):
            blocks += [nn.Conv2d(c, width * k, 3, padding=1), nn.BatchNorm2d(width * k), nn.ReLU(), nn.MaxPool2d(2)]
            c = width * k
        self.features = nn.Sequential(*blocks)
        self.out = nn.Linear(c, dim)
        self.head = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 32))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.features(x).mean(dim=(2, 3)))


def _view(x: Tensor, gen: torch.Generator, n_image: int) -> Tensor:
    """One random view of every crop (the mask channel is moved with the image, never jittered)."""
    b = x.shape[0]
    out = x
    if float(torch.rand((), generator=gen)) < 0.5:
        out = out.flip(3)
    if float(torch.rand((), generator=gen)) < 0.5:
        out = out.flip(2)
    out = torch.rot90(out, int(torch.randint(4, (), generator=gen)), dims=(2, 3))
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
    scale = 1.0 + 0.2 * (torch.rand((b, n_image, 1, 1), generator=gen) - 0.5) * 2
    shift = 0.1 * (torch.rand((b, n_image, 1, 1), generator=gen) - 0.5) * 2
    img = out[:, :n_image] * scale + shift
    return torch.cat([img, out[:, n_image:]], dim=1)


def _nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def fit_crop_cnn(
    crops: np.ndarray,
    *,
    dim: int = 16,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 3e-3,
    temperature: float = 0.2,
    seed: int = 0,
    mask_channels: int = 1,
    progress: Progress | None = None,
) -> tuple[CropCNN, list[dict[str, float]]]:
    """Train a :class:`CropCNN` on ``crops`` (the last ``mask_channels`` channels are masks)."""
    x = np.asarray(crops, dtype=np.float32)
    if x.ndim != 4 or x.shape[2] != x.shape[3] or x.shape[2] < 8:
        raise UsageError(f"crops must be n x channels x S x S with S >= 8, got shape {x.shape}", where="crops")
    if len(x) < 4:
        raise UsageError(f"{len(x)} cells are too few to train an image model (need at least 4)", where="crops")
    if not np.isfinite(x).all():
        raise UsageError("crops hold NaN or infinite pixels", where="crops")
    progress = progress or NullProgress()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CropCNN(x.shape[1], dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    xt = torch.from_numpy(x)
    n_image = x.shape[1] - mask_channels
    bs = min(batch_size, len(x))
    history: list[dict[str, float]] = []
    progress.phase(f"image model: {epochs} epochs on {len(x):,} cell crops", total=epochs)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for lo in range(0, len(x) - bs + 1, bs):  # full batches only: the contrast needs negatives
            b = xt[order[lo : lo + bs]]
            loss = _nt_xent(model.head(model(_view(b, gen, n_image))), model.head(model(_view(b, gen, n_image))), temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(b), seen + len(b)
        history.append({"epoch": epoch + 1, "loss": total / max(seen, 1)})
        progress.advance(1)
    model.eval()
    return model, history


@torch.no_grad()
def embed_crops(model: CropCNN, crops: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """URs of ``crops`` (``n x dim`` float32), eval mode, no augmentation."""
    model.eval()
    x = torch.from_numpy(np.asarray(crops, dtype=np.float32))
    out = [model(x[lo : lo + batch_size]).numpy() for lo in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.init_params["dim"]), np.float32)


__all__ = ["CropCNN", "embed_crops", "fit_crop_cnn"]
