"""The multimodal cell model's run config, its inputs from arrays, in-process fitting and its record.

:class:`CellMultimodalVaeConfig` defines a ``cell-multimodal-vae`` run as the other model
types do (:mod:`aivc.training.config`): the RNA cells and genes (``data``), the other
measurements it reads (``measurements``: ``ADT``, ``ATAC``), the architecture and the
optimizer (with ``modality_dropout``). The module is
:class:`aivc.training.multimodal_nets.MultimodalVAE`.

:class:`MultimodalArrays` holds the counts of some cells per measurement with a per-cell
presence flag and per-batch feature masks, and turns rows into the model's batch dicts
(:meth:`MultimodalArrays.rows`): the same dicts a lake loader yields, so tests, benchmarks
and the Ray Train loop feed the model alike. :func:`fit_arrays` trains a model on arrays in
this process (seconds for a few hundred cells); :func:`model_init` gives the JSON-able
constructor arguments a registered model records, and :func:`record_fields` /
:func:`features_of` write and read the per-measurement feature lists of a model record
(``gene_ids`` are the RNA genes, as for ``cell-vae``; ``encodings["features:ADT"]`` the
proteins, ``encodings["features:ATAC"]`` the peaks), checked by :func:`align_features`
when the model is applied to data.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> arr = MultimodalArrays(counts={"RNA": rng.poisson(2.0, (60, 30)).astype(np.float32), "ADT": rng.poisson(5.0, (60, 4)).astype(np.float32)},
...     present={"ADT": np.arange(60) < 40}, batch=np.zeros(60, np.int64))
>>> cfg = CellMultimodalVaeConfig(model={"latent_dim": 4, "hidden_dim": 16}, optim={"epochs": 3, "batch_size": 32})
>>> fit = fit_arrays(arr, cfg)
>>> fit.model.embed(arr.rows(np.arange(60)), use=("RNA",)).shape
torch.Size([60, 4])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from aivc.store.collection import NAME_RULE
from aivc.training.config import VaeOptimConfig, _RunConfig, _Strict
from aivc.training.errors import ModelError

MODEL_TYPE = "cell-multimodal-vae"
#: measurements the model reads besides RNA, in the order it keeps them
OTHER_MEASUREMENTS: tuple[str, ...] = ("ADT", "ATAC")
FEATURES_KEY = "features:"  # encodings["features:ADT"]: the protein ids of a model, in input order


class MeasurementInput(_Strict):
    """A measurement besides RNA that the model reads: its name and how its features are chosen.

    ``features``: ``union`` keeps every feature any chosen dataset measured (a protein a
    panel lacks is masked for that dataset, not zero), ``intersection`` only shared ones.
    ``n_top``: keep the most variable (ATAC: the most often open) features.
    """

    name: Literal["ADT", "ATAC"]
    features: Literal["intersection", "union"] = "union"
    n_top: int | None = Field(None, ge=1)


class MultimodalArchitecture(_Strict):
    latent_dim: int = Field(32, ge=1)
    hidden_dim: int = Field(128, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    batch_covariate: bool = True
    protein_transform: Literal["log1p", "clr"] = "log1p"


class MultimodalOptimConfig(VaeOptimConfig):
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    #: probability that a present modality is left out of a cell's product of experts (training only)
    modality_dropout: float = Field(0.3, ge=0.0, lt=1.0)


class CellMultimodalVaeConfig(_RunConfig):
    """Everything that defines a ``cell-multimodal-vae`` training run.

    ``data`` selects the cells and the RNA genes as for ``cell-vae``; ``measurements`` the
    other measurements read for the same cells (a cell without one has it masked).
    """

    model_type: Literal["cell-multimodal-vae"] = MODEL_TYPE
    name: str = Field(MODEL_TYPE, pattern=NAME_RULE.pattern)
    measurements: tuple[MeasurementInput, ...] = (MeasurementInput(name="ADT"),)
    model: MultimodalArchitecture = MultimodalArchitecture()
    optim: MultimodalOptimConfig = MultimodalOptimConfig()

    @model_validator(mode="after")
    def _measurements(self) -> CellMultimodalVaeConfig:
        names = [m.name for m in self.measurements]
        if len(set(names)) != len(names):
            raise ValueError(f"measurements name one measurement twice: {names}")
        return self

    @property
    def measurement_names(self) -> tuple[str, ...]:
        """``RNA`` then the configured measurements, in the model's order."""
        names = {m.name for m in self.measurements}
        return ("RNA", *(m for m in OTHER_MEASUREMENTS if m in names))


# -- arrays -> batches -----------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MultimodalArrays:
    """Counts of ``n`` cells per measurement, with presence and feature masks.

    ``counts[M]``: float32 ``[n, F_M]`` raw counts (rows of cells without ``M`` are never
    read). ``present[M]``: bool ``[n]`` (a measurement not named: every cell has it).
    ``batch``: int64 ``[n]`` codes. ``feature_masks[M]``: bool ``[n_batches, F_M]``, which
    features each batch measured (none: all).
    """

    counts: Mapping[str, np.ndarray]
    batch: np.ndarray
    present: Mapping[str, np.ndarray] = field(default_factory=dict)
    feature_masks: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.batch)
        for m, x in self.counts.items():
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(f"counts[{m!r}] has shape {x.shape}; expected ({n}, features)")
        for m, p in self.present.items():
            if m not in self.counts or p.shape != (n,):
                raise ValueError(f"present[{m!r}] must be a bool vector of {n} cells of a measurement in counts")

    @property
    def n_cells(self) -> int:
        return int(len(self.batch))

    @property
    def n_features(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.counts.items()}

    def is_present(self, m: str) -> np.ndarray:
        p = self.present.get(m)
        return np.ones(self.n_cells, dtype=bool) if p is None else np.asarray(p, dtype=bool)

    def subset(self, idx: np.ndarray) -> MultimodalArrays:
        return MultimodalArrays(
            counts={m: x[idx] for m, x in self.counts.items()}, batch=self.batch[idx],
            present={m: p[idx] for m, p in self.present.items()}, feature_masks=self.feature_masks,
        )  # fmt: skip

    def without(self, m: str, cells: np.ndarray | None = None) -> MultimodalArrays:
        """The same cells with measurement ``m`` marked absent (for ``cells``, a bool or index selection; default all)."""
        gone = np.zeros(self.n_cells, dtype=bool)
        gone[np.arange(self.n_cells) if cells is None else cells] = True
        return MultimodalArrays(self.counts, self.batch, {**self.present, m: self.is_present(m) & ~gone}, self.feature_masks)

    def rows(self, idx: np.ndarray) -> dict[str, Any]:
        """The model's batch dict of cells ``idx`` (see :mod:`aivc.training.multimodal_nets`)."""
        import torch

        from aivc.training.multimodal_nets import batch_keys

        b = torch.from_numpy(np.ascontiguousarray(self.batch[idx], dtype=np.int64))
        out: dict[str, Any] = {"batch": b}
        for m, x in self.counts.items():
            xk, mk, pk = batch_keys(m)
            present = self.is_present(m)[idx]
            xs = np.ascontiguousarray(x[idx], dtype=np.float32)
            fm = self.feature_masks.get(m)
            mask = np.ones_like(xs, dtype=bool) if fm is None else np.asarray(fm, dtype=bool)[np.clip(self.batch[idx], 0, None)]
            xs = np.where(present[:, None] & mask, xs, 0.0).astype(np.float32)  # what a cell lacks is never read
            out[xk], out[mk], out[pk] = torch.from_numpy(xs), torch.from_numpy(mask), torch.from_numpy(present)
            if m == "RNA":
                out["library"] = out[xk].sum(dim=1, keepdim=True)
        return out


def init_stats(arrays: MultimodalArrays, cells: np.ndarray | None = None) -> dict[str, list[float]]:
    """Starting values of the decoders' per-feature biases from (training) cells.

    ``RNA``: log of each gene's share of all counts; ``ADT``: log of the mean of each
    protein's counts below its median (mostly background, the lower component totalVI
    fits); ``ATAC``: logit of each peak's open fraction, and ``ATAC_log_depth`` the mean
    ``log1p`` of open peaks per cell. Only cells that have the measurement count.
    """
    sel = np.arange(arrays.n_cells) if cells is None else np.asarray(cells)
    out: dict[str, list[float]] = {}
    for m, x in arrays.counts.items():
        xs = np.asarray(x[sel][arrays.is_present(m)[sel]], dtype=np.float64)
        if not len(xs):
            continue
        if m == "RNA":
            out[m] = np.log((xs.sum(0) + 1.0) / (xs.sum() + xs.shape[1])).tolist()
        elif m == "ADT":
            med = np.median(xs, axis=0)
            low = np.where(xs <= med, xs, np.nan)
            out[m] = np.log(np.nanmean(low, axis=0) + 1.0).tolist()
        elif m == "ATAC":
            frac = ((xs > 0).sum(0) + 0.5) / (len(xs) + 1.0)
            out[m] = np.log(frac / (1.0 - frac)).tolist()
            out["ATAC_log_depth"] = [float(np.log1p((xs > 0).sum(1)).mean())]
    return out


def model_init(cfg: CellMultimodalVaeConfig, n_features: Mapping[str, int], n_batches: int, stats: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The JSON-able constructor arguments of the run's :class:`MultimodalVAE` (registered as ``init``)."""
    missing = [m for m in cfg.measurement_names if m not in n_features]
    if missing:
        raise ModelError(f"the training data has no {', '.join(missing)} features; the config reads {', '.join(cfg.measurement_names)}", where="measurements")
    init: dict[str, Any] = {
        "n_features": {m: int(n_features[m]) for m in cfg.measurement_names},
        "n_batches": int(n_batches),
        **cfg.model.model_dump(),
        "modality_dropout": cfg.optim.modality_dropout,
    }
    if stats:
        init["init_stats"] = {k: [float(v) for v in vals] for k, vals in stats.items()}
    return init


@dataclass(frozen=True)
class FitResult:
    """A model fitted in this process and its per-epoch metrics."""

    model: Any
    history: tuple[dict[str, float], ...]
    init: dict[str, Any]


def fit_arrays(arrays: MultimodalArrays, cfg: CellMultimodalVaeConfig | None = None, *, train: np.ndarray | None = None, seed: int | None = None) -> FitResult:
    """Train a :class:`MultimodalVAE` on cells ``train`` of ``arrays`` (default all) in this process.

    The same epoch as the Ray Train loop: Adam at ``optim.lr``, minibatches of
    ``optim.batch_size`` reshuffled every epoch from ``seed`` (default ``cfg.seed``), KL
    warm-up over ``optim.kl_warmup_epochs``. Torch runs on the current thread count.
    """
    import torch

    from aivc.training.multimodal_nets import MultimodalVAE

    cfg = cfg if cfg is not None else CellMultimodalVaeConfig()
    seed = cfg.seed if seed is None else int(seed)
    cells = np.arange(arrays.n_cells) if train is None else np.asarray(train)
    n_batches = int(arrays.batch.max()) + 1 if arrays.n_cells else 1
    init = model_init(cfg, arrays.n_features, n_batches, init_stats(arrays, cells))
    torch.manual_seed(seed)
    model = MultimodalVAE(**init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    rng = np.random.default_rng(seed)
    history = []
    bs, warm = cfg.optim.batch_size, cfg.optim.kl_warmup_epochs
    for epoch in range(cfg.optim.epochs):
        kl_weight = min(1.0, epoch / warm) if warm else 1.0
        model.train()
        order = cells[rng.permutation(len(cells))]
        sums = np.zeros(3)
        for b0 in range(0, len(order), bs):
            out = model(arrays.rows(order[b0 : b0 + bs]), kl_weight=kl_weight)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            n = min(bs, len(order) - b0)
            sums += n * np.array([float(out.loss.detach()), float(out.reconstruction.detach()), float(out.kl.detach())])
        sums /= max(len(order), 1)
        history.append({"epoch": epoch + 1, "train_loss": sums[0], "train_reconstruction": sums[1], "train_kl": sums[2], "kl_weight": kl_weight})
    model.eval()
    return FitResult(model=model, history=tuple(history), init=init)


def embed_arrays(model: Any, arrays: MultimodalArrays, use: Sequence[str] | None = None, batch_size: int = 1024) -> np.ndarray:
    """URs of every cell of ``arrays`` (float32 ``[n, latent_dim]``) from its present modalities in ``use``."""
    out = [model.embed(arrays.rows(np.arange(lo, min(lo + batch_size, arrays.n_cells))), use=use).numpy() for lo in range(0, arrays.n_cells, batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.latent_dim), np.float32)


# -- the model record: per-measurement feature lists ------------------------------------------
def record_fields(features: Mapping[str, Sequence[str]], batch_categories: Sequence[str]) -> dict[str, Any]:
    """``gene_ids`` and ``encodings`` of a model record: the RNA genes, the batches and every
    other measurement's feature ids (in input order) under ``features:<M>``.

    >>> record_fields({"RNA": ["ENSG1"], "ADT": ["CD3", "CD4"]}, ["ds1"])
    {'gene_ids': ['ENSG1'], 'encodings': {'batch': ['ds1'], 'features:ADT': ['CD3', 'CD4']}}
    """
    enc: dict[str, list[str]] = {"batch": [str(b) for b in batch_categories]}
    for m in OTHER_MEASUREMENTS:
        if m in features:
            enc[FEATURES_KEY + m] = [str(f) for f in features[m]]
    return {"gene_ids": [str(g) for g in features.get("RNA", ())], "encodings": enc}


def features_of(gene_ids: Sequence[str], encodings: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """The per-measurement feature ids a model record holds (the inverse of :func:`record_fields`)."""
    out = {"RNA": tuple(gene_ids)} if gene_ids else {}
    for key, ids in encodings.items():
        if key.startswith(FEATURES_KEY):
            out[key[len(FEATURES_KEY) :]] = tuple(ids)
    return out


def align_features(model_features: Sequence[str], data_features: Sequence[str], measurement: str, *, min_overlap: float = 0.5, where: str = "") -> np.ndarray:
    """For each model feature, its column in the data (-1: the data lacks it, masked).

    Raises :class:`ModelError` when the data has fewer than ``min_overlap`` of the model's
    features of ``measurement``, naming some that are missing.
    """
    pos = {f: i for i, f in enumerate(data_features)}
    cols = np.array([pos.get(f, -1) for f in model_features], dtype=np.int64)
    have = int((cols >= 0).sum())
    if have < min_overlap * len(model_features) or have == 0:
        missing = [f for f, c in zip(model_features, cols, strict=True) if c < 0][:5]
        raise ModelError(
            f"the data measured {have} of the model's {len(model_features)} {measurement} features (< {min_overlap:.0%}); missing e.g. {', '.join(missing)}",
            where=where or measurement,
        )
    return cols
