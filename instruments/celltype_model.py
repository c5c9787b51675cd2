"""The cell-type decoder's model: its config, the fitted decoder and its NumPy forward pass.

:class:`CellTypeConfig` says how a decoder is trained and calibrated (validated when created);
:class:`CellTypeDecoder` holds a fitted decoder's arrays and predicts. Nothing here reads the
lake or fits anything: fitting is :mod:`aivc.instruments.celltype_fit`, reading labelled
cells and registering is :mod:`aivc.instruments.celltype`.

Prediction (:meth:`CellTypeDecoder.predict`) is NumPy only: the UR scaling and whitening
are folded into the weights, so a batch costs a few small matrix products, a softmax and a
sort over the classes; it needs no torch and no lake access beyond the weights.

Output columns: ``predicted_term_id``, ``predicted_label``, ``probability`` (calibrated
top-class probability), ``prediction_set`` (term ids, most probable first), ``set_size``,
``novelty`` and ``abstain`` (novelty above the threshold: no known class fits the cell).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.calibration import SCORES, prediction_sets, softmax
from aivc.instruments.registry import InstrumentError, InstrumentRecord

if TYPE_CHECKING:
    from aivc.store.lake import Lake

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
        Cell types with fewer labelled cells are excluded (and reported). The default, 2,
        keeps every type cross-fitting can calibrate: a rare type is trained on, predicted,
        may appear in conformal sets, and its out-of-fold scores are in the record
        (``metrics['per_class']``); a type with a single labelled cell is left out (it cannot
        be held out and trained on at once, so nothing would calibrate its predictions).
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
    min_cells_per_class: int = 2
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


def forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """Logits of the ReLU network ``layers`` (``[(W, b), ...]``) at ``x`` (float32, NumPy)."""
    h = np.asarray(x, dtype=np.float32)
    for i, (W, b) in enumerate(layers):
        h = h @ W
        h += b
        if i < len(layers) - 1:
            np.maximum(h, 0.0, out=h)
    return h
