"""Fitting a perturbation manipulator on a screen: encoder, knockdown efficiency, the ensemble.

:func:`fit_manipulator` fits, on the training conditions only, the encoder (PCA of the
screen, or a ridge decoder from feature-store URs), the members' knockdown efficiencies, and
the ensemble MLPs (torch, one thread) of :mod:`aivc.instruments.perturbation_nets`, and
returns the :class:`~aivc.instruments.manipulator.PerturbationManipulator` that applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.instruments.manipulator import ManipulatorParams, PerturbationManipulator
from aivc.instruments.perturbation_nets import Encoder, direct_change, ensemble_forward, init_layers
from aivc.instruments.perturbation_screen import CONTROL, GeneURs, PerturbationScreen, targets_of

def _fit_encoder(screen: PerturbationScreen, rows: np.ndarray, params: ManipulatorParams) -> tuple[Encoder, np.ndarray]:
    """The encoder and every cell's UR; fitted on the training cells ``rows`` only."""
    X = screen.expression[rows].astype(np.float64)
    mean = X.mean(axis=0)
    if screen.cell_ur is None:
        k = max(1, min(params.n_components, X.shape[0] - 1, X.shape[1]))
        _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
        comps = vt[:k].T
        comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
        c32 = comps.astype(np.float32)
        enc = Encoder("pca", mean.astype(np.float32), c32, np.ascontiguousarray(c32.T), np.zeros(k, np.float32), c32)
        return enc, enc.encode(screen.expression)
    Z = screen.cell_ur.astype(np.float64)
    z_mean = Z[rows].mean(axis=0)
    Zc = Z[rows] - z_mean
    lam = params.ridge * np.trace(Zc.T @ Zc) / max(Zc.shape[1], 1)
    decoder = np.linalg.solve(Zc.T @ Zc + lam * np.eye(Zc.shape[1]), Zc.T @ (X - mean))
    direct = np.linalg.pinv(decoder).astype(np.float32)
    enc = Encoder("store", mean.astype(np.float32), None, decoder.astype(np.float32), z_mean.astype(np.float32), direct)
    return enc, screen.cell_ur.astype(np.float32)


@dataclass(frozen=True)
class _Fitted:
    layers: list[tuple[np.ndarray, np.ndarray]]
    remaining_logit: np.ndarray  # (members,)


@dataclass(frozen=True)
class _TrainData:
    """Training tensors: control cells (``z`` scaled URs, ``xhat`` decoded target levels) and,
    per condition, the perturbation input ``P``, knocked targets ``T`` (columns of ``direct`` /
    ``outside``) and the observed mean shifts ``dZ`` / ``dX``; the networks' outputs are in units
    of ``d_scale``."""

    z: Any
    xhat: Any
    P: Any
    T: Any
    direct: Any
    outside: Any
    dZ: Any
    dX: Any
    decoder: Any
    remaining: Any
    d_scale: float
    var_z: float
    var_x: float


def _train(
    z_in: np.ndarray,
    xhat: np.ndarray,
    P: np.ndarray,
    T: np.ndarray,
    direct: np.ndarray,
    dZ: np.ndarray,
    dX: np.ndarray,
    decoder: np.ndarray,
    tcols: Sequence[int],
    remaining_logit: np.ndarray,
    d_scale: float,
    params: ManipulatorParams,
) -> _Fitted:
    """Fit every member on (random control cell, training condition) pairs (see :class:`_TrainData`)."""
    import torch

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    M, h = params.n_members, params.hidden
    init = init_layers([z_in.shape[1] + P.shape[1], h, h, dZ.shape[1]], M, np.random.default_rng(params.seed))
    layers = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)) for W, b in init]
    outside = np.eye(decoder.shape[1], dtype=np.float32)[list(tcols)] - direct @ decoder  # target transcripts outside the UR
    data = _TrainData(
        t(z_in), t(xhat), t(P), t(T), t(direct), t(outside), t(dZ), t(dX), t(decoder),
        t(1.0 / (1.0 + np.exp(-remaining_logit.reshape(M, 1, 1)))), d_scale, float(np.mean(dZ**2)) or 1.0, float(np.mean(dX**2)) or 1.0,
    )  # fmt: skip
    opt = torch.optim.AdamW([p for pair in layers for p in pair], lr=params.lr, weight_decay=params.weight_decay)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more intra-op threads only add contention (40x slower on a busy host)
    try:
        _steps(layers, opt, data, params)
    finally:
        torch.set_num_threads(threads)
    return _Fitted([(W.detach().numpy().copy(), b.detach().numpy().copy()) for W, b in layers], remaining_logit)


def _steps(layers: Any, opt: Any, d: _TrainData, params: ManipulatorParams) -> None:
    """The optimisation loop: squared error of the UR shift and of the decoded expression change."""
    import torch

    gen = torch.Generator().manual_seed(params.seed)
    M, B = params.n_members, params.batch_size
    for _ in range(params.steps):
        rows = torch.randint(len(d.P), (M, B), generator=gen)
        cells = torch.randint(len(d.z), (M, B), generator=gen)
        dz = ensemble_forward(layers, torch.cat([d.z[cells], d.P[rows]], dim=-1), torch.relu) * d.d_scale
        dx = dz @ d.decoder
        if params.direct_effect:
            knock = direct_change(d.xhat[cells], d.remaining, torch) * d.T[rows]
            dz = dz + knock @ d.direct
            dx = dz @ d.decoder + knock @ d.outside
        loss = (dz - d.dZ[rows]).pow(2).mean() / d.var_z + (dx - d.dX[rows]).pow(2).mean() / d.var_x
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fit_remaining(xhat: np.ndarray, observed: np.ndarray, n_members: int, seed: int) -> np.ndarray:
    """Per member, the knockdown efficiency (logit of the remaining fraction) that best explains the
    observed change of each single target's own transcript, on a bootstrap sample of the targets.

    ``xhat``: decoded levels of the targets in the control cells ``(cells, targets)``;
    ``observed``: each target's observed mean change when knocked down alone ``(targets,)``.
    """
    grid = np.linspace(-7.0, 7.0, 281)
    fractions = 1.0 / (1.0 + np.exp(-grid))
    predicted = np.stack([direct_change(xhat, f).mean(axis=0) for f in fractions])  # (grid, targets)
    rng = np.random.default_rng(seed)
    out = np.zeros(n_members, dtype=np.float32)
    for m in range(n_members):
        pick = rng.integers(0, len(observed), len(observed)) if m else np.arange(len(observed))
        out[m] = grid[int(np.argmin(((predicted[:, pick] - observed[pick]) ** 2).sum(axis=1)))]
    return out


def fit_manipulator(
    screen: PerturbationScreen,
    gene_urs: GeneURs,
    params: ManipulatorParams = ManipulatorParams(),
    *,
    train_conditions: Sequence[str] | None = None,
) -> PerturbationManipulator:
    """Train a manipulator on the control cells and the ``train_conditions`` (default: all).

    Conditions with fewer than ``params.min_cells`` cells, or a target without a gene UR, are
    left out of training (see :attr:`PerturbationManipulator.train_conditions`).
    """
    wanted = screen.condition_names if train_conditions is None else list(train_conditions)
    counts = pd.Series(screen.conditions).value_counts()
    usable = sorted(c for c in wanted if counts.get(c, 0) >= params.min_cells and not gene_urs.missing(targets_of(c)))
    if int(counts.get(CONTROL, 0)) < params.min_cells:
        raise UsageError(f"the screen has {int(counts.get(CONTROL, 0))} control cells; at least {params.min_cells} are needed", where="control")
    if not usable:
        raise UsageError(
            f"none of the {len(wanted)} training conditions has >= {params.min_cells} cells and gene URs for all its targets "
            f"({gene_urs.ref or 'gene URs'}); check that the gene UR ids are the screen's gene ids",
            where="--gene-ur",
        )
    rows = np.flatnonzero(np.isin(screen.conditions, [CONTROL, *usable]))
    encoder, Z = _fit_encoder(screen, rows, params)
    ctrl = screen.is_control
    z_center = Z[ctrl].mean(axis=0)
    dZ = np.stack([Z[screen.conditions == c].mean(axis=0) - z_center for c in usable])
    effects = screen.observed_effects(usable)
    dX = np.stack([effects[c] for c in usable])
    z_scale = float(np.sqrt(((Z[ctrl] - z_center) ** 2).sum(axis=1).mean())) or 1.0
    p_scale = float(np.sqrt((gene_urs.vectors.astype(np.float64) ** 2).sum(axis=1).mean())) or 1.0
    d_scale = float(np.sqrt((dZ**2).sum(axis=1).mean())) or 1.0
    P = np.stack([gene_urs.embed(targets_of(c), where=c) for c in usable]) / p_scale
    gene_index = pd.Index(screen.gene_ids)
    tcols = sorted({i for c in usable for i in gene_index.get_indexer(list(targets_of(c))) if i >= 0})
    T = np.zeros((len(usable), len(tcols)), dtype=np.float32)
    for r, c in enumerate(usable):
        for i in gene_index.get_indexer(list(targets_of(c))):
            if i >= 0:
                T[r, tcols.index(i)] = 1.0
    # anchor: the control condition (p = 0, no target) does not move the cell
    P, T = np.vstack([P, np.zeros((1, P.shape[1]))]), np.vstack([T, np.zeros((1, T.shape[1]))])
    dZ, dX = np.vstack([dZ, np.zeros((1, dZ.shape[1]))]), np.vstack([dX, np.zeros((1, dX.shape[1]))])
    xhat = encoder.decode(Z[ctrl])[:, tcols]
    singles = [(r, tcols.index(int(gene_index.get_indexer([c])[0]))) for r, c in enumerate(usable) if len(targets_of(c)) == 1 and c in gene_index]
    if params.direct_effect and singles:
        rows_, cols_ = (np.array(a) for a in zip(*singles, strict=True))
        observed_self = dX[rows_, np.asarray(tcols)[cols_]]
        remaining_logit = _fit_remaining(xhat[:, cols_], observed_self, params.n_members, params.seed)
    else:
        remaining_logit = np.zeros(params.n_members, dtype=np.float32)
    fitted = _train(
        (Z[ctrl] - z_center) / z_scale, xhat, P, T, encoder.direct[tcols], dZ, dX, encoder.decoder, tcols, remaining_logit, d_scale, params
    )
    return PerturbationManipulator(
        gene_ids=screen.gene_ids,
        symbols=screen.gene_symbols or screen.gene_ids,
        encoder=encoder,
        layers=tuple(fitted.layers),
        remaining_logit=fitted.remaining_logit,
        z_center=z_center.astype(np.float32),
        z_scale=z_scale,
        p_scale=p_scale,
        d_scale=d_scale,
        gene_urs=gene_urs,
        params=params,
        cell_ur_ref=screen.cell_ur_ref,
        train_conditions=tuple(usable),
    )
