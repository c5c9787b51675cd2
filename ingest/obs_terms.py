"""Ontology fields of a submission: the finding codes, and resolving submitted values to term ids.

:class:`TermResolver` turns each distinct submitted value of one ontology field (a term id,
an OBO-style id, a label or synonym, a ``label_map`` entry, or several joined by
``" || "``) into a term id with its label, or into the problems it has (each with a code of
:data:`OBS_CODES`), following the field's :class:`~aivc.ingest.obs_rules.TermRule`.
:mod:`aivc.ingest.obs_fields` runs it once per distinct value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from aivc.ingest.findings import How
from aivc.ingest.manifest import ORGANISMS
from aivc.ingest.obs_rules import HUMAN, MULTI_DELIMITER, RULE_PREFIXES, TISSUE_TYPES, TermRule, term_rule
from aivc.ontology import NON_ONTOLOGY_VALUES, Ontologies, TermInfo, with_article

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


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What one distinct submitted value became: a value (and label), or problems."""

    value: str | bool | None
    label: str = ""
    how: How | None = None
    problems: tuple[Problem, ...] = ()

    @staticmethod
    def fail(code: str, message: str) -> Outcome:
        return Outcome(None, problems=(Problem(code, message),))


Resolver = Callable[[object, int], Outcome]

_TERM_ID = re.compile(r"^([A-Za-z][A-Za-z0-9]*):(\d+)$")
_OBO_ID = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_(\d+)$")
# Which way of resolving a value is least direct, for a multi-term value's Decision.how.
_HOW_RANK: dict[str, int] = {"constant": 0, "term_id": 1, "label": 2, "synonym": 3, "label_map": 4}



# -- ontology fields --------------------------------------------------------------------------
class TermResolver:
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

    def __call__(self, raw: object, ctx: int) -> Outcome:
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
                return Outcome("na", "na", self._how("term_id", mapped))
            name = ORGANISMS.get(self.organism, self.organism)
            return Outcome.fail(
                OBS_ETHNICITY_NOT_NA,
                f"{shown} given, but self_reported_ethnicity must be 'na' for {name} ({self.organism})",
            )
        parts = self._split(text, rule)
        if len(parts) > 1:
            literal = next((p for p in parts if p.casefold() in NON_ONTOLOGY_VALUES), None)
            if literal is not None:
                return Outcome.fail(
                    OBS_BAD_MULTI_TERM, f"{shown} combines {literal!r} with other values; {literal!r} must stand alone"
                )
        outcomes = [self._one(p, rule, shown if len(parts) == 1 else f"{p!r} in {shown}") for p in parts]
        problems = tuple(p for o in outcomes for p in o.problems)
        if problems:
            return Outcome(None, problems=problems)
        pairs = sorted({(str(o.value), o.label) for o in outcomes})
        if len(pairs) > 1:
            bad = [t for t, _ in pairs if t.split(":", 1)[0] not in rule.multi_prefixes]
            if bad:
                only = " or ".join(rule.multi_prefixes) or "no"
                return Outcome.fail(
                    OBS_BAD_MULTI_TERM,
                    f"{shown} lists several terms, but {self.field} accepts several {only} terms only "
                    f"({', '.join(bad)} cannot be combined); {self.field} must be {rule.valid}",
                )
        how = max((o.how for o in outcomes if o.how), key=lambda h: _HOW_RANK[h])
        return Outcome(
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

    def _one(self, text: str, rule: TermRule, shown: str) -> Outcome:
        lowered = text.casefold()
        if lowered in NON_ONTOLOGY_VALUES:
            if lowered in rule.literals:
                return Outcome(lowered, lowered, "term_id")
            return Outcome.fail(OBS_LITERAL_NOT_ALLOWED, f"{shown} is not allowed; {self.field} must be {rule.valid}")
        if not text:
            return Outcome.fail(OBS_NULL_VALUE, f"{shown} is empty; {self.field} must be {rule.valid}")
        m = _TERM_ID.match(text) or _OBO_ID.match(text)
        if m is not None and (m.re is _TERM_ID or self.onto.supports(m.group(1))):
            return self._check(f"{m.group(1)}:{m.group(2)}", rule, shown, "term_id")
        match = self.onto.resolve_label(text, rule.prefixes)
        if match.term_id is not None and match.how is not None:
            return self._check(match.term_id, rule, shown, match.how)
        where = "/".join(rule.prefixes)
        if match.candidates:
            listed = ", ".join(self._describe(t) for t in match.candidates)
            return Outcome.fail(
                OBS_AMBIGUOUS_LABEL,
                f"{shown} is the label or synonym of {len(match.candidates)} {where} terms: {listed}; "
                "give the term id, or map the value in label_map",
            )
        closest = ", ".join(f"{t} ({label})" for t, label in match.closest) or "none similar"
        return Outcome.fail(
            OBS_UNMATCHED_LABEL,
            f"{shown} is not the label or synonym of any current {where} term (closest: {closest}); "
            f"give a term id or map the value in label_map; {self.field} must be {rule.valid}",
        )

    def _check(self, term_id: str, rule: TermRule, shown: str, how: How) -> Outcome:
        prefix = term_id.split(":", 1)[0]
        what = shown if how == "term_id" else f"{shown} ({how} of {term_id})"
        if prefix not in rule.prefixes and prefix not in RULE_PREFIXES:
            if self.onto.supports(prefix):
                return Outcome.fail(
                    OBS_WRONG_ONTOLOGY, f"{what} is {with_article(prefix)} term; {self.field} must be {rule.valid}"
                )
            return Outcome.fail(
                OBS_UNKNOWN_TERM,
                f"{what} looks like a term id, but {prefix!r} is not a known ontology; {self.field} must be {rule.valid}",
            )
        info = self.onto.lookup(term_id)
        if info is None:
            version = self.onto.ontology_version(prefix) if self.onto.supports(prefix) else ""
            return Outcome.fail(
                OBS_UNKNOWN_TERM,
                f"{what} is not a term of {prefix} {version}".rstrip() + f"; {self.field} must be {rule.valid}",
            )
        described = f"{what} ({info.label})" if how == "term_id" and info.label else what
        if prefix not in rule.prefixes:
            return Outcome.fail(
                OBS_WRONG_ONTOLOGY, f"{described} is {with_article(prefix)} term; {self.field} must be {rule.valid}"
            )
        if term_id in rule.forbidden:
            return Outcome.fail(
                OBS_FORBIDDEN_TERM, f"{described} is not allowed as {self.field}; {self.field} must be {rule.valid}"
            )
        if info.deprecated:
            return Outcome.fail(
                OBS_DEPRECATED_TERM,
                f"{described} is obsolete in {prefix} {self.onto.ontology_version(prefix)}; {self._replacement(term_id)}",
            )
        if not rule.admits(term_id, self.onto):
            return Outcome.fail(
                OBS_WRONG_ONTOLOGY, f"{described} is not a valid {self.field}; {self.field} must be {rule.valid}"
            )
        return Outcome(term_id, info.label, how)

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
