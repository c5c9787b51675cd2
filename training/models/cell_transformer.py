"""``cell-transformer``: a transformer over a cell's expressed genes, tokens from gene URs.

A cell is the set of genes it expressed (count > 0) among those its dataset measured.
Each token is a linear projection of the gene's molecular UR (a row of the *gene table*,
see :meth:`CellTransformer.set_gene_table`) plus an embedding of its binned log-normalized
expression (``log1p(count / total * 1e4)``, ``total`` over the measured genes). A learned
CLS token goes first; a ``TransformerEncoder`` reads the set (no positions: a cell's genes
have no order) and the cell UR is a linear projection of the CLS output.

Training is self-supervised, masked expression prediction: ``mask_fraction`` of the tokens
have their expression replaced by a ``[MASK]`` value and the model predicts the
log-normalized value twice, from the token's own output and from the cell UR with a
per-gene query (scGPT's "MVC" objective), so the UR itself has to carry the cell's
expression state. Both predictions are offsets from the mean of the cell's visible
(unmasked) token values, and the loss is the sum of their mean squared errors over the
masked tokens (``LossOutput.kl`` is 0, so the trainer's loop serves it unchanged).

While training, a cell with more than ``max_tokens`` expressed genes is represented by a
sample of them drawn without replacement with probability proportional to the count; in
eval mode and in :meth:`embed` the ``max_tokens`` highest counts are taken (ties: lower
column first), so embeddings are deterministic.

The gene table is a non-persistent buffer: the weights (the state dict) do not depend on
the number or order of genes, so one trained model embeds data over any genes that have
URs, including genes and species it never saw.

Example
-------
>>> import torch
>>> m = CellTransformer(gene_dim=8, d_model=16, n_heads=2, n_layers=1, latent_dim=4)
>>> m.set_gene_table(torch.randn(5, 8))
>>> batch = {"x": torch.tensor([[3.0, 0, 1, 2, 0], [0, 5, 0, 0, 1]]), "mask": torch.ones(2, 5, dtype=torch.bool)}
>>> bool(torch.isfinite(m(batch).loss)), tuple(m.embed(batch).shape)
(True, (2, 4))
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from aivc.training.models.cell_vae import LossOutput

TARGET_SUM = 1e4
#: upper end of the binned range: log1p of the whole library in one gene
MAX_VALUE = math.log1p(TARGET_SUM)


class CellTransformer(nn.Module):
    """Transformer encoder over expressed-gene tokens built from gene URs.

    Parameters
    ----------
    gene_dim
        Width of the gene URs (columns of the gene table).
    d_model, n_heads, n_layers, dropout
        Transformer width, attention heads, encoder layers and dropout.
    max_tokens
        Most genes a cell is represented by (plus the CLS token).
    n_bins
        Equal-width bins of ``log1p`` normalized expression over ``[0, log1p(1e4)]``.
    mask_fraction
        Share of a cell's tokens whose expression is masked and predicted in training.
    latent_dim
        Width of the cell UR.
    """

    gene_tokens = True

    def __init__(
        self,
        gene_dim: int,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        max_tokens: int = 128,
        n_bins: int = 32,
        mask_fraction: float = 0.15,
        dropout: float = 0.1,
        latent_dim: int = 32,
    ) -> None:
        super().__init__()
        if gene_dim < 1 or d_model < 1 or n_layers < 1 or max_tokens < 1 or n_bins < 2 or latent_dim < 1:
            raise ValueError("gene_dim, d_model, n_layers, max_tokens, latent_dim must be >= 1 and n_bins >= 2")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        if not 0.0 < mask_fraction < 1.0:
            raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")
        self.gene_dim, self.d_model, self.latent_dim = gene_dim, d_model, latent_dim
        self.max_tokens, self.n_bins, self.mask_fraction = max_tokens, n_bins, mask_fraction
        self.gene_proj = nn.Sequential(nn.Linear(gene_dim, d_model), nn.LayerNorm(d_model))
        self.value_emb = nn.Embedding(n_bins + 1, d_model)  # the last index is [MASK]
        self.cls = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.to_latent = nn.Linear(d_model, latent_dim)
        self.value_head = nn.Linear(d_model, 1)
        self.gene_query = nn.Sequential(nn.Linear(gene_dim, d_model), nn.GELU(), nn.Linear(d_model, latent_dim))
        self.register_buffer("gene_table", None, persistent=False)

    # -- the gene table ---------------------------------------------------------------
    def set_gene_table(self, vectors: Tensor) -> None:
        """Use ``vectors`` (``[G, gene_dim]``, rows = the columns of ``x``) as gene URs."""
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.gene_dim:
            raise ValueError(f"gene table must have shape (n_genes, {self.gene_dim}), got {tuple(vectors.shape)}")
        if not torch.isfinite(vectors).all():
            raise ValueError("gene table has NaN or infinite values")
        device = self.cls.device
        self.register_buffer("gene_table", vectors.to(device), persistent=False)

    # -- tokens ---------------------------------------------------------------------------
    def _tokens(self, batch: dict[str, Tensor], sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Chosen gene columns ``[B, K]``, their values ``[B, K]`` and validity ``[B, K]``."""
        if self.gene_table is None:
            raise RuntimeError("CellTransformer has no gene table; call set_gene_table(vectors) first")
        x = batch["x"].to(torch.float32)
        if x.shape[1] != self.gene_table.shape[0]:
            raise ValueError(f"batch has {x.shape[1]} genes but the gene table has {self.gene_table.shape[0]}")
        mask = batch.get("mask")
        measured = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.bool()
        x = torch.where(measured, x, torch.zeros_like(x))  # an unmeasured gene is not data
        expressed = x > 0
        total = x.sum(dim=1, keepdim=True).clamp_min(1.0)
        values = torch.log1p(x / total * TARGET_SUM)
        k = int(min(self.max_tokens, int(expressed.sum(dim=1).max()) if x.shape[0] else 0))
        if k == 0:
            empty = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)
            return empty, empty.to(torch.float32), empty.to(torch.bool)
        keys = torch.log(x.clamp_min(1e-30))
        if sample:  # Gumbel top-k: sampling without replacement with probability ∝ count
            u = torch.rand_like(keys).clamp(1e-12, 1.0 - 1e-12)
            keys = keys - torch.log(-torch.log(u))
        keys = torch.where(expressed, keys, torch.full_like(keys, -math.inf))
        order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :k]
        valid = torch.gather(expressed, 1, order)
        return order, torch.gather(values, 1, order), valid

    def _bins(self, values: Tensor) -> Tensor:
        return (values / MAX_VALUE * self.n_bins).long().clamp(0, self.n_bins - 1)

    def _encode(self, genes: Tensor, values: Tensor, valid: Tensor, masked: Tensor | None) -> tuple[Tensor, Tensor]:
        """(CLS-derived cell UR ``[B, latent_dim]``, token outputs ``[B, K, d_model]``)."""
        bins = self._bins(values)
        if masked is not None:
            bins = torch.where(masked, torch.full_like(bins, self.n_bins), bins)
        tok = self.gene_proj(self.gene_table[genes]) + self.value_emb(bins)
        cls = self.cls.expand(tok.shape[0], 1, -1)
        h = torch.cat([cls, tok], dim=1)
        pad = torch.cat([torch.zeros_like(valid[:, :1]), ~valid], dim=1)
        out = self.encoder(h, src_key_padding_mask=pad)
        return self.to_latent(out[:, 0]), out[:, 1:]

    # -- training and embedding -----------------------------------------------------------
    def forward(self, batch: dict[str, Tensor], kl_weight: float = 1.0) -> LossOutput:
        """Masked expression prediction; ``kl_weight`` is accepted and ignored (kl = 0)."""
        genes, values, valid = self._tokens(batch, sample=self.training)
        masked = valid & (torch.rand(values.shape, device=values.device) < self.mask_fraction)
        z, out = self._encode(genes, values, valid, masked)
        n = masked.sum().clamp_min(1).to(values.dtype)
        seen = valid & ~masked
        # predictions are offsets from the mean of the cell's visible values (known input)
        center = (values * seen).sum(1, keepdim=True) / seen.sum(1, keepdim=True).clamp_min(1)
        token_pred = center + self.value_head(out).squeeze(-1)
        cell_pred = center + (self.gene_query(self.gene_table[genes]) * z.unsqueeze(1)).sum(-1)
        sq = (token_pred - values) ** 2 + (cell_pred - values) ** 2
        reconstruction = torch.where(masked, sq, torch.zeros_like(sq)).sum() / n
        zero = reconstruction.new_zeros(())
        return LossOutput(loss=reconstruction, reconstruction=reconstruction, kl=zero)

    @torch.no_grad()
    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The cell URs ``[B, latent_dim]``: eval mode, top-``max_tokens`` genes, no masking."""
        was_training = self.training
        self.eval()
        try:
            genes, values, valid = self._tokens(batch, sample=False)
            return self._encode(genes, values, valid, None)[0]
        finally:
            self.train(was_training)
