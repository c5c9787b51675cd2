"""The cell-type decoder: cell UR -> Cell Ontology term with calibrated confidence.

Training (:func:`train_celltype`) reads the URs of the labelled cells of one exact cell
embedding version (joined on ``obs_id`` with each dataset version's
``cell_type_ontology_term_id``; ``unknown``/``na`` cells are skipped), drops cell types
with fewer than ``min_cells_per_class`` labelled cells (reported in the record) and
cross-fits a class-balanced softmax classifier on the centred, uniformly scaled URs over
``folds`` stratified folds: a multinomial logistic regression (``hidden=0``, L-BFGS) or one
hidden ReLU layer of 64 units (Adam), with the L2 strength and the width chosen by
out-of-fold macro-F1 unless given. Every labelled cell is predicted once by a model that
never saw it, and those out-of-fold predictions fit

- a temperature (scaling the logits; ECE before/after is recorded),
- the conformal threshold ``qhat`` at error rate ``alpha`` (``lac`` or ``aps`` score,
  see :mod:`aivc.instruments.calibration`) from all labelled cells, not a small split,
- the novelty threshold: the ``novelty_quantile`` of the out-of-fold Mahalanobis distance
  to the nearest class centroid (pooled within-class covariance).

The registered model is the chosen configuration trained on every labelled cell (with 5
folds, 25 % more data than each fold model, so its sets are, if anything, a little
conservative). This is cross-fitting, not split conformal: the finite-sample guarantee of
a split no longer holds exactly (the formal bound for cross-conformal methods is about
``1 - 2 alpha``); on exchangeable data coverage is ``1 - alpha`` in practice
(``tests/instruments/test_calibration.py``). The out-of-fold ``calibration_coverage`` in the
record is ``1 - alpha`` by construction, and the out-of-fold macro-F1 of the chosen
configuration is slightly optimistic (the same predictions chose it among the candidates).

Prediction (:meth:`CellTypeDecoder.predict`) is NumPy only: the UR scaling and whitening
are folded into the weights, so a batch costs a few small matrix products, a softmax and a
sort over the classes; it needs no torch and no lake access beyond the weights.

Output columns: ``predicted_term_id``, ``predicted_label``, ``probability`` (calibrated
top-class probability), ``prediction_set`` (term ids, most probable first), ``set_size``,
``novelty`` and ``abstain`` (novelty above the threshold: no known class fits the cell).

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

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.calibration import (
    SCORES,
    Whitening,
    conformal_quantile,
    conformal_scores,
    expected_calibration_error,
    fit_temperature,
    nll,
    prediction_sets,
    softmax,
)
from aivc.instruments.registry import InstrumentError, InstrumentRecord, register_instrument
from aivc.ontology import NON_ONTOLOGY_VALUES
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

TYPE = "celltype"
OUTPUT_COLUMNS: dict[str, str] = {
    "predicted_term_id": "Cell Ontology term id of the most probable cell type",
    "predicted_label": "its label",
    "probability": "calibrated (temperature-scaled) probability of the predicted type",
    "prediction_set": "conformal prediction set (threshold from out-of-fold scores): term ids, most probable first; contains the true type with probability about 1 - alpha",
    "set_size": "number of term ids in prediction_set",
    "novelty": "Mahalanobis distance of the UR to the nearest training class centroid",
    "abstain": "novelty above the calibration threshold: none of the known cell types fits this cell",
}


#: candidate hidden widths and L2 strengths searched by cross-validation when not given
HIDDEN_GRID: tuple[int, ...] = (0, 64)
WEIGHT_DECAY_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class CellTypeConfig:
    """How a cell-type decoder is trained and calibrated.

    Parameters
    ----------
    alpha
        Conformal error rate: prediction sets contain the true type with probability at least ``1 - alpha``.
    score
        Conformal score: ``"lac"`` (smallest sets, may be empty) or ``"aps"`` (adaptive, never empty).
    hidden
        Hidden units of the one hidden layer; 0 trains a multinomial logistic regression;
        ``None`` (default) picks from :data:`HIDDEN_GRID` by cross-validated macro-F1.
    weight_decay
        L2 penalty ``weight_decay / 2 * ||W||^2`` on the weights; ``None`` (default) picks
        from :data:`WEIGHT_DECAY_GRID` by cross-validated macro-F1.
    steps, lr, batch_size
        Adam steps for the hidden-layer model (full batch when the cells fit in one batch);
        the logistic regression is solved by L-BFGS (at most ``steps`` iterations).
    folds
        Cross-fitting folds (stratified): each labelled cell is predicted once by a model
        that did not train on it; those out-of-fold predictions select the model, fit the
        temperature, the conformal threshold and the novelty threshold. The registered
        model is then trained on every labelled cell.
    min_cells_per_class
        Cell types with fewer labelled cells are excluded (and reported).
    novelty_quantile
        Quantile of the out-of-fold novelty above which a cell is flagged ``abstain``.
    """

    alpha: float = 0.1
    score: Literal["lac", "aps"] = "lac"
    hidden: int | None = None
    weight_decay: float | None = None
    steps: int = 300
    lr: float = 0.01
    batch_size: int = 4096
    folds: int = 5
    min_cells_per_class: int = 10
    novelty_quantile: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.alpha < 1.0, "--alpha", f"alpha must be between 0 and 1, got {self.alpha}"),
            (self.score in SCORES, "--score", f"score must be one of {', '.join(SCORES)}, got {self.score!r}"),
            (self.hidden is None or self.hidden >= 0, "--hidden", f"hidden units must be >= 0, got {self.hidden}"),
            (self.weight_decay is None or self.weight_decay >= 0, "--weight-decay", f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.steps >= 1, "--steps", f"steps must be >= 1, got {self.steps}"),
            (self.folds >= 2, "--folds", f"folds must be >= 2, got {self.folds}"),
            (self.min_cells_per_class >= 2, "--min-cells", f"min cells per class must be >= 2, got {self.min_cells_per_class}"),
            (0.5 <= self.novelty_quantile <= 1.0, "--novelty-quantile", f"novelty quantile must be in [0.5, 1], got {self.novelty_quantile}"),
        ]
        for ok, where, msg in checks:
            if not ok:
                raise UsageError(msg, where=where)

    def candidates(self) -> list[tuple[int, float]]:
        """The ``(hidden, weight_decay)`` pairs cross-validation chooses from (one when both are fixed)."""
        hs = HIDDEN_GRID if self.hidden is None else (self.hidden,)
        wds = WEIGHT_DECAY_GRID if self.weight_decay is None else (self.weight_decay,)
        return [(h, w) for h in hs for w in wds]


# -- the model: NumPy inference ----------------------------------------------------------
@dataclass
class CellTypeDecoder:
    """A trained cell-type decoder (NumPy arrays); see the module docstring for the outputs."""

    term_ids: np.ndarray  # (K,) str
    labels: np.ndarray  # (K,) str
    layers: list[tuple[np.ndarray, np.ndarray]]  # the UR scaling folded into the first
    temperature: float
    qhat: float
    score: str
    whiten: np.ndarray  # (d, d), the UR scaling folded in
    whiten_offset: np.ndarray  # (d,)
    centroids: np.ndarray  # (K, d) whitened
    novelty_threshold: float
    record: InstrumentRecord | None = None
    fit_metrics: dict[str, Any] = field(default_factory=dict)
    _centroid_norms: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._centroid_norms = (self.centroids * self.centroids).sum(axis=1)
        import pyarrow as pa

        self._term_arr = pa.array(self.term_ids.tolist(), pa.string())
        self._label_arr = pa.array(self.labels.tolist(), pa.string())

    @property
    def dim(self) -> int:
        return int(self.layers[0][0].shape[0])

    # -- persistence --------------------------------------------------------------
    def to_weights(self) -> dict[str, np.ndarray]:
        w: dict[str, np.ndarray] = {
            "term_ids": self.term_ids.astype(str), "labels": self.labels.astype(str),
            "temperature": np.float64(self.temperature), "qhat": np.float64(self.qhat),
            "whiten": self.whiten, "whiten_offset": self.whiten_offset, "centroids": self.centroids,
            "novelty_threshold": np.float64(self.novelty_threshold), "n_layers": np.int64(len(self.layers)),
        }  # fmt: skip
        for i, (W, b) in enumerate(self.layers):
            w[f"W{i}"], w[f"b{i}"] = W, b
        return w

    @classmethod
    def load(cls, lake: Lake, rec: InstrumentRecord, weights: Mapping[str, np.ndarray]) -> CellTypeDecoder:
        """The registry's loader (``load_instrument`` calls it)."""
        try:
            layers = [(weights[f"W{i}"].astype(np.float32), weights[f"b{i}"].astype(np.float32)) for i in range(int(weights["n_layers"]))]
            return cls(
                term_ids=weights["term_ids"], labels=weights["labels"], layers=layers,
                temperature=float(weights["temperature"]), qhat=float(weights["qhat"]), score=str(rec.config.get("score", "lac")),
                whiten=weights["whiten"].astype(np.float32), whiten_offset=weights["whiten_offset"].astype(np.float32),
                centroids=weights["centroids"].astype(np.float32), novelty_threshold=float(weights["novelty_threshold"]), record=rec,
            )  # fmt: skip
        except KeyError as exc:
            raise InstrumentError(f"weights of {rec.ref} lack array {exc.args[0]!r}; the file does not belong to a cell-type decoder", where=rec.ref) from None

    # -- prediction ---------------------------------------------------------------
    @staticmethod
    def output_schema() -> Any:
        """The Arrow schema of :meth:`predict`."""
        return output_schema()

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        return forward(self.layers, vectors)

    def novelty(self, vectors: np.ndarray) -> np.ndarray:
        zw = np.asarray(vectors, dtype=np.float32) @ self.whiten
        zw -= self.whiten_offset
        d2 = (zw * zw).sum(axis=1, keepdims=True) - 2.0 * (zw @ self.centroids.T) + self._centroid_norms[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def predict_arrays(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated probabilities ``(n, K)``, set membership ``(n, K)``, top class, novelty, abstain."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise InstrumentError(f"vectors have shape {x.shape}, this decoder reads ({self.dim},)-dimensional URs", where=self.record.ref if self.record else "")
        probs = softmax(self.logits(x), self.temperature)
        members = prediction_sets(probs, self.qhat, self.score)  # type: ignore[arg-type]
        top = probs.argmax(axis=1)
        nov = self.novelty(x)
        return {"probs": probs, "members": members, "top": top, "probability": probs[np.arange(len(x)), top], "novelty": nov, "abstain": nov > self.novelty_threshold}

    def predict(self, vectors: np.ndarray) -> Any:
        """One Arrow row per vector with the output columns (see :data:`OUTPUT_COLUMNS`)."""
        import pyarrow as pa

        a = self.predict_arrays(vectors)
        probs, members = a["probs"], a["members"]
        order = np.argsort(-probs, axis=1, kind="stable")
        in_order = np.take_along_axis(members, order, axis=1)
        flat = order[in_order]  # row-major: each row's members, most probable first
        sizes = in_order.sum(axis=1).astype(np.int32)
        offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
        np.cumsum(sizes, out=offsets[1:])
        sets = pa.ListArray.from_arrays(pa.array(offsets), self._term_arr.take(pa.array(flat.astype(np.int32))))
        top = pa.array(a["top"].astype(np.int32))
        return pa.table(
            {
                "predicted_term_id": self._term_arr.take(top), "predicted_label": self._label_arr.take(top),
                "probability": pa.array(a["probability"].astype(np.float32)), "prediction_set": sets,
                "set_size": pa.array(sizes), "novelty": pa.array(a["novelty"].astype(np.float32)), "abstain": pa.array(a["abstain"]),
            }
        )  # fmt: skip


def output_schema() -> Any:
    """The Arrow schema of :meth:`CellTypeDecoder.predict`."""
    import pyarrow as pa

    return pa.schema(
        [
            ("predicted_term_id", pa.string()), ("predicted_label", pa.string()), ("probability", pa.float32()),
            ("prediction_set", pa.list_(pa.string())), ("set_size", pa.int32()), ("novelty", pa.float32()), ("abstain", pa.bool_()),
        ]
    )  # fmt: skip


# -- training -----------------------------------------------------------------------------
def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index of each cell: every class dealt round-robin over the folds in a random order.

    With at least 2 cells per class, every training split (all folds but one) holds every class.
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


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Logits of the ReLU network ``layers`` (``[(W, b), ...]``) at ``x`` (float32, NumPy)."""
    h = np.asarray(x, dtype=np.float32)
    for i, (W, b) in enumerate(layers):
        h = h @ W
        h += b
        if i < len(layers) - 1:
            np.maximum(h, 0.0, out=h)
    return h


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
    cfg: CellTypeConfig = CellTypeConfig(),
    progress: Progress | None = None,
) -> CellTypeDecoder:
    """Fit a decoder on URs ``x`` with class indices ``y`` (every class present); no lake needed.

    ``decoder.fit_metrics`` holds the cross-validated metrics afterwards.
    """
    return _fit(np.asarray(x, np.float32), np.asarray(y, np.int64), term_ids, labels, cfg, progress or NullProgress())


def _fit(x: np.ndarray, y: np.ndarray, term_ids: list[str], labels: list[str], cfg: CellTypeConfig, progress: Progress) -> CellTypeDecoder:
    """Cross-fit, select, calibrate on the out-of-fold predictions, then train on every cell.

    URs are centred and divided by one scale (their root-mean-square distance to the mean
    per dimension), not standardized per dimension: a UR's geometry is information (PCA
    components, for one, carry their variance), and per-dimension scaling inflates its
    noisiest directions.
    """
    K = len(term_ids)
    counts = np.bincount(y, minlength=K)
    if counts.min() < 2:
        k = int(counts.argmin())
        raise UsageError(
            f"cell type {term_ids[k]} has {int(counts[k])} labelled cell(s); cross-fitting needs at least 2 per type (drop it or label more cells)",
            where="labels",
        )
    mean = x.astype(np.float64).mean(axis=0)
    scale = float(np.sqrt(((x.astype(np.float64) - mean) ** 2).sum(axis=1).mean() / x.shape[1])) or 1.0
    z = ((x - mean) / scale).astype(np.float32)
    fold = stratified_folds(y, cfg.folds, cfg.seed)
    cands = cfg.candidates()
    progress.phase(f"cross-validating {len(cands)} model(s) x {cfg.folds} folds on {len(y)} cells", total=len(cands) * cfg.folds + 1)
    trials: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    oof, chosen = np.zeros((len(y), K), dtype=np.float32), cands[0]
    for hidden, wd in cands:
        logits = np.zeros((len(y), K), dtype=np.float32)
        for f in range(cfg.folds):
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
    for f in range(cfg.folds):
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
        "folds": cfg.folds,
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
    }
    return model


def labelled_cells(lake: Lake, embedding: Any, datasets: list[str] | None = None) -> tuple[Any, np.ndarray]:
    """The labelled cells of an embedding version with their URs.

    Returns ``(cells, vectors)``: ``cells`` has ``obs_id, dataset_id, dataset_version,
    cell_type_ontology_term_id, cell_type``; cells labelled ``unknown``/``na`` are left out.
    """
    import pandas as pd

    from aivc.store.features import read_vectors
    from aivc.store.catalog import Catalog
    from aivc.store.read import version_cells

    have = _embedded_datasets(embedding)
    chosen = sorted(have) if not datasets else datasets
    missing = [d for d in chosen if d.partition("@")[0] not in have]
    if missing:
        raise UsageError(
            f"{embedding.ref} has no vectors for dataset {missing[0]!r} (it has: {', '.join(sorted(have)) or 'none'})", where="--datasets"
        )
    ids = sorted({d.partition("@")[0] for d in chosen})
    cat = Catalog(lake)
    frames = []
    for d in ids:
        for v in cat.versions(d):
            frames.append(version_cells(lake, v, ["obs_id", "dataset_id", "dataset_version", "cell_type_ontology_term_id", "cell_type"]))
    if not frames:
        raise UsageError(f"datasets {', '.join(ids)} are not in this lake's catalog", where="--datasets")
    obs = pd.concat(frames, ignore_index=True)
    obs = obs[~obs["cell_type_ontology_term_id"].isin(NON_ONTOLOGY_VALUES) & obs["cell_type_ontology_term_id"].notna() & (obs["cell_type_ontology_term_id"] != "")]
    table, vec = read_vectors(lake, embedding, datasets=set(ids), columns=("id",))
    pos = pd.Index(table.column("id").to_pylist())
    rows = pos.get_indexer(obs["obs_id"])
    keep = rows >= 0
    return obs[keep].reset_index(drop=True), vec[rows[keep]]


def _embedded_datasets(v: Any) -> set[str]:
    return {p.partition("=")[2] for p in v.partitions if p.startswith("dataset=")}


def train_celltype(
    lake: Lake,
    embedding: str,
    *,
    datasets: list[str] | None = None,
    name: str = "celltype",
    config: CellTypeConfig = CellTypeConfig(),
    progress: Progress | None = None,
) -> InstrumentRecord:
    """Train, calibrate and register a cell-type decoder over ``embedding``; returns its record.

    Parameters
    ----------
    embedding
        A cell embedding version, ``cell:NAME@VERSION`` (the latest when no version is given;
        the record always names the exact version).
    datasets
        Dataset ids whose labelled cells train it (default: every dataset of the version).
    """
    import pandas as pd

    from aivc.store.features import get_version
    from aivc.instruments.registry import check_name

    check_name(name)
    progress = progress or NullProgress()
    emb = get_version(lake, embedding)
    if emb.entity != "cell":
        raise UsageError(f"a cell-type decoder reads cell URs; {emb.ref} holds {emb.entity} URs", where="--embedding")
    progress.phase("reading labelled cells")
    cells, x = labelled_cells(lake, emb, datasets)
    counts = cells["cell_type_ontology_term_id"].value_counts()
    kept = sorted(counts[counts >= config.min_cells_per_class].index)
    label_of = cells.drop_duplicates("cell_type_ontology_term_id").set_index("cell_type_ontology_term_id")["cell_type"].to_dict()
    excluded = {t: {"label": label_of[t], "n_cells": int(n)} for t, n in counts.items() if t not in kept}
    if len(kept) < 2:
        raise UsageError(
            f"{emb.ref} has {len(cells)} labelled cells in {len(counts)} cell types, of which {len(kept)} have at least "
            f"{config.min_cells_per_class} cells; a decoder needs at least 2 such types (lower --min-cells or add labelled datasets)",
            where="--datasets",
        )
    m = cells["cell_type_ontology_term_id"].isin(kept).to_numpy()
    cells, x = cells[m].reset_index(drop=True), x[m]
    y = pd.Categorical(cells["cell_type_ontology_term_id"], categories=kept).codes.astype(np.int64)
    progress.phase(f"training on {len(cells)} cells, {len(kept)} cell types")
    model = _fit(x, y, kept, [label_of[t] for t in kept], config, progress)
    metrics = dict(model.fit_metrics)
    metrics["excluded_classes"] = excluded
    n_tr = n_cal = np.bincount(y, minlength=len(kept))  # cross-fitting: every cell trains and calibrates
    refs = sorted({f"{d}@{int(v)}" for d, v in zip(cells["dataset_id"], cells["dataset_version"], strict=True)})
    per_dataset = {str(k): int(v) for k, v in cells["dataset_id"].value_counts().sort_index().items()}
    extra = {"embedding_lineage_datasets": list(emb.lineage.datasets), "training_cells": per_dataset}
    lineage = Lineage(embedding=emb.ref, datasets=tuple(refs), extra=extra)
    progress.phase("registering")
    return register_decoder(lake, model, emb, name=name, config=config, metrics=metrics, lineage=lineage, n_train=n_tr, n_calibration=n_cal)


def register_decoder(
    lake: Lake,
    model: CellTypeDecoder,
    embedding: Any,
    *,
    name: str = "celltype",
    config: CellTypeConfig = CellTypeConfig(),
    metrics: dict[str, Any] | None = None,
    lineage: Lineage | None = None,
    n_train: Any = None,
    n_calibration: Any = None,
) -> InstrumentRecord:
    """Register a fitted decoder as the next version of ``name``, reading ``embedding`` (an EmbeddingVersion)."""
    K = len(model.term_ids)
    n_tr = np.zeros(K, int) if n_train is None else n_train
    n_cal = np.zeros(K, int) if n_calibration is None else n_calibration
    outputs = {
        "columns": OUTPUT_COLUMNS,
        "classes": [
            {"term_id": str(t), "label": str(lab), "n_train": int(a), "n_calibration": int(b)}
            for t, lab, a, b in zip(model.term_ids, model.labels, n_tr, n_cal, strict=True)
        ],
        "alpha": config.alpha,
        "score": config.score,
        "novelty": f"Mahalanobis distance to the nearest class centroid; abstain above the calibration {config.novelty_quantile:g} quantile",
        "dim": int(embedding.dim),
    }
    if model.dim != embedding.dim:
        raise InstrumentError(f"the decoder reads {model.dim}-dimensional URs but {embedding.ref} has {embedding.dim}", where=embedding.ref)
    return register_instrument(
        lake, name, kind="decoder", type=TYPE, reads=embedding.ref, weights=model.to_weights(), outputs=outputs,
        metrics=dict(metrics if metrics is not None else model.fit_metrics), lineage=lineage if lineage is not None else Lineage(embedding=embedding.ref),
        config=asdict(config),
        description=f"cell-type decoder over {embedding.ref}: {K} Cell Ontology types, conformal sets at alpha={config.alpha:g}",
    )  # fmt: skip
