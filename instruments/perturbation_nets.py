"""The manipulator's networks, pure NumPy / torch: the ensemble MLP and the UR <-> expression map.

:func:`ensemble_forward` runs every member's MLP at once (NumPy at inference, torch in
training, see :mod:`aivc.instruments.perturbation_fit`); :func:`direct_change` is a knockdown's
effect on the target's own transcript; :class:`Encoder` maps expression to URs and back.
Nothing here reads the lake or fits anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aivc.errors import UsageError

def init_layers(sizes: Sequence[int], n_members: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        gain = 0.1 if i == len(sizes) - 2 else np.sqrt(2.0)  # small last layer: start near "no change"
        W = rng.normal(0.0, gain / np.sqrt(fan_in), size=(n_members, fan_in, fan_out)).astype(np.float32)
        layers.append((W, np.zeros((n_members, 1, fan_out), dtype=np.float32)))
    return layers


def ensemble_forward(layers: Sequence[tuple[Any, Any]], x: Any, relu: Any = None) -> Any:
    """All members' MLPs at once: ``x`` is ``(members, batch, d_in)`` (NumPy or torch), returns ``(members, batch, d_out)``."""
    h = x
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        if i < len(layers) - 1:
            h = relu(h) if relu is not None else np.maximum(h, 0.0)
    return h


def direct_change(xhat: Any, remaining: Any, lib: Any = np) -> Any:
    """Log-normalized change of a transcript at level ``xhat`` (log1p units) kept at fraction ``remaining``."""
    x = lib.clip(xhat, 0.0, None) if lib is np else xhat.clamp(min=0.0)
    return lib.log1p(remaining * lib.expm1(x)) - x


@dataclass(frozen=True)
class Encoder:
    """Cell UR <-> expression: PCA (``components`` set) or feature-store URs with a ridge decoder.

    ``direct[g]`` is the UR direction whose decoding best changes gene ``g`` alone (the rows of
    the decoder's pseudo-inverse): how a knockdown of ``g`` shows up in the UR.
    """

    kind: str  # "pca" or "store"
    mean: np.ndarray  # expression mean of the training cells (G,)
    components: np.ndarray | None  # (G, k) for PCA
    decoder: np.ndarray  # (k, G): expression = mean + (z - z_mean) @ decoder
    z_mean: np.ndarray  # (k,)
    direct: np.ndarray  # (G, k)

    def encode(self, expression: np.ndarray) -> np.ndarray:
        if self.components is None:
            raise UsageError("this manipulator reads cell URs from the feature store; pass URs, not expression", where="encode")
        return ((np.asarray(expression, np.float32) - self.mean) @ self.components).astype(np.float32)

    def decode_shift(self, dz: np.ndarray) -> np.ndarray:
        return dz @ self.decoder

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.mean + (np.asarray(z, np.float32) - self.z_mean) @ self.decoder
