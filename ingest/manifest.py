"""The submission manifest: what a dataset is and how its cells map to the standard fields.

The manifest is YAML. It is checked first against the JSON Schema shipped in
``schemas/manifest.schema.json`` (so every error names its path in the file), then loaded
into the frozen pydantic model :class:`Manifest`.

Example
-------
>>> m = Manifest.model_validate({
...     "dataset_id": "pbmc-a", "title": "PBMC", "license": "CC-BY-4.0",
...     "access": "public", "organism": "NCBITaxon:9606",
...     "counts": "X", "genes": {"id_type": "symbol"},
...     "obs": {"cell_type": {"value": "unknown"}, "assay": {"value": "EFO:0009901"},
...             "development_stage": {"value": "unknown"}, "disease": {"value": "PATO:0000461"},
...             "self_reported_ethnicity": {"value": "unknown"}, "sex": {"value": "unknown"},
...             "tissue": {"value": "UBERON:0000178"}, "suspension_type": {"value": "cell"},
...             "donor_id": {"value": "d1"}}})
>>> m.obs["tissue_type"].value
'tissue'
"""

from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aivc.errors import ManifestError

ORGANISMS: dict[str, str] = {"NCBITaxon:9606": "homo_sapiens", "NCBITaxon:10090": "mus_musculus"}

#: Standard cell fields (CELLxGENE schema 7.x obs contract), in output order.
STANDARD_FIELDS: tuple[str, ...] = (
    "assay",
    "cell_type",
    "development_stage",
    "disease",
    "self_reported_ethnicity",
    "sex",
    "tissue",
    "tissue_type",
    "suspension_type",
    "donor_id",
    "is_primary_data",
)
#: Fields whose values are ontology terms (stored as ``<field>_ontology_term_id``).
ONTOLOGY_FIELDS: tuple[str, ...] = (
    "assay",
    "cell_type",
    "development_stage",
    "disease",
    "self_reported_ethnicity",
    "sex",
    "tissue",
)
DEFAULTS: dict[str, Any] = {"tissue_type": "tissue", "is_primary_data": True}
#: Optional cell fields, declared only by datasets that have them (always from an obs column):
#: ``perturbation_targets`` makes the dataset a perturbation screen (see
#: :mod:`aivc.ingest.perturbation_fields`).
OPTIONAL_FIELDS: tuple[str, ...] = ("perturbation_targets",)


class FieldSpec(BaseModel):
    """How one standard cell field is filled: from an obs column, or a constant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = None
    value: str | bool | None = None
    label_map: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (self.value is None):
            raise ValueError("give exactly one of 'column' or 'value'")
        if self.label_map and self.column is None:
            raise ValueError("'label_map' needs 'column'")
        return self


class GeneSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id_type: Literal["symbol", "ensembl"]
    column: str | None = None  # None: the var index


class QcSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_mapped_fraction: float = 0.9
    max_pct_mito: float | None = None


class Manifest(BaseModel):
    """A validated submission manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_id: str
    title: str
    description: str = ""
    license: str
    access: Literal["public", "consortium", "embargoed"]
    embargo_until: dt.date | None = None
    organism: str
    counts: str = "X"
    genes: GeneSpec
    obs: dict[str, FieldSpec]
    qc: QcSpec = QcSpec()
    contact: str | None = None
    citation: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Manifest:
        unknown = sorted(set(self.obs) - set(STANDARD_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown obs fields {unknown}; the standard fields are {list(STANDARD_FIELDS)} "
                f"and the optional ones {list(OPTIONAL_FIELDS)}"
            )
        for name in OPTIONAL_FIELDS:
            if name in self.obs and self.obs[name].column is None:
                raise ValueError(f"obs/{name} must name an obs column ('column'), not a constant 'value'")
        obs = dict(self.obs)
        for name, default in DEFAULTS.items():
            obs.setdefault(name, FieldSpec(value=default))
        if self.organism == "NCBITaxon:10090":
            obs.setdefault("self_reported_ethnicity", FieldSpec(value="na"))
        missing = [f for f in STANDARD_FIELDS if f not in obs]
        if missing:
            raise ValueError(f"obs is missing the standard fields {missing}")
        object.__setattr__(self, "obs", {f: obs[f] for f in (*STANDARD_FIELDS, *OPTIONAL_FIELDS) if f in obs})
        if self.access == "embargoed" and self.embargo_until is None:
            raise ValueError("access 'embargoed' needs 'embargo_until' (a date)")
        return self

    @property
    def is_perturbation_screen(self) -> bool:
        """Whether the cells carry perturbation targets (``obs.perturbation_targets``)."""
        return "perturbation_targets" in self.obs

    @property
    def organism_name(self) -> str:
        return ORGANISMS[self.organism]

    @property
    def counts_source(self) -> tuple[Literal["X", "raw", "layer"], str | None]:
        if self.counts in ("X", "raw"):
            return self.counts, None  # type: ignore[return-value]
        return "layer", self.counts.split(":", 1)[1]

    def canonical_json(self) -> str:
        """Stable JSON of the manifest, used in the content hash."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=1)
def manifest_json_schema() -> dict[str, Any]:
    text = resources.files("aivc.schemas").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


def _path_of(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    return "/".join(parts) if parts else "(top level)"


def parse_manifest(data: dict[str, Any], source: str = "manifest") -> Manifest:
    """Check ``data`` against the manifest JSON Schema, then build a :class:`Manifest`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(manifest_json_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = _path_of(e)
        if e.validator == "required" and isinstance(e.instance, dict):
            missing = [k for k in e.validator_value if k not in e.instance]
            if missing:
                prefix = "" if where == "(top level)" else where + "/"
                where = f"{prefix}{missing[0]} (missing)"
        raise ManifestError(f"{e.message}{more}", where=f"{source}: {where}")
    try:
        return Manifest.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        err = exc.errors()[0]
        loc = "/".join(str(p) for p in err["loc"]) or "(top level)"
        raise ManifestError(err["msg"].removeprefix("Value error, "), where=f"{source}: {loc}") from None


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest YAML file.

    Raises
    ------
    ManifestError
        If the file is missing, is not YAML, or does not follow the schema.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest file not found: {p}", where=str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ManifestError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=where) from None
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a YAML mapping", where=str(p))
    return parse_manifest(data, source=str(p))
