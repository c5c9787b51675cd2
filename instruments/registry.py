"""The instrument registry: Virtual Instruments as immutable, versioned folders of the lake.

An instrument reads Universal Representations of one exact embedding version and produces
outputs: a *decoder* maps a UR to something a person reads (a cell type with confidence),
a *manipulator* maps a UR to a UR (a cell after a perturbation). Both kinds share this
registry. Layout::

    <lake>/instruments/<name>/v000001/
        instrument.json   the record (schema_name aivc.instrument): name, version, kind,
                          type, reads (the exact embedding ref), outputs, metrics,
                          lineage, config, created_at, weights file and its sha256
        weights.npz       NumPy arrays (saved without pickle), whatever the type needs

A version is written into the lake's staging folder (``Lake.new_staging``, cleaned by
``aivc recover`` when its writer died) and published by one folder rename under the lake's
write lock, so a reader sees a whole version or none; retraining makes a new version and
never touches an old one.

Loading dispatches on ``(kind, type)`` to a loader (``"module:attribute"``, imported only
when needed, or a callable): the cell-type decoder and the perturbation manipulator are
built in, so a fresh process loads either without importing its module first; other types
add theirs with :func:`register_loader`. A loader is called as ``loader(lake, record,
weights)`` and returns the instrument object.

Example
-------
>>> import numpy as np, tempfile
>>> from aivc.store.lake import Lake
>>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
>>> rec = register_instrument(lake, "demo", kind="decoder", type="identity", reads="cell:pca@1",
...     weights={"w": np.eye(2, dtype=np.float32)}, outputs={"columns": {}}, metrics={}, config={})
>>> rec.ref, [r.ref for r in list_instruments(lake)], read_weights(lake, rec)["w"].shape
('demo@1', ['demo@1'], (2, 2))
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from aivc.errors import AivcError, UsageError
from aivc.store.collection import Collection, parse_ref
from aivc.store.collection import check_name as check_collection_name
from aivc.store.lake import Lake, utcnow
from aivc.store.lineage import Lineage
from aivc.store.records import dump_record, load_record

InstrumentKind = Literal["decoder", "manipulator"]
KINDS: tuple[str, ...] = ("decoder", "manipulator")
INSTRUMENT_SCHEMA = "aivc.instrument"
RECORD_NAME = "instrument.json"
WEIGHTS_NAME = "weights.npz"
_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")


class InstrumentError(AivcError):
    """An instrument is invalid, unreadable, or applied to data it does not fit."""

    code = "INSTRUMENT_ERROR"


@dataclass(frozen=True)
class InstrumentRecord:
    """The record of one registered, immutable instrument version.

    ``reads`` is the exact embedding version (``cell:NAME@VERSION``) the instrument was
    trained on and may be applied to; ``outputs`` describes what it produces (for a
    decoder the output columns and classes); ``lineage`` names the embedding, the
    datasets it was computed from and the training cells per dataset.
    """

    name: str
    version: int
    kind: str
    type: str
    reads: str
    outputs: dict[str, Any]
    metrics: dict[str, Any]
    lineage: Lineage
    config: dict[str, Any]
    created_at: str
    description: str = ""
    weights: str = WEIGHTS_NAME
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.lineage, Lineage):
            raise TypeError(f"InstrumentRecord.lineage must be a Lineage, not {type(self.lineage).__name__}")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, INSTRUMENT_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> InstrumentRecord:
        return load_record(cls, d, INSTRUMENT_SCHEMA, error=InstrumentError, nested={"lineage": Lineage.from_record})


class Instrument(Protocol):
    """What every loaded instrument has: its record."""

    record: InstrumentRecord


class Decoder(Instrument, Protocol):
    """UR -> readable outputs: ``predict(vectors)`` returns one Arrow row per vector, of ``output_schema()``."""

    dim: int

    def predict(self, vectors: np.ndarray) -> Any: ...

    def output_schema(self) -> Any: ...


class Manipulator(Instrument, Protocol):
    """UR -> UR: ``apply(vectors, **condition)`` returns the manipulated vectors."""

    def apply(self, vectors: np.ndarray, **condition: Any) -> np.ndarray: ...


Loader = Callable[[Lake, InstrumentRecord, Mapping[str, np.ndarray]], Any]
_LOADERS: dict[tuple[str, str], str | Loader] = {
    ("decoder", "celltype"): "aivc.instruments.celltype_model:CellTypeDecoder.load",
    ("manipulator", "perturbation"): "aivc.instruments.manipulator:PerturbationManipulator.load",
    ("decoder", "protein-abundance"): "aivc.instruments.crossmodal:CrossModalDecoder.load",
    ("decoder", "niche-domain"): "aivc.instruments.niche_domain_model:NicheDomainDecoder.load",
}


def register_loader(kind: str, type: str, loader: str | Loader) -> None:
    """Say how instruments of ``(kind, type)`` are loaded: a callable or ``"module:attr.attr"``."""
    if kind not in KINDS:
        raise UsageError(f"instrument kind {kind!r} is not one of {', '.join(KINDS)}", where="kind")
    _LOADERS[(kind, type)] = loader


def _resolve_loader(rec: InstrumentRecord) -> Loader:
    spec = _LOADERS.get((rec.kind, rec.type))
    if spec is None:
        known = ", ".join(f"{k}/{t}" for k, t in sorted(_LOADERS))
        raise InstrumentError(f"instrument {rec.ref} is a {rec.kind} of type {rec.type!r}, which this aivc cannot load (known: {known}); upgrade aivc", where=rec.ref)
    if callable(spec):
        return spec
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


# -- paths and references --------------------------------------------------------------
def instruments(lake: Lake) -> Collection[InstrumentRecord]:
    """The lake's registered instruments (``<lake>/instruments/<name>/v000001/instrument.json``)."""
    return Collection(
        lake, folder="instruments", kinds=("instrument",), record_name=RECORD_NAME, load=InstrumentRecord.from_record,
        what="instrument", hint="aivc instruments list", error=InstrumentError, form="NAME[@VERSION]", example="celltype@1",
    )  # fmt: skip


def version_dir(lake: Lake, name: str, version: int) -> Path:
    return instruments(lake).version_dir("instrument", name, version)


def parse_instrument_ref(ref: str) -> tuple[str, int | None]:
    """``"celltype@2"`` -> ("celltype", 2); ``"celltype"`` / ``"celltype@latest"`` -> version None.

    >>> parse_instrument_ref("celltype@2")
    ('celltype', 2)
    """
    r = parse_ref(ref, kinds=("instrument",), what="instrument reference", form="NAME[@VERSION]", example="celltype@1")
    return r.name, r.version


def check_name(name: str, where: str = "--name") -> str:
    return check_collection_name(name, "instrument name", where=where)


# -- reading ---------------------------------------------------------------------------
def list_instruments(lake: Lake, name: str | None = None, kind: str | None = None) -> list[InstrumentRecord]:
    """Every registered instrument version (optionally of one name or kind), by name then version."""
    return [r for r in instruments(lake).list(name=name) if kind is None or r.kind == kind]


def get_instrument(lake: Lake, ref: str) -> InstrumentRecord:
    """The record of ``NAME[@VERSION]`` (latest version when none is given)."""
    return instruments(lake).get(ref)


def read_weights(lake: Lake, rec: InstrumentRecord) -> dict[str, np.ndarray]:
    """The arrays of an instrument version, checked against the sha256 of its record."""
    path = version_dir(lake, rec.name, rec.version) / rec.weights
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InstrumentError(f"weights of {rec.ref} are unreadable ({exc.strerror})", where=str(path)) from None
    if rec.weights_sha256 and hashlib.sha256(raw).hexdigest() != rec.weights_sha256:
        raise InstrumentError(f"weights of {rec.ref} do not match the sha256 of its record (the file was changed); re-register the instrument", where=str(path))
    import io

    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_instrument(lake: Lake, ref: str | InstrumentRecord) -> Any:
    """The instrument ``NAME[@VERSION]``, ready to apply (a :class:`Decoder` or :class:`Manipulator`)."""
    rec = ref if isinstance(ref, InstrumentRecord) else get_instrument(lake, ref)
    return _resolve_loader(rec)(lake, rec, read_weights(lake, rec))


# -- writing ---------------------------------------------------------------------------
def register_instrument(
    lake: Lake,
    name: str,
    *,
    kind: str,
    type: str,
    reads: str,
    weights: Mapping[str, np.ndarray],
    outputs: dict[str, Any],
    metrics: dict[str, Any],
    config: dict[str, Any],
    lineage: Lineage | None = None,
    description: str = "",
    extra: dict[str, Any] | None = None,
    wait: float = 600.0,
) -> InstrumentRecord:
    """Publish an instrument as the next version of ``name``; returns its record.

    Parameters
    ----------
    kind
        ``"decoder"`` or ``"manipulator"``.
    type
        What it does within its kind, e.g. ``"celltype"``; selects the loader.
    reads
        The exact embedding version it reads, ``ENTITY:NAME@VERSION``.
    weights
        Named NumPy arrays (stored in ``weights.npz`` without pickle).
    lineage
        What it was trained from (the embedding, the datasets, ...); none: an empty one.
    """
    from aivc.store.features import parse_ref

    check_name(name)
    if kind not in KINDS:
        raise UsageError(f"instrument kind {kind!r} is not one of {', '.join(KINDS)}", where="kind")
    if not _TYPE.match(type):
        raise UsageError(f"instrument type {type!r} must be lower-case letters, digits, _ and -", where="type")
    if parse_ref(reads)[2] is None:
        raise UsageError(f"an instrument reads one exact embedding version, e.g. cell:pca@1, not {reads!r}", where="reads")
    staging = lake.new_staging()
    try:
        with open(staging / WEIGHTS_NAME, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in weights.items()})
        sha = hashlib.sha256((staging / WEIGHTS_NAME).read_bytes()).hexdigest()

        def make(version: int) -> InstrumentRecord:
            return InstrumentRecord(
                name=name, version=version, kind=kind, type=type, reads=reads, outputs=dict(outputs), metrics=dict(metrics),
                lineage=lineage if lineage is not None else Lineage(), config=dict(config), created_at=utcnow(), description=description,
                weights=WEIGHTS_NAME, weights_sha256=sha, extra=dict(extra or {}),
            )  # fmt: skip

        return instruments(lake).publish(staging, "instrument", name, make, fault="before_instrument_publish", fault_exit=19, wait=wait)
    finally:
        if staging.exists():
            lake.discard_staging(staging)
