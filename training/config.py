"""Training configurations: declarative, validated, read from YAML, overridable.

A config file is YAML with ``schema_name: aivc.training_config`` and ``schema_version: 1``
(both optional in a user's file, checked when present). Every section is a pydantic model
with ``extra="forbid"``, so a misspelt key is an error that names it. ``--set key=value``
overrides use dotted paths (``optim.lr=3e-4``, ``data.validation.by=donor``); values are
parsed as YAML scalars and type-checked by the same models.

Example
-------
>>> cfg = apply_overrides(CellVaeConfig(), ["model.latent_dim=8", "optim.epochs=2"])
>>> (cfg.model.latent_dim, cfg.optim.epochs, cfg.optim.lr)
(8, 2, 0.001)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aivc.errors import UsageError

CONFIG_SCHEMA = "aivc.training_config"
CONFIG_SCHEMA_VERSION = 1
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
    """Which cells and genes of the lake the model trains on."""

    organism: str | None = None
    datasets: tuple[str, ...] | None = None
    genes: Literal["intersection", "union"] = "intersection"
    n_top_genes: int | None = Field(None, ge=1)
    validation: ValidationSplit = ValidationSplit()
    chunk_rows: int = Field(4096, ge=1)
    loader_workers: int = Field(0, ge=0)


class CellVaeArchitecture(_Strict):
    latent_dim: int = Field(16, ge=1)
    hidden_dim: int = Field(128, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class OptimConfig(_Strict):
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(20, ge=1)
    kl_warmup_epochs: int = Field(0, ge=0)


class CellVaeConfig(_Strict):
    """Everything that defines a ``cell-vae`` training run."""

    schema_name: Literal["aivc.training_config"] = CONFIG_SCHEMA
    schema_version: Literal[1] = CONFIG_SCHEMA_VERSION
    model_type: Literal["cell-vae"] = "cell-vae"
    name: str = Field("cell-vae", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    seed: int = 0
    data: DataConfig = DataConfig()
    model: CellVaeArchitecture = CellVaeArchitecture()
    optim: OptimConfig = OptimConfig()

    @model_validator(mode="after")
    def _check(self) -> CellVaeConfig:
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


def _format_validation_error(exc: ValidationError, source: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key {loc!r} in {source}"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{loc}: {first['msg']} (got {first.get('input')!r}) in {source}{more}"


def load_config(path: str | Path | None = None) -> CellVaeConfig:
    """Read a config YAML (``None``: the packaged defaults, ``schemas/configs/cell-vae.yaml``)."""
    import yaml

    if path is None and not default_config_path().is_file():
        return CellVaeConfig()  # an install without the packaged YAML: the same defaults
    p = Path(path) if path is not None else default_config_path()
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise UsageError(f"config file {p} does not exist", where="--config") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"config file {p} is not readable YAML ({str(exc).splitlines()[0]})", where="--config") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config file {p} must hold a mapping of keys", where="--config")
    try:
        return CellVaeConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(_format_validation_error(exc, str(p)), where="--config") from None


def default_config_path() -> Path:
    import aivc.schemas

    return Path(aivc.schemas.__file__).parent / "configs" / "cell-vae.yaml"


def apply_overrides(cfg: CellVaeConfig, overrides: list[str] | tuple[str, ...]) -> CellVaeConfig:
    """Apply ``key=value`` overrides (dotted keys, YAML scalar values) and re-validate."""
    import yaml

    d = cfg.model_dump(mode="json")
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}", where="--set")
        *parents, leaf = key.split(".")
        node: Any = d
        for i, p in enumerate(parents):
            if not isinstance(node, dict) or not isinstance(node.get(p), dict):
                raise UsageError(f"unknown key {'.'.join(parents[: i + 1])!r} in --set {item}; {_keys_hint(d)}", where="--set")
            node = node[p]
        if leaf not in node or isinstance(node[leaf], dict):
            raise UsageError(f"unknown key {key!r} in --set {item}; {_keys_hint(d)}", where="--set")
        try:
            node[leaf] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            node[leaf] = value
    try:
        return CellVaeConfig.model_validate(d)
    except ValidationError as exc:
        raise UsageError(_format_validation_error(exc, "--set"), where="--set") from None


def _keys_hint(d: dict[str, Any], prefix: str = "") -> str:
    keys: list[str] = []

    def walk(node: dict[str, Any], pre: str) -> None:
        for k, v in node.items():
            if k in ("schema_name", "schema_version", "model_type"):
                continue
            if isinstance(v, dict):
                walk(v, f"{pre}{k}.")
            else:
                keys.append(f"{pre}{k}")

    walk(d, prefix)
    return "valid keys: " + ", ".join(keys)


def config_changes(old: CellVaeConfig, new: CellVaeConfig) -> list[str]:
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
