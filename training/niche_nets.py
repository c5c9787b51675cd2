"""``niche-gnn``: niche URs from the spatial graph of cell URs, self-supervised.

A pure :class:`torch.nn.Module` (no lake, AnnData, Ray or torch-geometric; message passing
is a sparse CSR product over the :class:`~aivc.training.niche_graph.NicheGraph` edges):

- **Cell states.** Each cell UR ``x`` (centred and scaled by one global factor, kept as
  buffers) is softly assigned to ``n_states`` learned prototypes,
  ``u = softmax(-beta * ||x - c_s||^2)``; the prototypes start from a seeded k-means++ of
  the training cells and ``beta`` is learned. This is the nonlinearity that a mean of
  neighbour URs lacks: within-type variation and noise of the URs are squashed before
  anything is averaged, so a neighbourhood becomes a composition of cell states.
- **Multi-scale neighbourhoods.** ``s_k = P^k u`` for each ``k`` in ``hops`` (``P`` the
  row-normalized adjacency, the mean over a node's neighbours; ``P^k`` a k-step random
  walk, so ``(1, 2, 4, 8, 12)`` reaches ~12 cells out), concatenated and projected by the
  niche head (linear when ``layers == 0``, else an MLP) to the niche UR ``z`` (``out_dim``).
- **Masked-node prediction** (after GraphMAE, Hou et al. 2022). A ``mask_rate`` fraction of
  the nodes have their state replaced by a learned mask state everywhere (their own UR is
  seen by no one); a decoder MLP predicts each masked node's own (scaled) cell UR from its
  niche UR (squared error summed over dims, mean over masked nodes), so ``z`` must hold
  what the surroundings say about a cell.
- **Neighbour contrast.** Alone, that target is weak (most of a cell's UR is not predictable
  from its surroundings). An InfoNCE term (symmetric, temperature ``temperature``) makes the
  niche UR of an anchor under one mask match that of a random graph neighbour under a
  second, independent mask, against the other anchors' neighbours: what survives two
  different masks and a one-cell shift is the local composition of the tissue, not the
  particular cells seen.

Batches are ``dict[str, Tensor]``: ``x`` (``n x d`` cell URs), ``indptr`` and ``indices``
(the CSR graph over those ``n`` nodes), optional ``degree`` (each node's degree in the full
graph, which sets ``P``'s weights; a subgraph passes its nodes' full degrees), and for
:meth:`NicheGNN.forward` ``mask`` (bool ``n``), ``mask2`` (bool ``n``), ``anchors`` and
``positives`` (node indices; each positive a neighbour of its anchor). The training loop
(:func:`fit_niche_model`) draws them; the model holds no random state.

Example
-------
>>> import numpy as np
>>> from aivc.training.niche_graph import NicheGraphSpec, build_graph
>>> rng = np.random.default_rng(0)
>>> xy, x = rng.uniform(0, 100, (300, 2)), rng.normal(size=(300, 8)).astype(np.float32)
>>> g = build_graph(xy, NicheGraphSpec(rule="knn", k=5))
>>> model, history = fit_niche_model(x, g, NicheModelConfig(epochs=3, n_states=4, out_dim=3))
>>> embed_niches(model, x, g).shape, len(history)
((300, 3), 3)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aivc.errors import UsageError
from aivc.progress import NullProgress, Progress

MODEL_TYPE = "niche-gnn"


@dataclass(frozen=True)
class NicheModelConfig:
    """Model and training settings of :func:`fit_niche_model` (defaults: the benchmarked ones)."""

    n_states: int = 32
    hops: tuple[int, ...] = (1, 2, 4, 8, 12)
    out_dim: int = 16
    hidden: int = 64
    layers: int = 0  # hidden layers of the niche head (0: linear)
    mask_rate: float = 0.25
    reconstruction_weight: float = 0.1
    contrastive_weight: float = 1.0
    temperature: float = 0.2
    anchors: int = 2048
    epochs: int = 100
    lr: float = 1e-2
    batch_nodes: int = 50_000  # graphs up to this train whole; larger ones on BFS balls of this size
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            ("n_states", self.n_states >= 2, "at least 2"),
            ("out_dim", self.out_dim >= 1, "at least 1"),
            ("hidden", self.hidden >= 1, "at least 1"),
            ("layers", self.layers >= 0, "0 or more"),
            ("hops", len(self.hops) > 0 and all(int(h) == h and h >= 1 for h in self.hops), "whole numbers >= 1"),
            ("mask_rate", 0.0 < self.mask_rate < 1.0, "between 0 and 1"),
            ("reconstruction_weight", self.reconstruction_weight >= 0, "0 or more"),
            ("contrastive_weight", self.contrastive_weight >= 0, "0 or more"),
            ("temperature", self.temperature > 0, "positive"),
            ("anchors", self.anchors >= 2, "at least 2"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("batch_nodes", self.batch_nodes >= 100, "at least 100"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UsageError(f"niche model {name} must be {want}, got {getattr(self, name)}", where=name)
        if self.reconstruction_weight == 0 and self.contrastive_weight == 0:
            raise UsageError("niche model needs a loss: reconstruction_weight or contrastive_weight above 0", where="reconstruction_weight")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class NicheLoss:
    """Per-batch: ``loss = reconstruction_weight * reconstruction + contrastive_weight * contrastive``."""

    loss: Tensor
    reconstruction: Tensor
    contrastive: Tensor


def _mlp(n_in: int, hidden: int, n_out: int, n_layers: int) -> nn.Module:
    if n_layers == 0:
        return nn.Linear(n_in, n_out)
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, n_out))


class NicheGNN(nn.Module):
    """Cell states -> multi-scale neighbourhood compositions -> niche UR; see the module docstring.

    Parameters
    ----------
    n_features
        Width of the cell URs.
    n_states, hops, out_dim, hidden, layers
        Prototypes; propagation steps kept; niche UR size; decoder (and head) width; head depth.
    reconstruction_weight, contrastive_weight, temperature
        The loss (see :class:`NicheModelConfig`).
    """

    gene_tokens = False

    def __init__(
        self,
        n_features: int,
        *,
        n_states: int = 32,
        hops: tuple[int, ...] = (1, 2, 4, 8, 12),
        out_dim: int = 16,
        hidden: int = 64,
        layers: int = 0,
        reconstruction_weight: float = 0.1,
        contrastive_weight: float = 1.0,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        if n_features < 1:
            raise ValueError(f"need at least one feature, got {n_features}")
        self.init_params: dict[str, Any] = {
            "n_features": int(n_features), "n_states": int(n_states), "hops": [int(h) for h in hops], "out_dim": int(out_dim),
            "hidden": int(hidden), "layers": int(layers), "reconstruction_weight": float(reconstruction_weight),
            "contrastive_weight": float(contrastive_weight), "temperature": float(temperature),
        }  # fmt: skip
        self.hops = tuple(sorted({int(h) for h in hops}))
        self.reconstruction_weight, self.contrastive_weight, self.temperature = (reconstruction_weight, contrastive_weight, temperature)
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_scale", torch.ones(()))
        self.prototypes = nn.Parameter(torch.randn(n_states, n_features))
        self.log_beta = nn.Parameter(torch.zeros(()))
        self.mask_logits = nn.Parameter(torch.zeros(n_states))
        self.head = _mlp(n_states * len(self.hops), hidden, out_dim, layers)
        self.decoder = _mlp(out_dim, hidden, n_features, 1)

    @torch.no_grad()
    def init_from_data(self, x: Tensor, generator: torch.Generator, max_cells: int = 20_000) -> None:
        """Scaling buffers, k-means++ prototypes (10 Lloyd steps) and ``beta`` from training URs."""
        self.x_mean.copy_(x.mean(0))
        self.x_scale.copy_(x.std(0).mean().clamp_min(1e-8))
        xs = self.scale(x)
        if len(xs) > max_cells:
            xs = xs[torch.randperm(len(xs), generator=generator)[:max_cells]]
        k = self.prototypes.shape[0]
        centres = xs[torch.randint(len(xs), (1,), generator=generator)]
        d2 = torch.cdist(xs, centres).pow(2).squeeze(1)
        for _ in range(1, k):
            p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / len(d2))
            nxt = xs[torch.multinomial(p, 1, generator=generator)]
            centres = torch.cat([centres, nxt])
            d2 = torch.minimum(d2, torch.cdist(xs, nxt).pow(2).squeeze(1))
        for _ in range(10):
            lab = torch.cdist(xs, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, lab, xs)
            cnt = torch.bincount(lab, minlength=k).to(xs.dtype).unsqueeze(1)
            centres = torch.where(cnt > 0, sums / cnt.clamp_min(1.0), centres)
        self.prototypes.copy_(centres)
        nearest = torch.cdist(xs, centres).pow(2).min(1).values.mean().clamp_min(1e-8)
        self.log_beta.fill_(math.log(2.0) - float(torch.log(nearest)))

    def scale(self, x: Tensor) -> Tensor:
        return (x - self.x_mean) / self.x_scale

    def states(self, x: Tensor) -> Tensor:
        """Soft cell-state assignments ``n x n_states`` (rows sum to 1)."""
        return torch.softmax(-self.log_beta.exp() * torch.cdist(self.scale(x), self.prototypes).pow(2), dim=-1)

    def _operator(self, batch: dict[str, Tensor]) -> Tensor:
        indptr, indices = batch["indptr"].long(), batch["indices"].long()
        n = indptr.numel() - 1
        deg = batch.get("degree")
        deg = (indptr[1:] - indptr[:-1]) if deg is None else deg
        w = (1.0 / deg.clamp_min(1).to(torch.float32)).repeat_interleave(indptr[1:] - indptr[:-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sparse CSR support is flagged beta
            return torch.sparse_csr_tensor(indptr, indices, w, size=(n, n))

    def niche(self, batch: dict[str, Tensor], mask: Tensor | None = None, operator: Tensor | None = None) -> Tensor:
        """The niche UR of every node; nodes in ``mask`` enter as the mask state."""
        P = self._operator(batch) if operator is None else operator
        u = self.states(batch["x"])
        if mask is not None:
            u = torch.where(mask.unsqueeze(1), torch.softmax(self.mask_logits, -1).expand_as(u), u)
        scales, h = [], u
        for k in range(1, self.hops[-1] + 1):
            h = torch.sparse.mm(P, h)
            if k in self.hops:
                scales.append(h)
        return self.head(torch.cat(scales, dim=1))

    def forward(self, batch: dict[str, Tensor]) -> NicheLoss:
        P = self._operator(batch)
        mask = batch["mask"].bool()
        z = self.niche(batch, mask, P)
        zero = z.new_zeros(())
        recon = zero
        if self.reconstruction_weight > 0:
            target = batch.get("targets", torch.ones_like(mask)).bool() & mask
            err = (self.decoder(z[target]) - self.scale(batch["x"][target])).pow(2).sum(1)
            recon = err.mean() if err.numel() else zero
        contrast = zero
        if self.contrastive_weight > 0 and batch.get("anchors") is not None and batch["anchors"].numel() > 1:
            z2 = self.niche(batch, batch["mask2"].bool(), P)
            za = F.normalize(z[batch["anchors"].long()], dim=1)
            zp = F.normalize(z2[batch["positives"].long()], dim=1)
            logits = za @ zp.T / self.temperature
            labels = torch.arange(len(za))
            contrast = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        loss = self.reconstruction_weight * recon + self.contrastive_weight * contrast
        return NicheLoss(loss=loss, reconstruction=recon, contrastive=contrast)

    @torch.no_grad()
    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The niche UR of every node, nothing masked (eval mode, no gradients)."""
        was = self.training
        self.eval()
        try:
            return self.niche(batch)
        finally:
            self.train(was)


def _check_inputs(x: np.ndarray, graph: Any) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != graph.n_nodes:
        raise UsageError(f"cell URs must be an n x d array with one row per graph node ({graph.n_nodes}), got shape {x.shape}", where="x")
    if not np.isfinite(x).all():
        raise UsageError(f"cell URs hold {int((~np.isfinite(x)).any(axis=1).sum())} rows with NaN or infinite values", where="x")
    return x


def _ball(graph: Any, seed_node: int, size: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes of a BFS ball of about ``size`` nodes around ``seed_node`` and the ones whose
    ``radius``-hop neighbourhood lies inside it (their propagation is exact)."""
    n = graph.n_nodes
    depth = np.full(n, -1, dtype=np.int64)
    depth[seed_node] = 0
    frontier, order, d, complete = (np.array([seed_node]), [np.array([seed_node])], 0, True)
    while frontier.size and sum(o.size for o in order) < size:
        starts, stops = graph.indptr[frontier], graph.indptr[frontier + 1]
        nb = graph.indices[np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])] if frontier.size else frontier
        nb = np.unique(nb)
        nb = nb[depth[nb] < 0]
        d += 1
        depth[nb] = d
        order.append(nb)
        frontier = nb
    complete = frontier.size == 0
    nodes = np.sort(np.concatenate(order))
    interior = np.ones(nodes.size, bool) if complete else depth[nodes] <= d - radius
    return nodes, interior


def _subgraph(graph: Any, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the subgraph induced by sorted ``nodes`` (local indices)."""
    sub = graph.to_scipy()[nodes][:, nodes].tocsr()
    sub.sort_indices()
    return sub.indptr.astype(np.int64), sub.indices.astype(np.int64)


def _draw(n: int, targets: np.ndarray, indptr: np.ndarray, indices: np.ndarray, config: NicheModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Masks and contrastive pairs for one step."""
    deg = np.diff(indptr)
    pool = np.flatnonzero(targets & (deg > 0))
    anchors = rng.choice(pool, size=min(config.anchors, pool.size), replace=False) if pool.size > 1 else np.zeros(0, np.int64)
    positives = indices[indptr[anchors] + (rng.random(anchors.size) * deg[anchors]).astype(np.int64)]
    return {"mask": rng.random(n) < config.mask_rate, "mask2": rng.random(n) < config.mask_rate, "anchors": anchors, "positives": positives}


def fit_niche_model(
    x: np.ndarray,
    graph: Any,
    config: NicheModelConfig = NicheModelConfig(),
    *,
    progress: Progress | None = None,
    rank: int = 0,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict[str, float], nn.Module], None] | None = None,
) -> tuple[Any, list[dict[str, float]]]:
    """Train a :class:`NicheGNN` on cell URs ``x`` (``n x d``) over ``graph``; deterministic given ``config.seed``.

    A graph of at most ``config.batch_nodes`` nodes trains whole (one step per epoch); a
    larger one on BFS balls of about ``batch_nodes`` nodes around random seeds
    (``ceil(n / batch_nodes)`` steps per epoch), with the losses on the nodes whose whole
    ``max(hops)``-hop neighbourhood lies in the ball. Returns the model (eval mode) and the
    per-epoch means of ``loss``, ``reconstruction`` and ``contrastive``.

    Data-parallel training (the Ray Train loop, :mod:`aivc.training.niche_train`): every
    worker calls this with its ``rank`` (its masks, contrastive pairs and balls are drawn
    from ``seed + rank``; the initial weights are the same on every rank) and ``wrap`` (e.g.
    ``ray.train.torch.prepare_model``, which averages the gradients); ``on_epoch(metrics,
    model)`` is called after every epoch with the unwrapped model.
    """
    x = _check_inputs(x, graph)
    progress = progress or NullProgress()
    rng = np.random.default_rng([config.seed, rank] if rank else config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = NicheGNN(
        x.shape[1], n_states=config.n_states, hops=config.hops, out_dim=config.out_dim, hidden=config.hidden, layers=config.layers,
        reconstruction_weight=config.reconstruction_weight, contrastive_weight=config.contrastive_weight, temperature=config.temperature,
    )  # fmt: skip
    xt = torch.from_numpy(x)
    model.init_from_data(xt, gen)
    net = wrap(model) if wrap is not None else model
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    n, full_degree = graph.n_nodes, graph.degree
    whole = n <= config.batch_nodes
    steps = 1 if whole else math.ceil(n / config.batch_nodes)
    history: list[dict[str, float]] = []
    progress.phase(f"niche model: {config.epochs} epochs x {steps} step(s) on {n:,} nodes", total=config.epochs)
    net.train()
    for epoch in range(config.epochs):
        sums = {"loss": 0.0, "reconstruction": 0.0, "contrastive": 0.0}
        for _ in range(steps):
            if whole:
                nodes, targets, indptr, indices = (None, np.ones(n, bool), graph.indptr, graph.indices)
            else:
                nodes, targets = _ball(graph, int(rng.integers(n)), config.batch_nodes, max(config.hops))
                indptr, indices = _subgraph(graph, nodes)
            draw = _draw(len(targets), targets, indptr, indices, config, rng)
            batch = {
                "x": xt if nodes is None else xt[torch.from_numpy(nodes)],
                "indptr": torch.from_numpy(indptr), "indices": torch.from_numpy(indices),
                "degree": torch.from_numpy(full_degree if nodes is None else full_degree[nodes]),
                "targets": torch.from_numpy(targets), **{k: torch.from_numpy(v) for k, v in draw.items()},
            }  # fmt: skip
            out = net(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            for k in sums:
                sums[k] += float(getattr(out, k).detach()) / steps
        history.append({"epoch": epoch, **sums})
        if on_epoch is not None:
            on_epoch(history[-1], model)
        progress.advance(1)
    model.eval()
    return model, history


def embed_niches(model: Any, x: np.ndarray, graph: Any) -> np.ndarray:
    """The niche UR of every node of ``graph`` (``n x out_dim`` float32), nothing masked."""
    x = _check_inputs(x, graph)
    if x.shape[1] != model.init_params["n_features"]:
        raise UsageError(f"the niche model reads {model.init_params['n_features']}-dim cell URs, got {x.shape[1]}", where="x")
    batch = {"x": torch.from_numpy(x), "indptr": torch.from_numpy(graph.indptr), "indices": torch.from_numpy(graph.indices)}
    return model.embed(batch).numpy().astype(np.float32)


__all__ = ["MODEL_TYPE", "NicheGNN", "NicheLoss", "NicheModelConfig", "embed_niches", "fit_niche_model"]
