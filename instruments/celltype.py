"""The cell-type decoder: cell UR -> Cell Ontology term with calibrated confidence.

Training (:func:`train_celltype`) reads the URs of the labelled cells of one exact cell
embedding version (joined on ``obs_id`` with each dataset version's
``cell_type_ontology_term_id``; ``unknown``/``na`` cells are skipped), drops cell types
with fewer than ``min_cells_per_class`` labelled cells (reported in the record), holds out
a stratified calibration split, and fits a class-balanced classifier on standardized URs:
one hidden ReLU layer of 64 units (the default) or, with ``hidden=0``, a multinomial
logistic regression; L2 weight decay 1e-2 keeps it from over-confidence (its fitted
temperature stays near 1 on PBMC, see ``benchmarks/bench_annotate.py``).
On the calibration split it then fits

- a temperature (scaling the logits; ECE before/after is recorded),
- the split-conformal threshold ``qhat`` at error rate ``alpha`` (``lac`` or ``aps`` score,
  see :mod:`aivc.instruments.calibration`),
- the novelty threshold: the ``novelty_quantile`` of the calibration cells' Mahalanobis
  distance to the nearest class centroid (pooled within-class covariance).

Prediction (:meth:`CellTypeDecoder.predict`) is NumPy only: standardization and whitening
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

TYPE = "celltype"
OUTPUT_COLUMNS: dict[str, str] = {
    "predicted_term_id": "Cell Ontology term id of the most probable cell type",
    "predicted_label": "its label",
    "probability": "calibrated (temperature-scaled) probability of the predicted type",
    "prediction_set": "split-conformal prediction set: term ids, most probable first; contains the true type with probability >= 1 - alpha",
    "set_size": "number of term ids in prediction_set",
    "novelty": "Mahalanobis distance of the UR to the nearest training class centroid",
    "abstain": "novelty above the calibration threshold: none of the known cell types fits this cell",
}


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
        Hidden units of the one hidden layer; 0 trains a multinomial logistic regression.
    steps, lr, weight_decay, batch_size
        Adam optimisation (full batch when the training split fits in one batch).
    calibration_fraction
        Share of each cell type held out for calibration.
    min_cells_per_class
        Cell types with fewer labelled cells are excluded (and reported).
    novelty_quantile
        Quantile of the calibration cells' novelty above which a cell is flagged ``abstain``.
    """

    alpha: float = 0.1
    score: Literal["lac", "aps"] = "lac"
    hidden: int = 64
    steps: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-2
    batch_size: int = 4096
    calibration_fraction: float = 0.25
    min_cells_per_class: int = 10
    novelty_quantile: float = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.alpha < 1.0, "--alpha", f"alpha must be between 0 and 1, got {self.alpha}"),
            (self.score in SCORES, "--score", f"score must be one of {', '.join(SCORES)}, got {self.score!r}"),
            (self.hidden >= 0, "--hidden", f"hidden units must be >= 0, got {self.hidden}"),
            (self.steps >= 1, "--steps", f"steps must be >= 1, got {self.steps}"),
            (0.0 < self.calibration_fraction < 1.0, "--calibration-fraction", f"calibration fraction must be between 0 and 1, got {self.calibration_fraction}"),
            (self.min_cells_per_class >= 2, "--min-cells", f"min cells per class must be >= 2, got {self.min_cells_per_class}"),
            (0.5 <= self.novelty_quantile <= 1.0, "--novelty-quantile", f"novelty quantile must be in [0.5, 1], got {self.novelty_quantile}"),
        ]
        for ok, where, msg in checks:
            if not ok:
                raise UsageError(msg, where=where)


# -- the model: NumPy inference ----------------------------------------------------------
@dataclass
class CellTypeDecoder:
    """A trained cell-type decoder (NumPy arrays); see the module docstring for the outputs."""

    term_ids: np.ndarray  # (K,) str
    labels: np.ndarray  # (K,) str
    layers: list[tuple[np.ndarray, np.ndarray]]  # standardization folded into the first
    temperature: float
    qhat: float
    score: str
    whiten: np.ndarray  # (d, d), standardization folded in
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
        h = np.asarray(vectors, dtype=np.float32)
        for i, (W, b) in enumerate(self.layers):
            h = h @ W
            h += b
            if i < len(self.layers) - 1:
                np.maximum(h, 0.0, out=h)
        return h

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
def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cal: list[np.ndarray] = []
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n_cal = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        cal.append(idx[:n_cal])
    cal_idx = np.sort(np.concatenate(cal))
    train = np.ones(len(y), bool)
    train[cal_idx] = False
    return np.flatnonzero(train), cal_idx


def _train_classifier(z: np.ndarray, y: np.ndarray, n_classes: int, cfg: CellTypeConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class-balanced softmax classifier on standardized ``z``; returns ``[(W, b), ...]``."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    d = z.shape[1]
    dims = [d, cfg.hidden, n_classes] if cfg.hidden else [d, n_classes]
    layers: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weight = torch.tensor(len(y) / (n_classes * counts), dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    X = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    Y = torch.from_numpy(y.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: more threads only contend (10x slower on a busy machine)
    try:
        for _ in range(cfg.steps):
            if len(Y) > cfg.batch_size:
                idx = torch.randint(0, len(Y), (cfg.batch_size,), generator=gen)
                xb, yb = X[idx], Y[idx]
            else:
                xb, yb = X, Y
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    return [(m.weight.detach().numpy().T.astype(np.float32).copy(), m.bias.detach().numpy().astype(np.float32).copy()) for m in linears]


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
) -> CellTypeDecoder:
    """Fit a decoder on URs ``x`` with class indices ``y`` (every class present); no lake needed.

    ``decoder.fit_metrics`` holds the calibration-split metrics afterwards.
    """
    model, _ = _fit(np.asarray(x, np.float32), np.asarray(y, np.int64), term_ids, labels, cfg)
    return model


def _fit(x: np.ndarray, y: np.ndarray, term_ids: list[str], labels: list[str], cfg: CellTypeConfig) -> tuple[CellTypeDecoder, dict[str, Any]]:
    K = len(term_ids)
    tr, cal = _stratified_split(y, cfg.calibration_fraction, cfg.seed)
    mean = x[tr].astype(np.float64).mean(axis=0)
    sd = x[tr].astype(np.float64).std(axis=0)
    sd[sd < 1e-8] = 1.0
    z = ((x - mean) / sd).astype(np.float32)
    layers = _train_classifier(z[tr], y[tr], K, cfg)
    # fold standardization into the first layer: ((x - m) / s) @ W + b == x @ (W / s) + (b - (m / s) @ W)
    W0, b0 = layers[0]
    layers[0] = ((W0 / sd[:, None]).astype(np.float32), (b0 - (mean / sd) @ W0).astype(np.float32))
    wh = Whitening.fit(z[tr], y[tr], K)
    whiten = (wh.matrix / sd[:, None]).astype(np.float32)
    offset = ((mean / sd) @ wh.matrix).astype(np.float32)
    model = CellTypeDecoder(
        term_ids=np.array(term_ids), labels=np.array(labels), layers=layers, temperature=1.0, qhat=1.0, score=cfg.score,
        whiten=whiten, whiten_offset=offset, centroids=wh.centroids, novelty_threshold=float("inf"),
    )  # fmt: skip
    logits_cal = model.logits(x[cal])
    T = fit_temperature(logits_cal, y[cal])
    p_before, p_after = softmax(logits_cal), softmax(logits_cal, T)
    qhat = conformal_quantile(conformal_scores(p_after, y[cal], cfg.score), cfg.alpha)  # type: ignore[arg-type]
    nov_cal = model.novelty(x[cal])
    model.temperature, model.qhat = T, qhat
    model.novelty_threshold = float(np.quantile(nov_cal, cfg.novelty_quantile))
    members = prediction_sets(p_after, qhat, cfg.score)  # type: ignore[arg-type]
    metrics: dict[str, Any] = {
        "n_train": int(len(tr)),
        "n_calibration": int(len(cal)),
        "n_classes": K,
        "temperature": round(T, 6),
        "qhat": None if not np.isfinite(qhat) else round(qhat, 6),
        "nll_before": round(nll(logits_cal, y[cal]), 6),
        "nll_after": round(nll(logits_cal, y[cal], T), 6),
        "ece_before": expected_calibration_error(p_before, y[cal]),
        "ece_after": expected_calibration_error(p_after, y[cal]),
        "calibration": _classification_metrics(y[cal], p_after.argmax(axis=1), K),
        "train": _classification_metrics(y[tr], model.logits(x[tr]).argmax(axis=1), K),
        "calibration_coverage": round(float(members[np.arange(len(cal)), y[cal]].mean()), 6),
        "calibration_mean_set_size": round(float(members.sum(axis=1).mean()), 6),
        "novelty_threshold": round(model.novelty_threshold, 6),
    }
    model.fit_metrics = metrics
    return model, {"train_idx": tr, "cal_idx": cal, "metrics": metrics}


def labelled_cells(lake: Lake, embedding: Any, datasets: list[str] | None = None) -> tuple[Any, np.ndarray]:
    """The labelled cells of an embedding version with their URs.

    Returns ``(cells, vectors)``: ``cells`` has ``obs_id, dataset_id, dataset_version,
    cell_type_ontology_term_id, cell_type``; cells labelled ``unknown``/``na`` are left out.
    """
    import pandas as pd

    from aivc.embeddings.store import read_vectors
    from aivc.store.catalog import Catalog

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
            frames.append(pd.read_parquet(cat.artifacts_path(v) / "cells.parquet", columns=["obs_id", "dataset_id", "dataset_version", "cell_type_ontology_term_id", "cell_type"]))
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

    from aivc.embeddings.store import get_version
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
    model, fit = _fit(x, y, kept, [label_of[t] for t in kept], config)
    metrics = dict(fit["metrics"])
    metrics["excluded_classes"] = excluded
    n_tr = np.bincount(y[fit["train_idx"]], minlength=len(kept))
    n_cal = np.bincount(y[fit["cal_idx"]], minlength=len(kept))
    refs = sorted({f"{d}@{int(v)}" for d, v in zip(cells["dataset_id"], cells["dataset_version"], strict=True)})
    lineage = {
        "embedding": emb.ref,
        "embedding_lineage_datasets": list(emb.lineage.get("datasets", [])) if isinstance(emb.lineage, dict) else [],
        "datasets": refs,
        "training_cells": {str(k): int(v) for k, v in cells["dataset_id"].value_counts().sort_index().items()},
    }
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
    lineage: dict[str, Any] | None = None,
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
        metrics=dict(metrics if metrics is not None else model.fit_metrics), lineage=dict(lineage or {"embedding": embedding.ref}),
        config=asdict(config),
        description=f"cell-type decoder over {embedding.ref}: {K} Cell Ontology types, conformal sets at alpha={config.alpha:g}",
    )  # fmt: skip
