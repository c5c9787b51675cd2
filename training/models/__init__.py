"""Scale models: pure ``torch.nn.Module``s taking ``dict[str, Tensor]`` batches.

Every model type registered here has ``embed(batch) -> Tensor`` (one UR per cell, eval
mode, no gradients) and a class attribute ``gene_tokens``: ``False`` when its input is a
fixed gene vector (the registered ``gene_ids``, in order), ``True`` when it reads genes
as tokens through a gene table that can be replaced at apply time
(``set_gene_table(vectors)``), so data with genes it never saw still embeds. ``cell-multimodal-vae``
(:class:`aivc.training.multimodal_nets.MultimodalVAE`) is a fixed-input model over RNA and
the other measurements it was trained on (``x_<M>``, ``mask_<M>``, ``present_<M>``).
``niche-gnn`` (:class:`aivc.training.niche_nets.NicheGNN`) reads cell URs over a spatial
graph (``x``, ``indptr``, ``indices``) and embeds niches, not cells (``aivc embed`` publishes
``niche:NAME@V``, :mod:`aivc.embeddings.niche_job`).
"""

from __future__ import annotations

from typing import Any

MODEL_TYPES: tuple[str, ...] = ("cell-vae", "cell-transformer", "cell-multimodal-vae", "niche-gnn")


def model_class(model_type: str) -> Any:
    """The ``torch.nn.Module`` class of a registered model type (imported on demand)."""
    if model_type == "cell-vae":
        from aivc.training.models.cell_vae import CellVAE

        return CellVAE
    if model_type == "cell-transformer":
        from aivc.training.models.cell_transformer import CellTransformer

        return CellTransformer
    if model_type == "cell-multimodal-vae":
        from aivc.training.multimodal_nets import MultimodalVAE

        return MultimodalVAE
    if model_type == "niche-gnn":
        from aivc.training.niche_nets import NicheGNN

        return NicheGNN
    raise KeyError(model_type)


__all__ = ["MODEL_TYPES", "model_class"]
