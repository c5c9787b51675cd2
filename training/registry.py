"""The model registry: trained models as immutable, versioned folders of the lake.

Layout::

    <lake>/models/<name>/v000001/
        model.json      the record (schema_name aivc.model): config, init parameters, the
                        gene ids in input order, encodings (batch categories), metrics,
                        training history, lineage (dataset versions, lake high-water marks,
                        the gene UR version of a gene-token model)
        model.pt        the weights (a torch state dict)
    <lake>/models/.runs/      training runs (checkpoints, plans), see aivc.training.runs

A version is written into the lake's staging folder (``Lake.new_staging``, cleaned by
``aivc recover`` when its writer died) and published by one folder rename under the
lake's write lock, so a reader sees a whole version or none.

Example
-------
>>> import tempfile, torch
>>> from aivc.store.lake import Lake
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> rec = register_model(lake, "demo-vae", model_type="cell-vae", state_dict={"w": torch.zeros(2)},
...     init={}, config={}, gene_ids=["ENSG00000141510"], encodings={"batch": ["ds"]}, metrics={})
>>> rec.ref, [m.ref for m in list_models(lake)]
('demo-vae@1', ['demo-vae@1'])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aivc.store.collection import Collection, check_name, parse_ref
from aivc.store.lake import Lake, utcnow
from aivc.store.lineage import Lineage
from aivc.store.records import dump_record, load_record
from aivc.training.errors import ModelError

MODEL_SCHEMA = "aivc.model"
RECORD_NAME = "model.json"
WEIGHTS_NAME = "model.pt"


@dataclass(frozen=True)
class ModelRecord:
    """The record of one registered, immutable model version."""

    name: str
    version: int
    model_type: str
    created_at: str
    init: dict[str, Any]
    config: dict[str, Any]
    gene_ids: tuple[str, ...]
    encodings: dict[str, list[str]]
    metrics: dict[str, Any]
    lineage: Lineage
    history: tuple[dict[str, Any], ...] = ()
    training: dict[str, Any] = field(default_factory=dict)
    weights: str = WEIGHTS_NAME
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.lineage, Lineage):
            raise TypeError(f"ModelRecord.lineage must be a Lineage, not {type(self.lineage).__name__}")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, MODEL_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> ModelRecord:
        return load_record(cls, d, MODEL_SCHEMA, error=ModelError, nested={"lineage": Lineage.from_record})


def models(lake: Lake) -> Collection[ModelRecord]:
    """The lake's registered models (``<lake>/models/<name>/v000001/model.json``)."""
    return Collection(
        lake, folder="models", kinds=("model",), record_name=RECORD_NAME, load=ModelRecord.from_record,
        what="model", hint="aivc models list", error=ModelError, form="NAME[@VERSION]", example="cell-vae@1",
    )  # fmt: skip


def version_dir(lake: Lake, name: str, version: int) -> Path:
    return models(lake).version_dir("model", name, version)


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``"cell-vae@2"`` -> ("cell-vae", 2); ``"cell-vae"`` / ``"cell-vae@latest"`` -> version None."""
    r = parse_ref(ref, kinds=("model",), what="model reference", form="NAME[@VERSION]", example="cell-vae@1")
    return r.name, r.version


def list_models(lake: Lake, name: str | None = None) -> list[ModelRecord]:
    """Every registered model version (optionally of one name), by name then version."""
    return models(lake).list(name=name)


def get_model(lake: Lake, ref: str) -> ModelRecord:
    """The record of ``NAME[@VERSION]`` (latest version when none is given)."""
    return models(lake).get(ref)


def register_model(
    lake: Lake,
    name: str,
    *,
    model_type: str,
    state_dict: dict[str, Any],
    init: dict[str, Any],
    config: dict[str, Any],
    gene_ids: list[str] | tuple[str, ...],
    encodings: dict[str, list[str]],
    metrics: dict[str, Any],
    lineage: Lineage | None = None,
    history: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
    training: dict[str, Any] | None = None,
    wait: float = 600.0,
) -> ModelRecord:
    """Publish a trained model as the next version of ``name``; returns its record."""
    import torch

    check_name(name, "model name", where="name")
    staging = lake.new_staging()
    try:
        torch.save(state_dict, staging / WEIGHTS_NAME)
        sha = hashlib.sha256((staging / WEIGHTS_NAME).read_bytes()).hexdigest()

        def make(version: int) -> ModelRecord:
            return ModelRecord(
                name=name,
                version=version,
                model_type=model_type,
                created_at=utcnow(),
                init=dict(init),
                config=dict(config),
                gene_ids=tuple(str(g) for g in gene_ids),
                encodings={k: [str(x) for x in v] for k, v in encodings.items()},
                metrics=dict(metrics),
                lineage=lineage if lineage is not None else Lineage(),
                history=tuple(history),
                training=dict(training or {}),
                weights=WEIGHTS_NAME,
                weights_sha256=sha,
            )

        return models(lake).publish(staging, "model", name, make, fault="before_model_publish", fault_exit=17, wait=wait)
    finally:
        if staging.exists():
            lake.discard_staging(staging)


def load_model(lake: Lake, ref: str, *, gene_vectors: Any = None) -> tuple[Any, ModelRecord]:
    """The module of ``NAME[@VERSION]`` with its weights, in eval mode, and its record.

    A gene-token model (``cell-transformer``) gets the gene table it was trained with (its
    ``lineage.gene_ur``, read from the feature store); or, given
    ``gene_vectors`` (float32 ``[genes, gene_dim]``, already read by the caller for the genes
    it will feed), that table instead, and nothing is read. Other models ignore both.
    """
    import numpy as np
    import torch

    rec = get_model(lake, ref)
    path = version_dir(lake, rec.name, rec.version) / rec.weights
    from aivc.training.models import model_class

    try:
        cls = model_class(rec.model_type)
    except KeyError:
        raise ModelError(f"model {rec.ref} has type {rec.model_type!r}, which this aivc cannot load; upgrade aivc", where=rec.ref) from None
    tokens = getattr(cls, "gene_tokens", False)
    module = cls(**rec.init)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (OSError, RuntimeError) as exc:
        raise ModelError(f"weights of {rec.ref} are unreadable or do not fit the model ({str(exc).splitlines()[0]})", where=str(path)) from None
    if tokens and gene_vectors is not None:  # a copy: what Ray hands over may be read-only
        module.set_gene_table(torch.from_numpy(np.array(gene_vectors, dtype=np.float32)))
    elif tokens:
        _set_training_gene_table(lake, module, rec)
    module.eval()
    return module, rec


def _set_training_gene_table(lake: Lake, module: Any, rec: ModelRecord) -> None:
    """Give a gene-token model the molecular URs of the genes it was trained on."""
    import numpy as np
    import torch

    ref = rec.lineage.gene_ur
    if not ref:
        raise ModelError(f"model {rec.ref} records no gene UR version (lineage.gene_ur)", where=rec.ref)
    from aivc.store.features import gene_table

    t = gene_table(lake, ref, list(rec.gene_ids), dim=rec.init.get("gene_dim"))
    if len(t.gene_ids) != len(rec.gene_ids):
        missing = [g for g in rec.gene_ids if g not in set(t.gene_ids)]
        raise ModelError(f"gene UR version {ref} of model {rec.ref} lacks {len(missing)} of its genes (e.g. {missing[0]})", where=ref)
    module.set_gene_table(torch.from_numpy(np.ascontiguousarray(t.vectors, dtype=np.float32)))
