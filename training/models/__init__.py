"""Scale models: pure ``torch.nn.Module``s taking ``dict[str, Tensor]`` batches."""

from __future__ import annotations

MODEL_TYPES: tuple[str, ...] = ("cell-vae",)

__all__ = ["MODEL_TYPES"]
