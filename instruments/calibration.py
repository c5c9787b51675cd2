"""Uncertainty for classifiers, in plain NumPy: temperature scaling, ECE, split conformal, novelty.

Everything here works on arrays (logits, probabilities, class indices) and knows nothing
of the lake, so it is shared by every decoder and tested on its own.

Temperature scaling
    One scalar ``T`` divides the logits; it is fitted by minimizing the negative
    log-likelihood on held-out predictions (Guo et al. 2017; the cell-type decoder
    uses out-of-fold predictions of every labelled cell). It changes
    confidences, never the predicted class.
Split conformal prediction sets
    Nonconformity scores of the calibration cells give a threshold ``qhat`` (the
    ``ceil((n+1)(1-alpha))/n`` empirical quantile) such that the set of classes whose
    score is at most ``qhat`` contains the true class with probability at least
    ``1 - alpha`` for exchangeable data (Vovk; Angelopoulos & Bates 2021).
    ``lac`` scores ``1 - p_true`` (smallest sets; a set may be empty when no class is
    plausible); ``aps`` scores the probability mass of the classes ranked above the true
    one (adaptive sets; the deterministic ``U = 0`` form of randomized APS, so the top
    class is always in the set and a set is never empty; when the classifier's accuracy
    alone exceeds ``1 - alpha`` the sets are the top class and coverage is that accuracy).
Novelty
    The Mahalanobis distance of a (centred, scaled) UR to the nearest class centroid under
    the pooled within-class covariance (shrunk towards its diagonal), i.e. the Euclidean
    distance in the whitened space of a linear discriminant. A cell farther from every
    training class than the ``novelty_quantile`` (default 99th percentile) of the
    held-out (out-of-fold) calibration cells is flagged ``abstain``: none of the known classes fits it.

Example
-------
>>> import numpy as np
>>> p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
>>> prediction_sets(p, qhat=0.85, score="lac").astype(int).tolist()  # keep p >= 0.15
[[1, 1, 0], [1, 1, 1]]
>>> prediction_sets(p, qhat=0.5, score="aps").astype(int).tolist()  # keep while the mass above <= 0.5
[[1, 0, 0], [1, 1, 0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Score = Literal["lac", "aps"]
SCORES: tuple[str, ...] = ("lac", "aps")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32 in, float32 out, stable).

    >>> softmax(np.array([[0.0, 0.0]], dtype=np.float32)).tolist()
    [[0.5, 0.5]]
    """
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of classes ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimizing the NLL on ``(logits, y)``; 1.0 if nothing beats it.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 10 * np.eye(3)[y] + 4 * rng.normal(size=(2000, 3))  # over-confident
    >>> fit_temperature(logits, y) > 1
    True
    """
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0
    res = minimize_scalar(lambda t: nll(logits, y, math.exp(t)), bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    t = math.exp(float(res.x))
    return t if nll(logits, y, t) < nll(logits, y, 1.0) else 1.0


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the bin-weighted gap between confidence and accuracy (equal-width bins).

    >>> expected_calibration_error(np.array([[0.9, 0.1], [0.9, 0.1]]), np.array([0, 1]))
    0.4
    """
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        m = bins == b
        ece += m.mean() * abs(float(correct[m].mean()) - float(conf[m].mean()))
    return round(float(ece), 10)


def conformal_scores(probs: np.ndarray, y: np.ndarray, score: Score) -> np.ndarray:
    """Nonconformity score of the true class ``y`` of each row (higher: less conforming)."""
    rows = np.arange(len(y))
    p_true = probs[rows, y]
    if score == "lac":
        return 1.0 - p_true
    if score == "aps":
        # mass of the classes ranked strictly above the true one
        return (probs * (probs > p_true[:, None])).sum(axis=1)
    raise ValueError(f"unknown conformal score {score!r}; one of {SCORES}")


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """``qhat``: the ``ceil((n+1)(1-alpha))``-th smallest score; ``inf`` when n is too small.

    >>> conformal_quantile(np.arange(1, 10) / 10, alpha=0.2)  # n=9: the 8th smallest
    0.8
    """
    n = len(scores)
    k = math.ceil((n + 1) * (1.0 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(np.sort(scores)[k - 1])


def prediction_sets(probs: np.ndarray, qhat: float, score: Score) -> np.ndarray:
    """Boolean ``(n, K)`` membership of each class in each cell's conformal set."""
    if score == "lac":
        # in score space, computed as conformal_scores computes it: a class whose score is the
        # calibration quantile is in the set (1 - qhat rounded to float32 could drop it)
        return (1.0 - probs) <= qhat if math.isfinite(qhat) else np.ones(probs.shape, bool)
    if score == "aps":
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        # a class's score is the mass ranked above it: exactly the calibration score
        keep_sorted = (np.cumsum(sorted_p, axis=1) - sorted_p) <= qhat
        keep_sorted[:, 0] = True
        out = np.empty_like(keep_sorted)
        np.put_along_axis(out, order, keep_sorted, axis=1)
        return out
    raise ValueError(f"unknown conformal score {score!r}; one of {SCORES}")


@dataclass(frozen=True)
class Whitening:
    """Class centroids in the whitened space of the pooled within-class covariance."""

    matrix: np.ndarray  # (d, d): z @ matrix is whitened
    centroids: np.ndarray  # (K, d) whitened class centroids

    @classmethod
    def fit(cls, z: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float = 0.1) -> Whitening:
        """Fit on centred, scaled URs ``z`` with classes ``y``.

        A class without rows (absent from a training split of spatial blocks) has a NaN
        centroid, which :meth:`distance` skips."""
        z = np.asarray(z, dtype=np.float64)
        present = np.bincount(y, minlength=n_classes) > 0
        mu = np.full((n_classes, z.shape[1]), np.nan)
        for k in np.flatnonzero(present):
            mu[k] = z[y == k].mean(axis=0)
        resid = z - mu[y]
        cov = resid.T @ resid / max(len(z) - int(present.sum()), 1)
        cov = (1 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov)) + 1e-6 * np.eye(z.shape[1])
        evals, evecs = np.linalg.eigh(cov)
        w = evecs @ np.diag(1.0 / np.sqrt(np.maximum(evals, 1e-9))) @ evecs.T
        return cls(matrix=w.astype(np.float32), centroids=(mu @ w).astype(np.float32))

    def distance(self, z: np.ndarray) -> np.ndarray:
        """Distance of each row to the nearest class centroid (float32)."""
        zw = np.asarray(z, dtype=np.float32) @ self.matrix
        c = self.centroids
        d2 = (zw * zw).sum(axis=1, keepdims=True) - 2.0 * (zw @ c.T) + (c * c).sum(axis=1)[None, :]
        d2 = np.where(np.isnan(d2), np.inf, d2)  # classes without rows
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))
