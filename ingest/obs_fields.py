"""Harmonize and validate the standard cell fields of a submission (CELLxGENE schema 7.x obs).

Each standard field is filled from the manifest (``obs.<field>``): a constant ``value`` or an obs
``column``, optionally translated through a ``label_map``. Ontology fields accept term ids
(``"CL:0000236"``) or labels and synonyms (``"B cell"``, ``"B-lymphocyte"``), which are resolved to
ids against the ontology releases pinned by the schema; what each field accepts is declared in
:mod:`aivc.ingest.obs_rules`. Work is done once per distinct submitted value, so a million cells
cost about as much as their few hundred distinct labels.

Every problem becomes a :class:`~aivc.errors.Finding` with a stable code (see :data:`aivc.ingest.obs_terms.OBS_CODES`) that
names the field, the obs column, the first offending row and how many rows share the problem;
every accepted distinct value becomes a :class:`~aivc.ingest.findings.Decision`.

Example
-------
>>> from aivc.ingest.manifest import Manifest
>>> m = Manifest.model_validate({
...     "dataset_id": "d1", "title": "t", "license": "CC-BY-4.0", "access": "public",
...     "organism": "NCBITaxon:9606", "genes": {"id_type": "symbol"},
...     "obs": {"assay": {"value": "EFO:0009922"}, "cell_type": {"column": "ct"},
...             "development_stage": {"value": "unknown"}, "disease": {"value": "normal"},
...             "self_reported_ethnicity": {"value": "unknown"}, "sex": {"value": "female"},
...             "tissue": {"value": "blood"}, "suspension_type": {"value": "cell"},
...             "donor_id": {"value": "d1"}}})
>>> res = harmonize_obs(pd.DataFrame({"ct": ["B cell", "T-lymphocyte"]}, index=["a", "b"]), m)
>>> res.frame["cell_type_ontology_term_id"].tolist(), res.findings
(['CL:0000236', 'CL:0000084'], [])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.findings import Decision, How
from aivc.ingest.manifest import ONTOLOGY_FIELDS, STANDARD_FIELDS, FieldSpec, Manifest
from aivc.ingest.obs_rules import (
    OUTPUT_COLUMNS,
    SUSPENSION_TYPES,
    TERM_COLUMNS,
    TISSUE_TYPE_ALIASES,
    TISSUE_TYPES,
)
from aivc.ingest.obs_terms import (
    OBS_BAD_BOOL,
    OBS_BAD_DONOR_ID,
    OBS_BAD_ENUM,
    OBS_COLUMN_MISSING,
    OBS_LABEL_MAP_UNUSED,
    OBS_NULL_VALUE,
    Outcome,
    Resolver,
    TermResolver,
)
from aivc.ontology import Ontologies, get_ontologies


# -- results ----------------------------------------------------------------------------------
@dataclass
class ObsResult:
    """Harmonized standard cell fields plus what was found and decided on the way.

    ``frame`` has the index of the submitted obs and the columns :data:`OUTPUT_COLUMNS`
    (strings, except the boolean ``is_primary_data``), then, for a perturbation screen, the
    columns of :data:`aivc.ingest.perturbation_fields.PERTURBATION_COLUMNS`. Values that could not be harmonized are
    left as submitted (and their label empty); missing values are empty strings.
    """

    frame: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    #: Per column of :data:`OUTPUT_COLUMNS` that holds a standard field's value: which cells'
    #: values were refused (missing, or not harmonizable), each already reported by a finding.
    refused: dict[str, np.ndarray] = field(default_factory=dict)

    def accepted_frame(self) -> pd.DataFrame:
        """``frame`` with every refused value set to missing (``None``).

        What checks that run after harmonization (the Great Expectations suites) should see:
        a refused value has its finding already, and is not a second mistake.
        """
        out = self.frame.copy()
        for column, refused in self.refused.items():
            if refused.any():
                values = out[column].to_numpy(dtype=object, copy=True)
                values[refused] = None
                out[column] = values
        return out

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def valid(self) -> bool:
        return not self.errors





# -- other fields -----------------------------------------------------------------------------
def _resolve_tissue_type(raw: object, ctx: int) -> Outcome:
    text = " ".join(str(raw).casefold().split())
    text = TISSUE_TYPE_ALIASES.get(text, text)
    if text in TISSUE_TYPES:
        return Outcome(text)
    extra = "; 'cell line' (schema 7.1) is not supported yet" if text == "cell line" else ""
    return Outcome.fail(
        OBS_BAD_ENUM, f"{str(raw)!r} is not a tissue_type; use one of {', '.join(map(repr, TISSUE_TYPES))}{extra}"
    )


def _resolve_suspension_type(raw: object, ctx: int) -> Outcome:
    text = str(raw).strip().casefold()
    if text in SUSPENSION_TYPES:
        return Outcome(text)
    return Outcome.fail(
        OBS_BAD_ENUM, f"{str(raw)!r} is not a suspension_type; use one of {', '.join(map(repr, SUSPENSION_TYPES))}"
    )


def _resolve_donor_id(raw: object, ctx: int) -> Outcome:
    text = str(raw)
    if text.strip():
        return Outcome(text)
    return Outcome.fail(
        OBS_BAD_DONOR_ID,
        f"{text!r} is an empty donor id; name the individual ('pooled' for unassigned pooled cells, 'unknown' if not known)",
    )


def _resolve_bool(raw: object, ctx: int) -> Outcome:
    if isinstance(raw, bool | np.bool_):
        return Outcome(bool(raw))
    if isinstance(raw, str) and raw.strip().casefold() in ("true", "false"):
        return Outcome(raw.strip().casefold() == "true")
    return Outcome.fail(OBS_BAD_BOOL, f"{raw!r} is not a boolean; is_primary_data must be True or False")


# -- the driver -------------------------------------------------------------------------------
@dataclass
class _FieldOutput:
    values: np.ndarray
    labels: np.ndarray | None
    findings: list[Finding]
    decisions: list[Decision]
    refused: np.ndarray  # per cell: the value is missing or could not be harmonized


def harmonize_obs(obs: pd.DataFrame, manifest: Manifest, *, ontologies: Ontologies | None = None) -> ObsResult:
    """Harmonize and validate the standard cell fields of ``obs`` as ``manifest`` describes them.

    Parameters
    ----------
    obs
        The submitted cell metadata (any index; it is kept).
    manifest
        The validated manifest; ``manifest.obs`` says where each standard field comes from.
    ontologies
        The ontology service; defaults to :func:`aivc.ontology.get_ontologies`.

    Returns
    -------
    ObsResult
        The harmonized frame, the findings (errors and warnings) and one decision per distinct
        submitted value of each ontology field. Findings and decisions come in field order,
        then sorted by submitted value.
    """
    onto = ontologies if ontologies is not None else get_ontologies()
    n = len(obs)
    findings: list[Finding] = []
    decisions: list[Decision] = []
    outputs: dict[str, _FieldOutput] = {}
    ctx = np.zeros(n, dtype=np.int64)
    # tissue_type goes first: it decides which rule applies to each cell's tissue.
    for name in ("tissue_type", *[f for f in STANDARD_FIELDS if f != "tissue_type"]):
        spec = manifest.obs[name]
        if name in ONTOLOGY_FIELDS:
            resolver: Resolver = TermResolver(
                name, manifest.organism, onto, label_map=dict(spec.label_map), constant=spec.column is None
            )
        else:
            resolver = _OTHER_RESOLVERS[name]
        contexts = (ctx, len(TISSUE_TYPES)) if name == "tissue" else None
        out = _harmonize_field(name, spec, obs, resolver, contexts)
        outputs[name] = out
        if name == "tissue_type":  # cells with a bad tissue_type are checked as "tissue"
            ctx = np.maximum(pd.Index(TISSUE_TYPES).get_indexer(out.values), 0).astype(np.int64)
    for name in STANDARD_FIELDS:
        findings.extend(outputs[name].findings)
        decisions.extend(outputs[name].decisions)
    columns: dict[str, np.ndarray] = {}
    for name in STANDARD_FIELDS:
        values = outputs[name].values
        columns[TERM_COLUMNS.get(name, name)] = values.astype(bool) if name == "is_primary_data" else values
    for name in ONTOLOGY_FIELDS:
        labels = outputs[name].labels
        columns[name] = labels if labels is not None else np.full(n, "", dtype=object)
    frame = pd.DataFrame({c: columns[c] for c in OUTPUT_COLUMNS}, index=obs.index)
    refused = {TERM_COLUMNS.get(name, name): outputs[name].refused for name in STANDARD_FIELDS}
    if manifest.is_perturbation_screen:  # optional field: adds PERTURBATION_COLUMNS after OUTPUT_COLUMNS
        from aivc.ingest.perturbation_fields import harmonize_perturbations

        screen = harmonize_perturbations(obs, manifest)
        frame = pd.concat([frame, screen.frame], axis=1)
        findings.extend(screen.findings)
        decisions.extend(screen.decisions)
    return ObsResult(frame, findings, decisions, refused)


_OTHER_RESOLVERS: dict[str, Resolver] = {
    "tissue_type": _resolve_tissue_type,
    "suspension_type": _resolve_suspension_type,
    "donor_id": _resolve_donor_id,
    "is_primary_data": _resolve_bool,
}


@dataclass
class _Distinct:
    """The distinct submitted values of one field, crossed with the cells' contexts.

    Cell ``i`` holds value ``uniques[combo[i] // n_ctx]`` in context ``combo[i] % n_ctx``;
    ``combo[i] == -1`` marks a missing value.
    """

    uniques: list[object]
    combo: np.ndarray
    n_ctx: int
    where: str
    constant: bool

    @property
    def size(self) -> int:
        return len(self.uniques) * self.n_ctx

    def counts(self) -> np.ndarray:
        return np.bincount(self.combo[self.combo >= 0], minlength=self.size)

    def present(self) -> list[int]:
        """The (value, context) pairs that occur, sorted by submitted value then context."""
        present = [int(c) for c in np.flatnonzero(self.counts())]
        if self.constant and len(self.combo) == 0 and not _is_blank(self.uniques[0]):
            present = [0]  # no cells: still check the constant itself
        return sorted(present, key=lambda c: (_sort_key(self.uniques[c // self.n_ctx]), c % self.n_ctx))


def _distinct(name: str, spec: FieldSpec, obs: pd.DataFrame, contexts: tuple[np.ndarray, int] | None) -> _Distinct:
    if spec.column is not None:
        codes, uniques = _factorize(obs[spec.column])
        where = f"obs[{spec.column!r}] ({name})"
    else:
        codes, uniques = np.zeros(len(obs), dtype=np.int64), [spec.value]
        where = f"manifest obs/{name}/value"
    if name != "donor_id":  # blank strings are missing values (blank donor ids get their own code)
        blank = np.array([_is_blank(u) for u in uniques], dtype=bool)
        if blank.any():
            remap = np.where(blank, -1, np.arange(len(uniques)))
            codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
    ctx, n_ctx = contexts if contexts is not None else (np.zeros(len(obs), dtype=np.int64), 1)
    combo = np.where(codes >= 0, codes * n_ctx + ctx, -1)
    return _Distinct(uniques, combo, n_ctx, where, constant=spec.column is None)


def _harmonize_field(
    name: str,
    spec: FieldSpec,
    obs: pd.DataFrame,
    resolve: Resolver,
    contexts: tuple[np.ndarray, int] | None,
) -> _FieldOutput:
    """Resolve each distinct (value, context) pair of one field once and spread it over the cells."""
    fill: str | bool = False if name == "is_primary_data" else ""
    if spec.column is not None and spec.column not in obs.columns:
        blank = np.full(len(obs), fill, dtype=object)
        missing = [_missing_column(name, spec.column, obs)]
        return _FieldOutput(blank, np.full(len(obs), "", dtype=object), missing, [], np.ones(len(obs), dtype=bool))
    distinct = _distinct(name, spec, obs, contexts)
    counts = distinct.counts()
    values = np.full(distinct.size + 1, fill, dtype=object)  # the last slot is for missing values
    labels = np.full(distinct.size + 1, "", dtype=object)
    accepted = np.zeros(distinct.size + 1, dtype=bool)
    problems: dict[tuple[int, str, str], list[int]] = {}
    decided: dict[tuple[str, str, str, How], int] = {}
    for c in distinct.present():
        raw = distinct.uniques[c // distinct.n_ctx]
        outcome = resolve(raw, c % distinct.n_ctx)
        if outcome.value is None:
            if name != "is_primary_data":  # keep what was submitted, for the report
                values[c] = raw if isinstance(raw, str) else str(raw)
            for p in outcome.problems:
                problems.setdefault((c // distinct.n_ctx, p.code, p.message), []).append(c)
            continue
        values[c], labels[c], accepted[c] = outcome.value, outcome.label, True
        if name in ONTOLOGY_FIELDS and outcome.how is not None:
            key = (str(raw), str(outcome.value), outcome.label, outcome.how)
            decided[key] = decided.get(key, 0) + int(counts[c])
    findings = _null_findings(name, spec, obs, distinct)
    findings += _value_findings(problems, distinct, counts, obs.index)
    if spec.label_map:
        findings += _unused_label_map(name, spec, distinct.uniques)
    decisions = [Decision(name, s, r, lab, how, k) for (s, r, lab, how), k in decided.items()]
    index = np.where(distinct.combo >= 0, distinct.combo, distinct.size)
    labelled = labels[index] if name in ONTOLOGY_FIELDS else None
    return _FieldOutput(values[index], labelled, findings, decisions, ~accepted[index])


def _is_blank(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def _factorize(column: pd.Series) -> tuple[np.ndarray, list[object]]:
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), list(np.asarray(uniques, dtype=object))


def _sort_key(value: object) -> tuple[str, str]:
    return (str(value), type(value).__name__)


def _rows(index: pd.Index, first: int, count: int) -> str:
    head = f"{str(index[first])!r} (index {first})"
    return f"row {head}" if count == 1 else f"rows {head} and {count - 1} more"


def _missing_column(name: str, column: str, obs: pd.DataFrame) -> Finding:
    available = [str(c) for c in obs.columns]
    shown = ", ".join(map(repr, available[:30])) + (f" and {len(available) - 30} more" if len(available) > 30 else "")
    close = difflib.get_close_matches(column, available, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return Finding(
        OBS_COLUMN_MISSING,
        f"obs[{column!r}] ({name})",
        f"obs has no column {column!r} (the manifest's source of {name}); available columns: {shown or 'none'}{hint}",
    )


def _null_findings(name: str, spec: FieldSpec, obs: pd.DataFrame, distinct: _Distinct) -> list[Finding]:
    if spec.column is None:
        if name != "donor_id" and _is_blank(spec.value):
            return [Finding(OBS_NULL_VALUE, distinct.where, f"the constant {name} is empty; give a value")]
        return []
    missing = distinct.combo < 0
    if not missing.any():
        return []
    first, count = int(np.argmax(missing)), int(missing.sum())
    return [
        Finding(
            OBS_NULL_VALUE,
            f"{distinct.where} {_rows(obs.index, first, count)}",
            f"{count} cells have no {name} in column {spec.column!r} (NaN, None or empty string); every cell needs one",
        )
    ]


def _value_findings(
    problems: dict[tuple[int, str, str], list[int]], distinct: _Distinct, counts: np.ndarray, index: pd.Index
) -> list[Finding]:
    """One finding per (distinct value, problem), located at its first cell with a row count."""
    if distinct.constant:
        return [Finding(code, distinct.where, message) for (_u, code, message) in problems]
    if not problems:
        return []
    first = np.full(distinct.size, len(distinct.combo), dtype=np.int64)
    valid = distinct.combo >= 0
    np.minimum.at(first, distinct.combo[valid], np.flatnonzero(valid))
    out: list[Finding] = []
    for (_u, code, message), combos in problems.items():
        count = int(sum(counts[c] for c in combos))
        row = int(min(first[c] for c in combos))
        out.append(Finding(code, f"{distinct.where} {_rows(index, row, count)}", message))
    return out


def _unused_label_map(name: str, spec: FieldSpec, uniques: list[object]) -> list[Finding]:
    seen: set[str] = set()
    for u in uniques:
        if u is not None and str(u).strip():
            seen.update((str(u), str(u).strip()))
    out = []
    for key in sorted(spec.label_map):
        if key not in seen and key.strip() not in seen:
            sample = ", ".join(repr(s) for s in sorted(seen)[:5])
            out.append(
                Finding(
                    OBS_LABEL_MAP_UNUSED,
                    f"manifest obs/{name}/label_map[{key!r}]",
                    f"label_map key {key!r} never occurs in obs[{spec.column!r}] (values there include {sample or 'none'})",
                    severity="warning",
                )
            )
    return out

