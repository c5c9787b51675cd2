"""``cell-multimodal-vae``: one cell UR from any subset of RNA, protein (ADT) and chromatin (ATAC).

A pure :class:`torch.nn.Module` (it knows nothing of the lake, AnnData or Ray), after
totalVI (RNA + protein, Gayoso et al. 2021) and MultiVI (RNA + ATAC, Ashuach et al. 2023),
with the modalities combined as a product of experts (Wu & Goodman 2018):

- **Experts.** Each measurement has its own encoder MLP, reading
  ``log1p(count / library * 1e4)`` of the measured genes (RNA), ``log1p(count)`` or the CLR
  of the measured proteins next to the panel mask (ADT) or binarized peaks (ATAC), and the
  one-hot batch, and giving a Gaussian ``N(mu_m, sigma_m^2)`` over the latent ``z``.
- **Product of experts.** The posterior of a cell is the product of the prior ``N(0, I)``
  and the experts of the modalities *present* for that cell (``present_<M>``): precision
  ``1 + sum_m 1/sigma_m^2``, precision-weighted mean. A missing modality is left out of the
  product; its encoder never sees the cell (no zero vector is fed in its place), so a cell
  measured by RNA alone gets exactly the product of the prior and its RNA expert.
- **Decoders.** From ``z`` and the batch: RNA a negative binomial with the observed library
  size (softmax proportions over the measured genes, as ``cell-vae``); ADT a totalVI-like
  mixture of a background and a foreground negative binomial (``foreground = background *
  (1 + softplus(.))``, mixing probability per cell and protein); ATAC a Bernoulli per peak,
  shifted by the cell's log depth of open peaks. Only present modalities (and, within one,
  only measured features) count in the reconstruction.
- **Modality dropout.** While training, each present modality of a cell is left out of the
  product with probability ``modality_dropout`` (one always stays), while every present
  modality is still reconstructed: the RNA-only posterior learns to explain the proteins.

Batches are ``dict[str, Tensor]``: RNA as in :class:`aivc.training.data.CellDataset`
(``x``, ``library``, ``mask``, ``batch``), every other measurement ``M`` as ``x_M`` (counts),
``mask_M`` (bool, measured features) and ``present_M`` (bool per cell); a missing
``x_M`` means no cell has ``M``. ``present_RNA`` defaults to all cells.

Example
-------
>>> import torch
>>> m = MultimodalVAE({"RNA": 5, "ADT": 3}, n_batches=1, latent_dim=2, hidden_dim=8)
>>> b = {"x": torch.ones(4, 5), "batch": torch.zeros(4, dtype=torch.long), "x_ADT": torch.ones(4, 3),
...      "present_ADT": torch.tensor([True, True, False, False])}
>>> bool(torch.isfinite(m(b).loss)), tuple(m.embed(b).shape), tuple(m.embed(b, use=("RNA",)).shape)
(True, (4, 2), (4, 2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aivc.training.models.cell_vae import LossOutput, _mlp, nb_log_likelihood

ModalityKind = Literal["rna", "protein", "chromatin"]
#: what kind of measurement each measurement name (as the lake names them) is
MEASUREMENT_KINDS: dict[str, ModalityKind] = {"RNA": "rna", "ADT": "protein", "ATAC": "chromatin"}
TARGET_SUM = 1e4
_EPS = 1e-8


def batch_keys(measurement: str) -> tuple[str, str, str]:
    """The batch keys of a measurement's counts, feature mask and presence.

    >>> batch_keys("RNA"), batch_keys("ADT")
    (('x', 'mask', 'present_RNA'), ('x_ADT', 'mask_ADT', 'present_ADT'))
    """
    if measurement == "RNA":
        return "x", "mask", "present_RNA"
    return f"x_{measurement}", f"mask_{measurement}", f"present_{measurement}"


@dataclass(frozen=True)
class MultimodalLoss(LossOutput):
    """Per-batch means, ``loss = reconstruction + kl_weight * kl``; ``by_modality``: each
    measurement's reconstruction (summed over its features, averaged over all cells)."""

    by_modality: dict[str, Tensor] = field(default_factory=dict)


def product_of_experts(means: Sequence[Tensor], logvars: Sequence[Tensor], present: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Gaussian product of the prior ``N(0, I)`` and the present experts; returns mean and log-variance.

    ``present[m]`` (float or bool ``[B]``) leaves expert ``m`` out of a cell's product where 0;
    an absent expert's mean and log-variance are never read (they may hold anything).
    """
    precision = torch.ones_like(means[0])
    weighted = torch.zeros_like(means[0])
    for mu, logvar, p in zip(means, logvars, present, strict=True):
        w = p.to(mu.dtype).unsqueeze(-1)
        prec = torch.where(w > 0, torch.exp(-logvar), torch.zeros_like(logvar))
        precision = precision + prec
        weighted = weighted + torch.where(w > 0, mu * prec, torch.zeros_like(mu))
    return weighted / precision, -torch.log(precision)


def protein_mixture_log_likelihood(x: Tensor, background: Tensor, foreground: Tensor, logit_background: Tensor, theta: Tensor) -> Tensor:
    """Elementwise log of ``pi NB(x; background, theta) + (1 - pi) NB(x; foreground, theta)``, ``pi = sigmoid(logit)``."""
    lb = nb_log_likelihood(x, background, theta) + F.logsigmoid(logit_background)
    lf = nb_log_likelihood(x, foreground, theta) + F.logsigmoid(-logit_background)
    return torch.logaddexp(lb, lf)


class _Expert(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_layers: int, dropout: float, latent: int) -> None:
        super().__init__()
        self.net = _mlp(n_in, hidden, n_layers, dropout)
        self.mean = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(h)
        return self.mean(out), self.logvar(out).clamp(-15.0, 15.0)


class MultimodalVAE(nn.Module):
    """Product-of-experts VAE over RNA, ADT and ATAC; see the module docstring.

    Parameters
    ----------
    n_features
        Width of each measurement's count vectors, e.g. ``{"RNA": 4000, "ADT": 14}``; the
        names are keys of :data:`MEASUREMENT_KINDS` (RNA optional: any subset of one or more).
    n_batches
        Batch categories (code ``-1``: a batch the model never saw, encoded as their average).
    latent_dim, hidden_dim, n_layers, dropout
        Size of ``z``; width, depth and dropout of the encoder MLPs (decoders: no dropout).
    batch_covariate
        Whether encoders and decoders read the one-hot batch.
    protein_transform
        Protein encoder input: ``log1p`` of the counts, or ``clr`` (log1p minus its mean
        over the cell's measured proteins).
    modality_dropout
        Training only: probability that a present modality is left out of a cell's product.
    init_stats
        Optional per-measurement starting values of the decoders' per-feature biases, from
        the training data (:func:`aivc.training.multimodal.init_stats`): ``RNA`` log mean
        proportions, ``ADT`` log background rates, ``ATAC`` logits of the open fraction,
        ``ATAC_log_depth`` the mean ``log1p`` open peaks per cell (one value). The weights
        saved after training supersede them.
    """

    gene_tokens = False

    def __init__(
        self,
        n_features: Mapping[str, int],
        n_batches: int,
        *,
        latent_dim: int = 32,
        hidden_dim: int = 128,
        n_layers: int = 1,
        dropout: float = 0.3,
        batch_covariate: bool = True,
        protein_transform: Literal["log1p", "clr"] = "log1p",
        modality_dropout: float = 0.3,
        init_stats: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(n_features) - set(MEASUREMENT_KINDS))
        if unknown or not n_features:
            raise ValueError(f"measurements must be some of {', '.join(MEASUREMENT_KINDS)}, got {sorted(n_features)}")
        if n_batches < 1 or any(int(n) < 1 for n in n_features.values()):
            raise ValueError(f"need at least one batch and one feature per measurement, got {n_batches} batches, {dict(n_features)}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.modalities: tuple[str, ...] = tuple(m for m in MEASUREMENT_KINDS if m in n_features)
        self.n_features = {m: int(n_features[m]) for m in self.modalities}
        self.n_batches, self.latent_dim = int(n_batches), int(latent_dim)
        self.batch_covariate, self.protein_transform = bool(batch_covariate), protein_transform
        self.modality_dropout = float(modality_dropout)
        nb = self.n_batches if self.batch_covariate else 0
        self.experts = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.log_theta = nn.ParameterDict()
        for m in self.modalities:
            n, kind = self.n_features[m], MEASUREMENT_KINDS[m]
            n_in = 2 * n if kind == "protein" else n  # proteins: values next to the panel mask
            self.experts[m] = _Expert(n_in + nb, hidden_dim, n_layers, dropout, latent_dim)
            self.decoders[m] = _mlp(latent_dim + nb, hidden_dim, n_layers, 0.0)
            n_out = 3 * n if kind == "protein" else n  # proteins: background, foreground, mixing
            self.heads[m] = nn.Linear(hidden_dim, n_out)
            if kind != "chromatin":
                self.log_theta[m] = nn.Parameter(torch.zeros(n) + (2.0 if kind == "protein" else 0.0))
        if "ATAC" in self.modalities:
            self.atac_depth_scale = nn.Parameter(torch.ones(()))
        self.register_buffer("atac_log_depth", torch.zeros(()), persistent=True)
        if init_stats:
            self._init_biases(init_stats)

    @torch.no_grad()
    def _init_biases(self, stats: Mapping[str, Sequence[float]]) -> None:
        for m in self.modalities:
            if m not in stats:
                continue
            v = torch.as_tensor(list(stats[m]), dtype=torch.float32)
            n = self.n_features[m]
            if v.shape != (n,):
                raise ValueError(f"init_stats[{m!r}] has {v.numel()} values, the model has {n} {m} features")
            bias = self.heads[m].bias
            if MEASUREMENT_KINDS[m] == "protein":
                bias[:n] = v  # log background
                bias[n : 2 * n] = 1.0  # foreground = background * (1 + softplus(1)) ~ 2.3x
            else:
                bias.copy_(v)
        if "ATAC_log_depth" in stats:
            self.atac_log_depth.fill_(float(list(stats["ATAC_log_depth"])[0]))

    # -- inputs -----------------------------------------------------------------------------
    def _onehot(self, batch: Tensor) -> Tensor:
        b = batch.long()
        if not self.batch_covariate:
            return torch.zeros(b.shape[0], 0)
        out = F.one_hot(b.clamp(min=0), self.n_batches).to(torch.float32)
        unknown = b < 0
        if bool(unknown.any()):
            out[unknown] = 1.0 / self.n_batches
        return out

    def _inputs(self, batch: Mapping[str, Tensor], m: str) -> tuple[Tensor, Tensor, Tensor]:
        """Counts (0 where unmeasured), feature mask and presence of ``m`` (all False when absent)."""
        xk, mk, pk = batch_keys(m)
        n_cells = int(batch["batch"].shape[0])
        if xk not in batch:
            z = torch.zeros(n_cells, self.n_features[m])
            return z, z.bool(), torch.zeros(n_cells, dtype=torch.bool)
        x = batch[xk].to(torch.float32)
        mask = batch[mk].bool() if mk in batch else torch.ones_like(x, dtype=torch.bool)
        present = batch[pk].bool() if pk in batch else torch.ones(n_cells, dtype=torch.bool)
        return x * mask, mask, present

    def _encoder_input(self, m: str, x: Tensor, mask: Tensor) -> Tensor:
        kind = MEASUREMENT_KINDS[m]
        if kind == "rna":
            return torch.log1p(x / x.sum(dim=-1, keepdim=True).clamp(min=1.0) * TARGET_SUM)
        if kind == "chromatin":
            return (x > 0).to(torch.float32)
        v = torch.log1p(x)
        if self.protein_transform == "clr":
            mf = mask.to(torch.float32)
            v = (v - (v * mf).sum(-1, keepdim=True) / mf.sum(-1, keepdim=True).clamp(min=1.0)) * mf
        return torch.cat([v, mask.to(torch.float32)], dim=-1)

    # -- encoding -----------------------------------------------------------------------------
    def experts_of(self, batch: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Each modality's expert ``(mean, logvar, present)``; rows of absent cells are 0 and never computed."""
        onehot = self._onehot(batch["batch"])
        out: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for m in self.modalities:
            x, mask, present = self._inputs(batch, m)
            mean = torch.zeros(x.shape[0], self.latent_dim)
            logvar = torch.zeros(x.shape[0], self.latent_dim)
            idx = torch.nonzero(present, as_tuple=True)[0]
            if idx.numel():  # only the cells that have the modality reach its encoder
                h = torch.cat([self._encoder_input(m, x[idx], mask[idx]), onehot[idx]], dim=-1)
                mu, lv = self.experts[m](h)
                mean, logvar = mean.index_copy(0, idx, mu), logvar.index_copy(0, idx, lv)
            out[m] = (mean, logvar, present)
        return out

    def posterior(self, batch: Mapping[str, Tensor], use: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the product of the prior and the present experts (only those in ``use``)."""
        ex = self.experts_of(batch)
        keep = [m for m in self.modalities if use is None or m in use]
        return product_of_experts([ex[m][0] for m in keep], [ex[m][1] for m in keep], [ex[m][2] for m in keep])

    # -- decoding -----------------------------------------------------------------------------
    def _decode(self, m: str, z: Tensor, onehot: Tensor) -> Tensor:
        return self.heads[m](self.decoders[m](torch.cat([z, onehot], dim=-1)))

    def _protein_parts(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = out.shape[-1] // 3
        background = torch.exp(out[..., :n].clamp(max=15.0))
        foreground = background * (1.0 + F.softplus(out[..., n : 2 * n]))
        return background, foreground, out[..., 2 * n :]

    def _log_likelihood(self, m: str, out: Tensor, x: Tensor, mask: Tensor) -> Tensor:
        kind = MEASUREMENT_KINDS[m]
        if kind == "rna":
            mu = torch.softmax(out.masked_fill(~mask, float("-inf")), dim=-1) * x.sum(dim=-1, keepdim=True)
            return nb_log_likelihood(x, mu, torch.exp(self.log_theta[m]))
        if kind == "protein":
            bg, fg, logit = self._protein_parts(out)
            return protein_mixture_log_likelihood(x, bg, fg, logit, torch.exp(self.log_theta[m]))
        y = (x > 0).to(torch.float32)
        depth = torch.log1p((y * mask).sum(dim=-1, keepdim=True)) - self.atac_log_depth
        return -F.binary_cross_entropy_with_logits(out + self.atac_depth_scale * depth, y, reduction="none")

    def expected(self, z: Tensor, batch: Tensor, m: str, library: Tensor | None = None) -> Tensor:
        """Mean counts of ``m`` given ``z``: RNA times ``library`` (proportions without one),
        ADT ``pi * background + (1 - pi) * foreground``, ATAC the open probability at the mean depth."""
        out = self._decode(m, z, self._onehot(batch))
        kind = MEASUREMENT_KINDS[m]
        if kind == "rna":
            p = torch.softmax(out, dim=-1)
            return p if library is None else p * library
        if kind == "protein":
            bg, fg, logit = self._protein_parts(out)
            pi = torch.sigmoid(logit)
            return pi * bg + (1.0 - pi) * fg
        return torch.sigmoid(out)

    # -- training ----------------------------------------------------------------------------
    def _dropout(self, present: Tensor) -> Tensor:
        """``present`` ``[B, M]`` with each entry dropped at ``modality_dropout``; a cell keeps one."""
        if not self.training or self.modality_dropout <= 0.0 or present.shape[1] < 2:
            return present
        keep = present & (torch.rand(present.shape) >= self.modality_dropout)
        lost = present.any(dim=1) & ~keep.any(dim=1)
        if bool(lost.any()):
            pick = (torch.rand(present.shape) * present).argmax(dim=1)  # a random present modality
            keep[lost, pick[lost]] = True
        return keep

    def forward(self, batch: Mapping[str, Tensor], kl_weight: float = 1.0) -> MultimodalLoss:
        onehot = self._onehot(batch["batch"])
        ex = self.experts_of(batch)
        present = torch.stack([ex[m][2] for m in self.modalities], dim=1)
        used = self._dropout(present)
        mean, logvar = product_of_experts([ex[m][0] for m in self.modalities], [ex[m][1] for m in self.modalities], list(used.T))
        eps = torch.randn_like(mean) if self.training else torch.zeros_like(mean)
        z = mean + torch.exp(0.5 * logvar) * eps
        n_cells = max(int(z.shape[0]), 1)
        by: dict[str, Tensor] = {}
        for j, m in enumerate(self.modalities):
            x, mask, _ = self._inputs(batch, m)
            idx = torch.nonzero(present[:, j], as_tuple=True)[0]
            if not idx.numel():
                by[m] = torch.zeros(())
                continue
            ll = self._log_likelihood(m, self._decode(m, z[idx], onehot[idx]), x[idx], mask[idx])
            by[m] = -torch.where(mask[idx], ll, torch.zeros_like(ll)).sum() / n_cells
        reconstruction = torch.stack(list(by.values())).sum()
        kl = (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).sum(dim=-1).mean()
        return MultimodalLoss(loss=reconstruction + kl_weight * kl, reconstruction=reconstruction, kl=kl, by_modality=by)

    # -- use -----------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, batch: Mapping[str, Tensor], use: Sequence[str] | None = None) -> Tensor:
        """Each cell's UR: the posterior mean from its present modalities (only those in ``use``); deterministic."""
        was_training = self.training
        self.eval()
        try:
            return self.posterior(batch, use)[0]
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict(self, batch: Mapping[str, Tensor], target: str, use: Sequence[str] | None = None, decode_batch: int | None = None) -> Tensor:
        """Mean counts of ``target`` decoded from the posterior mean of the modalities in ``use``
        (e.g. proteins from RNA alone: ``predict(b, "ADT", use=("RNA",))``); RNA at the observed library.

        ``decode_batch``: decode as if every cell had been measured in that batch (e.g. one
        whose cells had proteins, when the cells' own batch had none); default their own.
        """
        was_training = self.training
        self.eval()
        try:
            z = self.posterior(batch, use)[0]
            library = batch["x"].sum(dim=-1, keepdim=True) if target == "RNA" and "x" in batch else None
            b = batch["batch"] if decode_batch is None else torch.full_like(batch["batch"], int(decode_batch))
            return self.expected(z, b, target, library)
        finally:
            self.train(was_training)
