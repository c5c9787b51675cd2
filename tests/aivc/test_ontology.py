"""The offline ontology service, on the real CL / UBERON / EFO / HsapDv / HANCESTRO releases."""

from __future__ import annotations

import time

import pytest

from aivc.errors import NotFoundError
from aivc.ontology import LabelMatch, Ontologies, TermInfo, get_ontologies, normalize_text, term_prefix


@pytest.fixture(scope="module")
def onto() -> Ontologies:
    return get_ontologies()


def test_get_ontologies_is_one_cached_instance(onto: Ontologies) -> None:
    assert get_ontologies() is onto
    assert onto.schema_version.startswith("7.")
    assert {"CL", "UBERON", "EFO", "MONDO", "HANCESTRO", "AfPO", "HsapDv", "MmusDv", "PATO", "NCBITaxon"} <= onto.prefixes


def test_lookup_current_term(onto: Ontologies) -> None:
    info = onto.lookup("CL:0000236")
    assert info == TermInfo(
        term_id="CL:0000236",
        ontology="CL",
        label="B cell",
        deprecated=False,
        replaced_by=None,
        synonyms=("B lymphocyte", "B-cell", "B-lymphocyte"),
    )


def test_lookup_unknown_ids_give_none(onto: Ontologies) -> None:
    assert onto.lookup("CL:9999999") is None
    assert onto.lookup("FOO:0000001") is None
    assert onto.lookup("B cell") is None


def test_lookup_afpo_term_shipped_inside_hancestro(onto: Ontologies) -> None:
    info = onto.lookup("AfPO:0000056")
    assert info is not None
    assert (info.ontology, info.label) == ("AfPO", "Maasai")
    assert onto.is_descendant_of("AfPO:0000056", "HANCESTRO:0601")


def test_deprecated_cl_term_and_its_replacement(onto: Ontologies) -> None:
    info = onto.lookup("CL:0000054")
    assert info is not None
    assert info.deprecated
    assert info.label == "obsolete bone matrix secreting cell"
    assert info.replaced_by == "CL:0000062"
    assert onto.label("CL:0000062") == "osteoblast"
    assert not onto.lookup("CL:0000062").deprecated  # type: ignore[union-attr]


def test_deprecated_uberon_term_and_its_replacement(onto: Ontologies) -> None:
    info = onto.lookup("UBERON:0000208")
    assert info is not None and info.deprecated
    assert info.replaced_by == "UBERON:0000965"
    assert onto.label("UBERON:0000965") == "lens of camera-type eye"


def test_deprecated_term_without_replacement_lists_consider_ids(onto: Ontologies) -> None:
    info = onto.lookup("HsapDv:0000087")  # "adult stage", obsolete in HsapDv v2025-01-23
    assert info is not None and info.deprecated and info.replaced_by is None
    # shipped as "obo.HsapDv_0000226"; normalised to CURIEs
    assert info.consider == ("HsapDv:0000226", "HsapDv:0000258")


def test_lookup_is_cached_and_fast_for_many_ids(onto: Ontologies) -> None:
    assert onto.lookup("CL:0000084") is onto.lookup("CL:0000084")
    ids = [f"CL:{i:07d}" for i in range(5000)]
    onto.lookup(ids[0])
    start = time.perf_counter()
    found = [onto.lookup(t) for t in ids]
    again = [onto.lookup(t) for t in ids]
    assert time.perf_counter() - start < 0.5
    assert found == again
    assert sum(f is not None for f in found) > 1000


def test_label_and_non_ontology_values(onto: Ontologies) -> None:
    assert onto.label("UBERON:0002048") == "lung"
    assert onto.label("EFO:0009922") == "10x 3' v3"
    assert onto.label("unknown") == "unknown"
    assert onto.label("na") == "na"


def test_label_of_unknown_term_raises_typed_error(onto: Ontologies) -> None:
    with pytest.raises(NotFoundError) as exc:
        onto.label("CL:9999999")
    assert exc.value.code == "ONTOLOGY_TERM_UNKNOWN"
    assert "CL:9999999" in exc.value.message


def test_ancestors_and_descendants(onto: Ontologies) -> None:
    anc = onto.ancestors("CL:0000236")
    assert isinstance(anc, frozenset)
    assert {"CL:0000542", "CL:0000000"} <= anc  # lymphocyte, cell
    assert "CL:0000236" not in anc
    assert onto.is_descendant_of("CL:0000236", "CL:0000542")
    assert onto.is_descendant_of("CL:0000236", "CL:0000236")
    assert not onto.is_descendant_of("CL:0000236", "CL:0000236", include_self=False)
    assert not onto.is_descendant_of("CL:0000084", "CL:0000236")  # T cell is not a B cell
    assert onto.is_descendant_of("EFO:0009922", "EFO:0010183")  # 10x 3' v3 is a library construction
    assert not onto.is_descendant_of("CL:9999999", "CL:0000000")
    assert onto.ancestors("CL:0000054") == frozenset()  # obsolete terms hang nowhere
    assert onto.ancestors("unknown") == frozenset()


def test_ancestors_of_unknown_term_raises(onto: Ontologies) -> None:
    with pytest.raises(NotFoundError) as exc:
        onto.ancestors("UBERON:9999999")
    assert exc.value.code == "ONTOLOGY_TERM_UNKNOWN"


def test_resolve_label_exact_label_ignores_case_and_spacing(onto: Ontologies) -> None:
    assert onto.resolve_label("  b   CELL ", ("CL",)) == LabelMatch("CL:0000236", "label")
    assert onto.resolve_label("lung", ("UBERON",)) == LabelMatch("UBERON:0002048", "label")
    assert onto.resolve_label("10X 3' V3", ("EFO",)) == LabelMatch("EFO:0009922", "label")


def test_resolve_label_by_synonym(onto: Ontologies) -> None:
    assert onto.resolve_label("B-lymphocyte", ("CL",)) == LabelMatch("CL:0000236", "synonym")
    assert onto.resolve_label("T-lymphocyte", ("CL",)) == LabelMatch("CL:0000084", "synonym")
    assert onto.resolve_label("pulmo", ("UBERON",)) == LabelMatch("UBERON:0002048", "synonym")


def test_exact_label_wins_over_another_terms_synonym(onto: Ontologies) -> None:
    # the label of CL:4042025 is also an exact synonym of CL:4072006
    assert onto.lookup("CL:4072006").synonyms.count("substantia nigra dopaminergic neuron") == 1  # type: ignore[union-attr]
    match = onto.resolve_label("substantia nigra dopaminergic neuron", ("CL",))
    assert match == LabelMatch("CL:4042025", "label")


def test_resolve_label_is_restricted_to_the_given_ontologies(onto: Ontologies) -> None:
    assert onto.resolve_label("B cell", ("UBERON",)).term_id is None
    assert onto.resolve_label("normal", ("MONDO", "PATO")) == LabelMatch("PATO:0000461", "label")


def test_resolve_label_skips_deprecated_terms(onto: Ontologies) -> None:
    # HsapDv:0000087 (obsolete) and HsapDv:0000258 share the label "adult stage"
    assert onto.lookup("HsapDv:0000087").label == "adult stage"  # type: ignore[union-attr]
    assert onto.resolve_label("adult stage", ("HsapDv",)) == LabelMatch("HsapDv:0000258", "label")
    assert onto.resolve_label("obsolete bone matrix secreting cell", ("CL",)).term_id is None


def test_ambiguous_synonym_lists_every_candidate(onto: Ontologies) -> None:
    match = onto.resolve_label("nv", ("UBERON",))
    assert match.term_id is None and match.how is None and match.ambiguous
    assert match.candidates == ("UBERON:0002633", "UBERON:2005093")
    assert {t for t, _ in match.closest} >= {"UBERON:0002633", "UBERON:2005093"}
    white = onto.resolve_label("White", ("HANCESTRO", "AfPO"))
    assert white.candidates == ("HANCESTRO:0005", "HANCESTRO:0590")
    assert ("HANCESTRO:0590", "European American") in white.closest


def test_ambiguous_label_differing_only_in_case(onto: Ontologies) -> None:
    # EFO has both "nuc-seq" (EFO:0008835) and "Nuc-Seq" (EFO:0009991)
    match = onto.resolve_label("nuc-seq", ("EFO",))
    assert match.candidates == ("EFO:0008835", "EFO:0009991")


def test_unmatched_label_offers_closest_terms(onto: Ontologies) -> None:
    match = onto.resolve_label("B cels", ("CL",))
    assert match.term_id is None and match.candidates == ()
    assert match.closest[0] == ("CL:0000236", "B cell")
    assert len(match.closest) == 3
    disease = onto.resolve_label("alzheimers", ("MONDO", "PATO"))
    assert disease.closest[0] == ("MONDO:0004975", "Alzheimer disease")
    assay = onto.resolve_label("10x 3 prime v3", ("EFO",))
    assert assay.closest[0] == ("EFO:0009922", "10x 3' v3")


def test_unrelated_text_gets_no_suggestions(onto: Ontologies) -> None:
    assert onto.resolve_label("zzzzqqq", ("CL",)) == LabelMatch(None, None)
    assert onto.resolve_label("   ", ("CL",)) == LabelMatch(None, None)


def test_resolve_label_with_unknown_prefix_raises(onto: Ontologies) -> None:
    with pytest.raises(NotFoundError) as exc:
        onto.resolve_label("B cell", ("NOPE",))
    assert exc.value.code == "ONTOLOGY_UNKNOWN"


def test_label_indexes_for_cl_uberon_efo_build_in_a_few_seconds() -> None:
    fresh = Ontologies()
    start = time.perf_counter()
    fresh.build_indexes(("CL", "UBERON", "EFO"))  # exact and closest-term indexes
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, elapsed
    start = time.perf_counter()
    for text in ("B cels", "lungs tissue", "10x 5 prime", "T-helper cells", "nv"):
        fresh.resolve_label(text, ("CL", "UBERON", "EFO"))
    assert time.perf_counter() - start < 0.5


def test_text_helpers() -> None:
    assert normalize_text("  B \t Cell\n") == "b cell"
    assert term_prefix("HsapDv:0000258") == "HsapDv"
    assert term_prefix("B cell") is None
