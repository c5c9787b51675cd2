"""The cross-modal protein decoder: cell UR -> protein abundance, per protein with calibrated intervals.

Learned on cells where both were measured (a UR and the ADT counts of the same cell),
applied to cells measured by RNA alone: their URs (e.g. the RNA-only embedding of
``cell-multimodal-vae``, or any cell UR) give each protein's abundance, a standard deviation
and a ``1 - alpha`` interval. Everything here works on arrays; nothing reads the lake.

Targets
    ``log1p`` of the counts, or their ``clr`` (log1p minus its mean over the cell's
    proteins), per protein (:func:`protein_targets`).
Model
    A deep ensemble (Lakshminarayanan et al. 2017) of ``members`` heteroscedastic networks,
    each giving a mean and a log-variance per protein: a linear map (``hidden=0``) or one
    hidden ReLU layer, on the centred, uniformly scaled URs (as the cell-type decoder), with
    per-protein standardized targets. The means are fitted by squared error with L2
    ``weight_decay`` and the variances by the Gaussian likelihood around the (fixed) means;
    the prediction is the members' average mean, its variance the members' average variance
    plus the spread of their means. Width and L2 strength are chosen by out-of-fold squared
    error over ``folds`` folds unless given.
Intervals
    Split-conformal on normalized residuals, fitted on the out-of-fold predictions of every
    training cell (cross-fitting, as the cell-type decoder): per protein, ``qhat`` is the
    ``ceil((n+1)(1-alpha))``-th smallest ``|y - mean| / sigma``; the interval is
    ``mean +- qhat * sigma``, and the reported ``std`` is ``sigma`` rescaled by
    ``qhat / z_(1-alpha/2)`` (the Gaussian standard deviation with that interval). The
    decoder registered is the chosen configuration trained on every cell.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> z = rng.normal(size=(300, 4)).astype(np.float32)
>>> y = np.stack([z[:, 0] + 0.1 * rng.normal(size=300), z[:, 1] - z[:, 2]], axis=1)
>>> dec = fit_crossmodal(z, y, ["CD3", "CD4"], CrossModalConfig(hidden=0, weight_decay=1e-3, steps=200))
>>> out = dec.predict_arrays(z[:5])
>>> out["mean"].shape, bool((out["lower"] <= out["upper"]).all())
((5, 2), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.calibration import conformal_quantile
from aivc.instruments.registry import InstrumentError, InstrumentRecord, register_loader

if TYPE_CHECKING:
    from aivc.store.lake import Lake

TYPE = "protein-abundance"
Target = Literal["log1p", "clr"]
HIDDEN_GRID: tuple[int, ...] = (0, 64)
WEIGHT_DECAY_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
OUTPUT_COLUMNS: dict[str, str] = {
    "abundance": "predicted abundance of each protein (outputs.proteins order), in the target's units (log1p or clr of counts)",
    "std": "its standard deviation (the ensemble's, rescaled so that abundance +- z * std is the calibrated interval)",
    "lower": "lower end of the 1 - alpha interval",
    "upper": "upper end of the 1 - alpha interval",
}


def protein_targets(counts: np.ndarray, transform: Target = "log1p", mask: np.ndarray | None = None) -> np.ndarray:
    """Per-cell protein targets from raw counts ``[n, P]``: ``log1p``, or ``clr`` over the measured proteins.

    >>> [round(float(v), 3) for v in protein_targets(np.array([[0.0, 3.0]]), "clr")[0]]
    [-0.693, 0.693]
    """
    v = np.log1p(np.asarray(counts, dtype=np.float64))
    if transform == "clr":
        m = np.ones_like(v, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        v = v - (v * m).sum(axis=1, keepdims=True) / np.maximum(m.sum(axis=1, keepdims=True), 1)
    elif transform != "log1p":
        raise UsageError(f"protein target transform must be log1p or clr, got {transform!r}", where="--target")
    return v.astype(np.float32)


@dataclass(frozen=True)
class CrossModalConfig:
    """How a cross-modal protein decoder is trained and calibrated.

    Parameters
    ----------
    alpha
        Intervals hold the true abundance with probability about ``1 - alpha``.
    hidden, weight_decay
        Hidden units (0: linear) and L2 strength; ``None`` picks from :data:`HIDDEN_GRID` /
        :data:`WEIGHT_DECAY_GRID` by out-of-fold squared error.
    members
        Ensemble size.
    steps, lr, batch_size
        Adam steps per member (full batch when the cells fit in one batch).
    folds
        Cross-fitting folds: out-of-fold predictions choose the model and fit the intervals.
    target
        What the abundances are (:func:`protein_targets`); recorded, the caller transforms.
    """

    alpha: float = 0.1
    hidden: int | None = None
    weight_decay: float | None = None
    members: int = 5
    steps: int = 300
    lr: float = 0.01
    batch_size: int = 4096
    folds: int = 5
    target: Target = "log1p"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.alpha < 1.0, "--alpha", f"alpha must be between 0 and 1, got {self.alpha}"),
            (self.hidden is None or self.hidden >= 0, "--hidden", f"hidden units must be >= 0, got {self.hidden}"),
            (self.weight_decay is None or self.weight_decay >= 0, "--weight-decay", f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.members >= 1, "--members", f"members must be >= 1, got {self.members}"),
            (self.steps >= 1, "--steps", f"steps must be >= 1, got {self.steps}"),
            (self.folds >= 2, "--folds", f"folds must be >= 2, got {self.folds}"),
            (self.target in ("log1p", "clr"), "--target", f"target must be log1p or clr, got {self.target!r}"),
        ]
        for ok, where, msg in checks:
            if not ok:
                raise UsageError(msg, where=where)

    def candidates(self) -> list[tuple[int, float]]:
        hs = HIDDEN_GRID if self.hidden is None else (self.hidden,)
        wds = WEIGHT_DECAY_GRID if self.weight_decay is None else (self.weight_decay,)
        return [(h, w) for h in hs for w in wds]


Layers = list[tuple[np.ndarray, np.ndarray]]  # per layer: W (members, d_in, d_out), b (members, 1, d_out)


def _forward(layers: Sequence[tuple[Any, Any]], x: Any, relu: Any) -> Any:
    h = x
    for i, (W, b) in enumerate(layers):
        h = h @ W + b
        if i < len(layers) - 1:
            h = relu(h)
    return h


@dataclass
class CrossModalDecoder:
    """A fitted cross-modal protein decoder (NumPy arrays); see the module docstring."""

    proteins: np.ndarray  # (P,) str
    target: str
    alpha: float
    x_mean: np.ndarray  # (d,)
    x_scale: float
    y_mean: np.ndarray  # (P,)
    y_scale: np.ndarray  # (P,)
    layers: Layers
    qhat: np.ndarray  # (P,) conformal multipliers of sigma
    record: InstrumentRecord | None = None
    fit_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.x_mean.shape[0])

    def _raw(self, urs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(urs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InstrumentError(f"URs have shape {x.shape}, this decoder reads ({self.dim},)-dimensional URs", where=self.record.ref if self.record else "")
        return ensemble_moments(self.layers, (x - self.x_mean) / self.x_scale, self.y_mean, self.y_scale)

    def predict_arrays(self, urs: np.ndarray) -> dict[str, np.ndarray]:
        """``mean``, ``std``, ``lower``, ``upper``: float32 ``[n, P]`` in the target's units."""
        mean, sigma = self._raw(urs)
        half = sigma * self.qhat
        z = _normal_quantile(1.0 - self.alpha / 2.0)
        return {"mean": mean, "std": (sigma * self.qhat / z).astype(np.float32), "lower": mean - half, "upper": mean + half}

    def output_schema(self, n_proteins: int | None = None) -> Any:
        """The Arrow schema of :meth:`predict`'s rows (the decoder job's ``output_schema()``)."""
        import pyarrow as pa

        t = pa.list_(pa.float32(), len(self.proteins) if n_proteins is None else n_proteins)
        return pa.schema([(c, t) for c in OUTPUT_COLUMNS])

    def predict(self, urs: np.ndarray) -> Any:
        """One Arrow row per UR: fixed-size lists ``abundance``, ``std``, ``lower``, ``upper`` over :attr:`proteins`."""
        import pyarrow as pa

        a = self.predict_arrays(urs)
        P = len(self.proteins)
        cols = {c: pa.FixedSizeListArray.from_arrays(pa.array(a[k].astype(np.float32).ravel()), P) for c, k in zip(OUTPUT_COLUMNS, ("mean", "std", "lower", "upper"), strict=True)}
        return pa.table(cols, schema=self.output_schema(P))

    # -- persistence ------------------------------------------------------------------
    def to_weights(self) -> dict[str, np.ndarray]:
        w: dict[str, np.ndarray] = {
            "proteins": self.proteins.astype(str), "x_mean": self.x_mean, "x_scale": np.float64(self.x_scale),
            "y_mean": self.y_mean, "y_scale": self.y_scale, "qhat": self.qhat, "n_layers": np.int64(len(self.layers)),
        }  # fmt: skip
        for i, (W, b) in enumerate(self.layers):
            w[f"W{i}"], w[f"b{i}"] = W, b
        return w

    @classmethod
    def load(cls, lake: Lake | None, rec: InstrumentRecord, weights: Mapping[str, np.ndarray]) -> CrossModalDecoder:
        """The registry's loader (``load_instrument`` calls it)."""
        try:
            layers = [(weights[f"W{i}"].astype(np.float32), weights[f"b{i}"].astype(np.float32)) for i in range(int(weights["n_layers"]))]
            return cls(
                proteins=weights["proteins"], target=str(rec.config.get("target", "log1p")), alpha=float(rec.config.get("alpha", 0.1)),
                x_mean=weights["x_mean"].astype(np.float32), x_scale=float(weights["x_scale"]), y_mean=weights["y_mean"].astype(np.float32),
                y_scale=weights["y_scale"].astype(np.float32), layers=layers, qhat=weights["qhat"].astype(np.float32), record=rec,
            )  # fmt: skip
        except KeyError as exc:
            raise InstrumentError(f"weights of {rec.ref} lack array {exc.args[0]!r}; the file does not belong to a protein-abundance decoder", where=rec.ref) from None


register_loader("decoder", TYPE, "aivc.instruments.crossmodal:CrossModalDecoder.load")


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return float(NormalDist().inv_cdf(p))


def ensemble_moments(layers: Layers, z: np.ndarray, y_mean: np.ndarray, y_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the ensemble's mixture at scaled URs ``z``, in target units."""
    out = _forward(layers, np.asarray(z, dtype=np.float32)[None], lambda h: np.maximum(h, 0.0))  # (M, n, 2P)
    P = out.shape[-1] // 2
    mu, var = out[..., :P], np.exp(np.clip(out[..., P:], -12.0, 12.0))
    mean = mu.mean(axis=0)
    total = var.mean(axis=0) + mu.var(axis=0)
    return (mean * y_scale + y_mean).astype(np.float32), (np.sqrt(total) * y_scale).astype(np.float32)


# -- fitting ------------------------------------------------------------------------------
def _train_ensemble(z: np.ndarray, y: np.ndarray, hidden: int, weight_decay: float, cfg: CrossModalConfig, seed: int) -> Layers:
    """Fit ``cfg.members`` heteroscedastic networks at once on scaled URs ``z`` and standardized targets ``y``."""
    import torch

    rng = np.random.default_rng(seed)
    M, d, P = cfg.members, z.shape[1], y.shape[1]
    sizes = [d, hidden, 2 * P] if hidden else [d, 2 * P]
    params: list[torch.Tensor] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        gain = np.sqrt(2.0) if i < len(sizes) - 2 else 1.0
        params.append(torch.tensor(rng.normal(0.0, gain / np.sqrt(a), size=(M, a, b)), dtype=torch.float32, requires_grad=True))
        params.append(torch.zeros((M, 1, b), dtype=torch.float32, requires_grad=True))
    layers = list(zip(params[::2], params[1::2], strict=True))
    X, Y = torch.from_numpy(np.ascontiguousarray(z, np.float32)), torch.from_numpy(np.ascontiguousarray(y, np.float32))
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: more threads only contend
    try:
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for _ in range(cfg.steps):
            if len(X) > cfg.batch_size:
                idx = torch.randint(0, len(X), (cfg.batch_size,), generator=gen)
                xb, yb = X[idx], Y[idx]
            else:
                xb, yb = X, Y
            out = _forward(layers, xb, torch.relu)
            mu, logvar = out[..., :P], out[..., P:].clamp(-12.0, 12.0)
            sq = (yb - mu) ** 2
            nll = 0.5 * (logvar + sq.detach() * torch.exp(-logvar))  # variances fit around the (fixed) means
            l2 = sum((W * W).sum() for W, _ in layers) / M  # per member, as a penalty on the whole training set
            loss = sq.mean() + nll.mean() + 0.5 * weight_decay * l2 / len(X)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return [(W.detach().numpy().copy(), b.detach().numpy().copy()) for W, b in layers]


def fit_crossmodal(
    urs: np.ndarray,
    targets: np.ndarray,
    proteins: Sequence[str],
    config: CrossModalConfig = CrossModalConfig(),
    *,
    calibration: tuple[np.ndarray, np.ndarray] | None = None,
) -> CrossModalDecoder:
    """Fit a decoder from URs ``[n, d]`` to protein targets ``[n, P]`` (already transformed, see
    :func:`protein_targets`); ``decoder.fit_metrics`` holds the out-of-fold metrics.

    The intervals are calibrated on the out-of-fold predictions of the training cells, which
    is sound when the model that computed the URs never saw these cells' proteins (a PCA, an
    RNA-only model). URs of a model trained on the same proteins (``cell-multimodal-vae``)
    carry them for its training cells, more than for new cells, so such intervals would be
    too narrow: pass ``calibration=(urs, targets)`` of cells whose proteins that model did
    not train on (e.g. its validation cells); the intervals are then split-conformal on them.
    """
    x = np.asarray(urs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or y.shape[1] != len(proteins):
        raise UsageError(f"URs {x.shape} and targets {y.shape} must have one row per cell and a column per protein ({len(proteins)})", where="targets")
    if len(x) < 2 * config.folds:
        raise UsageError(f"{len(x)} cells are too few to cross-fit {config.folds} folds; measure more cells with both modalities", where="cells")
    x_mean = x.mean(axis=0)
    x_scale = float(np.sqrt(((x - x_mean) ** 2).sum(axis=1).mean() / x.shape[1])) or 1.0
    y_mean, y_scale = y.mean(axis=0), y.std(axis=0)
    y_scale = np.where(y_scale > 0, y_scale, 1.0)
    z = ((x - x_mean) / x_scale).astype(np.float32)
    ys = ((y - y_mean) / y_scale).astype(np.float32)
    fold = np.random.default_rng(config.seed).permutation(len(x)) % config.folds
    trials, best = [], None
    for hidden, wd in config.candidates():
        mean, sigma = np.zeros_like(ys), np.zeros_like(ys)
        for f in range(config.folds):
            held = fold == f
            layers = _train_ensemble(z[~held], ys[~held], hidden, wd, config, config.seed + 101 * f)
            mean[held], sigma[held] = ensemble_moments(layers, z[held], np.zeros(ys.shape[1], np.float32), np.ones(ys.shape[1], np.float32))
        mse = float(((mean - ys) ** 2).mean())
        trials.append({"hidden": hidden, "weight_decay": wd, "oof_mse_standardized": round(mse, 6)})
        if best is None or mse < best[0]:
            best = (mse, hidden, wd, mean, sigma)
    assert best is not None
    _, hidden, wd, oof_mean, oof_sigma = best
    layers = _train_ensemble(z, ys, hidden, wd, config, config.seed)
    if calibration is None:
        cal_y, cal_mean, cal_sigma, how = ys, oof_mean, oof_sigma, "out-of-fold"
    else:
        cx, cy = (np.asarray(a, dtype=np.float64) for a in calibration)
        if cx.ndim != 2 or cx.shape[1] != x.shape[1] or cy.shape != (len(cx), y.shape[1]):
            raise UsageError(f"calibration URs {cx.shape} and targets {cy.shape} must match the training URs' width {x.shape[1]} and proteins {y.shape[1]}", where="calibration")
        cal_y = ((cy - y_mean) / y_scale).astype(np.float32)
        cal_mean, cal_sigma = ensemble_moments(layers, ((cx - x_mean) / x_scale).astype(np.float32), np.zeros(y.shape[1], np.float32), np.ones(y.shape[1], np.float32))
        how = "held-out cells"
    scores = np.abs(cal_y - cal_mean) / np.maximum(cal_sigma, 1e-6)
    qhat = np.array([conformal_quantile(scores[:, j], config.alpha) for j in range(ys.shape[1])], dtype=np.float32)
    if not np.isfinite(qhat).all():
        raise UsageError(f"{len(cal_y)} calibration cells are too few for intervals at alpha={config.alpha:g}; use more cells or a larger alpha", where="calibration")
    dec = CrossModalDecoder(
        proteins=np.array([str(p) for p in proteins]), target=config.target, alpha=config.alpha, x_mean=x_mean.astype(np.float32), x_scale=x_scale,
        y_mean=y_mean.astype(np.float32), y_scale=y_scale.astype(np.float32), layers=layers, qhat=qhat,
    )  # fmt: skip
    oof = {"mean": (oof_mean * y_scale + y_mean), "lower": (oof_mean - qhat * oof_sigma) * y_scale + y_mean, "upper": (oof_mean + qhat * oof_sigma) * y_scale + y_mean}
    dec.fit_metrics = {
        "n_train": int(len(x)), "folds": config.folds, "selected": {"hidden": hidden, "weight_decay": wd}, "model_selection": trials,
        "calibration": {"cells": how, "n": int(len(cal_y))}, "qhat": [round(float(q), 6) for q in qhat], "out_of_fold": evaluate(y, oof, dec.proteins),
    }  # fmt: skip
    return dec


# -- evaluation --------------------------------------------------------------------------------
def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=0) / den, np.nan)


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(a, axis=0)


def evaluate(y: np.ndarray, pred: Mapping[str, np.ndarray], proteins: Sequence[str]) -> dict[str, Any]:
    """Per-protein Pearson, Spearman (NaN for a constant column), and, given ``lower``/``upper``,
    interval coverage and mean width; plus their means over proteins (NaNs left out)."""
    y = np.asarray(y, dtype=np.float64)
    mean = np.asarray(pred["mean"], dtype=np.float64)
    per: dict[str, np.ndarray] = {"pearson": _pearson(mean, y), "spearman": _pearson(_ranks(mean), _ranks(y))}
    if "lower" in pred and "upper" in pred:
        lo, hi = np.asarray(pred["lower"]), np.asarray(pred["upper"])
        per["coverage"] = ((y >= lo) & (y <= hi)).mean(axis=0)
        per["width"] = (hi - lo).mean(axis=0)
    per["mse"] = ((mean - y) ** 2).mean(axis=0)
    out: dict[str, Any] = {f"mean_{k}": (round(float(np.nanmean(v)), 6) if np.isfinite(v).any() else None) for k, v in per.items()}
    out["per_protein"] = {str(p): {k: (None if not math.isfinite(float(v[j])) else round(float(v[j]), 6)) for k, v in per.items()} for j, p in enumerate(proteins)}
    return out


def outputs_of(decoder: CrossModalDecoder, embedding_dim: int) -> dict[str, Any]:
    """The ``outputs`` of a registered decoder: columns, protein order, target, alpha, UR width."""
    return {"columns": OUTPUT_COLUMNS, "proteins": [str(p) for p in decoder.proteins], "target": decoder.target, "alpha": decoder.alpha, "dim": int(embedding_dim)}


def config_record(config: CrossModalConfig) -> dict[str, Any]:
    return asdict(config)
