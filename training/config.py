"""Training configurations: declarative, validated, read from YAML, overridable.

A config file is YAML with ``schema_name: aivc.training_config`` and ``schema_version: 1``
(both optional in a user's file, checked when present) and a ``model_type`` that selects
the config class (:data:`CONFIG_CLASSES`: ``cell-vae``, ``cell-transformer``,
``cell-multimodal-vae``, the last defined in :mod:`aivc.training.multimodal`). Every
section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error that
names it. ``--set key=value`` overrides use dotted paths (``optim.lr=3e-4``,
``data.validation.by=donor``); values are parsed as YAML scalars and type-checked by the
same models.

Example
-------
>>> cfg = apply_overrides(CellVaeConfig(), ["model.latent_dim=8", "optim.epochs=2"])
>>> (cfg.model.latent_dim, cfg.optim.epochs, cfg.optim.lr)
(8, 2, 0.001)
>>> t = load_config(model_type="cell-transformer", overrides=["gene_ur=gene:coexpr@1"])
>>> (t.model_type, t.gene_ur, t.model.d_model)
('cell-transformer', 'gene:coexpr@1', 64)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aivc.errors import UsageError
from aivc.store.collection import NAME_RULE

CONFIG_SCHEMA = "aivc.training_config"
CONFIG_SCHEMA_VERSION = 1
_NAME = NAME_RULE.pattern.strip("^$")  # the versioned collection's one name rule
_GENE_REF = re.compile(rf"^gene:{_NAME}(@(\d+|latest))?$")
#: config keys that may differ when a run is resumed (extending training is allowed)
RESUMABLE_CHANGES: frozenset[str] = frozenset({"optim.epochs"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidationSplit(_Strict):
    """How validation cells are held out.

    ``by``: ``dataset`` holds out whole datasets, ``donor`` whole donors (a donor is
    ``(dataset_id, donor_id)``), ``fraction`` random cells, ``none`` nothing. ``holdout``
    names the held-out datasets or donors (``dataset_id/donor_id``) explicitly; otherwise
    ``fraction`` of them are drawn with ``seed`` (default: the run's seed).
    """

    by: Literal["dataset", "donor", "fraction", "none"] = "fraction"
    fraction: float = Field(0.1, ge=0.0, lt=1.0)
    holdout: tuple[str, ...] | None = None
    seed: int | None = None


class DataConfig(_Strict):
    """Which cells and genes of the lake the model trains on.

    ``where`` selects cells by a SQL condition on the ``cells_all_versions`` view (e.g.
    ``"is_primary_data AND n_counts >= 500"``), evaluated over the chosen dataset versions.
    """

    organism: str | None = None
    datasets: tuple[str, ...] | None = None
    where: str | None = None
    genes: Literal["intersection", "union"] = "intersection"
    n_top_genes: int | None = Field(None, ge=1)
    validation: ValidationSplit = ValidationSplit()
    chunk_rows: int = Field(4096, ge=1)
    #: cells are shuffled in runs of this many consecutive cells (1: cell by cell), then
    #: within each read of chunk_rows; larger runs read faster from TileDB
    shuffle_block: int = Field(64, ge=1)
    loader_workers: int = Field(0, ge=0)


class CellVaeArchitecture(_Strict):
    latent_dim: int = Field(16, ge=1)
    hidden_dim: int = Field(128, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    #: what the encoder reads: ``lognorm`` (log1p of counts scaled to 10,000 per cell, so a
    #: cell's sequencing depth does not place it in the latent space) or ``log1p`` (raw)
    encoder_input: Literal["lognorm", "log1p"] = "lognorm"


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(20, ge=1)


class VaeOptimConfig(OptimConfig):
    kl_warmup_epochs: int = Field(0, ge=0)


#: ``optim.epochs: auto`` trains this many cell passes in all (scvi-tools' rule: 400 epochs
#: up to 20,000 cells, fewer above), capped at :data:`AUTO_MAX_EPOCHS` epochs
AUTO_CELL_PASSES = 20_000 * 400
AUTO_MAX_EPOCHS = 400


class CellVaeOptimConfig(VaeOptimConfig):
    """cell-vae's optimiser: epochs scaled to the data, KL warm-up, early stopping.

    ``epochs: auto`` resolves to ``min(400, round(8,000,000 / training cells))`` (at least
    1): 400 epochs for 700 cells, 8 for a million. ``kl_warmup_epochs: auto`` is a quarter
    of those automatic epochs, at most 20, whatever ``epochs`` says (so a resumed run that
    trains longer keeps its warm-up). With ``early_stopping_patience`` N > 0 the run stops once the
    validation loss has not improved (by 0.1 %) for N epochs after the warm-up, and the
    model registered is the one with the lowest validation loss.
    """

    batch_size: int = Field(128, ge=1)
    epochs: int | Literal["auto"] = "auto"
    kl_warmup_epochs: int | Literal["auto"] = "auto"
    early_stopping_patience: int = Field(20, ge=0)

    @model_validator(mode="after")
    def _positive(self) -> CellVaeOptimConfig:
        if isinstance(self.epochs, int) and self.epochs < 1:
            raise ValueError(f"optim.epochs must be at least 1 or auto, got {self.epochs}")
        if isinstance(self.kl_warmup_epochs, int) and self.kl_warmup_epochs < 0:
            raise ValueError(f"optim.kl_warmup_epochs must be at least 0 or auto, got {self.kl_warmup_epochs}")
        return self


def resolve_epochs(optim: OptimConfig, n_train: int) -> tuple[int, int]:
    """(epochs, KL warm-up epochs) of a run on ``n_train`` training cells."""
    auto = max(1, min(AUTO_MAX_EPOCHS, round(AUTO_CELL_PASSES / max(n_train, 1))))
    epochs = auto if optim.epochs == "auto" else optim.epochs
    warm = getattr(optim, "kl_warmup_epochs", 0)
    if warm == "auto":  # from the data, not from optim.epochs: a resumed run may train longer
        warm = min(20, auto // 4)
    return int(epochs), int(warm)


class CellTransformerArchitecture(_Strict):
    d_model: int = Field(64, ge=1)
    n_heads: int = Field(4, ge=1)
    n_layers: int = Field(2, ge=1)
    max_tokens: int = Field(128, ge=1)
    n_bins: int = Field(32, ge=2)
    mask_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    latent_dim: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> CellTransformerArchitecture:
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be a multiple of model.n_heads ({self.n_heads})")
        return self


class _RunConfig(_Strict):
    """What every model type's config has: identity, seed, data and the digest."""

    schema_name: Literal["aivc.training_config"] = CONFIG_SCHEMA
    schema_version: Literal[1] = CONFIG_SCHEMA_VERSION
    model_type: str
    name: str
    seed: int = 0
    data: DataConfig = DataConfig()

    @model_validator(mode="after")
    def _check(self) -> _RunConfig:
        v = self.data.validation
        if v.by in ("dataset", "donor", "fraction") and v.holdout is None and v.fraction == 0.0:
            raise ValueError(f"data.validation.fraction must be > 0 with by={v.by} (or use by=none)")
        return self

    def digest(self, ignore: frozenset[str] = frozenset()) -> str:
        """Hash of the config without the keys in ``ignore`` (dotted paths)."""
        d = self.model_dump(mode="json")
        for key in ignore:
            *parents, leaf = key.split(".")
            node = d
            for p in parents:
                node = node[p]
            node.pop(leaf, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class CellVaeConfig(_RunConfig):
    """Everything that defines a ``cell-vae`` training run."""

    model_type: Literal["cell-vae"] = "cell-vae"
    name: str = Field("cell-vae", pattern=NAME_RULE.pattern)
    model: CellVaeArchitecture = CellVaeArchitecture()
    optim: CellVaeOptimConfig = CellVaeOptimConfig()


class CellTransformerConfig(_RunConfig):
    """Everything that defines a ``cell-transformer`` training run.

    ``gene_ur`` (required) is the gene embedding whose vectors are the model's gene tokens,
    ``gene:NAME@VERSION`` (or ``gene:NAME`` for the latest version, resolved and recorded
    exactly when the run starts); only genes that have a vector in it are trained on.
    """

    model_type: Literal["cell-transformer"] = "cell-transformer"
    name: str = Field("cell-transformer", pattern=NAME_RULE.pattern)
    data: DataConfig = DataConfig(genes="union")  # unmeasured genes are simply not tokens
    gene_ur: str | None = None
    model: CellTransformerArchitecture = CellTransformerArchitecture()
    optim: OptimConfig = OptimConfig()

    @model_validator(mode="after")
    def _gene_ur(self) -> CellTransformerConfig:
        if self.gene_ur is None:
            raise ValueError("gene_ur is required: the gene embedding to take gene tokens from, e.g. --set gene_ur=gene:coexpr@1")
        if not _GENE_REF.match(self.gene_ur):
            raise ValueError(f"gene_ur must be a gene embedding reference gene:NAME[@VERSION], e.g. gene:coexpr@1; got {self.gene_ur!r}")
        return self


# the multimodal model's config lives beside its module and builds on the sections above;
# imported here, after them, so that every model type is known to config_class (the package
# imports this module before aivc.training.multimodal, which then finds these names defined)
from aivc.training.multimodal import CellMultimodalVaeConfig  # noqa: E402

TrainingConfig = CellVaeConfig | CellTransformerConfig | CellMultimodalVaeConfig
_ConfigClass = type[CellVaeConfig] | type[CellTransformerConfig] | type[CellMultimodalVaeConfig]
#: the config class of each model type
CONFIG_CLASSES: dict[str, _ConfigClass] = {"cell-vae": CellVaeConfig, "cell-transformer": CellTransformerConfig, "cell-multimodal-vae": CellMultimodalVaeConfig}


def config_class(model_type: str) -> _ConfigClass:
    """The config class of ``model_type`` (a :class:`UsageError` naming the known ones otherwise)."""
    try:
        return CONFIG_CLASSES[model_type]
    except KeyError:
        raise UsageError(f"unknown model_type {model_type!r}; known: {', '.join(CONFIG_CLASSES)}", where="model_type") from None


def parse_config(d: dict[str, Any]) -> TrainingConfig:
    """Validate a dumped config (e.g. a run record's) with the class its ``model_type`` names."""
    return config_class(str(d.get("model_type", "cell-vae"))).model_validate(d)



def _format_validation_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {loc!r} in {source}"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    if first["type"] == "value_error" and "error" in first.get("ctx", {}):
        return f"{first['ctx']['error']} (in {source}){more}"  # our validators' messages name their keys
    return f"{loc}: {first['msg']} (got {first.get('input')!r}) in {source}{more}"


def default_config_path(model_type: str = "cell-vae") -> Path:
    """The packaged defaults of ``model_type``: ``schemas/configs/<model_type>.yaml``."""
    import aivc.schemas

    config_class(model_type)
    return Path(aivc.schemas.__file__).parent / "configs" / f"{model_type}.yaml"


def load_config(path: str | Path | None = None, *, model_type: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainingConfig:
    """Read a config YAML, apply ``--set`` overrides, and validate the result once.

    ``path=None`` reads the packaged defaults of ``model_type`` (``cell-vae`` when neither
    names one). The file's ``model_type`` picks the config class; it must agree with
    ``model_type`` when both are given. Overrides are applied before validation, so a
    key the defaults leave empty (``gene_ur`` of ``cell-transformer``) can be set with them.

    Examples
    --------
    >>> load_config(model_type="cell-vae", overrides=["optim.epochs=3"]).optim.epochs
    3
    """
    import yaml

    p = Path(path) if path is not None else default_config_path(model_type or "cell-vae")
    raw: Any = {}
    if path is not None or p.is_file():  # an install without the packaged YAML: the class defaults
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise UsageError(f"config file {p} does not exist", where="--config") from None
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"config file {p} is not readable YAML ({str(exc).splitlines()[0]})", where="--config") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {p} must hold a mapping of keys", where="--config")
    in_file = raw.get("model_type")
    if model_type is not None and in_file is not None and in_file != model_type:
        raise UsageError(f"config file {p} is for model_type {in_file!r}, not {model_type!r}; use `aivc train {in_file}` or another --config", where="--config")
    try:
        cls = config_class(str(in_file or model_type or "cell-vae"))
    except UsageError as exc:
        raise UsageError(f"{exc.message} (in {p})", where="--config") from None
    _set_items(raw, overrides, cls)
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        source = f"{p} with --set" if overrides else str(p)
        raise UsageError(_format_validation_error(exc, source), where="--config") from None


def apply_overrides(cfg: TrainingConfig, overrides: list[str] | tuple[str, ...]) -> TrainingConfig:
    """Apply ``key=value`` overrides (dotted keys, YAML scalar values) and re-validate."""
    d = cfg.model_dump(mode="json")
    _set_items(d, overrides, type(cfg))
    try:
        return type(cfg).model_validate(d)
    except ValidationError as exc:
        raise UsageError(_format_validation_error(exc, "--set"), where="--set") from None


def _section(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    """The model class of section ``key`` of ``model`` (None: not a section)."""
    field = model.model_fields.get(key)
    ann = field.annotation if field is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _set_items(d: dict[str, Any], overrides: list[str] | tuple[str, ...], cls: type[BaseModel]) -> None:
    """Set ``KEY=VALUE`` items in the (raw or dumped) config dict ``d`` of class ``cls``."""
    import yaml

    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}", where="--set")
        *parents, leaf = key.split(".")
        node: Any = d
        model: type[BaseModel] = cls
        for i, p in enumerate(parents):
            sub = _section(model, p)
            if sub is None:
                raise UsageError(f"unknown key {'.'.join(parents[: i + 1])!r} in --set {item}; {_keys_hint(cls)}", where="--set")
            if node.get(p) is None:
                node[p] = {}  # a section the YAML left out
            if not isinstance(node[p], dict):
                raise UsageError(f"{'.'.join(parents[: i + 1])} must be a section of keys, not {node[p]!r}; fix the config file", where="--set")
            node, model = node[p], sub
        if leaf not in model.model_fields or _section(model, leaf) is not None:
            raise UsageError(f"unknown key {key!r} in --set {item}; {_keys_hint(cls)}", where="--set")
        try:
            node[leaf] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            node[leaf] = value


def _keys_hint(cls: type[BaseModel]) -> str:
    keys: list[str] = []

    def walk(model: type[BaseModel], pre: str) -> None:
        for k in model.model_fields:
            if k in ("schema_name", "schema_version", "model_type"):
                continue
            sub = _section(model, k)
            if sub is not None:
                walk(sub, f"{pre}{k}.")
            else:
                keys.append(f"{pre}{k}")

    walk(cls, "")
    return "valid keys: " + ", ".join(keys)


def config_changes(old: TrainingConfig, new: TrainingConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out: list[str] = []

    def walk(a: Any, b: Any, pre: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{pre}{k}.")
        elif a != b:
            out.append(pre.rstrip("."))

    walk(old.model_dump(mode="json"), new.model_dump(mode="json"), "")
    return out
