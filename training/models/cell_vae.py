"""``cell-vae``: a negative-binomial variational autoencoder with a batch covariate.

The scVI baseline for cell URs (Lopez et al. 2018): the encoder reads log counts
(``encoder_input``: ``lognorm``, counts scaled to 10,000 per cell then ``log1p``, the
default of new configs; ``log1p`` of raw counts, what models registered before it read)
and a one-hot batch (dataset) and gives the mean and log-variance of a latent ``z``; the
decoder maps ``z`` and the batch to gene proportions (softmax over the genes the cell's
dataset measured) that, times the observed library size, are the means of a negative
binomial with a learned per-gene inverse dispersion. The loss is the NB negative
log-likelihood of the measured genes plus the KL divergence of ``q(z|x)`` from N(0, I).

A pure :class:`torch.nn.Module`: it takes the batch dicts of
:class:`aivc.training.data.CellDataset` (``x``, ``batch``, ``library``, optional ``mask``)
and knows nothing of the lake, AnnData or Ray.

Example
-------
>>> import torch
>>> m = CellVAE(n_genes=5, n_batches=2, latent_dim=3, hidden_dim=8)
>>> out = m({"x": torch.ones(4, 5), "batch": torch.tensor([0, 1, 0, 1]), "library": torch.full((4, 1), 5.0)})
>>> bool(torch.isfinite(out.loss)), tuple(m.embed({"x": torch.ones(4, 5), "batch": torch.zeros(4, dtype=torch.long)}).shape)
(True, (4, 3))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_EPS = 1e-8


@dataclass(frozen=True)
class LossOutput:
    """Per-batch means: ``loss = reconstruction + kl_weight * kl``."""

    loss: Tensor
    reconstruction: Tensor
    kl: Tensor


def _mlp(n_in: int, hidden: int, n_layers: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def nb_log_likelihood(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Elementwise log NB(x; mean ``mu``, inverse dispersion ``theta``)."""
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


class CellVAE(nn.Module):
    """Negative-binomial VAE with a one-hot batch covariate in encoder and decoder.

    Parameters
    ----------
    n_genes, n_batches
        Width of the count vectors and number of batch categories.
    latent_dim, hidden_dim, n_layers, dropout
        Size of ``z``; width, depth and dropout of encoder and decoder MLPs.
    encoder_input
        ``log1p`` (of raw counts) or ``lognorm`` (of counts scaled to 10,000 per cell).
    """

    def __init__(
        self, n_genes: int, n_batches: int, *, latent_dim: int = 16, hidden_dim: int = 128, n_layers: int = 1, dropout: float = 0.1, encoder_input: str = "log1p"
    ) -> None:
        super().__init__()
        if n_genes < 1 or n_batches < 1:
            raise ValueError(f"need at least one gene and one batch, got {n_genes} genes, {n_batches} batches")
        if encoder_input not in ("log1p", "lognorm"):
            raise ValueError(f"encoder_input must be log1p or lognorm, got {encoder_input!r}")
        self.encoder_input = encoder_input
        self.n_genes, self.n_batches, self.latent_dim = n_genes, n_batches, latent_dim
        self.encoder = _mlp(n_genes + n_batches, hidden_dim, n_layers, dropout)
        self.z_mean = nn.Linear(hidden_dim, latent_dim)
        self.z_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = _mlp(latent_dim + n_batches, hidden_dim, n_layers, 0.0)
        self.px_logits = nn.Linear(hidden_dim, n_genes)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def _onehot(self, batch: Tensor) -> Tensor:
        """One-hot batch codes; code ``-1`` (a dataset the model never saw) is the average
        of all training batches (``1 / n_batches`` each), not any one of them."""
        b = batch.long()
        out = F.one_hot(b.clamp(min=0), self.n_batches).to(torch.float32)
        unknown = b < 0
        if bool(unknown.any()):
            out[unknown] = 1.0 / self.n_batches
        return out

    def encode(self, x: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.encoder_input == "lognorm":  # the measured genes' total: masked genes are zero here
            x = x / x.sum(dim=-1, keepdim=True).clamp(min=1.0) * 1e4
        h = self.encoder(torch.cat([torch.log1p(x), self._onehot(batch)], dim=-1))
        return self.z_mean(h), self.z_logvar(h).clamp(-15.0, 15.0)

    def decode(self, z: Tensor, batch: Tensor, library: Tensor, mask: Tensor | None = None) -> Tensor:
        """NB means: softmax proportions over measured genes times the library size."""
        logits = self.px_logits(self.decoder(torch.cat([z, self._onehot(batch)], dim=-1)))
        if mask is not None:
            logits = logits.masked_fill(~mask.bool(), float("-inf"))
        return torch.softmax(logits, dim=-1) * library

    def forward(self, batch: dict[str, Tensor], kl_weight: float = 1.0) -> LossOutput:
        x, b, library = batch["x"], batch["batch"], batch["library"]
        mask = batch.get("mask")
        if mask is not None:
            mask = mask.bool()
            x = x * mask  # an unmeasured gene carries no information, whatever it holds
        mean, logvar = self.encode(x, b)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn_like(std) if self.training else mean
        mu = self.decode(z, b, library, mask)
        ll = nb_log_likelihood(x, mu, torch.exp(self.log_theta))
        if mask is not None:
            ll = torch.where(mask, ll, torch.zeros_like(ll))
        reconstruction = -ll.sum(dim=-1).mean()
        kl = (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).sum(dim=-1).mean()
        return LossOutput(loss=reconstruction + kl_weight * kl, reconstruction=reconstruction, kl=kl)

    @torch.no_grad()
    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The latent mean of each cell (its UR); deterministic (dropout off)."""
        x = batch["x"]
        mask = batch.get("mask")
        if mask is not None:
            x = x * mask.bool()
        was_training = self.training
        self.eval()
        try:
            return self.encode(x, batch["batch"])[0]
        finally:
            self.train(was_training)
