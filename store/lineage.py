"""Typed lineage: what a published version was made from.

Every version the lake publishes after ingestion (embedding versions, models,
instruments) names its inputs in a :class:`Lineage`. The inputs other layers read are
typed fields; everything else a writer notes (validation results, genes mode, gene
overlap per dataset, unmeasured genes, ...) is kept as written in :attr:`Lineage.extra`.

In a record a lineage is one flat JSON object, as it always was::

    {"datasets": ["pbmc@1"], "organism": "homo_sapiens", "lake_state": {"homo_sapiens": 12},
     "model": "cell-vae@1", "gene_overlap": {"pbmc": {"genes_used": 120, ...}}}

:meth:`Lineage.to_record` writes that object (keys sorted, as the lake's JSON files
store them) and :meth:`Lineage.from_record` reads it back exactly. A typed field at its
empty value (``None``, ``()``, ``{}``) is not written; a key recorded with an empty value
(a model's ``"gene_ur": null``) or in another shape than its field's (a perturbation
instrument's ``gene_ur`` object) stays in ``extra`` as written, so
``Lineage.from_record(d).to_record() == d`` for every lineage a lake holds.

Example
-------
>>> lin = Lineage(datasets=("pbmc@1",), organism="homo_sapiens", extra={"genes_mode": "union"})
>>> lin.to_record()
{'datasets': ['pbmc@1'], 'genes_mode': 'union', 'organism': 'homo_sapiens'}
>>> Lineage.from_record(lin.to_record()) == lin
True
>>> Lineage.from_record({"gene_ur": None, "where": None}).gene_ur is None
True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Lineage"]

_Shape = Literal["ref", "refs", "counts"]
#: the typed fields and the JSON shape each holds: a string, a non-empty list of strings,
#: a non-empty object of integers
_TYPED: dict[str, _Shape] = {
    "datasets": "refs",
    "organism": "ref",
    "lake_state": "counts",
    "model": "ref",
    "gene_ur": "ref",
    "embedding": "ref",
    "dataset": "ref",
}


def _fits(shape: _Shape, value: Any) -> bool:
    if shape == "ref":
        return isinstance(value, str)
    if shape == "refs":
        return isinstance(value, list | tuple) and bool(value) and all(isinstance(x, str) for x in value)
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items())
    )


def _empty(value: Any) -> bool:
    return value is None or value == () or value == {}


@dataclass(frozen=True)
class Lineage:
    """Where a published version came from.

    Attributes
    ----------
    datasets
        The dataset versions (``DATASET@VERSION``) it was computed or trained from.
    organism
        Their organism (``homo_sapiens``).
    lake_state
        The catalog's high-water mark per organism when it was made.
    model
        The model (``NAME@VERSION``) an embedding was computed with.
    gene_ur
        The gene embedding version (``gene:NAME@VERSION``) whose vectors are a gene-token
        model's tokens (on a model, and on the embeddings it computes).
    embedding
        The embedding version an instrument was trained on.
    dataset
        The one dataset version a perturbation instrument was trained on.
    extra
        Everything else the writer recorded, as written.
    """

    datasets: tuple[str, ...] = ()
    organism: str | None = None
    lake_state: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    gene_ur: str | None = None
    embedding: str | None = None
    dataset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "lake_state", dict(self.lake_state))
        object.__setattr__(self, "extra", dict(self.extra))
        for name, shape in _TYPED.items():
            value = getattr(self, name)
            if not _empty(value) and not _fits(shape, value):
                raise TypeError(f"Lineage.{name} must be {_SHAPE_WORDS[shape]}, got {value!r}")
            if not _empty(value) and name in self.extra:
                raise ValueError(f"Lineage.{name} is set, so extra must not hold {name!r} too")

    def dataset_versions(self) -> dict[str, str]:
        """Dataset id -> its ``DATASET@VERSION`` ref, for each of :attr:`datasets`."""
        return {r.partition("@")[0]: r for r in self.datasets}

    def to_record(self) -> dict[str, Any]:
        """The JSON object of this lineage (a new dict, keys sorted)."""
        out: dict[str, Any] = copy.deepcopy(self.extra)
        for name in _TYPED:
            value = getattr(self, name)
            if not _empty(value):
                out[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, dict) else value
        return dict(sorted(out.items()))

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> Lineage:
        """Read a lineage object as records hold it; keys no field types go to ``extra``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"a lineage is a JSON object, not {type(d).__name__}")
        typed: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in d.items():
            shape = _TYPED.get(key)
            if shape is not None and not _empty(value) and _fits(shape, value):
                typed[key] = value
            else:
                extra[key] = copy.deepcopy(value)
        return cls(**typed, extra=extra)


_SHAPE_WORDS: dict[_Shape, str] = {"ref": "a string", "refs": "strings", "counts": "a dict of str -> int"}
