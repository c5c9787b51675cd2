"""Tests for the Great Expectations QC suites and their translation into Findings."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from aivc.errors import Finding
from aivc.ingest.qc import RNA_SUITES, load_suites, run_expectations

N_GENES = 2000
TERMS: dict[str, str] = {
    "donor_id": "donor-1",
    "cell_type_ontology_term_id": "CL:0000236",
    "tissue_ontology_term_id": "UBERON:0000178",
    "assay_ontology_term_id": "EFO:0009922",
    "development_stage_ontology_term_id": "HsapDv:0000087",
    "sex_ontology_term_id": "PATO:0000383",
    "disease_ontology_term_id": "PATO:0000461",
}


def clean_qc(n: int = 200, *, index_name: str | None = None) -> pd.DataFrame:
    """A QC table that passes every expectation: cells 'C000-1', 'C001-1', ..."""
    n_counts = 1000 + 10 * np.arange(n)
    qc = pd.DataFrame(
        {
            "n_counts": n_counts,
            "n_genes": n_counts // 2,
            "pct_mito": np.linspace(0.5, 8.0, n),
        },
        index=pd.Index([f"C{i:03d}-1" for i in range(n)], name=index_name),
    )
    for col, value in TERMS.items():
        qc[col] = value
    qc["cell_type_ontology_term_id"] = np.where(np.arange(n) % 2 == 0, "CL:0000236", "unknown")
    return qc


def by_code(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.code, []).append(f)
    return out


def test_suites_load_and_round_trip_through_gx() -> None:
    with warnings.catch_warnings():  # GX imports the deprecated sre_constants
        warnings.simplefilter("ignore", DeprecationWarning)
        import great_expectations as gx

    suites = load_suites()
    assert {"cell_qc", "obs_metadata"} <= {s["name"] for s in suites}
    assert [s["name"] for s in load_suites(RNA_SUITES)] == ["cell_qc", "obs_metadata"]
    for suite in suites:
        for exp in suite["expectations"]:
            assert exp["meta"]["code"].startswith("QC_")
            assert exp["meta"]["description"]
            assert exp["severity"] in ("critical", "warning")
        again = gx.ExpectationSuite(**suite).to_json_dict()
        assert [e["type"] for e in again["expectations"]] == [e["type"] for e in suite["expectations"]]
        assert [e["meta"] for e in again["expectations"]] == [e["meta"] for e in suite["expectations"]]
        assert [e["severity"] for e in again["expectations"]] == [e["severity"] for e in suite["expectations"]]


def test_unknown_suite_is_refused() -> None:
    with pytest.raises(ValueError, match="no expectation suite named nope"):
        load_suites(["cell_qc", "nope"])


def test_clean_frame_passes() -> None:
    findings, results = run_expectations(clean_qc(), n_genes_total=N_GENES)
    assert findings == []
    n_expected = sum(len(s["expectations"]) for s in load_suites(RNA_SUITES))
    assert len(results) == n_expected
    assert all(r["success"] is True for r in results)
    assert {r["suite"] for r in results} == {"cell_qc", "obs_metadata"}
    median = next(r for r in results if r["code"] == "QC_MEDIAN_COUNTS_LOW")
    assert median["observed"] == "1995"  # median of 1000, 1010, ..., 2990
    assert set(results[0]) >= {"suite", "expectation", "column", "success", "severity", "observed", "description"}


def test_bad_rows_give_codes_and_row_labels() -> None:
    qc = clean_qc()
    qc.loc["C010-1", ["n_counts", "n_genes", "pct_mito"]] = [0, 0, np.nan]  # empty droplet
    qc.loc["C020-1", "n_genes"] = qc.loc["C020-1", "n_counts"] + 7
    qc.loc["C030-1", "pct_mito"] = 130.0
    qc.loc["C040-1", "cell_type_ontology_term_id"] = "T cell"
    qc.loc["C041-1", "sex_ontology_term_id"] = "PATO:0000385"
    qc.loc["C050-1", "donor_id"] = "   "
    qc.loc["C051-1", "donor_id"] = None
    qc.loc["C060-1", "disease_ontology_term_id"] = "MONDO:0005148 || MONDO:0004975"  # valid: two diseases

    findings, results = run_expectations(qc, n_genes_total=N_GENES)
    codes = by_code(findings)
    assert set(codes) == {
        "QC_VALUE_MISSING",
        "QC_EMPTY_CELL",
        "QC_N_GENES_RANGE",
        "QC_N_GENES_EXCEED_COUNTS",
        "QC_PCT_MITO_RANGE",
        "QC_TERM_ID_INVALID",
        "QC_DONOR_ID_BLANK",
    }
    assert all(f.severity == "error" for f in findings)

    (empty,) = codes["QC_EMPTY_CELL"]
    assert empty.where == "qc column 'n_counts' rows 'C010-1'"
    assert "(1 of 200) have n_counts < 1; first: 'C010-1' (0)" in empty.message
    assert "allowed" not in empty.message  # no cell may fail: nothing like "(allowed: none)"
    (missing,) = codes["QC_VALUE_MISSING"]
    assert missing.where == "qc column 'pct_mito' rows 'C010-1'"

    (exceed,) = codes["QC_N_GENES_EXCEED_COUNTS"]
    assert exceed.where == "qc columns 'n_counts', 'n_genes' rows 'C020-1'"
    n_counts = int(qc.loc["C020-1", "n_counts"])
    assert f"first: 'C020-1' (n_counts={n_counts}, n_genes={n_counts + 7})" in exceed.message

    (mito,) = codes["QC_PCT_MITO_RANGE"]
    assert mito.where == "qc column 'pct_mito' rows 'C030-1'"
    assert "have pct_mito outside [0, 100]" in mito.message and "'C030-1' (130)" in mito.message

    terms = {f.where: f for f in codes["QC_TERM_ID_INVALID"]}
    assert set(terms) == {
        "qc column 'cell_type_ontology_term_id' rows 'C040-1'",
        "qc column 'sex_ontology_term_id' rows 'C041-1'",
    }
    assert "first: 'C040-1' ('T cell')" in terms["qc column 'cell_type_ontology_term_id' rows 'C040-1'"].message

    assert [f.where for f in codes["QC_DONOR_ID_BLANK"]] == ["qc column 'donor_id' rows 'C050-1'"]
    # A missing value is harmonization's to report (OBS_NULL_VALUE, or the refused value's own code).
    assert not any("C051-1" in f.where for f in findings)

    failed = {(r["code"], r["column"]) for r in results if r["success"] is False}
    assert ("QC_N_GENES_EXCEED_COUNTS", "n_counts, n_genes") in failed
    assert ("QC_TERM_ID_INVALID", "disease_ontology_term_id") not in failed
    exceed_row = next(r for r in results if r["code"] == "QC_N_GENES_EXCEED_COUNTS")
    assert exceed_row["unexpected_count"] == 1 and exceed_row["observed"] == "0.5% of cells (1 of 200)"


def test_many_offenders_are_summarized() -> None:
    qc = clean_qc()
    qc["n_genes"] = N_GENES + 1  # every cell above the gene count, and above some n_counts
    findings, _ = run_expectations(qc, n_genes_total=N_GENES)
    (rng,) = by_code(findings)["QC_N_GENES_RANGE"]
    assert rng.where == "qc column 'n_genes' rows 'C000-1', 'C001-1', 'C002-1' and 197 more"
    assert rng.message.startswith("100% of cells (200 of 200) have n_genes outside [1, 2000]")


def test_pct_mito_threshold_and_override() -> None:
    qc = clean_qc()
    high = qc.index[::10]  # 20 of 200 cells = 10%
    qc.loc[high, "pct_mito"] = 25.0

    findings, results = run_expectations(qc, n_genes_total=N_GENES)
    (warning,) = findings
    assert warning.code == "QC_PCT_MITO_HIGH" and warning.severity == "warning"
    assert warning.where == "qc column 'pct_mito' rows 'C000-1', 'C010-1', 'C020-1' and 17 more"
    assert warning.message.startswith(
        "10% of cells (20 of 200) have pct_mito > 20 (allowed: at most 5%); first: 'C000-1' (25)"
    )

    findings, results = run_expectations(qc, n_genes_total=N_GENES, max_pct_mito=30)
    assert findings == []
    row = next(r for r in results if r["code"] == "QC_PCT_MITO_HIGH")
    assert row["success"] is True and "pct_mito <= 30" in row["description"]

    # A stricter threshold turns the clean frame (pct_mito up to 8) into a warning.
    findings, _ = run_expectations(clean_qc(), n_genes_total=N_GENES, max_pct_mito=5)
    assert [f.code for f in findings] == ["QC_PCT_MITO_HIGH"]
    assert "have pct_mito > 5 " in findings[0].message


def test_low_median_counts_is_a_warning() -> None:
    qc = clean_qc()
    qc["n_counts"] = 150
    qc["n_genes"] = 100
    findings, results = run_expectations(qc, n_genes_total=N_GENES)
    (low,) = findings
    assert low.code == "QC_MEDIAN_COUNTS_LOW" and low.severity == "warning"
    assert low.where == "qc column 'n_counts'"
    assert low.message.startswith("median of n_counts is 150 (expected: median n_counts is at least 200")
    row = next(r for r in results if r["code"] == "QC_MEDIAN_COUNTS_LOW")
    assert row["success"] is False and row["observed"] == "150"


def test_named_index_still_gives_plain_labels() -> None:
    qc = clean_qc(index_name="barcode")
    qc.loc["C005-1", "n_genes"] = 10**6
    findings, _ = run_expectations(qc, n_genes_total=N_GENES)
    assert {f.where for f in findings} == {
        "qc column 'n_genes' rows 'C005-1'",
        "qc columns 'n_counts', 'n_genes' rows 'C005-1'",
    }


def test_categorical_metadata_columns() -> None:
    qc = clean_qc()
    for col in TERMS:
        qc[col] = qc[col].astype("category")
    qc["tissue_ontology_term_id"] = qc["tissue_ontology_term_id"].cat.add_categories(["blood"])
    qc.loc["C007-1", "tissue_ontology_term_id"] = "blood"
    findings, _ = run_expectations(qc, n_genes_total=N_GENES)
    assert [(f.code, f.where) for f in findings] == [
        ("QC_TERM_ID_INVALID", "qc column 'tissue_ontology_term_id' rows 'C007-1'")
    ]


def test_missing_column_is_reported_not_crashed() -> None:
    qc = clean_qc().drop(columns=["donor_id"])
    findings, results = run_expectations(qc, n_genes_total=N_GENES)
    assert [(f.code, f.where) for f in findings] == [("QC_COLUMN_MISSING", "qc column 'donor_id'")]
    assert "1 expectation(s) of suite 'obs_metadata'" in findings[0].message
    donor_rows = [r for r in results if r["column"] == "donor_id"]
    assert len(donor_rows) == 1
    assert all(r["success"] is False and r["observed"] == "column missing: donor_id" for r in donor_rows)


def test_no_cells_and_bad_arguments() -> None:
    findings, results = run_expectations(clean_qc().iloc[:0], n_genes_total=N_GENES)
    assert [f.code for f in findings] == ["QC_NO_CELLS"] and results == []
    with pytest.raises(ValueError, match="n_genes_total"):
        run_expectations(clean_qc(), n_genes_total=0)
    with pytest.raises(ValueError, match="max_pct_mito"):
        run_expectations(clean_qc(), n_genes_total=N_GENES, max_pct_mito=150)
