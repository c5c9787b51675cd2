"""Measurements: the declared kinds of values a lake holds per cell (RNA, ADT, ATAC, …).

A :class:`MeasurementSpec` says what one SOMA measurement of the lake's experiments is:
its name (the SOMA ``ms/<name>`` collection), modality, the reference its features come
from and the ``var`` column that holds their ids, the type of its values, its layers, and
the data-quality suites that apply to it. Code that reads or writes a measurement takes
its spec; nothing else names ``"RNA"``. A new modality is a new spec (plus a reader, a
reference table and a suite), registered with :func:`register`.

Example
-------
>>> get("RNA").layers
('counts',)
>>> get("ADT").modality, get("ATAC").var_columns[:2]
('protein', ('feature_name', 'chrom'))
>>> spec = MeasurementSpec(name="HTO", modality="protein", feature_reference="hashtags",
...                        feature_id="feature_id", qc_suites=())
>>> register(spec) is spec and get("HTO").modality
'protein'
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal

from aivc.errors import NotFoundError, UsageError

__all__ = ["ADT", "ATAC", "GENE_ACTIVITY", "RNA", "MeasurementSpec", "get", "names", "register"]

Modality = Literal["rna", "protein", "chromatin", "spatial", "image"]
ValueType = Literal["count", "float"]
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class MeasurementSpec:
    """What one measurement of the lake is.

    Parameters
    ----------
    name
        The SOMA measurement name (``ms/<name>``), e.g. ``"RNA"``.
    modality
        What is measured.
    feature_reference
        Where feature ids come from, in words (``"Ensembl gene ids (GENCODE 48 / M37)"``).
    feature_id
        The ``var`` column holding the feature's reference id.
    value_type
        ``"count"``: non-negative integers stored as float32 (raw counts, read back exactly);
        ``"float"``: any finite value.
    layers
        The ``X`` layers; the first holds what was submitted.
    var_columns
        Further string columns of ``var``, in order.
    qc_suites
        Names of the expectation suites (``schemas/expectations/<name>.json``) that apply.
    qc_columns
        The per-cell QC columns of a further measurement (its ``qc_<name>`` SQL view).
    target_sum
        Library size of the standard log-normalization (``log1p(x / total * target_sum)``),
        or ``None`` when the values are not normalized that way.
    """

    name: str
    modality: Modality
    feature_reference: str
    feature_id: str
    value_type: ValueType = "count"
    layers: tuple[str, ...] = ("counts",)
    var_columns: tuple[str, ...] = ()
    qc_suites: tuple[str, ...] = ()
    target_sum: float | None = 1e4
    qc_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise UsageError(f"measurement name {self.name!r} must be a letter then up to 31 letters, digits or '_'", where="measurement")
        if not self.layers:
            raise UsageError(f"measurement {self.name!r} needs at least one layer", where="measurement")
        if not self.feature_id.isidentifier():
            raise UsageError(f"measurement {self.name!r}: feature_id {self.feature_id!r} is not a column name", where="measurement")

    @property
    def raw_layer(self) -> str:
        """The layer holding the values as submitted."""
        return self.layers[0]

    def x_uri(self, experiment_uri: str, layer: str | None = None) -> str:
        """The URI of one of this measurement's ``X`` layers inside an experiment."""
        return f"{experiment_uri}/ms/{self.name}/X/{layer or self.raw_layer}"


RNA = MeasurementSpec(
    name="RNA",
    modality="rna",
    feature_reference="Ensembl gene ids (GENCODE 48 human, M37 mouse; schemas/genes)",
    feature_id="gene_id",
    value_type="count",
    layers=("counts",),
    var_columns=("feature_name", "feature_biotype", "feature_reference"),
    qc_suites=("cell_qc", "obs_metadata"),
)

ADT = MeasurementSpec(
    name="ADT",
    modality="protein",
    feature_reference="antibodies by canonical marker, with target genes (schemas/panels)",
    feature_id="feature_id",
    value_type="count",
    layers=("counts",),
    var_columns=("feature_name", "target_gene_id", "target_symbol", "is_isotype"),
    qc_suites=("protein_qc",),
    target_sum=None,
    qc_columns=("n_protein_counts", "n_proteins_detected", "isotype_counts", "pct_isotype"),
)

ATAC = MeasurementSpec(
    name="ATAC",
    modality="chromatin",
    feature_reference="peaks as genomic intervals (GRCh38 human, GRCm39 mouse; schemas/genomes)",
    feature_id="feature_id",
    value_type="count",
    layers=("counts",),
    var_columns=("feature_name", "chrom", "start", "end", "genome"),
    qc_suites=("atac_qc",),
    target_sum=None,
    qc_columns=("n_fragments", "n_fragments_in_peaks", "frip", "n_tss_insertions", "n_flank_insertions", "tss_enrichment"),
)

#: Derived from ATAC fragments at submission: per cell and RNA gene, the fragments that overlap
#: the gene +/- 2 kb (ingest/atac_qc.py). Counts, but not a submitted measurement.
GENE_ACTIVITY = MeasurementSpec(
    name="GENE_ACTIVITY",
    modality="chromatin",
    feature_reference="Ensembl gene ids (the RNA genes of the dataset)",
    feature_id="gene_id",
    value_type="count",
    layers=("counts",),
    var_columns=("feature_name",),
    qc_suites=(),
    target_sum=1e4,
)

_REGISTRY: dict[str, MeasurementSpec] = {RNA.name: RNA, ADT.name: ADT, ATAC.name: ATAC, GENE_ACTIVITY.name: GENE_ACTIVITY}
#: The measurements a submission names (the rest are derived).
SUBMITTED = (RNA.name, ADT.name, ATAC.name)
_LOCK = threading.Lock()


def register(spec: MeasurementSpec) -> MeasurementSpec:
    """Add a measurement spec; registering the same spec again is a no-op.

    Raises
    ------
    UsageError
        Another spec with the same name is registered.
    """
    with _LOCK:
        have = _REGISTRY.get(spec.name)
        if have is not None and have != spec:
            raise UsageError(f"a different measurement named {spec.name!r} is already registered", where="measurement")
        _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a registered spec (tests); the built-in ones cannot be removed."""
    if name in (RNA.name, ADT.name, ATAC.name, GENE_ACTIVITY.name):
        raise UsageError(f"the built-in {name} measurement cannot be unregistered", where="measurement")
    with _LOCK:
        _REGISTRY.pop(name, None)


def get(name: str | MeasurementSpec) -> MeasurementSpec:
    """The registered spec called ``name`` (a spec is returned as it is)."""
    if isinstance(name, MeasurementSpec):
        return name
    spec = _REGISTRY.get(name)
    if spec is None:
        raise NotFoundError(f"no measurement {name!r}; the lake knows {', '.join(names())}", where="measurement")
    return spec


def names() -> list[str]:
    """Registered measurement names, RNA first."""
    return [RNA.name, *sorted(n for n in _REGISTRY if n != RNA.name)]
