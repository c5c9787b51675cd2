"""The niche decoder: niche UR -> tissue domain (region), with calibrated uncertainty.

A supervised transfer of tissue-domain annotations, as a spatial analyst does with
CellCharter or BANKSY clusters an expert has named: train on niches whose domain is known
(a pathologist's regions, a reference slide), predict the domain of every niche of new slides.

Training (:func:`train_niche_domain`) reads the niche URs of one exact niche embedding version
(``niche:NAME@V``, one row per centre cell) and their domain labels, from either

- an obs column of the centre cells as submitted (``label``, e.g. ``tissue_domain``), or
- a table (``labels``: CSV, TSV or Parquet) with a niche id column (``niche_id`` or
  ``obs_id``: the lake cell id, or ``barcode`` with ``dataset_id``) and the domain column
  (``label``, default ``domain``);

empty / ``unknown`` / ``na`` labels are skipped. The classifier, its temperature, conformal
sets and novelty threshold are the cell-type decoder's (:mod:`aivc.instruments.celltype_fit`:
class-balanced softmax cross-fitted, every labelled niche predicted once by a model that never
saw it); the classes are domains, not Cell Ontology terms, and the folds are spatial blocks
(:func:`~aivc.instruments.niche_domain_model.spatial_folds`: neighbouring niches share cells,
so random folds would calibrate the sets on near-copies of the training niches). It is
registered as instrument type ``niche-domain``
(:class:`~aivc.instruments.niche_domain_model.NicheDomainDecoder`).

Batch prediction is ``aivc annotate --instrument niche-domain@N --datasets …``
(:mod:`aivc.instruments.annotate`): the prediction version's rows are keyed by the centre's
``obs_id`` (the niche id; join ``spatial_cells`` for where it is) and ``dataset_id``, with
``predicted_domain``, ``probability``, ``prediction_set``, ``set_size``, ``novelty``,
``abstain``; its report
(:mod:`aivc.instruments.niche_report`) draws each slide coloured by predicted domain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.instruments.celltype_model import CellTypeConfig
from aivc.instruments.niche_domain_model import OUTPUT_COLUMNS, TYPE, NicheFolds, spatial_folds
from aivc.instruments.registry import InstrumentRecord
from aivc.progress import NullProgress, Progress
from aivc.store.lake import Lake
from aivc.store.lineage import Lineage

_EMPTY = {"", "unknown", "na", "nan", "none"}


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist", where="--labels")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"labels file {path} is unreadable ({str(exc).splitlines()[0]})", where="--labels") from None


def _centres(lake: Lake, emb: Any, datasets: list[str] | None) -> pd.DataFrame:
    """``niche_id, dataset_id, barcode`` of the niches of ``emb`` (of ``datasets``)."""
    from aivc.store.catalog import Catalog
    from aivc.store.features import read_vectors
    from aivc.store.read import version_cells

    have = {p.partition("=")[2] for p in emb.partitions if p.startswith("dataset=")}
    chosen = sorted(have) if not datasets else [d.partition("@")[0] for d in datasets]
    missing = [d for d in chosen if d not in have]
    if missing:
        raise UsageError(f"{emb.ref} has no niches of dataset {missing[0]!r} (it has: {', '.join(sorted(have)) or 'none'})", where="--datasets")
    table, _ = read_vectors(lake, emb, datasets=set(chosen), columns=("id", "dataset_id"))
    frame = pd.DataFrame({"niche_id": table.column("id").to_pylist(), "dataset_id": table.column("dataset_id").to_pylist()})
    cat = Catalog(lake)
    refs = emb.lineage.dataset_versions()
    cells = pd.concat([version_cells(lake, cat.get(refs.get(d, d)), ["obs_id", "barcode"]) for d in chosen], ignore_index=True)
    return frame.merge(cells.rename(columns={"obs_id": "niche_id"}), on="niche_id", how="left")


def domain_labels(lake: Lake, emb: Any, *, label: str | None, labels: str | Path | None, datasets: list[str] | None) -> pd.DataFrame:
    """The labelled niches of ``emb``: ``niche_id, dataset_id, domain`` (unlabelled ones left out)."""
    from aivc.store.catalog import Catalog
    from aivc.store.read import submitted_obs

    centres = _centres(lake, emb, datasets)
    if labels is not None:
        path = Path(labels)
        col = label or "domain"
        t = _read_table(path)
        if col not in t.columns:
            raise UsageError(f"labels file {path} has no column {col!r} (columns: {', '.join(map(str, t.columns))})", where=f"{path}: {col}")
        key = next((k for k in ("niche_id", "obs_id") if k in t.columns), None)
        if key is not None:
            got = centres.merge(t[[key, col]].rename(columns={key: "niche_id", col: "domain"}), on="niche_id", how="inner")
        elif {"barcode", "dataset_id"} <= set(t.columns):
            got = centres.merge(t[["dataset_id", "barcode", col]].rename(columns={col: "domain"}), on=["dataset_id", "barcode"], how="inner")
        else:
            raise UsageError(f"labels file {path} needs a niche_id or obs_id column, or barcode and dataset_id (columns: {', '.join(map(str, t.columns))})", where=str(path))
        if got.empty:
            raise UsageError(f"no id of labels file {path} is a niche of {emb.ref} (e.g. {str(t.iloc[0][key or 'barcode']) if len(t) else 'none'!r})", where=str(path))
        where = f"{path}: {col}"
    elif label is not None:
        cat, refs, parts = Catalog(lake), emb.lineage.dataset_versions(), []
        for d in sorted(centres["dataset_id"].unique()):
            obs = submitted_obs(lake, cat.get(refs.get(d, d)))
            if label not in obs.columns:
                cols = ", ".join(c for c in obs.columns if c != "barcode")
                raise UsageError(f"dataset {d} has no submitted obs column {label!r} (columns: {cols})", where=f"--label {label}")
            parts.append(centres[centres["dataset_id"] == d].merge(obs[["barcode", label]].rename(columns={label: "domain"}), on="barcode", how="left"))
        got = pd.concat(parts, ignore_index=True)
        where = f"obs[{label!r}]"
    else:
        raise UsageError("say where the domains are: --label COLUMN (an obs column of the cells) or --labels FILE", where="--label")
    got["domain"] = got["domain"].astype("string").fillna("").str.strip()
    got = got[~got["domain"].str.lower().isin(_EMPTY)].drop_duplicates(["niche_id", "domain"]).reset_index(drop=True)
    twice = got["niche_id"].duplicated(keep=False)
    if twice.any():
        first = got[twice].iloc[0]["niche_id"]
        both = ", ".join(sorted(got.loc[got["niche_id"] == first, "domain"]))
        raise UsageError(f"niche {first} is labelled with more than one domain ({both}); give each niche one domain", where=where)
    got = got[["niche_id", "dataset_id", "domain"]].reset_index(drop=True)
    got.attrs["where"] = where
    return got


def _locations(lake: Lake, emb: Any, lab: pd.DataFrame) -> np.ndarray:
    """``(n, 2)`` centre locations of the labelled niches ``lab`` (its row order)."""
    from aivc.store.catalog import Catalog
    from aivc.store.spatial import read_locations

    cat, refs = Catalog(lake), emb.lineage.dataset_versions()
    locs = pd.concat([read_locations(lake, cat.get(refs.get(d, d)))[["obs_id", "x", "y"]] for d in sorted(lab["dataset_id"].unique())], ignore_index=True)
    xy = lab[["niche_id"]].merge(locs.rename(columns={"obs_id": "niche_id"}), on="niche_id", how="left")[["x", "y"]].to_numpy(dtype=np.float64)
    lost = np.isnan(xy).any(axis=1)
    if lost.any():
        raise UsageError(
            f"{int(lost.sum())} labelled niches of {emb.ref} have no location (e.g. {lab['niche_id'].iloc[int(np.argmax(lost))]}); spatial cross-fitting needs them, or use --cv random",
            where="--cv",
        )
    return xy


def train_niche_domain(
    lake: Lake,
    embedding: str,
    *,
    label: str | None = None,
    labels: str | Path | None = None,
    datasets: list[str] | None = None,
    name: str = "niche-domain",
    config: CellTypeConfig | None = None,
    folds: NicheFolds | None = None,
    progress: Progress | None = None,
) -> InstrumentRecord:
    """Train, calibrate and register a niche-domain decoder over niche UR version ``embedding``.

    Parameters
    ----------
    label, labels
        Where the domains are: an obs column of the centre cells (``label`` alone), or a
        labels file (``labels``; ``label`` then names its domain column, default ``domain``).
    datasets
        Dataset ids whose labelled niches train it (default: every dataset of the version).
    folds
        How the labelled niches are cross-fitted (default: spatial blocks, see
        :class:`~aivc.instruments.niche_domain_model.NicheFolds`).

    Example
    -------
    >>> rec = train_niche_domain(lake, "niche:niche_gnn@1", label="tissue_domain")  # doctest: +SKIP
    >>> rec.outputs["classes"][0]["term_id"]  # doctest: +SKIP
    'cortex'
    """
    from aivc.instruments.celltype import register_decoder
    from aivc.instruments.celltype_fit import cross_fit
    from aivc.instruments.registry import check_name
    from aivc.store.features import get_version, read_vectors

    config = config or CellTypeConfig()
    folds = folds or NicheFolds()
    check_name(name)
    progress = progress or NullProgress()
    emb = get_version(lake, embedding)
    if emb.entity != "niche":
        raise UsageError(f"a niche-domain decoder reads niche URs (niche:NAME@V); {emb.ref} holds {emb.entity} URs", where="--embedding")
    progress.phase("reading labelled niches")
    lab = domain_labels(lake, emb, label=label, labels=labels, datasets=datasets)
    where = lab.attrs["where"]
    counts = lab["domain"].value_counts()
    kept = sorted(counts[counts >= config.min_cells_per_class].index)
    if len(kept) < 2:
        raise UsageError(
            f"{len(lab)} niches of {emb.ref} are labelled in {where}, in {len(counts)} domain(s) of which {len(kept)} have at least "
            f"{config.min_cells_per_class} niches; a decoder needs at least 2 such domains (lower --min-cells or label more niches)",
            where=where,
        )
    lab = lab[lab["domain"].isin(kept)].reset_index(drop=True)
    table, vec = read_vectors(lake, emb, ids=lab["niche_id"].to_numpy(dtype=object), columns=("id",))
    row = pd.Series(np.arange(table.num_rows), index=table.column("id").to_pylist())
    x = np.ascontiguousarray(vec[row.loc[lab["niche_id"]].to_numpy()], dtype=np.float32)
    y = pd.Categorical(lab["domain"], categories=kept).codes.astype(np.int64)
    if folds.cv == "spatial":
        fold, fold_info = spatial_folds(_locations(lake, emb, lab), lab["dataset_id"].to_numpy(), n_folds=config.folds, seed=config.seed, block_size=folds.block_size)
    else:
        fold, fold_info = None, {"cv": "random"}
    progress.phase(f"training on {len(lab)} niches, {len(kept)} domains ({fold_info['cv']} folds)")
    model = cross_fit(x, y, kept, kept, config, progress, folds=fold, nouns=("tissue domain", "niche"))
    metrics = dict(model.fit_metrics)
    metrics["cross_fitting"] = fold_info
    metrics["excluded_classes"] = {str(t): {"label": str(t), "n_cells": int(n)} for t, n in counts.items() if t not in kept}
    refs = emb.lineage.dataset_versions()
    used = sorted(lab["dataset_id"].unique())
    lineage = Lineage(
        embedding=emb.ref, datasets=tuple(refs.get(d, d) for d in used),
        extra={"labels": where, "training_niches": {d: int(n) for d, n in lab["dataset_id"].value_counts().sort_index().items()}, "niche_model": emb.lineage.model},
    )  # fmt: skip
    n = np.bincount(y, minlength=len(kept))
    progress.phase("registering")
    return register_decoder(
        lake, model, emb, name=name, config=config, metrics=metrics, lineage=lineage, n_train=n, n_calibration=n, type_=TYPE,
        settings={"label": label, "labels": str(labels) if labels is not None else None, "cv": folds.cv, "block_size": folds.block_size},
        description=f"niche-domain decoder over {emb.ref}: {len(kept)} tissue domains from {where}, conformal sets at alpha={config.alpha:g} ({fold_info['cv']} cross-fitting)",
        columns=OUTPUT_COLUMNS,
    )  # fmt: skip


__all__ = ["TYPE", "domain_labels", "train_niche_domain"]
