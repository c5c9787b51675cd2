"""Ontology-aware agreement and roll-ups, on real Cell Ontology terms."""

from __future__ import annotations

import pytest

from aivc.errors import UsageError
from aivc.instruments.agreement import Agreement, RollUp, agreement, agreement_counts, agreement_many, depth

CD4_AB_T = "CL:0000624"  # CD4-positive, alpha-beta T cell
T_CELL = "CL:0000084"
B_CELL = "CL:0000236"
LYMPHOCYTE = "CL:0000542"
TREG = "CL:0000815"  # regulatory T cell
CD14_MONO = "CL:0001054"
NK = "CL:0000623"


def test_the_five_relations():
    assert agreement(T_CELL, CD4_AB_T) is Agreement.ANCESTOR  # predicted coarser than submitted
    assert agreement(CD4_AB_T, T_CELL) is Agreement.DESCENDANT  # predicted finer
    assert agreement(B_CELL, T_CELL) is Agreement.CONFLICT
    assert agreement(T_CELL, B_CELL) is Agreement.CONFLICT
    assert agreement(B_CELL, B_CELL) is Agreement.EXACT
    assert agreement(LYMPHOCYTE, TREG) is Agreement.ANCESTOR
    assert agreement(NK, CD14_MONO) is Agreement.CONFLICT
    for nothing in ("unknown", "na", "", None):
        assert agreement(B_CELL, nothing) is Agreement.UNLABELLED
    assert agreement("CL:9999999", T_CELL) is Agreement.CONFLICT  # not a term of the pinned CL


def test_counts_and_fractions():
    pred = [T_CELL, CD4_AB_T, B_CELL, B_CELL, T_CELL]
    sub = [CD4_AB_T, T_CELL, T_CELL, B_CELL, "unknown"]
    cats = agreement_many(pred, sub)
    assert cats.tolist() == ["ancestor", "descendant", "conflict", "exact", "unlabelled"]
    c = agreement_counts(cats)
    assert c["counts"] == {"exact": 1, "ancestor": 1, "descendant": 1, "conflict": 1, "unlabelled": 1}
    assert (c["n_labelled"], c["agree"], c["agree_fraction"]) == (4, 3, 0.75)
    assert c["fractions"]["conflict"] == 0.25 and c["fractions"]["unlabelled"] == 0.2


def test_rollup_to_chosen_terms():
    r = RollUp.parse(f"{T_CELL}, {B_CELL}")
    assert r.apply_many([CD4_AB_T, TREG, B_CELL, CD14_MONO, "unknown"]) == [T_CELL, T_CELL, B_CELL, None, None]
    nested = RollUp.parse(f"{LYMPHOCYTE},{T_CELL}")  # the most specific chosen term wins
    assert nested.apply(CD4_AB_T) == T_CELL and nested.apply(NK) == LYMPHOCYTE and nested.apply(CD14_MONO) is None
    assert nested.describe() == f"{LYMPHOCYTE},{T_CELL}"


def test_rollup_to_depth():
    assert (depth("CL:0000000"), depth(LYMPHOCYTE), depth(T_CELL)) == (0, 8, 9)
    r = RollUp.parse("depth:8")
    assert r.apply(CD4_AB_T) == LYMPHOCYTE and r.apply(B_CELL) == LYMPHOCYTE and r.apply(LYMPHOCYTE) == LYMPHOCYTE
    assert RollUp.parse("depth:0").apply(TREG) == "CL:0000000"


@pytest.mark.parametrize("spec", ["depth:x", "CL:9999999", "UBERON:0000178", " , "])
def test_bad_rollups_are_usage_errors(spec):
    with pytest.raises(UsageError) as info:
        RollUp.parse(spec)
    assert info.value.where == "--rollup"
