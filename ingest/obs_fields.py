"""Harmonize and validate the standard cell fields of a submission (CELLxGENE schema 7.x obs).

Each standard field is filled from the manifest (``obs.<field>``): a constant ``value`` or an obs
``column``, optionally translated through a ``label_map``. Ontology fields accept term ids
(``"CL:0000236"``) or labels and synonyms (``"B cell"``, ``"B-lymphocyte"``), which are resolved to
ids against the ontology releases pinned by the schema; what each field accepts is declared in
:mod:`aivc.ingest.obs_rules`. Work is done once per distinct submitted value, so a million cells
cost about as much as their few hundred distinct labels.

Every problem becomes a :class:`~aivc.errors.Finding` with a stable code (see ``OBS_CODES``) that
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
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.findings import Decision, How
from aivc.ingest.manifest import ONTOLOGY_FIELDS, ORGANISMS, STANDARD_FIELDS, FieldSpec, Manifest
from aivc.ingest.obs_rules import (
    HUMAN,
    MULTI_DELIMITER,
    OUTPUT_COLUMNS,
    RULE_PREFIXES,
    SUSPENSION_TYPES,
    TERM_COLUMNS,
    TISSUE_TYPE_ALIASES,
    TISSUE_TYPES,
    TermRule,
    term_rule,
)
from aivc.ontology import NON_ONTOLOGY_VALUES, Ontologies, TermInfo, get_ontologies, with_article

# -- finding codes ----------------------------------------------------------------------------
OBS_COLUMN_MISSING = "OBS_COLUMN_MISSING"
OBS_NULL_VALUE = "OBS_NULL_VALUE"
OBS_UNKNOWN_TERM = "OBS_UNKNOWN_TERM"
OBS_WRONG_ONTOLOGY = "OBS_WRONG_ONTOLOGY"
OBS_FORBIDDEN_TERM = "OBS_FORBIDDEN_TERM"
OBS_DEPRECATED_TERM = "OBS_DEPRECATED_TERM"
OBS_UNMATCHED_LABEL = "OBS_UNMATCHED_LABEL"
OBS_AMBIGUOUS_LABEL = "OBS_AMBIGUOUS_LABEL"
OBS_LABEL_MAP_UNUSED = "OBS_LABEL_MAP_UNUSED"
OBS_LITERAL_NOT_ALLOWED = "OBS_LITERAL_NOT_ALLOWED"
OBS_BAD_MULTI_TERM = "OBS_BAD_MULTI_TERM"
OBS_ETHNICITY_NOT_NA = "OBS_ETHNICITY_NOT_NA"
OBS_BAD_ENUM = "OBS_BAD_ENUM"
OBS_BAD_BOOL = "OBS_BAD_BOOL"
OBS_BAD_DONOR_ID = "OBS_BAD_DONOR_ID"
#: Every code :func:`harmonize_obs` can report (all errors except ``OBS_LABEL_MAP_UNUSED``).
OBS_CODES: tuple[str, ...] = (
    OBS_COLUMN_MISSING,
    OBS_NULL_VALUE,
    OBS_UNKNOWN_TERM,
    OBS_WRONG_ONTOLOGY,
    OBS_FORBIDDEN_TERM,
    OBS_DEPRECATED_TERM,
    OBS_UNMATCHED_LABEL,
    OBS_AMBIGUOUS_LABEL,
    OBS_LABEL_MAP_UNUSED,
    OBS_LITERAL_NOT_ALLOWED,
    OBS_BAD_MULTI_TERM,
    OBS_ETHNICITY_NOT_NA,
    OBS_BAD_ENUM,
    OBS_BAD_BOOL,
    OBS_BAD_DONOR_ID,
)

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


@dataclass(frozen=True)
class _Problem:
    code: str
    message: str


@dataclass(frozen=True)
class _Outcome:
    """What one distinct submitted value became: a value (and label), or problems."""

    value: str | bool | None
    label: str = ""
    how: How | None = None
    problems: tuple[_Problem, ...] = ()

    @staticmethod
    def fail(code: str, message: str) -> _Outcome:
        return _Outcome(None, problems=(_Problem(code, message),))


Resolver = Callable[[object, int], _Outcome]

_TERM_ID = re.compile(r"^([A-Za-z][A-Za-z0-9]*):(\d+)$")
_OBO_ID = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_(\d+)$")
# Which way of resolving a value is least direct, for a multi-term value's Decision.how.
_HOW_RANK: dict[str, int] = {"constant": 0, "term_id": 1, "label": 2, "synonym": 3, "label_map": 4}


# -- ontology fields --------------------------------------------------------------------------
class _TermResolver:
    """Resolves the distinct submitted values of one ontology field to term ids."""

    def __init__(
        self,
        field_name: str,
        organism: str,
        ontologies: Ontologies,
        *,
        label_map: dict[str, str],
        constant: bool,
    ) -> None:
        self.field = field_name
        self.organism = organism
        self.onto = ontologies
        self.label_map = label_map
        self.constant = constant

    def __call__(self, raw: object, ctx: int) -> _Outcome:
        rule = term_rule(self.field, self.organism, TISSUE_TYPES[ctx])
        submitted = str(raw)
        text = submitted.strip()
        mapped = self.label_map.get(submitted, self.label_map.get(text))
        shown = repr(submitted)
        if mapped is not None:
            text = mapped.strip()
            shown = f"{submitted!r} (label_map -> {mapped!r})"
        if self.field == "self_reported_ethnicity" and self.organism != HUMAN:
            if text.casefold() == "na":
                return _Outcome("na", "na", self._how("term_id", mapped))
            name = ORGANISMS.get(self.organism, self.organism)
            return _Outcome.fail(
                OBS_ETHNICITY_NOT_NA,
                f"{shown} given, but self_reported_ethnicity must be 'na' for {name} ({self.organism})",
            )
        parts = self._split(text, rule)
        if len(parts) > 1:
            literal = next((p for p in parts if p.casefold() in NON_ONTOLOGY_VALUES), None)
            if literal is not None:
                return _Outcome.fail(
                    OBS_BAD_MULTI_TERM, f"{shown} combines {literal!r} with other values; {literal!r} must stand alone"
                )
        outcomes = [self._one(p, rule, shown if len(parts) == 1 else f"{p!r} in {shown}") for p in parts]
        problems = tuple(p for o in outcomes for p in o.problems)
        if problems:
            return _Outcome(None, problems=problems)
        pairs = sorted({(str(o.value), o.label) for o in outcomes})
        if len(pairs) > 1:
            bad = [t for t, _ in pairs if t.split(":", 1)[0] not in rule.multi_prefixes]
            if bad:
                only = " or ".join(rule.multi_prefixes) or "no"
                return _Outcome.fail(
                    OBS_BAD_MULTI_TERM,
                    f"{shown} lists several terms, but {self.field} accepts several {only} terms only "
                    f"({', '.join(bad)} cannot be combined); {self.field} must be {rule.valid}",
                )
        how = max((o.how for o in outcomes if o.how), key=lambda h: _HOW_RANK[h])
        return _Outcome(
            MULTI_DELIMITER.join(t for t, _ in pairs),
            MULTI_DELIMITER.join(label for _, label in pairs),
            self._how(how, mapped),
        )

    def _how(self, how: How, mapped: str | None) -> How:
        if mapped is not None:
            return "label_map"
        if self.constant and how == "term_id":
            return "constant"
        return how

    def _split(self, text: str, rule: TermRule) -> list[str]:
        if not rule.multi_prefixes:
            return [text]
        if "||" in text:
            parts = [p.strip() for p in text.split("||")]
        elif rule.split_commas and "," in text and self.onto.resolve_label(text, rule.prefixes, n_closest=0).term_id is None:
            parts = [p.strip() for p in text.split(",")]
        else:
            return [text]
        return [p for p in parts if p] or [text]

    def _one(self, text: str, rule: TermRule, shown: str) -> _Outcome:
        lowered = text.casefold()
        if lowered in NON_ONTOLOGY_VALUES:
            if lowered in rule.literals:
                return _Outcome(lowered, lowered, "term_id")
            return _Outcome.fail(OBS_LITERAL_NOT_ALLOWED, f"{shown} is not allowed; {self.field} must be {rule.valid}")
        if not text:
            return _Outcome.fail(OBS_NULL_VALUE, f"{shown} is empty; {self.field} must be {rule.valid}")
        m = _TERM_ID.match(text) or _OBO_ID.match(text)
        if m is not None and (m.re is _TERM_ID or self.onto.supports(m.group(1))):
            return self._check(f"{m.group(1)}:{m.group(2)}", rule, shown, "term_id")
        match = self.onto.resolve_label(text, rule.prefixes)
        if match.term_id is not None and match.how is not None:
            return self._check(match.term_id, rule, shown, match.how)
        where = "/".join(rule.prefixes)
        if match.candidates:
            listed = ", ".join(self._describe(t) for t in match.candidates)
            return _Outcome.fail(
                OBS_AMBIGUOUS_LABEL,
                f"{shown} is the label or synonym of {len(match.candidates)} {where} terms: {listed}; "
                "give the term id, or map the value in label_map",
            )
        closest = ", ".join(f"{t} ({label})" for t, label in match.closest) or "none similar"
        return _Outcome.fail(
            OBS_UNMATCHED_LABEL,
            f"{shown} is not the label or synonym of any current {where} term (closest: {closest}); "
            f"give a term id or map the value in label_map; {self.field} must be {rule.valid}",
        )

    def _check(self, term_id: str, rule: TermRule, shown: str, how: How) -> _Outcome:
        prefix = term_id.split(":", 1)[0]
        what = shown if how == "term_id" else f"{shown} ({how} of {term_id})"
        if prefix not in rule.prefixes and prefix not in RULE_PREFIXES:
            if self.onto.supports(prefix):
                return _Outcome.fail(
                    OBS_WRONG_ONTOLOGY, f"{what} is {with_article(prefix)} term; {self.field} must be {rule.valid}"
                )
            return _Outcome.fail(
                OBS_UNKNOWN_TERM,
                f"{what} looks like a term id, but {prefix!r} is not a known ontology; {self.field} must be {rule.valid}",
            )
        info = self.onto.lookup(term_id)
        if info is None:
            version = self.onto.ontology_version(prefix) if self.onto.supports(prefix) else ""
            return _Outcome.fail(
                OBS_UNKNOWN_TERM,
                f"{what} is not a term of {prefix} {version}".rstrip() + f"; {self.field} must be {rule.valid}",
            )
        described = f"{what} ({info.label})" if how == "term_id" and info.label else what
        if prefix not in rule.prefixes:
            return _Outcome.fail(
                OBS_WRONG_ONTOLOGY, f"{described} is {with_article(prefix)} term; {self.field} must be {rule.valid}"
            )
        if term_id in rule.forbidden:
            return _Outcome.fail(
                OBS_FORBIDDEN_TERM, f"{described} is not allowed as {self.field}; {self.field} must be {rule.valid}"
            )
        if info.deprecated:
            return _Outcome.fail(
                OBS_DEPRECATED_TERM,
                f"{described} is obsolete in {prefix} {self.onto.ontology_version(prefix)}; {self._replacement(term_id)}",
            )
        if not rule.admits(term_id, self.onto):
            return _Outcome.fail(
                OBS_WRONG_ONTOLOGY, f"{described} is not a valid {self.field}; {self.field} must be {rule.valid}"
            )
        return _Outcome(term_id, info.label, how)

    def _peek(self, term_id: str) -> TermInfo | None:
        """Look up ids of the ontologies the rules use; others (maybe huge, maybe absent) are not loaded."""
        return self.onto.lookup(term_id) if term_id.split(":", 1)[0] in RULE_PREFIXES else None

    def _replacement(self, term_id: str) -> str:
        seen = {term_id}
        current = self._peek(term_id)
        chain: list[str] = []
        while current is not None and current.deprecated and current.replaced_by and current.replaced_by not in seen:
            chain.append(current.replaced_by)
            seen.add(current.replaced_by)
            current = self._peek(current.replaced_by)
        if chain:
            final = chain[-1]
            via = f" (via {', '.join(chain[:-1])})" if len(chain) > 1 else ""
            if current is None:
                return f"replaced by {final}{via}, which is outside the shipped ontologies: choose a current term"
            if current.deprecated:
                return f"replaced by {self._describe(final)}{via}, itself obsolete: choose a current term"
            return f"replaced by {self._describe(final)}{via}: use that id"
        info = self._peek(term_id)
        consider = [c for c in (info.consider if info else ()) if self._peek(c) is not None]
        if consider:
            return "no replacement; consider " + ", ".join(self._describe(c) for c in consider)
        return "no replacement: choose a current term"

    def _describe(self, term_id: str) -> str:
        info = self._peek(term_id)
        return f"{term_id} ({info.label})" if info is not None and info.label else term_id


# -- other fields -----------------------------------------------------------------------------
def _resolve_tissue_type(raw: object, ctx: int) -> _Outcome:
    text = " ".join(str(raw).casefold().split())
    text = TISSUE_TYPE_ALIASES.get(text, text)
    if text in TISSUE_TYPES:
        return _Outcome(text)
    extra = "; 'cell line' (schema 7.1) is not supported yet" if text == "cell line" else ""
    return _Outcome.fail(
        OBS_BAD_ENUM, f"{str(raw)!r} is not a tissue_type; use one of {', '.join(map(repr, TISSUE_TYPES))}{extra}"
    )


def _resolve_suspension_type(raw: object, ctx: int) -> _Outcome:
    text = str(raw).strip().casefold()
    if text in SUSPENSION_TYPES:
        return _Outcome(text)
    return _Outcome.fail(
        OBS_BAD_ENUM, f"{str(raw)!r} is not a suspension_type; use one of {', '.join(map(repr, SUSPENSION_TYPES))}"
    )


def _resolve_donor_id(raw: object, ctx: int) -> _Outcome:
    text = str(raw)
    if text.strip():
        return _Outcome(text)
    return _Outcome.fail(
        OBS_BAD_DONOR_ID,
        f"{text!r} is an empty donor id; name the individual ('pooled' for unassigned pooled cells, 'unknown' if not known)",
    )


def _resolve_bool(raw: object, ctx: int) -> _Outcome:
    if isinstance(raw, bool | np.bool_):
        return _Outcome(bool(raw))
    if isinstance(raw, str) and raw.strip().casefold() in ("true", "false"):
        return _Outcome(raw.strip().casefold() == "true")
    return _Outcome.fail(OBS_BAD_BOOL, f"{raw!r} is not a boolean; is_primary_data must be True or False")


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
            resolver: Resolver = _TermResolver(
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

