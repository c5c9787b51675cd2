"""Fitting a cell-type decoder over arrays: cross-fitting, model selection, calibration.

:func:`fit_decoder` cross-fits a class-balanced softmax classifier on the centred, uniformly
scaled URs over ``folds`` stratified folds (:func:`stratified_folds`): a multinomial logistic
regression (``hidden=0``, L-BFGS) or one hidden ReLU layer of 64 units (Adam), with the L2
strength and the width chosen by out-of-fold macro-F1 unless given. Every labelled cell is
predicted once by a model that never saw it, and those out-of-fold predictions fit

- a temperature (scaling the logits; ECE before/after is recorded),
- the conformal threshold ``qhat`` at error rate ``alpha`` (``lac`` or ``aps`` score,
  see :mod:`aivc.instruments.calibration`) from all labelled cells, not a small split,
- the novelty threshold: the ``novelty_quantile`` of the out-of-fold Mahalanobis distance
  to the nearest class centroid (pooled within-class covariance).

The returned :class:`~aivc.instruments.celltype_model.CellTypeDecoder` is the chosen
configuration trained on every labelled cell (with 5 folds, 25 % more data than each fold
model, so its sets are, if anything, a little conservative). This is cross-fitting, not split
conformal: the finite-sample guarantee of a split no longer holds exactly (the formal bound
for cross-conformal methods is about ``1 - 2 alpha``); on exchangeable data coverage is
``1 - alpha`` in practice (``tests/instruments/test_calibration.py``). The out-of-fold
``calibration_coverage`` in ``fit_metrics`` is ``1 - alpha`` by construction, and the
out-of-fold macro-F1 of the chosen configuration is slightly optimistic (the same predictions
chose it among the candidates). Nothing here reads the lake; training runs in torch (one thread).

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 400)
>>> x = (rng.normal(size=(400, 4)) + 3 * y[:, None]).astype(np.float32)
>>> model = fit_decoder(x, y, ["CL:0000236", "CL:0000084"], ["B cell", "T cell"], CellTypeConfig(steps=100))
>>> t = model.predict(np.array([[3, 3, 3, 3], [0, 0, 0, 0]], dtype=np.float32))
>>> t.column("predicted_label").to_pylist()
['T cell', 'B cell']
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.calibration import (
    Whitening,
    conformal_quantile,
    conformal_scores,
    expected_calibration_error,
    fit_temperature,
    nll,
    prediction_sets,
    softmax,
)
from aivc.instruments.celltype_model import CellTypeConfig, CellTypeDecoder, forward
from aivc.progress import NullProgress, Progress


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each cell: every class dealt round-robin over the folds in a random order.

    With at least 2 cells per class, every training split (all folds but one) holds every class:
    a class of ``n < folds`` cells lands in ``n`` different folds, so holding out one of them
    leaves ``n - 1 >= 1`` in training (a 2-cell class trains on one cell and is predicted on
    the other, in both of its folds).
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    start = 0
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        out[idx] = (start + np.arange(len(idx))) % folds
        start += len(idx)  # the next class continues where this one stopped: folds stay balanced
    return out


def _train_classifier(z: np.ndarray, y: np.ndarray, n_classes: int, hidden: int, weight_decay: float, cfg: CellTypeConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class-balanced softmax classifier on scaled URs ``z``; returns ``[(W, b), ...]``.

    Loss: class-weighted cross-entropy + ``weight_decay / 2 * ||W||^2`` (weights, not biases).
    ``hidden == 0`` is convex and solved by L-BFGS; the hidden-layer model by Adam.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = z.shape[1]
    dims = [d, hidden, n_classes] if hidden else [d, n_classes]
    layers: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weight = torch.tensor(len(y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    X = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    Y = torch.from_numpy(y.astype(np.int64))

    def objective(xb: Any, yb: Any) -> Any:
        return loss_fn(net(xb), yb) + 0.5 * weight_decay * sum((m.weight * m.weight).sum() for m in linears)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: more threads only contend (10x slower on a busy machine)
    try:
        if not hidden:
            opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=cfg.steps, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

            def closure() -> Any:
                opt.zero_grad(set_to_none=True)
                loss = objective(X, Y)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            adam = torch.optim.Adam(net.parameters(), lr=cfg.lr)
            for _ in range(cfg.steps):
                if len(Y) > cfg.batch_size:
                    idx = torch.randint(0, len(Y), (cfg.batch_size,), generator=gen)
                    xb, yb = X[idx], Y[idx]
                else:
                    xb, yb = X, Y
                adam.zero_grad(set_to_none=True)
                objective(xb, yb).backward()
                adam.step()
    finally:
        torch.set_num_threads(threads)
    return [(m.weight.detach().numpy().T.astype(np.float32).copy(), m.bias.detach().numpy().astype(np.float32).copy()) for m in linears]


def _per_class(y: np.ndarray, pred: np.ndarray, members: np.ndarray, term_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Out-of-fold scores of each class: how far a curator can trust its predictions.

    ``n_cells`` labelled cells; ``oof_precision``/``oof_recall``/``oof_f1`` of the out-of-fold
    top class; ``oof_coverage``: the fraction of its cells whose out-of-fold conformal set held
    it (the threshold is marginal, over all cells: a rare class can be covered less often)."""
    out: dict[str, dict[str, Any]] = {}
    for k, t in enumerate(term_ids):
        mine = y == k
        tp = float((mine & (pred == k)).sum())
        n_pred, n = float((pred == k).sum()), float(mine.sum())
        prec, rec = (tp / n_pred if n_pred else 0.0), (tp / n if n else 0.0)
        out[str(t)] = {
            "n_cells": int(n), "oof_precision": round(prec, 4), "oof_recall": round(rec, 4),
            "oof_f1": round(2 * prec * rec / (prec + rec), 4) if prec + rec else 0.0,
            "oof_coverage": round(float(members[mine, k].mean()), 4) if n else None,
        }  # fmt: skip
    return out


def _classification_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    f1, recall = [], []
    for k in range(n_classes):
        tp = float(((pred == k) & (y == k)).sum())
        p_den, r_den = float((pred == k).sum()), float((y == k).sum())
        prec = tp / p_den if p_den else 0.0
        rec = tp / r_den if r_den else 0.0
        recall.append(rec)
        f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return {"accuracy": round(float((y == pred).mean()), 6), "balanced_accuracy": round(float(np.mean(recall)), 6), "macro_f1": round(float(np.mean(f1)), 6)}


def fit_decoder(
    x: np.ndarray,
    y: np.ndarray,
    term_ids: list[str],
    labels: list[str],
    cfg: CellTypeConfig | None = None,
    progress: Progress | None = None,
    folds: np.ndarray | None = None,
) -> CellTypeDecoder:
    """Fit a decoder on URs ``x`` with class indices ``y`` (every class present); no lake needed.

    ``decoder.fit_metrics`` holds the cross-validated metrics afterwards; ``folds`` as in
    :func:`cross_fit`.
    """
    return cross_fit(np.asarray(x, np.float32), np.asarray(y, np.int64), term_ids, labels, cfg or CellTypeConfig(), progress or NullProgress(), folds=folds)


def cross_fit(
    x: np.ndarray,
    y: np.ndarray,
    term_ids: list[str],
    labels: list[str],
    cfg: CellTypeConfig,
    progress: Progress,
    *,
    folds: np.ndarray | None = None,
    nouns: tuple[str, str] = ("cell type", "cell"),
) -> CellTypeDecoder:
    """Cross-fit, select, calibrate on the out-of-fold predictions, then train on every cell.

    URs are centred and divided by one scale (their root-mean-square distance to the mean
    per dimension), not standardized per dimension: a UR's geometry is information (PCA
    components, for one, carry their variance), and per-dimension scaling inflates its
    noisiest directions.

    ``folds``: the fold index (0, 1, ...) of each row, for a caller whose rows are not
    exchangeable (spatial blocks of niches: :func:`aivc.instruments.niche_domain.spatial_folds`);
    default: :func:`stratified_folds` over ``cfg.folds``. A class absent from a fold's
    training split is then never predicted for that fold's rows, which the calibration sees
    (counted in ``fit_metrics['classes_missing_in_training_folds']``). Classes need at least
    2 rows (one cannot be held out and trained on at once); a class smaller than the fold count
    is kept (``fit_metrics['classes_smaller_than_folds']``) and its out-of-fold scores are in
    ``fit_metrics['per_class']``. ``nouns``: what a class
    and a row are called in messages (``("tissue domain", "niche")`` for niches).
    """
    K = len(term_ids)
    kind, unit = nouns
    counts = np.bincount(y, minlength=K)
    if counts.min() < 2:
        k = int(counts.argmin())
        raise UsageError(
            f"{kind} {term_ids[k]} has {int(counts[k])} labelled {unit}(s); cross-fitting needs at least 2 per {kind} (drop it or label more {unit}s)",
            where="labels",
        )
    mean = x.astype(np.float64).mean(axis=0)
    scale = float(np.sqrt(((x.astype(np.float64) - mean) ** 2).sum(axis=1).mean() / x.shape[1])) or 1.0
    z = ((x - mean) / scale).astype(np.float32)
    fold = stratified_folds(y, cfg.folds, cfg.seed) if folds is None else np.asarray(folds, dtype=np.int64)
    n_folds = int(fold.max()) + 1
    if len(fold) != len(y) or fold.min() < 0 or len(np.unique(fold)) != n_folds or n_folds < 2:
        raise ValueError(f"folds must number every row 0..F-1 with F >= 2 and no fold empty; got {len(np.unique(fold))} folds for {len(y)} rows")
    missing = int(sum((np.bincount(y[fold != f], minlength=K) == 0).sum() for f in range(n_folds)))
    cands = cfg.candidates()
    progress.phase(f"cross-validating {len(cands)} model(s) x {n_folds} folds on {len(y)} {unit}s", total=len(cands) * n_folds + 1)
    trials: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    oof, chosen = np.zeros((len(y), K), dtype=np.float32), cands[0]
    for hidden, wd in cands:
        logits = np.zeros((len(y), K), dtype=np.float32)
        for f in range(n_folds):
            held = fold == f
            layers = _train_classifier(z[~held], y[~held], K, hidden, wd, cfg, cfg.seed + f)
            logits[held] = forward(layers, z[held])
            progress.advance(1)
        m = _classification_metrics(y, logits.argmax(axis=1), K)
        trial = {"hidden": hidden, "weight_decay": wd, "macro_f1": m["macro_f1"], "nll": round(nll(logits, y), 6)}
        trials.append(trial)
        key = (m["macro_f1"], -trial["nll"])
        if best is None or key > best:
            best, oof, chosen = key, logits, (hidden, wd)
    hidden, wd = chosen
    layers = _train_classifier(z, y, K, hidden, wd, cfg, cfg.seed)
    progress.advance(1)
    # fold the scaling into the first layer: ((x - m) / s) @ W + b == x @ (W / s) + (b - (m / s) @ W)
    W0, b0 = layers[0]
    layers[0] = ((W0 / scale).astype(np.float32), (b0 - (mean / scale) @ W0).astype(np.float32))
    # novelty: out-of-fold distances calibrate the threshold; the registered whitening uses every cell
    nov_oof = np.zeros(len(y), dtype=np.float32)
    for f in range(n_folds):
        held = fold == f
        nov_oof[held] = Whitening.fit(z[~held], y[~held], K).distance(z[held])
    wh = Whitening.fit(z, y, K)
    T = fit_temperature(oof, y)
    p_before, p_after = softmax(oof), softmax(oof, T)
    qhat = conformal_quantile(conformal_scores(p_after, y, cfg.score), cfg.alpha)  # type: ignore[arg-type]
    model = CellTypeDecoder(
        term_ids=np.array(term_ids), labels=np.array(labels), layers=layers, temperature=T, qhat=qhat, score=cfg.score,
        whiten=(wh.matrix / scale).astype(np.float32), whiten_offset=((mean / scale) @ wh.matrix).astype(np.float32), centroids=wh.centroids,
        novelty_threshold=float(np.quantile(nov_oof, cfg.novelty_quantile)),
    )  # fmt: skip
    members = prediction_sets(p_after, qhat, cfg.score)  # type: ignore[arg-type]
    model.fit_metrics = {
        "n_train": int(len(y)),
        "n_calibration": int(len(y)),
        "folds": n_folds,
        "classes_missing_in_training_folds": missing,
        "classes_smaller_than_folds": int((counts < n_folds).sum()),
        "n_classes": K,
        "selected": {"hidden": hidden, "weight_decay": wd},
        "model_selection": trials,
        "temperature": round(T, 6),
        "qhat": None if not np.isfinite(qhat) else round(qhat, 6),
        "nll_before": round(nll(oof, y), 6),
        "nll_after": round(nll(oof, y, T), 6),
        "ece_before": expected_calibration_error(p_before, y),
        "ece_after": expected_calibration_error(p_after, y),
        "calibration": _classification_metrics(y, oof.argmax(axis=1), K),
        "train": _classification_metrics(y, model.logits(x).argmax(axis=1), K),
        "calibration_coverage": round(float(members[np.arange(len(y)), y].mean()), 6),
        "calibration_mean_set_size": round(float(members.sum(axis=1).mean()), 6),
        "novelty_threshold": round(model.novelty_threshold, 6),
        "per_class": _per_class(y, oof.argmax(axis=1), members, term_ids),
    }
    return model
