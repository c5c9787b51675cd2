"""The Submit page's manifest form: the fields of a submission manifest as HTML form inputs.

A lab that has no manifest YAML fills the form instead; :func:`manifest_from_form` turns the
posted fields into the manifest text that ``aivc submit`` validates, so every mistake is
reported by the same validator, at the same ``where`` (``organism``, ``obs/cell_type/column``)
and with the same closest terms as a YAML manifest. Nothing here decides what is valid.

Field names: ``m.<key>`` for the top-level keys, ``obs.<field>.column`` / ``obs.<field>.value``
for each cell field and ``obs.cell_type.label_map`` for the label map (one ``label = term`` or
``label: term`` per line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aivc.errors import UsageError

#: Top-level keys offered by the form, in the order shown, with their input kind.
TOP_FIELDS: tuple[tuple[str, str], ...] = (
    ("dataset_id", "text"), ("title", "text"), ("description", "textarea"), ("license", "text"),
    ("access", "access"), ("embargo_until", "date"), ("organism", "organism"), ("counts", "text"),
    ("genes.id_type", "id_type"), ("citation", "text"), ("contact", "text"),
)  # fmt: skip
ACCESS = ("public", "consortium", "embargoed")
ID_TYPES = ("symbol", "ensembl")
#: Most characters one form field may hold (the whole manifest is limited to 1 MiB elsewhere).
MAX_FIELD_CHARS = 100_000


@dataclass(frozen=True)
class FormSpec:
    """What the Submit page renders: the top-level inputs, the cell fields and the choices."""

    top: tuple[tuple[str, str], ...]
    obs_fields: tuple[str, ...]
    organisms: tuple[str, ...]
    access: tuple[str, ...] = ACCESS
    id_types: tuple[str, ...] = ID_TYPES


def form_spec() -> FormSpec:
    from aivc.ingest.manifest import OPTIONAL_FIELDS, STANDARD_FIELDS
    from aivc.schemas.contract import contract

    organisms = tuple(contract().organism_ids)
    return FormSpec(TOP_FIELDS, tuple(STANDARD_FIELDS) + tuple(OPTIONAL_FIELDS), organisms)


def has_form_fields(form: Mapping[str, Any]) -> bool:
    """Whether the user typed into the manifest form (its choice lists always post a value, so
    they do not count)."""
    typed = {f"m.{k}" for k, kind in TOP_FIELDS if kind in ("text", "textarea", "date")}
    return any((k in typed or k.startswith("obs.")) and isinstance(v, str) and v.strip() for k, v in form.items())


def _text(form: Mapping[str, Any], key: str) -> str:
    v = form.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise UsageError(f"the form field {key!r} must be text, not a file", where=key)
    if len(v) > MAX_FIELD_CHARS:
        raise UsageError(f"the form field {key!r} is over {MAX_FIELD_CHARS:,} characters", where=key)
    return v.strip()


def _label_map(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sep = "=" if "=" in line else ":" if ":" in line else None
        if sep is None:
            raise UsageError(f"line {n} of the label map is not 'label = term': {line.strip()[:80]!r}", where=where)
        src, dst = (s.strip() for s in line.split(sep, 1))
        if not src or not dst:
            raise UsageError(f"line {n} of the label map needs a label and a term: {line.strip()[:80]!r}", where=where)
        out[src] = dst
    return out


def manifest_from_form(form: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest the form describes; empty fields are left out (so the validator names them).

    >>> m = manifest_from_form({"m.dataset_id": "lab-1", "m.genes.id_type": "symbol",
    ...     "obs.sex.value": "unknown", "obs.cell_type.column": "labels",
    ...     "obs.cell_type.label_map": "T = T cell"})
    >>> m["dataset_id"], m["genes"], m["obs"]["cell_type"]
    ('lab-1', {'id_type': 'symbol'}, {'column': 'labels', 'label_map': {'T': 'T cell'}})
    """
    spec = form_spec()
    man: dict[str, Any] = {"schema_version": 1}
    for key, _kind in spec.top:
        v = _text(form, f"m.{key}")
        if not v:
            continue
        if key == "genes.id_type":
            man["genes"] = {"id_type": v}
        else:
            man[key] = v
    obs: dict[str, Any] = {}
    for name in spec.obs_fields:
        col, val = _text(form, f"obs.{name}.column"), _text(form, f"obs.{name}.value")
        entry: dict[str, Any] = {}
        if col:
            entry["column"] = col
        if val:
            entry["value"] = {"true": True, "false": False}.get(val.lower(), val) if name == "is_primary_data" else val
        lm = _text(form, f"obs.{name}.label_map")
        if lm:
            entry["label_map"] = _label_map(lm, f"obs.{name}.label_map")
        if entry:
            obs[name] = entry
    man["obs"] = obs
    return man


def manifest_yaml_from_form(form: Mapping[str, Any]) -> bytes:
    import yaml

    return yaml.safe_dump(manifest_from_form(form), sort_keys=False, allow_unicode=True).encode()


__all__ = ["FormSpec", "form_spec", "has_form_fields", "manifest_from_form", "manifest_yaml_from_form"]
