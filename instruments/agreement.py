"""Ontology-aware agreement between predicted and submitted Cell Ontology terms, and roll-ups.

Agreement of a prediction ``p`` with a submitted label ``s`` (both CL term ids):

``exact``
    ``p == s``.
``ancestor``
    ``p`` is an ancestor of ``s``: the prediction is coarser ("T cell" for a submitted
    "CD4-positive, alpha-beta T cell") and agrees with it.
``descendant``
    ``p`` is a descendant of ``s``: the prediction is finer and agrees with it.
``conflict``
    neither (e.g. "B cell" against "T cell"), or a term the ontology does not know.
``unlabelled``
    nothing was submitted (``unknown``, ``na``, empty).

Ancestry is the closure the pinned CL release ships (:mod:`aivc.ontology`).

Fractions always name their denominator: the four agreement categories are fractions *of
labelled cells* (``fractions_of_labelled``, summing to 1), ``unlabelled`` is a count with
its own fraction *of all cells* (``unlabelled_fraction_of_cells``).

A roll-up maps terms to a coarser level before comparing or counting: to a chosen set of
terms, the *groups* (each term goes to the most specific chosen term that is itself or one
of its ancestors; ``None`` when there is none) or to a depth (the most specific of the term
and its ancestors whose depth is at most ``N``, where a term's depth is the number of its
ancestors in the closure: ``cell`` (CL:0000000) has depth 0).

Roll-up agreement (:func:`rollup_agreement`) counts every labelled cell whose *submitted*
term rolls up into a group. Such a cell agrees when its prediction rolls up to the same
group and is a conflict when its prediction rolls up to another group *or to none* (a T
cell predicted "natural killer cell" under the groups T cell, B cell disagrees). Labelled
cells whose submitted term is outside every group are *not in the roll-up* and reported
apart, as are unlabelled cells; so ``agree + conflicts == labelled cells in the groups``.

Example
-------
>>> agreement("CL:0000084", "CL:0000624")  # T cell predicted, CD4+ ab T cell submitted
<Agreement.ANCESTOR: 'ancestor'>
>>> agreement("CL:0000236", "CL:0000084").value  # B cell vs T cell
'conflict'
>>> RollUp.parse("CL:0000084,CL:0000236").apply("CL:0000624")
'CL:0000084'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from aivc.errors import UsageError
from aivc.ontology import NON_ONTOLOGY_VALUES, Ontologies, get_ontologies


class Agreement(str, Enum):
    EXACT = "exact"
    ANCESTOR = "ancestor"
    DESCENDANT = "descendant"
    CONFLICT = "conflict"
    UNLABELLED = "unlabelled"


CATEGORIES: tuple[str, ...] = tuple(a.value for a in Agreement)
AGREEING: frozenset[str] = frozenset({"exact", "ancestor", "descendant"})


def is_unlabelled(term: str | None) -> bool:
    return term is None or term == "" or term in NON_ONTOLOGY_VALUES


def agreement(predicted: str, submitted: str | None, onto: Ontologies | None = None) -> Agreement:
    """How a predicted term relates to a submitted one (see the module docstring)."""
    if is_unlabelled(submitted):
        return Agreement.UNLABELLED
    assert submitted is not None
    if predicted == submitted:
        return Agreement.EXACT
    o = onto or get_ontologies()
    if o.lookup(predicted) is None or o.lookup(submitted) is None:
        return Agreement.CONFLICT
    if predicted in o.ancestors(submitted):
        return Agreement.ANCESTOR
    if submitted in o.ancestors(predicted):
        return Agreement.DESCENDANT
    return Agreement.CONFLICT


def agreement_many(predicted: Sequence[str], submitted: Sequence[str | None], onto: Ontologies | None = None) -> np.ndarray:
    """``agreement`` for aligned sequences, as an array of category strings (each distinct pair computed once)."""
    import pandas as pd

    if len(predicted) != len(submitted):
        raise ValueError(f"predicted and submitted differ in length: {len(predicted)} and {len(submitted)}")
    if not len(predicted):
        return np.empty(0, dtype=object)
    frame = pd.DataFrame({"p": pd.Series(predicted, dtype=object), "s": pd.Series(submitted, dtype=object)})
    codes = frame.groupby(["p", "s"], dropna=False, sort=False).ngroup().to_numpy()  # one code per distinct pair
    first = np.unique(codes, return_index=True)[1]
    values = np.empty(len(first), dtype=object)
    for code, i in enumerate(first):
        p, s = frame.at[i, "p"], frame.at[i, "s"]
        values[code] = agreement(p, None if s is None or s != s else s, onto).value  # NaN (s != s): not labelled
    return values[codes]


def agreement_counts(categories: Iterable[str]) -> dict[str, Any]:
    """Counts per category; fractions of the four agreement categories among *labelled*
    cells, and the unlabelled cells' fraction of *all* cells, each named by its denominator.

    ``fractions`` (the key earlier versions wrote, kept for scripts that read it) holds the
    same numbers in one mapping: the four categories of labelled cells, ``unlabelled`` of all.

    >>> c = agreement_counts(["exact", "conflict", "unlabelled", "exact"])
    >>> c["fractions_of_labelled"]["exact"], c["unlabelled_fraction_of_cells"]
    (0.666667, 0.25)
    """
    from collections import Counter

    tally = Counter(categories)
    counts = {c: int(tally.get(c, 0)) for c in CATEGORIES}
    n = sum(tally.values())
    labelled = n - counts["unlabelled"]
    fractions = {c: _frac(counts[c], labelled) for c in CATEGORIES if c != "unlabelled"}
    agree = sum(counts[c] for c in AGREEING)
    return {
        "n_cells": n, "n_labelled": labelled, "n_unlabelled": counts["unlabelled"], "counts": counts,
        "fractions_of_labelled": fractions, "unlabelled_fraction_of_cells": _frac(counts["unlabelled"], n),
        "fractions": {**fractions, "unlabelled": _frac(counts["unlabelled"], n)},
        "agree": agree, "agree_fraction": _frac(agree, labelled),
    }  # fmt: skip


def agreement_rows(a: Mapping[str, Any]) -> list[tuple[str, int, float | None, float | None]]:
    """Table rows ``(category, cells, fraction of labelled cells, fraction of all cells)`` of an
    :func:`agreement_counts` result: the four agreement categories, ``labelled, all``,
    ``unlabelled`` (no fraction of labelled cells) and ``all cells``. Each column has one denominator.

    >>> [r[0] for r in agreement_rows(agreement_counts(["exact", "unlabelled"]))][-3:]
    ['labelled, all', 'unlabelled', 'all cells']
    """
    nl, nc = int(a["n_labelled"]), int(a["n_cells"])
    rows: list[tuple[str, int, float | None, float | None]] = [
        (c, int(a["counts"][c]), a["fractions_of_labelled"][c], _frac(a["counts"][c], nc)) for c in CATEGORIES if c != "unlabelled"
    ]
    rows += [("labelled, all", nl, _frac(nl, nl), _frac(nl, nc)), ("unlabelled", int(a["n_unlabelled"]), None, a["unlabelled_fraction_of_cells"]), ("all cells", nc, None, _frac(nc, nc))]
    return rows


def _frac(n: int, of: int) -> float | None:
    return round(n / of, 6) if of else None


def depth(term: str, onto: Ontologies | None = None) -> int:
    """The number of ancestors of ``term`` in the closure (``cell`` has depth 0)."""
    return len((onto or get_ontologies()).ancestors(term))


@dataclass(frozen=True)
class RollUp:
    """Map terms to a coarser level: to chosen ``targets`` or to a maximum ``max_depth``."""

    targets: tuple[str, ...] = ()
    max_depth: int | None = None

    @classmethod
    def parse(cls, spec: str, onto: Ontologies | None = None) -> RollUp:
        """``"CL:0000084,CL:0000236"`` (terms) or ``"depth:6"``; terms must be known CL terms."""
        o = onto or get_ontologies()
        spec = spec.strip()
        if spec.startswith("depth:"):
            raw = spec.partition(":")[2]
            if not raw.isdigit():
                raise UsageError(f"roll-up depth must be a whole number, got {raw!r} (e.g. depth:6)", where="--rollup")
            return cls(max_depth=int(raw))
        terms = tuple(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
        if not terms:
            raise UsageError("--rollup needs CL term ids separated by commas, or depth:N", where="--rollup")
        for t in terms:
            info = o.lookup(t)
            if info is None or info.ontology != "CL":
                raise UsageError(f"roll-up term {t!r} is not a Cell Ontology term", where="--rollup")
        return cls(targets=terms)

    def describe(self) -> str:
        return f"depth:{self.max_depth}" if self.max_depth is not None else ",".join(self.targets)

    def apply(self, term: str | None, onto: Ontologies | None = None) -> str | None:
        """The rolled-up term; ``None`` when no target covers it (or it is unlabelled/unknown)."""
        o = onto or get_ontologies()
        if is_unlabelled(term) or o.lookup(term) is None:  # type: ignore[arg-type]
            return None
        assert term is not None
        lineage = {term} | set(o.ancestors(term))
        if self.max_depth is not None:
            ok = [t for t in lineage if depth(t, o) <= self.max_depth]
        else:
            ok = [t for t in self.targets if t in lineage]
        if not ok:
            return None
        return max(ok, key=lambda t: (depth(t, o), t))  # the most specific; ties by id

    def apply_many(self, terms: Sequence[str | None], onto: Ontologies | None = None) -> list[str | None]:
        cache: dict[str | None, str | None] = {}
        out = []
        for t in terms:
            if t not in cache:
                cache[t] = self.apply(t, onto)
            out.append(cache[t])
        return out


class RollUpOutcome(str, Enum):
    """What a cell contributes to a roll-up's agreement (see the module docstring)."""

    AGREE = "agree"
    OTHER_GROUP = "other_group"  # conflict: the prediction rolls up to another group
    NO_GROUP = "no_group"  # conflict: the prediction rolls up to no group
    NOT_IN_ROLLUP = "not_in_rollup"  # labelled, but the submitted term is outside every group
    UNLABELLED = "unlabelled"


def rollup_outcome(predicted_group: str | None, submitted_group: str | None, labelled: bool) -> RollUpOutcome:
    """The outcome of one cell from its rolled-up predicted and submitted terms."""
    if not labelled:
        return RollUpOutcome.UNLABELLED
    if submitted_group is None:
        return RollUpOutcome.NOT_IN_ROLLUP
    if predicted_group == submitted_group:
        return RollUpOutcome.AGREE
    return RollUpOutcome.NO_GROUP if predicted_group is None else RollUpOutcome.OTHER_GROUP


@dataclass(frozen=True)
class RollUpGroup:
    """One group of a roll-up: labelled cells submitted into it and what they were predicted."""

    term_id: str
    n_submitted: int
    n_agree: int
    n_other_group: int
    n_no_group: int
    n_predicted: int = 0  # labelled cells (of any group or none) whose prediction rolls up into it

    @property
    def recall(self) -> float | None:
        return _frac(self.n_agree, self.n_submitted)


@dataclass(frozen=True)
class RollUpAgreement:
    """Roll-up agreement of a set of cells; the group rows add up to the totals.

    ``n_in_groups`` (labelled cells whose submitted term rolls up into a group) ==
    ``agree + n_other_group + n_no_group`` == the sum of the groups' ``n_submitted``.
    """

    spec: str
    groups: tuple[RollUpGroup, ...]
    n_cells: int
    n_unlabelled: int
    n_not_in_rollup: int
    n_not_in_rollup_predicted_in_group: int

    @property
    def n_in_groups(self) -> int:
        return sum(g.n_submitted for g in self.groups)

    @property
    def agree(self) -> int:
        return sum(g.n_agree for g in self.groups)

    @property
    def n_other_group(self) -> int:
        return sum(g.n_other_group for g in self.groups)

    @property
    def n_no_group(self) -> int:
        return sum(g.n_no_group for g in self.groups)

    @property
    def conflict(self) -> int:
        return self.n_other_group + self.n_no_group

    @property
    def agree_fraction(self) -> float | None:
        return _frac(self.agree, self.n_in_groups)

    def to_dict(self, label_of: Any = None) -> dict[str, Any]:
        """JSON-ready totals and one row per group (``label_of(term_id)`` names the groups)."""
        name = label_of or (lambda t: t)
        return {
            "spec": self.spec, "n_cells": self.n_cells, "n_labelled": self.n_in_groups + self.n_not_in_rollup,
            "n_in_groups": self.n_in_groups, "agree": self.agree, "agree_fraction": self.agree_fraction,
            "conflict": self.conflict, "conflict_other_group": self.n_other_group, "conflict_no_group": self.n_no_group,
            "n_not_in_rollup": self.n_not_in_rollup, "n_not_in_rollup_predicted_in_group": self.n_not_in_rollup_predicted_in_group,
            "n_unlabelled": self.n_unlabelled,
            "groups": [
                {"term_id": g.term_id, "label": name(g.term_id), "n_submitted": g.n_submitted, "n_agree": g.n_agree,
                 "n_conflict_other_group": g.n_other_group, "n_conflict_no_group": g.n_no_group, "recall": g.recall}
                for g in self.groups
            ],
            # the keys reports before schema 2 wrote, kept with the corrected counts (extend, don't rename)
            "n_compared": self.n_in_groups, "n_not_rolled": self.n_not_in_rollup,
            "classes": [
                {"term_id": g.term_id, "label": name(g.term_id), "n_submitted": g.n_submitted, "n_predicted": g.n_predicted, "n_agree": g.n_agree, "recall": g.recall}
                for g in self.groups
            ],
        }  # fmt: skip


def rollup_agreement(predicted: Sequence[str], submitted: Sequence[str | None], spec: RollUp, onto: Ontologies | None = None) -> RollUpAgreement:
    """Roll both terms of every cell up with ``spec`` and count agreement (module docstring).

    >>> r = rollup_agreement(["CL:0000623", "CL:0000084"], ["CL:0000624", "CL:0000084"], RollUp.parse("CL:0000084,CL:0000236"))
    >>> r.agree, r.n_no_group, r.n_in_groups  # a CD4+ T cell predicted NK is a conflict
    (1, 1, 2)
    """
    sub = spec.apply_many(submitted, onto)
    pred = spec.apply_many(predicted, onto)
    outcomes = [rollup_outcome(p, g, not is_unlabelled(s)) for p, g, s in zip(pred, sub, submitted, strict=True)]
    if spec.targets:
        terms = list(spec.targets)
    else:
        terms = sorted({t for t in sub if t is not None} | {t for t, o in zip(pred, outcomes, strict=True) if t is not None and o is not RollUpOutcome.UNLABELLED})
    groups = []
    for t in terms:
        mine = [o for g, o in zip(sub, outcomes, strict=True) if g == t and o is not RollUpOutcome.UNLABELLED]
        predicted_here = sum(1 for p, o in zip(pred, outcomes, strict=True) if p == t and o is not RollUpOutcome.UNLABELLED)
        groups.append(
            RollUpGroup(t, len(mine), mine.count(RollUpOutcome.AGREE), mine.count(RollUpOutcome.OTHER_GROUP), mine.count(RollUpOutcome.NO_GROUP), predicted_here)
        )
    outside = [p for p, o in zip(pred, outcomes, strict=True) if o is RollUpOutcome.NOT_IN_ROLLUP]
    return RollUpAgreement(
        spec=spec.describe(), groups=tuple(groups), n_cells=len(outcomes), n_unlabelled=outcomes.count(RollUpOutcome.UNLABELLED),
        n_not_in_rollup=len(outside), n_not_in_rollup_predicted_in_group=sum(1 for p in outside if p is not None),
    )  # fmt: skip
