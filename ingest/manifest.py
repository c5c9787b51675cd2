"""The submission manifest: what a dataset is and how its cells map to the standard fields.

The manifest is YAML. It is checked first against the JSON Schema shipped in
``schemas/manifest.schema.json``: every problem becomes its own
:class:`~aivc.errors.Finding`, whose ``where`` names the file and the path in it
(``m.yaml: access``, ``m.yaml: organism (missing)``), all carried by one
:class:`~aivc.errors.ManifestError`. A manifest that passes is loaded into the frozen
pydantic model :class:`Manifest`, which accepts the same manifests as the schema.

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
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aivc.errors import Finding, ManifestError, and_more
from aivc.schemas.contract import contract

_CONTRACT = contract()  # schemas/cell_fields.yaml: the one source of the fields and organisms below
ORGANISMS: dict[str, str] = {o: _CONTRACT.organism_name(o) for o in _CONTRACT.organism_ids}
#: Standard cell fields (CELLxGENE schema 7.x obs contract), in output order.
STANDARD_FIELDS: tuple[str, ...] = _CONTRACT.standard_fields
#: Fields whose values are ontology terms (stored as ``<field>_ontology_term_id``).
ONTOLOGY_FIELDS: tuple[str, ...] = _CONTRACT.ontology_fields
#: Constants used when a manifest omits a field (of any organism; see :meth:`Contract.defaults_for`).
DEFAULTS: dict[str, Any] = _CONTRACT.defaults_for(None)
#: Optional cell fields, declared only by datasets that have them (always from an obs column):
#: ``perturbation_targets`` makes the dataset a perturbation screen (see
#: :mod:`aivc.ingest.perturbation_fields`).
OPTIONAL_FIELDS: tuple[str, ...] = _CONTRACT.optional_fields
Organism = Literal[_CONTRACT.organism_ids]  # type: ignore[valid-type]


#: What a dataset id looks like (as in the JSON Schema).
DATASET_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,62}$"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: How a path names a key that is missing: ``"obs/cell_type (missing)"``.
_MISSING = "(missing)"


class ManifestProblems(ValueError):
    """Raised inside :class:`Manifest` validators: several ``(path, message)`` problems at once."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems[0][1] + and_more(len(problems) - 1))
        self.problems = problems


class FieldSpec(BaseModel):
    """How one standard cell field is filled: from an obs column, or a constant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: StrictStr | None = Field(default=None, min_length=1)
    value: StrictStr | StrictBool | None = None
    label_map: dict[StrictStr, StrictStr] = Field(default_factory=dict)

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
    column: StrictStr | None = None  # None: the var index


#: The lake measurement each modality goes to (the keys of ``measurements:``).
MEASUREMENT_OF_MODALITY: dict[str, str] = {"rna": "RNA", "protein": "ADT", "chromatin": "ATAC"}
#: The assembly peaks and fragments are checked against when a manifest names none.
DEFAULT_GENOME: dict[str, str] = {"homo_sapiens": "GRCh38", "mus_musculus": "GRCm39"}


class PeakSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    column: StrictStr | None = None  # None: the var index


class MeasurementSource(BaseModel):
    """Where one measurement of a submission is (an entry of the manifest's ``measurements:``).

    ``source`` is ``mod:<name>`` (a MuData modality, or a 10x ``.h5`` feature type),
    ``obsm:<key>``, ``X``, ``raw`` or ``layer:<name>``; ``counts`` says where the raw counts
    are inside a ``mod:`` source.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: Literal["rna", "protein", "chromatin"]
    source: StrictStr = Field(pattern=r"^(mod:.+|obsm:.+|X|raw|layer:.+)$")
    counts: StrictStr = Field(default="X", pattern=r"^(X|raw|layer:.+)$")
    genes: GeneSpec | None = None
    features: StrictStr | None = Field(default=None, pattern=r"^(uns:.+|var|var:.+)$")
    peaks: PeakSpec | None = None
    genome: Literal["GRCh38", "GRCm39"] | None = None
    fragments: StrictStr | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _keys_of_modality(self) -> MeasurementSource:
        allowed = {"rna": {"genes"}, "protein": {"features"}, "chromatin": {"peaks", "genome", "fragments"}}[self.modality]
        extra = [k for k in ("genes", "features", "peaks", "genome", "fragments") if getattr(self, k) is not None and k not in allowed]
        problems = [(k, f"{k!r} is not allowed here") for k in extra]
        if self.modality == "rna" and self.genes is None:
            problems.append((f"genes {_MISSING}", "required key 'genes' is missing"))
        if problems:
            raise ManifestProblems(problems)
        return self

    @property
    def mod(self) -> str | None:
        """The MuData modality (or 10x feature type) of a ``mod:`` source."""
        return self.source.split(":", 1)[1] if self.source.startswith("mod:") else None


#: Spatial technologies (the manifest's ``spatial.technology``).
SpatialTechnology = Literal["visium", "merfish", "xenium", "image"]


class SpatialSpec(BaseModel):
    """The manifest's ``spatial:`` block: where the cells are, and what that needs.

    ``visium``: the data is a Space Ranger output folder; ``image``: the data is a cell x gene
    table and ``image`` / ``labels`` name the microscopy image and its segmentation (relative
    to the manifest); ``merfish`` / ``xenium``: the data is a SpatialData ``.zarr``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    technology: SpatialTechnology
    is_single: StrictBool
    library_id: StrictStr | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    image: StrictStr | None = Field(default=None, min_length=1)
    labels: StrictStr | None = Field(default=None, min_length=1)
    label_column: StrictStr | None = Field(default=None, min_length=1)
    channels: tuple[StrictStr, ...] | None = Field(default=None, min_length=1)
    pixel_size_um: float | None = Field(default=None, gt=0)
    table: StrictStr | None = Field(default=None, min_length=1)
    transcripts: StrictStr | None = Field(default=None, min_length=1)
    cell_boundaries: StrictStr | None = Field(default=None, min_length=1)
    nucleus_boundaries: StrictStr | None = Field(default=None, min_length=1)
    transcript_nucleus_column: StrictStr | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _keys_of_technology(self) -> SpatialSpec:
        problems: list[tuple[str, str]] = []
        if self.technology == "image":
            for k in ("image", "labels", "channels", "pixel_size_um"):
                if getattr(self, k) is None:
                    problems.append((f"{k} {_MISSING}", f"technology 'image' needs {k!r}"))
        imaging = ("table", "transcripts", "cell_boundaries", "nucleus_boundaries", "transcript_nucleus_column")
        if self.technology == "visium":
            problems += [(k, f"{k!r} is not allowed here") for k in ("image", "labels", "label_column", "channels", *imaging) if getattr(self, k) is not None]
        if self.technology == "image":
            problems += [(k, f"{k!r} is not allowed here") for k in imaging if getattr(self, k) is not None]
        if problems:
            raise ManifestProblems(problems)
        return self


class QcSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_mapped_fraction: float = Field(default=0.9, ge=0, le=1)
    max_pct_mito: float | None = Field(default=None, ge=0, le=100)


class Manifest(BaseModel):
    """A validated submission manifest.

    It accepts exactly what ``schemas/manifest.schema.json`` accepts (the tests check the two
    agree), so that the schema, which names every error's path, decides what is valid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    dataset_id: StrictStr = Field(pattern=DATASET_ID_PATTERN)
    title: StrictStr = Field(min_length=1, max_length=300)
    description: StrictStr = ""
    license: StrictStr = Field(min_length=1)
    access: Literal["public", "consortium", "embargoed"]
    embargo_until: dt.date | None = None
    organism: Organism
    counts: StrictStr = Field(default="X", pattern=r"^(X|raw|layer:.+)$")
    genes: GeneSpec | None = None
    measurements: dict[StrictStr, MeasurementSource] = Field(default_factory=dict)
    spatial: SpatialSpec | None = None
    obs: dict[str, FieldSpec]
    qc: QcSpec = QcSpec()
    contact: StrictStr | None = None
    citation: StrictStr | None = None

    @field_validator("embargo_until", mode="before")
    @classmethod
    def _date_text(cls, value: Any) -> Any:
        if value is None or isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)")
        return value

    @field_validator("obs")
    @classmethod
    def _complete(cls, obs: dict[str, FieldSpec], info: ValidationInfo) -> dict[str, FieldSpec]:
        """Check the fields (every problem, each at its path under obs) and fill in the defaults."""
        problems: list[tuple[str, str]] = []
        for name in obs:
            if name not in STANDARD_FIELDS and name not in OPTIONAL_FIELDS:
                fields = f"the standard ones are {', '.join(STANDARD_FIELDS)}, the optional ones {', '.join(OPTIONAL_FIELDS)}"
                problems.append((name, f"{name!r} is not a cell field; {fields}"))
        for name in OPTIONAL_FIELDS:
            if name in obs and obs[name].column is None:
                problems.append((f"{name}/column", f"{name} must name an obs column ('column'), not a constant 'value'"))
        filled = dict(obs)
        organism = info.data.get("organism")
        for name, default in _CONTRACT.defaults_for(organism).items():
            filled.setdefault(name, FieldSpec(value=default))
        for name in STANDARD_FIELDS:
            if name not in filled:
                message = f"the standard cell field {name!r} is missing; give its obs 'column' or a constant 'value'"
                problems.append((f"{name} {_MISSING}", message))
        if problems:
            raise ManifestProblems(problems)
        return {f: filled[f] for f in (*STANDARD_FIELDS, *OPTIONAL_FIELDS) if f in filled}

    @field_validator("measurements")
    @classmethod
    def _named_by_modality(cls, measurements: dict[str, MeasurementSource]) -> dict[str, MeasurementSource]:
        problems: list[tuple[str, str]] = []
        if not measurements:
            problems.append(("", "'measurements' needs at least one measurement"))
        for name, m in measurements.items():
            if name not in MEASUREMENT_OF_MODALITY.values():
                problems.append((name, f"{name!r} is not a measurement; use {', '.join(MEASUREMENT_OF_MODALITY.values())}"))
            elif MEASUREMENT_OF_MODALITY[m.modality] != name:
                problems.append((f"{name}/modality", f"measurement {name} holds modality {next(k for k, v in MEASUREMENT_OF_MODALITY.items() if v == name)!r}, not {m.modality!r}"))
        if problems:
            raise ManifestProblems(problems)
        return measurements

    @model_validator(mode="after")
    def _rna_once(self) -> Manifest:
        if "RNA" in self.measurements:
            twice = [k for k in ("genes", "counts") if k in self.model_fields_set]
            if twice:
                raise ManifestProblems([(k, f"{k!r} is not allowed here") for k in twice])
        elif self.genes is None and not self.measurements:
            raise ManifestProblems([("", "gives neither 'genes' nor 'measurements'; give exactly one of 'genes' or 'measurements'")])
        return self

    @model_validator(mode="after")
    def _embargo(self) -> Manifest:
        if self.access == "embargoed" and self.embargo_until is None:
            message = "access 'embargoed' needs 'embargo_until', the date the embargo lifts"
            raise ManifestProblems([(f"embargo_until {_MISSING}", message)])
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
        """Where the RNA counts are, inside the RNA source (its mod for a ``mod:`` source)."""
        return counts_location(self.rna.counts if "RNA" in self.measurements else self.counts)

    @property
    def rna(self) -> MeasurementSource:
        """The RNA measurement: the ``measurements`` entry, or the top-level ``counts``/``genes``."""
        if "RNA" in self.measurements:
            return self.measurements["RNA"]
        if self.genes is None:
            raise ManifestProblems([("measurements/RNA (missing)", "this submission has no RNA measurement")])
        return MeasurementSource(modality="rna", source=self.counts, counts=self.counts, genes=self.genes)

    @property
    def rna_genes(self) -> GeneSpec:
        genes = self.rna.genes
        assert genes is not None  # an rna source always names its genes
        return genes

    @property
    def other_measurements(self) -> dict[str, MeasurementSource]:
        """The measurements besides RNA, in lake order (ADT, ATAC)."""
        return {n: self.measurements[n] for n in ("ADT", "ATAC") if n in self.measurements}

    def canonical_json(self) -> str:
        """Stable JSON of the manifest, used in the content hash."""
        # hashes from before schema_version and measurements existed stay valid
        exclude = {"schema_version"} | ({"measurements"} if not self.measurements else set()) | ({"genes"} if self.genes is None else set())
        exclude |= {"spatial"} if self.spatial is None else set()
        fields = self.model_dump(mode="json", exclude=exclude)
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def counts_location(counts: str) -> tuple[Literal["X", "raw", "layer"], str | None]:
    """``"X"`` / ``"raw"`` / ``"layer:<name>"`` as ``(kind, layer name)``."""
    if counts in ("X", "raw"):
        return counts, None  # type: ignore[return-value]
    return "layer", counts.split(":", 1)[1]


@lru_cache(maxsize=1)
def manifest_json_schema() -> dict[str, Any]:
    text = resources.files("aivc.schemas").joinpath("manifest.schema.json").read_text()
    return json.loads(text)


def parse_manifest(data: dict[str, Any], source: str = "manifest") -> Manifest:
    """Check ``data`` against the manifest JSON Schema, then build a :class:`Manifest`.

    Raises
    ------
    ManifestError
        With one finding per problem in ``findings`` (``where`` is ``"<source>: <path>"``).
    """
    findings = schema_findings(data, source)
    if findings:
        raise ManifestError.of(findings)
    from pydantic import ValidationError

    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:  # only where the model is stricter than the schema
        raise ManifestError.of(_model_findings(exc, source)) from None


def schema_findings(data: Any, source: str = "manifest") -> list[Finding]:
    """Every way ``data`` breaks the manifest JSON Schema, one finding each, ordered by path."""
    import jsonschema

    schema = manifest_json_schema()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    issues: dict[tuple[str, ...], _Issue] = {}
    for error in validator.iter_errors(data):
        for issue in _describe(error, schema):
            issues.setdefault(issue.path, issue)
    _merge_misspelt_keys(issues)
    return [Finding(ManifestError.code, f"{source}: {_where(path)}", issues[path].message) for path in sorted(issues)]


def submitted_dataset_id(data: Any) -> str | None:
    """The manifest's ``dataset_id`` if it is a well-formed one, even when the rest is invalid."""
    value = data.get("dataset_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and re.fullmatch(DATASET_ID_PATTERN, value) else None


@dataclass(frozen=True)
class _Issue:
    """One schema problem at ``path``. An unknown key lists the ``known`` keys beside it; a
    missing key (or a choice of keys none of which is given) lists what it ``wants`` under
    the mapping at ``wanted_at``."""

    path: tuple[str, ...]
    message: str
    known: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    wanted_at: tuple[str, ...] = ()


def _where(path: tuple[str, ...]) -> str:
    if path and path[-1] == _MISSING:
        return f"{'/'.join(path[:-1])} {_MISSING}"
    return "/".join(path) if path else "(top level)"


def _describe(error: Any, schema: dict[str, Any]) -> list[_Issue]:
    """The issues of one jsonschema error; a missing key's path ends in ``"(missing)"``."""
    at = tuple(str(p) for p in error.absolute_path)
    kind, instance, expected = error.validator, error.instance, error.validator_value
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = tuple(sorted(error.schema.get("properties", {})))
        return [_unknown_key((*at, str(k)), known) for k in instance if k not in known]
    if kind == "required" and isinstance(instance, dict):
        return [
            _Issue((*at, k, _MISSING), _missing_key(k, error, schema), wants=(k,), wanted_at=at)
            for k in expected
            if k not in instance
        ]
    if kind == "dependentRequired" and isinstance(instance, dict):
        return [
            _Issue((*at, r, _MISSING), f"required key {r!r} is missing ({k!r} needs it)", wants=(r,), wanted_at=at)
            for k, rs in expected.items()
            if k in instance
            for r in rs
            if r not in instance
        ]
    if kind == "const":
        return [_Issue(at, f"{instance!r} is not allowed; use {expected!r}")]
    if kind == "enum":
        return [_Issue(at, f"{instance!r} is not allowed; use one of {', '.join(map(repr, expected))}")]
    if kind == "not" and at:
        why = _rule_description(error, schema)
        return [_Issue(at, f"{at[-1]!r} is not allowed here" + (f": {why}" if why else ""))]
    if kind == "anyOf" and isinstance(instance, dict) and all(set(o) == {"required"} for o in expected):
        options = tuple(k for o in expected for k in o["required"])
        message = f"gives neither {' nor '.join(map(repr, options))}; give {' or '.join(map(repr, options))}"
        return [_Issue(at, message, wants=options, wanted_at=at)]
    if kind == "oneOf" and isinstance(instance, dict) and all(set(o) == {"required"} for o in expected):
        options = tuple(k for o in expected for k in o["required"])
        given = [k for k in options if k in instance]
        said = f"gives both {' and '.join(map(repr, given))}" if given else f"gives neither {' nor '.join(map(repr, options))}"
        message = f"{said}; give exactly one of {' or '.join(map(repr, options))}"
        return [_Issue(at, message, wants=() if given else options, wanted_at=at)]
    return [_Issue(at, error.message)]


def _unknown_key(path: tuple[str, ...], known: tuple[str, ...], meant: str | None = None) -> _Issue:
    what = f"a key of {_where(path[:-1])}" if path[:-1] else "a manifest key"
    close = _close_key(path[-1], known)
    if meant is not None:
        hint = f"did you mean {meant!r}, which is missing?"
    elif close is not None:
        hint = f"did you mean {close!r}?"
    else:
        hint = f"the keys here are {', '.join(known)}"
    return _Issue(path, f"{path[-1]!r} is not {what}; {hint}", known=known)


def _close_key(key: str, known: Iterable[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return close[0] if close else None


def _rule_description(error: Any, schema: dict[str, Any]) -> str | None:
    """The description of the conditional rule (``then``) an error comes from, if any."""
    path = list(error.absolute_schema_path)
    if "then" not in path:
        return None
    node: Any = schema
    for part in path[: len(path) - path[::-1].index("then")]:
        node = node[part]
        if isinstance(node, dict) and "$ref" in node and part != "then":
            node = _resolve(schema, node["$ref"])
    return node.get("description") if isinstance(node, dict) else None


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _missing_key(key: str, error: Any, schema: dict[str, Any]) -> str:
    message = f"required key {key!r} is missing"
    why = _rule_description(error, schema)  # a conditional requirement says why in its description
    if why:
        return f"{message}: {why}"
    prop = error.schema.get("properties", {}).get(key, {})
    if "enum" in prop:
        return f"{message}; use one of {', '.join(map(repr, prop['enum']))}"
    if prop.get("description"):
        return f"{message} ({prop['description'].rstrip('.')})"
    return message


def _merge_misspelt_keys(issues: dict[tuple[str, ...], _Issue]) -> None:
    """A misspelt key is one mistake: when an unknown key is close to a key that is missing
    beside it, its finding says so and the "missing" finding goes."""
    wanted: dict[tuple[tuple[str, ...], str], tuple[str, ...]] = {}
    for issue in issues.values():
        wanted.update({(issue.wanted_at, k): issue.path for k in issue.wants})
    for path, issue in list(issues.items()):
        if not issue.known:
            continue
        meant = _close_key(path[-1], [k for at, k in wanted if at == path[:-1]])
        if meant is not None and wanted[(path[:-1], meant)] in issues:
            del issues[wanted[(path[:-1], meant)]]
            issues[path] = _unknown_key(path, issue.known, meant)


def _model_findings(exc: Any, source: str) -> list[Finding]:
    out: list[Finding] = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ManifestProblems):
            base = "/".join(str(p) for p in err["loc"])
            for path, message in cause.problems:
                out.append(Finding(ManifestError.code, f"{source}: {'/'.join(filter(None, (base, path)))}", message))
            continue
        loc = "/".join(str(p) for p in err["loc"]) or "(top level)"
        out.append(Finding(ManifestError.code, f"{source}: {loc}", err["msg"].removeprefix("Value error, ")))
    return out


@lru_cache(maxsize=1)
def _text_dates_loader() -> Any:
    """YAML's safe loader without implicit timestamps: ``embargo_until: 2027-06-30`` stays the
    text the schema checks as a date, not a ``datetime.date`` the schema would call no string."""
    import yaml

    class TextDatesLoader(yaml.SafeLoader):
        pass

    TextDatesLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    return TextDatesLoader


def read_manifest_data(path: str | Path) -> dict[str, Any]:
    """Read a manifest file as plain data (unchecked).

    Raises
    ------
    ManifestError
        If the file is missing, is not YAML, or is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest file not found: {p}", where=str(p))
    try:
        data = yaml.load(p.read_text(), Loader=_text_dates_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ManifestError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=where) from None
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a YAML mapping", where=str(p))
    return data


def load_manifest(path: str | Path) -> Manifest:
    """Read and check a manifest YAML file.

    Raises
    ------
    ManifestError
        If the file is missing, is not YAML, or does not follow the schema (``findings``
        lists every problem).
    """
    return parse_manifest(read_manifest_data(path), source=str(path))
