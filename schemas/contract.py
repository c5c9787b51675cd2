"""The cell-field contract (``schemas/cell_fields.yaml``) as typed objects.

The manifest's JSON Schema and pydantic model, the harmonized cell columns and the lake's
SOMA obs columns are all derived from this one file, so a field or an organism is added
in one place.

Example
-------
>>> c = contract()
>>> c.organism_name("NCBITaxon:10090"), c.ontology_fields[:2]
('mus_musculus', ('assay', 'cell_type'))
>>> c.defaults_for("NCBITaxon:10090")["self_reported_ethnicity"]
'na'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

__all__ = ["CellField", "Contract", "contract"]

SCHEMA_NAME = "aivc.cell_fields"
Kind = Literal["ontology", "enum", "string", "bool"]
_KINDS = ("ontology", "enum", "string", "bool")


@dataclass(frozen=True)
class CellField:
    """One standard cell field of the contract."""

    name: str
    kind: Kind
    required: bool = False
    required_for: tuple[str, ...] = ()
    default: Any = None
    default_for: dict[str, Any] = field(default_factory=dict)
    values: tuple[str, ...] = ()

    @property
    def term_column(self) -> str | None:
        """The stored term-id column of an ontology field (``cell_type_ontology_term_id``)."""
        return f"{self.name}_ontology_term_id" if self.kind == "ontology" else None


@dataclass(frozen=True)
class Contract:
    """Organisms, standard fields (in output order) and optional fields."""

    organisms: dict[str, dict[str, str]]
    fields: tuple[CellField, ...]
    optional: dict[str, dict[str, Any]]

    @property
    def organism_ids(self) -> tuple[str, ...]:
        return tuple(self.organisms)

    def organism_name(self, organism: str) -> str:
        return self.organisms[organism]["name"]

    @property
    def standard_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def ontology_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.kind == "ontology")

    @property
    def optional_fields(self) -> tuple[str, ...]:
        return tuple(self.optional)

    def field(self, name: str) -> CellField:
        return next(f for f in self.fields if f.name == name)

    def defaults_for(self, organism: str | None) -> dict[str, Any]:
        """The constants filled in when a manifest of ``organism`` omits a field."""
        out: dict[str, Any] = {}
        for f in self.fields:
            if organism is not None and organism in f.default_for:
                out[f.name] = f.default_for[organism]
            elif f.default is not None:
                out[f.name] = f.default
        return out

    def required_always(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """String obs columns of the lake's SOMA experiments, in order: dataset id, barcode,
        the term-id columns (organism first), the enum and string fields, then the labels."""
        terms = [f.term_column for f in self.fields if f.term_column]
        plain = [f.name for f in self.fields if f.kind in ("enum", "string")]
        return ("dataset_id", "barcode", "organism_ontology_term_id", *terms, *plain, *self.ontology_fields)  # type: ignore[arg-type]


def _parse(data: dict[str, Any]) -> Contract:
    if data.get("schema_name") != SCHEMA_NAME or data.get("schema_version") != 1:
        raise ValueError(f"cell_fields.yaml is {data.get('schema_name')}/{data.get('schema_version')}, expected {SCHEMA_NAME}/1")
    fields = []
    for name, spec in data["fields"].items():
        if spec.get("kind") not in _KINDS:
            raise ValueError(f"cell field {name!r}: kind must be one of {', '.join(_KINDS)}")
        unknown = set(spec) - {"kind", "required", "required_for", "default", "default_for", "values"}
        if unknown:
            raise ValueError(f"cell field {name!r}: unknown keys {sorted(unknown)}")
        orgs = set(spec.get("required_for", ())) | set(spec.get("default_for", {}))
        if orgs - set(data["organisms"]):
            raise ValueError(f"cell field {name!r} names unknown organisms {sorted(orgs - set(data['organisms']))}")
        fields.append(
            CellField(
                name=name,
                kind=spec["kind"],
                required=bool(spec.get("required", False)),
                required_for=tuple(spec.get("required_for", ())),
                default=spec.get("default"),
                default_for=dict(spec.get("default_for", {})),
                values=tuple(spec.get("values", ())),
            )
        )
    return Contract(dict(data["organisms"]), tuple(fields), dict(data.get("optional_fields", {})))


@lru_cache(maxsize=1)
def contract() -> Contract:
    """The shipped contract (read once)."""
    import yaml

    text = resources.files("aivc.schemas").joinpath("cell_fields.yaml").read_text(encoding="utf-8")
    return _parse(yaml.safe_load(text))
