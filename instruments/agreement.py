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

A roll-up maps terms to a coarser level before comparing or counting: to a chosen set of
terms (each term goes to the most specific chosen term that is itself or one of its
ancestors; ``None`` when there is none) or to a depth (the most specific of the term and
its ancestors whose depth is at most ``N``, where a term's depth is the number of its
ancestors in the closure: ``cell`` (CL:0000000) has depth 0).

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

from collections.abc import Iterable, Sequence
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
    pairs: dict[tuple[str, str | None], str] = {}
    out = np.empty(len(predicted), dtype=object)
    for i, (p, s) in enumerate(zip(predicted, submitted, strict=True)):
        key = (p, s)
        hit = pairs.get(key)
        if hit is None:
            hit = pairs[key] = agreement(p, s, onto).value
        out[i] = hit
    return out


def agreement_counts(categories: Iterable[str]) -> dict[str, Any]:
    """Counts per category, and fractions among *labelled* cells (``unlabelled`` among all).

    >>> agreement_counts(["exact", "conflict", "unlabelled", "exact"])["fractions"]["exact"]
    0.666667
    """
    cats = list(categories)
    counts = {c: sum(1 for x in cats if x == c) for c in CATEGORIES}
    labelled = len(cats) - counts["unlabelled"]
    fractions = {c: round(counts[c] / labelled, 6) if labelled else None for c in CATEGORIES if c != "unlabelled"}
    fractions["unlabelled"] = round(counts["unlabelled"] / len(cats), 6) if cats else None
    agree = sum(counts[c] for c in AGREEING)
    return {"n_cells": len(cats), "n_labelled": labelled, "counts": counts, "fractions": fractions, "agree": agree, "agree_fraction": round(agree / labelled, 6) if labelled else None}


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
