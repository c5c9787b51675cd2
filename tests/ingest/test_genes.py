"""Gene mapping: current symbols, case, and outdated symbols resolved through stable Ensembl ids."""

from __future__ import annotations

import pandas as pd
import pytest

from aivc.ingest.genes import map_genes
from aivc.ingest.perturbation_fields import resolve_gene
from aivc.store.reference import gene_reference, previous_symbols

ATP5F1B, JCHAIN, CD3E, SEPTIN7 = "ENSG00000110955", "ENSG00000132465", "ENSG00000198851", "ENSG00000122545"


def mapped(symbols: list[str], organism: str = "homo_sapiens"):  # noqa: ANN201
    var = pd.DataFrame(index=pd.Index(symbols))
    return map_genes(var, organism_name=organism, id_type="symbol", column=None, min_mapped_fraction=0.0)


def codes(m) -> dict[str, str]:  # noqa: ANN001
    return {f.code: f.message for f in m.findings}


def test_outdated_symbols_map_to_the_gene_with_the_same_ensembl_id():
    m = mapped(["ATP5B", "IGJ", "CD3E", "NOTAGENE1"])
    assert m.gene_ids == [ATP5F1B, JCHAIN, CD3E]
    assert m.symbols == ["ATP5F1B", "JCHAIN", "CD3E"]
    assert list(m.keep_cols) == [0, 1, 2]
    assert m.n_unmapped == 1
    msg = codes(m)["GENES_PREVIOUS_SYMBOL"]
    assert msg.startswith("2 outdated symbols were mapped") and "'ATP5B' -> ATP5F1B" in msg and "'IGJ' -> JCHAIN" in msg
    assert all(f.severity == "warning" for f in m.findings)
    how = {d.submitted: (d.resolved, d.label, d.how) for d in m.decisions}
    assert how == {"ATP5B": (ATP5F1B, "ATP5F1B", "previous_symbol"), "IGJ": (JCHAIN, "JCHAIN", "previous_symbol")}


def test_case_convention_applies_to_outdated_symbols():
    m = mapped(["atp5b"])
    assert m.gene_ids == [ATP5F1B]


def test_current_symbol_wins_over_an_outdated_one_for_the_same_gene():
    m = mapped(["SEPT7", "SEPTIN7", "CD3E"])
    assert m.gene_ids == [SEPTIN7, CD3E]
    assert list(m.keep_cols) == [1, 2]
    c = codes(m)
    assert "GENES_MAPPED_TWICE" not in c  # not an error: the current name keeps the gene
    assert "'SEPT7' (ENSG00000122545, also named by 'SEPTIN7')" in c["GENES_PREVIOUS_SYMBOL_CONFLICT"]
    assert "GENES_UNMAPPED" not in c and m.n_unmapped == 0


def test_two_outdated_symbols_of_one_gene_are_both_left_out():
    m = mapped(["ATP5B", "ATPSB", "CD3E"])
    assert m.gene_ids == [CD3E]
    assert codes(m)["GENES_PREVIOUS_SYMBOL_CONFLICT"].startswith("2 outdated symbols name a gene")


def test_an_outdated_symbol_of_several_genes_is_ambiguous_not_guessed():
    assert len(previous_symbols("homo_sapiens")["AC084018.1"]) == 2
    m = mapped(["AC084018.1", "CD3E"])
    assert m.gene_ids == [CD3E]
    assert "'AC084018.1'" in codes(m)["GENES_AMBIGUOUS"] and m.n_ambiguous == 1


def test_shipped_tables_only_name_current_genes_by_symbols_no_gene_has_now():
    for organism in ("homo_sapiens", "mus_musculus"):
        ref = gene_reference(organism)
        prev = previous_symbols(organism)
        assert len(prev) > (50_000 if organism == "homo_sapiens" else 2_000)
        assert not set(prev) & set(ref["symbol"])
        assert {g for ids in prev.values() for g in ids} <= set(ref.index)


def test_real_pbmc_matrix_keeps_59_genes_it_named_by_hg19_symbols():
    from aivc.demo import pbmc_counts

    var = pbmc_counts().var
    m = map_genes(var, organism_name="homo_sapiens", id_type="symbol", column=None, min_mapped_fraction=0.5)
    assert (len(m.gene_ids), m.n_unmapped, m.n_ambiguous) == (759, 5, 1)
    renamed = {d.submitted: d.label for d in m.decisions if d.how == "previous_symbol"}
    assert len(renamed) == 59
    assert renamed["IGJ"] == "JCHAIN" and renamed["FYB"] == "FYB1" and renamed["AMICA1"] == "JAML"


def test_perturbation_targets_resolve_outdated_symbols_too():
    r = resolve_gene("IGJ", "homo_sapiens")
    assert (r.gene_id, r.symbol, r.how) == (JCHAIN, "JCHAIN", "previous_symbol")
    assert resolve_gene("AC084018.1", "homo_sapiens").code == "PERTURBATION_AMBIGUOUS_GENE"


def test_previous_symbol_build_refuses_a_wheel_that_is_not_pypis(tmp_path):
    from aivc.schemas import build_previous_symbols

    fake = tmp_path / build_previous_symbols.WHEEL
    fake.write_bytes(b"PK\x03\x04 not the published wheel")
    with pytest.raises(SystemExit, match=r"sha256 [0-9a-f]{64} is not PyPI's f852a6e1.*refusing to unpickle it"):
        build_previous_symbols.build(fake, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [fake.name]  # nothing written
