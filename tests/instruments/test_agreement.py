"""Ontology-aware agreement and roll-ups, on real Cell Ontology terms."""

from __future__ import annotations

import pytest

from aivc.errors import UsageError
from aivc.instruments.agreement import Agreement, RollUp, agreement, agreement_counts, agreement_many, agreement_rows, depth, rollup_agreement

CD4_AB_T = "CL:0000624"  # CD4-positive, alpha-beta T cell
T_CELL = "CL:0000084"
B_CELL = "CL:0000236"
LYMPHOCYTE = "CL:0000542"
TREG = "CL:0000815"  # regulatory T cell
CD14_MONO = "CL:0001054"
NK = "CL:0000623"
DENDRITIC = "CL:0000451"


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
    assert (c["n_labelled"], c["n_unlabelled"], c["agree"], c["agree_fraction"]) == (4, 1, 3, 0.75)
    # each fraction names its denominator: the four categories of the 4 labelled cells, unlabelled of all 5
    assert c["fractions_of_labelled"] == {"exact": 0.25, "ancestor": 0.25, "descendant": 0.25, "conflict": 0.25}
    assert c["unlabelled_fraction_of_cells"] == 0.2
    # the key earlier report.json files had stays, with the same numbers (extend, don't rename)
    assert c["fractions"] == {"exact": 0.25, "ancestor": 0.25, "descendant": 0.25, "conflict": 0.25, "unlabelled": 0.2}


def test_agreement_rows_have_one_denominator_per_column():
    c = agreement_counts(agreement_many([T_CELL, T_CELL, B_CELL, B_CELL], [T_CELL, B_CELL, "unknown", None]))
    assert agreement_rows(c) == [
        ("exact", 1, 0.5, 0.25), ("ancestor", 0, 0.0, 0.0), ("descendant", 0, 0.0, 0.0), ("conflict", 1, 0.5, 0.25),
        ("labelled, all", 2, 1.0, 0.5), ("unlabelled", 2, None, 0.5), ("all cells", 4, None, 1.0),
    ]  # fmt: skip


def test_rollup_agreement_counts_a_prediction_outside_the_groups_as_a_conflict():
    """Groups T cell, B cell: a T cell predicted NK and a B cell predicted dendritic cell disagree."""
    predicted = [T_CELL, NK, DENDRITIC, B_CELL, B_CELL, T_CELL, NK, T_CELL]
    submitted = [CD4_AB_T, T_CELL, B_CELL, B_CELL, TREG, CD14_MONO, NK, "unknown"]
    r = rollup_agreement(predicted, submitted, RollUp.parse(f"{T_CELL},{B_CELL}"))
    t, b = r.groups
    assert (t.term_id, t.n_submitted, t.n_agree, t.n_other_group, t.n_no_group) == (T_CELL, 3, 1, 1, 1)  # CD4 T agrees, Treg -> B, T -> NK
    assert (b.term_id, b.n_submitted, b.n_agree, b.n_other_group, b.n_no_group) == (B_CELL, 2, 1, 0, 1)  # B agrees, B -> dendritic
    assert (r.n_in_groups, r.agree, r.conflict, r.n_other_group, r.n_no_group) == (5, 2, 3, 1, 2)
    assert (r.n_not_in_rollup, r.n_not_in_rollup_predicted_in_group, r.n_unlabelled, r.n_cells) == (2, 1, 1, 8)
    assert r.agree_fraction == 0.4 and (t.recall, b.recall) == (round(1 / 3, 6), 0.5)
    d = r.to_dict()
    assert (d["n_in_groups"], d["agree"], d["conflict_no_group"], d["n_labelled"]) == (5, 2, 2, 7)
    assert d["n_in_groups"] == d["agree"] + d["conflict_other_group"] + d["conflict_no_group"] == sum(g["n_submitted"] for g in d["groups"])
    # the schema-1 keys stay, with the corrected counts
    assert (d["n_compared"], d["n_not_rolled"]) == (d["n_in_groups"], d["n_not_in_rollup"])
    assert [(c["term_id"], c["n_submitted"], c["n_agree"]) for c in d["classes"]] == [(g["term_id"], g["n_submitted"], g["n_agree"]) for g in d["groups"]]
    assert sum(c["n_predicted"] for c in d["classes"]) == d["agree"] + d["conflict_other_group"] + r.n_not_in_rollup_predicted_in_group


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
