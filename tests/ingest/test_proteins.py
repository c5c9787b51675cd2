"""CITE-seq antibodies to target genes: the real 10x PBMC panels map, each mistake is its own finding, protein QC is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from aivc.ingest.proteins import PROTEIN_QC_COLUMNS, PROTEIN_SUITES, ProteinQc, harmonize_panel, name_key, panel, protein_qc
from aivc.ingest.qc import run_expectations
from aivc.schemas import build_panels
from aivc.store.reference import gene_reference

DATA = Path(__file__).parent / "data"
#: the antibody names of the three real files of the scvi-tools 1.4.2 sdist (provenance and rebuild in the header)
NAMES = DATA / "cite_protein_names.tsv"
#: the 10x PBMC 10k ADT counts of 200 cells, from the same sdist
COUNTS = DATA / "cite_pbmc10k_adt_counts.tsv"
TABLE = Path(build_panels.__file__).parent / "panels" / "totalseq.tsv"

#: every real antibody (the 5k's 29 and the 10k's three isotype controls): feature_id -> target symbol
EXPECTED = {
    "CD3": "CD3E", "CD4": "CD4", "CD8a": "CD8A", "CD11b": "ITGAM", "CD14": "CD14", "CD15": "FUT4", "CD16": "FCGR3A",
    "CD19": "CD19", "CD20": "MS4A1", "CD25": "IL2RA", "CD27": "CD27", "CD28": "CD28", "CD34": "CD34", "CD45RA": "PTPRC",
    "CD45RO": "PTPRC", "CD56": "NCAM1", "CD62L": "SELL", "CD69": "CD69", "CD80": "CD80", "CD86": "CD86", "CD127": "IL7R",
    "CD137": "TNFRSF9", "CD197": "CCR7", "CD274": "CD274", "CD278": "ICOS", "CD335": "NCR1", "PD-1": "PDCD1",
    "HLA-DR": "HLA-DRA", "TIGIT": "TIGIT", "Mouse IgG1": "", "Mouse IgG2a": "", "Mouse IgG2b": "",
}


def _real() -> dict[str, pd.DataFrame]:
    t = pd.read_csv(NAMES, sep="\t", comment="#", dtype={"id": str, "name": str})
    return {src: g.reset_index(drop=True) for src, g in t.groupby("source", sort=False)}


def test_every_real_antibody_maps_to_its_target():
    real = _real()
    assert {k: len(v) for k, v in real.items()} == {"pbmc10k": 14, "pbmc5k": 29, "pbmc10k_features": 17}
    seen: dict[str, str] = {}
    for src, g in real.items():
        m = harmonize_panel(g["name"].tolist(), "homo_sapiens", f"{src} uns['protein_names']")
        assert m.findings == () and m.valid, src
        assert [f.submitted_name for f in m.features] == g["name"].tolist()  # kept exactly, in order
        assert {f.panel for f in m.features} == {"TotalSeq-B"}
        for f in m.features:
            seen[f.feature_id] = f.target_symbol
            assert f.target_gene_id == ("" if f.is_isotype else gene_reference("homo_sapiens").index[gene_reference("homo_sapiens")["symbol"] == f.target_symbol][0])
    assert seen == EXPECTED
    m = harmonize_panel(["CD3_TotalSeqB", "CD45RA_TotalSeqB", "PD-1_TotalSeqB", "HLA-DR_TotalSeqB"], "homo_sapiens", "x")
    assert [(f.feature_id, f.target_gene_id, f.target_symbol) for f in m.features] == [
        ("CD3", "ENSG00000198851", "CD3E"), ("CD45RA", "ENSG00000081237", "PTPRC"), ("PD-1", "ENSG00000188389", "PDCD1"), ("HLA-DR", "ENSG00000204287", "HLA-DRA"),
    ]


def test_isotype_controls_are_flagged_and_reported_as_decisions():
    g = _real()["pbmc10k_features"]
    m = harmonize_panel(g["name"].tolist(), "homo_sapiens", "features.tsv")
    assert m.isotype_mask.tolist() == [False] * 14 + [True] * 3
    assert m.feature_ids[14:] == ["Mouse IgG2a", "Mouse IgG1", "Mouse IgG2b"]
    iso = [d for d in m.decisions if d.field == "protein_isotype"]
    assert [(d.submitted, d.resolved, d.label) for d in iso] == [
        ("IgG2a_control_TotalSeqB", "", "Mouse IgG2a: isotype control"),
        ("IgG1_control_TotalSeqB", "", "Mouse IgG1: isotype control"),
        ("IgG2b_control_TotalSeqB", "", "Mouse IgG2b: isotype control"),
    ]
    first = next(d for d in m.decisions if d.field == "proteins")
    assert (first.submitted, first.resolved, first.label, first.how) == ("CD3_TotalSeqB", "ENSG00000198851", "CD3 -> CD3E", "label")
    # other spellings of controls, and a host named or not
    names = ["Mouse_IgG1_kappa_isotype", "Rat IgG2a κ Isotype Ctrl", "IgG 2b isotype", "Armenian Hamster IgG", "rat_IgG1_lambda", "IgM", "IgG Fc"]
    human = harmonize_panel(names, "homo_sapiens", "v")
    assert [(f.feature_id, f.is_isotype) for f in human.features] == [
        ("Mouse IgG1", True), ("Rat IgG2a", True), ("Mouse IgG2b", True), ("Armenian Hamster IgG", True), ("Rat IgG1 lambda", True),
        ("IgM", False), ("IgG Fc", False),  # an anti-IgM antibody is a marker; so is one without a subclass
    ]
    assert human.features[5].target_symbol == "IGHM"
    mouse = harmonize_panel(["IgG1_control", "Rat_IgG2b_kappa_isotype"], "mus_musculus", "v")
    assert [(f.feature_id, f.is_isotype) for f in mouse.features] == [("IgG1", True), ("Rat IgG2b", True)]  # rat or mouse: not guessed
    assert mouse.findings == ()


def test_the_same_antibody_from_the_5k_and_the_10k_gets_the_same_feature():
    real = _real()
    k10 = harmonize_panel(real["pbmc10k"]["name"].tolist(), "homo_sapiens", "10k")
    k5 = harmonize_panel(real["pbmc5k"]["name"].tolist(), "homo_sapiens", "5k")
    shared = set(k10.feature_ids) & set(k5.feature_ids)
    assert len(shared) == 14 and shared == set(k10.feature_ids)
    by5 = {f.feature_id: f for f in k5.features}
    assert all(by5[f.feature_id].target_gene_id == f.target_gene_id for f in k10.features)
    # the 10x features' bare ids (CD3, CD8a, IgG1) are the same antibodies as their names (CD3_TotalSeqB, ...)
    g = real["pbmc10k_features"]
    assert harmonize_panel(g["id"].tolist(), "homo_sapiens", "id").feature_ids == harmonize_panel(g["name"].tolist(), "homo_sapiens", "name").feature_ids


@pytest.mark.parametrize(
    ("name", "feature_id", "chemistry"),
    [
        ("CD3_TotalSeqB", "CD3", "TotalSeq-B"), ("CD3-TotalSeqC", "CD3", "TotalSeq-C"), ("CD3.TotalSeq-A", "CD3", "TotalSeq-A"),
        ("TotalSeqB_CD3", "CD3", "TotalSeq-B"), ("CD3_A0034", "CD3", "TotalSeq-A"), ("ADT_CD3", "CD3", ""), ("cd3_ADT", "CD3", ""),
        ("CD3.1", "CD3", ""), ("anti-human CD3", "CD3", ""), ("CD3ε", "CD3", ""), ("CD3E", "CD3", ""), ("CD8", "CD8a", ""),
        ("hla.dr", "HLA-DR", ""), ("HLA_DR-TotalSeqC", "HLA-DR", "TotalSeq-C"), ("CD279 (PD-1)", "PD-1", ""), ("CD279", "PD-1", ""),
        ("CCR7", "CD197", ""), ("CD127-IL7Ra", "CD127", ""), ("TIM-3", "CD366", ""), ("NKG2D", "CD314", ""),
        ("PVRL2", "CD112", ""),  # an outdated symbol of the target's gene (NECTIN2) is the panel's marker
        ("LILRB4_TotalSeqC", "LILRB4", "TotalSeq-C"),  # no panel marker: the gene's symbol
    ],
)
def test_name_variants_get_one_canonical_feature(name, feature_id, chemistry):
    f = harmonize_panel([name], "homo_sapiens", "v").features[0]
    assert (f.feature_id, f.panel) == (feature_id, chemistry)
    assert f.target_gene_id.startswith("ENSG")


def test_how_each_name_was_resolved():
    m = harmonize_panel(["CD3", "CD3e", "Mouse_IgG1_kappa", "LILRB4", "lilrb4", "PVRL2", "FOO", ""], "homo_sapiens", "v")
    assert [f.resolved_by for f in m.features] == ["marker", "alias", "isotype", "symbol", "symbol_case", "previous_symbol", "unknown", "empty"]
    assert [(d.submitted, d.how) for d in m.decisions] == [
        ("CD3", "label"), ("CD3e", "synonym"), ("Mouse_IgG1_kappa", "synonym"), ("LILRB4", "symbol"), ("lilrb4", "symbol_case"), ("PVRL2", "previous_symbol"),
    ]


def test_mouse_markers_map_to_mouse_genes():
    names = ["ADT_CD3_A0001", "B220", "Ly6A-E", "NK1.1", "F4-80", "I-A-I-E", "TCRb", "CD16-32", "CD45.1", "CD45.2", "CD90.2", "Ly-6C", "CD8a"]
    m = harmonize_panel(names, "NCBITaxon:10090", "mod['prot'].var.index")
    assert m.organism_name == "mus_musculus" and m.findings == ()
    assert [(f.feature_id, f.target_symbol) for f in m.features] == [
        ("CD3", "Cd3e"), ("CD45R/B220", "Ptprc"), ("Ly-6A/E", "Ly6a"), ("NK-1.1", "Klrb1c"), ("F4/80", "Adgre1"), ("I-A/I-E", "H2-Ab1"),
        ("TCR beta", "Trbc1"), ("CD16/32", "Fcgr3"), ("CD45.1", "Ptprc"), ("CD45.2", "Ptprc"), ("CD90.2", "Thy1"), ("Ly-6C", "Ly6c1"), ("CD8a", "Cd8a"),
    ]
    assert m.features[0].panel == "TotalSeq-A" and m.features[0].target_gene_id == "ENSMUSG00000032093"


def test_each_kind_of_mistake_is_its_own_finding():
    names = ["CD3_TotalSeqB", "", "FOO_TotalSeqB", "CD3_TotalSeqB", "CD8a", "CD8"]
    m = harmonize_panel(names, "homo_sapiens", "uns['protein_names']")
    by = {f.code: f for f in m.findings}
    assert list(by) == ["PROTEIN_NAME_EMPTY", "PROTEIN_NAME_DUPLICATE", "PROTEIN_FEATURE_COLLISION", "PROTEIN_TARGET_UNKNOWN"]
    assert by["PROTEIN_NAME_EMPTY"].where == "uns['protein_names'][1] ''" and by["PROTEIN_NAME_EMPTY"].severity == "error"
    assert by["PROTEIN_NAME_DUPLICATE"].where == "uns['protein_names'][3] 'CD3_TotalSeqB'" and by["PROTEIN_NAME_DUPLICATE"].severity == "error"
    assert by["PROTEIN_NAME_DUPLICATE"].message == "1 antibody name occurs more than once: 'CD3_TotalSeqB' at 0 and 3; antibody names must be unique"
    assert by["PROTEIN_FEATURE_COLLISION"].where == "uns['protein_names'][4] 'CD8a', uns['protein_names'][5] 'CD8'"
    assert by["PROTEIN_FEATURE_COLLISION"].message == "1 antibody is named by more than one submitted name: 'CD8a' and 'CD8' -> CD8a; keep one column per antibody"
    assert by["PROTEIN_FEATURE_COLLISION"].severity == "error"
    unknown = by["PROTEIN_TARGET_UNKNOWN"]
    assert (unknown.where, unknown.severity) == ("uns['protein_names'][2] 'FOO_TotalSeqB'", "warning")
    assert unknown.message.startswith("1 of 6 antibodies name no known marker and no gene of homo_sapiens: 'FOO_TotalSeqB'; they are kept")
    assert not m.valid
    kept = m.features[2]  # never silently dropped
    assert (kept.submitted_name, kept.feature_id, kept.target_gene_id, kept.resolved_by) == ("FOO_TotalSeqB", "FOO", "", "unknown")
    assert len(m.features) == 6 and m.to_frame()["submitted_name"].tolist() == names

    none = harmonize_panel(["CD3", "IgG1"], "danio_rerio", "uns['protein_names']")
    assert [(f.code, f.where, f.severity) for f in none.findings] == [
        ("PROTEIN_PANEL_NONE", "uns['protein_names']", "warning"), ("PROTEIN_TARGET_UNKNOWN", "uns['protein_names'][0] 'CD3'", "warning"),
    ]
    assert none.findings[0].message == "aivc has no antibody panel for 'danio_rerio' (it has homo_sapiens and mus_musculus); nor a gene reference, so no antibody gets a target gene"
    assert none.isotype_mask.tolist() == [False, True]


def test_the_panel_table():
    t = pd.read_csv(TABLE, sep="\t", dtype=str, keep_default_na=False)
    assert list(t.columns) == list(build_panels.HEADER)
    for organism in ("homo_sapiens", "mus_musculus"):
        rows = t[t["organism"] == organism]
        markers, iso = rows[rows["is_isotype"] == "false"], rows[rows["is_isotype"] == "true"]
        ref = gene_reference(organism)
        assert (ref.loc[markers["target_gene_id"], "symbol"].to_numpy() == markers["target_symbol"].to_numpy()).all()
        assert (iso["target_symbol"] == "").all() and len(iso) == 9
        keys = [name_key(n) for _, r in rows.iterrows() for n in (r["marker"], *filter(None, r["aliases"].split("|")))]
        assert len(keys) == len(set(keys))  # no name denotes two antibodies
        assert len(panel(organism)) == len(rows)
    assert (t["organism"] == "homo_sapiens").sum() == 193 and (t["organism"] == "mus_musculus").sum() == 133
    assert panel("NCBITaxon:9606") is panel("homo_sapiens") and panel("danio_rerio") is None
    assert build_panels.key("HLA-DR") == name_key("HLA-DR") and build_panels.key("Rat IgG2a κ") == name_key("Rat IgG2a κ")


def test_the_table_rebuilds_from_the_real_names(tmp_path):
    """The shipped table is what schemas/build_panels.py writes from the real names (offline: the derived file)."""
    real = _real()
    names = {src: g["name"].tolist() for src, g in real.items()}
    built = build_panels.write_table(build_panels.build_rows(names), tmp_path / "totalseq.tsv")
    assert built == TABLE.read_bytes()


def _real_counts() -> pd.DataFrame:
    return pd.read_csv(COUNTS, sep="\t", comment="#", index_col=0)


def test_protein_qc_on_a_small_matrix_is_exact():
    iso = [False, False, True]
    chunk1 = sp.csr_matrix(np.array([[10, 0, 2], [0, 0, 0], [3, 4, 0]]))
    chunk1.data[chunk1.data == 4] = 0  # an explicitly stored zero is not a detected antibody
    chunk2 = np.array([[0, 0, 5], [1, 1, 1]])
    qc = ProteinQc(iso)
    qc.add(chunk1)
    qc.add(chunk2)
    out = qc.frame(["a", "b", "c", "d", "e"])
    assert list(out.columns) == list(PROTEIN_QC_COLUMNS)
    assert out["n_protein_counts"].tolist() == [12, 0, 3, 5, 3] and out["n_protein_counts"].dtype == np.int64
    assert out["n_proteins_detected"].tolist() == [2, 0, 1, 1, 3]
    assert out["isotype_counts"].tolist() == [2, 0, 0, 5, 1]
    np.testing.assert_allclose(out["pct_isotype"].to_numpy(), [100 * 2 / 12, np.nan, 0.0, 100.0, 100 / 3])
    with pytest.raises(ValueError, match="a chunk has 2 antibody columns, the panel 3"):
        qc.add(sp.csr_matrix(np.ones((1, 2))))


def test_protein_qc_on_the_real_counts_and_the_suite():
    counts = _real_counts()
    m = harmonize_panel(list(counts.columns), "homo_sapiens", "var")
    x = sp.csr_matrix(counts.to_numpy())
    qc = protein_qc((x[i : i + 64] for i in range(0, x.shape[0], 64)), m.isotype_mask, counts.index)
    first = qc.iloc[0]
    assert qc.index[0] == "GGAGGTACATTAAAGG-1" and len(qc) == 200
    assert (first["n_protein_counts"], first["n_proteins_detected"], first["isotype_counts"]) == (7846, 16, 20)  # 5 + 7 + 8 isotype counts, CD19 0
    assert first["pct_isotype"] == pytest.approx(100 * 20 / 7846)
    assert qc["n_protein_counts"].tolist() == counts.sum(axis=1).tolist()
    assert float(qc["n_protein_counts"].median()) == 5689.5 and float(qc["pct_isotype"].median()) == pytest.approx(0.42847, abs=1e-5)

    findings, results = run_expectations(qc, suites=PROTEIN_SUITES)
    assert findings == [] and len(results) == 6 and all(r["success"] for r in results)
    assert {r["code"] for r in results} == {
        "QC_PROTEIN_VALUE_MISSING", "QC_PROTEIN_EMPTY_CELL", "QC_PROTEIN_DETECTED_EXCEED_COUNTS", "QC_PROTEIN_PCT_ISOTYPE_RANGE",
        "QC_PROTEIN_ISOTYPE_BACKGROUND_HIGH", "QC_PROTEIN_MEDIAN_COUNTS_LOW",
    }

    bad = counts.to_numpy().astype(float)
    bad[3] = 0  # an empty cell
    bad[7] = bad[7] / bad[7].sum()  # normalized values: 17 antibodies detected in a library of 1
    bqc = protein_qc([sp.csr_matrix(bad)], m.isotype_mask, counts.index)
    findings, _ = run_expectations(bqc, suites=["protein_qc"], parameters={"max_median_pct_isotype": 0.1, "min_median_protein_counts": 10_000})
    by = {f.code: f for f in findings}
    assert list(by) == ["QC_PROTEIN_EMPTY_CELL", "QC_PROTEIN_DETECTED_EXCEED_COUNTS", "QC_PROTEIN_ISOTYPE_BACKGROUND_HIGH", "QC_PROTEIN_MEDIAN_COUNTS_LOW"]
    assert by["QC_PROTEIN_EMPTY_CELL"].where == f"qc column 'n_protein_counts' rows {counts.index[3]!r}" and by["QC_PROTEIN_EMPTY_CELL"].severity == "error"
    assert repr(counts.index[7]) in by["QC_PROTEIN_DETECTED_EXCEED_COUNTS"].where and by["QC_PROTEIN_DETECTED_EXCEED_COUNTS"].severity == "error"
    assert by["QC_PROTEIN_ISOTYPE_BACKGROUND_HIGH"].severity == "warning" and "at most 0.1%" in by["QC_PROTEIN_ISOTYPE_BACKGROUND_HIGH"].message
    assert by["QC_PROTEIN_MEDIAN_COUNTS_LOW"].severity == "warning" and "at least 10000" in by["QC_PROTEIN_MEDIAN_COUNTS_LOW"].message


def test_pct_isotype_out_of_range_is_critical():
    qc = pd.DataFrame({"n_protein_counts": [1000, 500], "n_proteins_detected": [10, 5], "isotype_counts": [10, -600], "pct_isotype": [1.0, -120.0]}, index=["A-1", "B-1"])
    findings, _ = run_expectations(qc, suites=PROTEIN_SUITES)
    assert [(f.code, f.where, f.severity) for f in findings] == [("QC_PROTEIN_PCT_ISOTYPE_RANGE", "qc column 'pct_isotype' rows 'B-1'", "error")]
