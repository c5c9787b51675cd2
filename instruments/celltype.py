"""The cell-type decoder: cell UR -> Cell Ontology term with calibrated confidence.

Training (:func:`train_celltype`) reads the URs of the labelled cells of one exact cell
embedding version (joined on ``obs_id`` with each dataset version's
``cell_type_ontology_term_id``; ``unknown``/``na`` cells are skipped), keeps every cell
type with at least ``min_cells_per_class`` labelled cells (default 2: rare types are kept and
predicted; a type with a single labelled cell cannot be both held out and trained on, so
cross-fitting could not calibrate it and it is left out, reported in ``excluded_classes``) and
cross-fits a class-balanced softmax classifier on the centred, uniformly scaled URs over
``folds`` stratified folds, which also calibrate its temperature, conformal prediction sets
and novelty threshold (:mod:`aivc.instruments.celltype_fit`). The registered model is the
chosen configuration trained on every labelled cell.

Prediction (:meth:`~aivc.instruments.celltype_model.CellTypeDecoder.predict`) is NumPy only
and needs no lake access beyond the weights (:mod:`aivc.instruments.celltype_model`).

Output columns: ``predicted_term_id``, ``predicted_label``, ``probability`` (calibrated
top-class probability), ``prediction_set`` (term ids, most probable first), ``set_size``,
``novelty`` and ``abstain`` (novelty above the threshold: no known class fits the cell).

The code is split by concern: :mod:`~aivc.instruments.celltype_model` (the config, the
decoder and its forward pass), :mod:`~aivc.instruments.celltype_fit` (fitting and
calibration over arrays) and this module (the labelled cells of the lake, training from
them and registering the decoder).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.instruments.celltype_fit import cross_fit
from aivc.instruments.celltype_model import OUTPUT_COLUMNS, TYPE, CellTypeConfig, CellTypeDecoder
from aivc.instruments.registry import InstrumentError, InstrumentRecord, register_instrument
from aivc.ontology import NON_ONTOLOGY_VALUES
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage


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
    config: CellTypeConfig | None = None,
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
    config = config or CellTypeConfig()
    progress = progress or NullProgress()
    emb = get_version(lake, embedding)
    if emb.entity != "cell":
        raise UsageError(f"a cell-type decoder reads cell URs; {emb.ref} holds {emb.entity} URs", where="--embedding")
    progress.phase("reading labelled cells")
    cells, x = labelled_cells(lake, emb, datasets)
    counts = cells["cell_type_ontology_term_id"].value_counts()
    kept = sorted(counts[counts >= config.min_cells_per_class].index)
    label_of = cells.drop_duplicates("cell_type_ontology_term_id").set_index("cell_type_ontology_term_id")["cell_type"].to_dict()
    excluded = {t: {"label": label_of[t], "n_cells": int(n), "reason": _why_excluded(int(n), config)} for t, n in counts.items() if t not in kept}
    class_cells = {str(t): {"label": str(label_of[t]), "n_cells": int(counts[t]), "kept": t in kept} for t in sorted(counts.index)}
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
    model = cross_fit(x, y, kept, [label_of[t] for t in kept], config, progress)
    metrics = dict(model.fit_metrics)
    metrics["excluded_classes"] = excluded
    metrics["class_cells"] = class_cells
    n_tr = n_cal = np.bincount(y, minlength=len(kept))  # cross-fitting: every cell trains and calibrates
    refs = sorted({f"{d}@{int(v)}" for d, v in zip(cells["dataset_id"], cells["dataset_version"], strict=True)})
    per_dataset = {str(k): int(v) for k, v in cells["dataset_id"].value_counts().sort_index().items()}
    extra = {"embedding_lineage_datasets": list(emb.lineage.datasets), "training_cells": per_dataset}
    lineage = Lineage(embedding=emb.ref, datasets=tuple(refs), extra=extra)
    progress.phase("registering")
    return register_decoder(lake, model, emb, name=name, config=config, metrics=metrics, lineage=lineage, n_train=n_tr, n_calibration=n_cal)


def _why_excluded(n: int, config: CellTypeConfig) -> str:
    if n < 2:
        return "one labelled cell: cross-fitting cannot hold it out and train on it at once, so nothing could calibrate its predictions"
    return f"fewer than min_cells_per_class={config.min_cells_per_class} labelled cells"


def register_decoder(
    lake: Lake,
    model: CellTypeDecoder,
    embedding: Any,
    *,
    name: str = "celltype",
    config: CellTypeConfig | None = None,
    metrics: dict[str, Any] | None = None,
    lineage: Lineage | None = None,
    n_train: Any = None,
    n_calibration: Any = None,
    type_: str = TYPE,
    settings: dict[str, Any] | None = None,
    description: str | None = None,
    columns: dict[str, str] | None = None,
) -> InstrumentRecord:
    """Register a fitted decoder as the next version of ``name``, reading ``embedding`` (an EmbeddingVersion).

    ``type_``: the instrument type (``celltype``; the niche-domain decoder is the same model over
    niche URs, :mod:`aivc.instruments.niche_domain`); ``settings`` are recorded in its config
    next to the training config; ``columns`` describe its output columns (default: the
    cell-type decoder's)."""
    config = config or CellTypeConfig()
    K = len(model.term_ids)
    n_tr = np.zeros(K, int) if n_train is None else n_train
    n_cal = np.zeros(K, int) if n_calibration is None else n_calibration
    fitted = metrics if metrics is not None else model.fit_metrics
    per_class = dict(fitted.get("per_class") or {})  # out-of-fold scores of each class (cross_fit)
    outputs = {
        "columns": dict(columns or OUTPUT_COLUMNS),
        "classes": [
            {"term_id": str(t), "label": str(lab), "n_cells": int(a), "n_train": int(a), "n_calibration": int(b), **per_class.get(str(t), {})}
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
        lake, name, kind="decoder", type=type_, reads=embedding.ref, weights=model.to_weights(), outputs=outputs,
        metrics=dict(metrics if metrics is not None else model.fit_metrics), lineage=lineage if lineage is not None else Lineage(embedding=embedding.ref),
        config={**asdict(config), **(settings or {})},
        description=description or f"cell-type decoder over {embedding.ref}: {K} Cell Ontology types, conformal sets at alpha={config.alpha:g}",
    )  # fmt: skip
