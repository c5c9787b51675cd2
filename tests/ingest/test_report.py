"""Tests for the JSON and self-contained HTML validation reports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc.errors import Finding
from aivc.ingest.findings import Decision, ValidationReport
from aivc.ingest.report import MAX_ROWS, write_report

EXTERNAL = re.compile(
    r"""(?:\b(?:src|href|action|srcset|poster|data)\s*=\s*["']?\s*(?:https?:)?//)"""
    r"""|(?:@import)|(?:url\(\s*["']?\s*(?:https?:)?//)""",
    re.IGNORECASE,
)


def make_report(*, qc: pd.DataFrame | None = None, n_errors: int = 2) -> ValidationReport:
    report = ValidationReport(
        submission_id="sub-<1>",
        data_path="/data/pbmc & co.h5ad",
        manifest_path="/data/manifest.yaml",
        dataset_id="pbmc-a",
        created_at="2025-01-02T03:04:05+00:00",
    )
    report.add(
        Finding(
            "OBS_UNKNOWN_LABEL",
            "obs['cell_type'] row 'AAAC-1' (index 3)",
            "<script>alert('x')</script> is not a Cell Ontology label; see https://example.org/cl",
        )
    )
    for i in range(1, n_errors):
        report.add(Finding("QC_EMPTY_CELL", f"qc column 'n_counts' rows 'CELL-{i}'", f"cell {i} & friends"))
    report.add(Finding("QC_PCT_MITO_HIGH", "qc column 'pct_mito'", "12.5% of cells > 20", "warning"))
    report.decisions = [
        Decision("cell_type", "T cells", "CL:0000084", "T cell", "synonym", 120),
        Decision("cell_type", "B <cell>", "CL:0000236", "B cell", "label", 30),
        Decision("tissue", "blood", "UBERON:0000178", "blood", "label", 150),
    ]
    report.summary = {"n_cells": 150, "n_genes": 2000, "organism": "NCBITaxon:9606", "layers": ["X", "raw"]}
    report.expectations = [
        {"suite": "cell_qc", "expectation": "expect_column_values_to_be_between", "column": "n_counts",
         "code": "QC_EMPTY_CELL", "success": False, "severity": "error",
         "observed": "0.5% of cells (1 of 200)", "description": "every cell has at least one raw count"},
        {"suite": "cell_qc", "expectation": "expect_column_median_to_be_between", "column": "n_counts",
         "code": "QC_MEDIAN_COUNTS_LOW", "success": True, "severity": "warning", "observed": "1995",
         "description": "median n_counts is at least 200"},
    ]  # fmt: skip
    report.qc = qc
    return report


def qc_frame(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n_counts = rng.integers(300, 30000, n)
    return pd.DataFrame(
        {"n_counts": n_counts, "n_genes": n_counts // 3, "pct_mito": rng.uniform(0, 30, n)},
        index=[f"C{i}" for i in range(n)],
    )


def svg_plots(text: str) -> dict[str, str]:
    """The report's QC plots: ``data-plot`` key -> its inline ``<svg>`` element."""
    return dict(re.findall(r'<figure data-plot="([^"]+)">(<svg .*?</svg>)', text, re.DOTALL))


def bar_counts(svg: str) -> list[int]:
    return [int(n) for n in re.findall(r'<rect [^>]*data-n="(\d+)"', svg)]


def test_writes_json_that_round_trips(tmp_path: Path) -> None:
    report = make_report(qc=qc_frame())
    out = tmp_path / "nested" / "submissions" / "sub-1"
    json_path, html_path = write_report(report, out)
    assert (json_path, html_path) == (out / "report.json", out / "report.html")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(report.to_dict()))
    assert data["valid"] is False and data["n_errors"] == 2 and data["n_warnings"] == 1
    assert data["decisions"][0] == {
        "field": "cell_type", "submitted": "T cells", "resolved": "CL:0000084",
        "label": "T cell", "how": "synonym", "n": 120,
    }  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp files left


def test_json_is_strict_even_with_nan_qc(tmp_path: Path) -> None:
    qc = qc_frame(10)
    qc.loc["C0", "pct_mito"] = np.nan  # a cell with no counts has no pct_mito
    json_path, html_path = write_report(make_report(qc=qc), tmp_path)
    text = json_path.read_text(encoding="utf-8")
    assert "NaN" not in text
    assert json.loads(text)["qc"]["pct_mito"]["max"] is None
    plots = svg_plots(html_path.read_text(encoding="utf-8"))
    assert set(plots) == {"n_counts", "n_genes", "pct_mito", "scatter"}
    assert sum(bar_counts(plots["pct_mito"])) == 9  # the NaN is left out, the other 9 cells drawn
    assert sum(bar_counts(plots["n_genes"])) == 10


def test_html_is_self_contained_escaped_and_complete(tmp_path: Path) -> None:
    _, html_path = write_report(make_report(qc=qc_frame()), tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert EXTERNAL.search(text) is None
    assert "<link" not in text and "<script" not in text
    # header and status
    assert "REJECTED" in text and "pbmc-a" in text and "sub-&lt;1&gt;" in text
    assert "2025-01-02T03:04:05+00:00" in text and "/data/pbmc &amp; co.h5ad" in text
    # findings, escaped
    for code in ("OBS_UNKNOWN_LABEL", "QC_EMPTY_CELL", "QC_PCT_MITO_HIGH"):
        assert code in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "obs[&#x27;cell_type&#x27;] row &#x27;AAAC-1&#x27; (index 3)" in text
    assert "cell 1 &amp; friends" in text
    # decisions grouped by field, escaped
    assert text.index("<h3>cell_type: ") < text.index("<h3>tissue: ")
    assert "B &lt;cell&gt;" in text and "CL:0000084" in text and "(T cell)" in text and "synonym" in text
    # summary and GX results
    assert "n_cells" in text and "[&quot;X&quot;, &quot;raw&quot;]" in text
    assert '<span class="badge pass">PASS</span>' in text and '<span class="badge fail">FAIL</span>' in text
    # four inline SVG plots drawn from the QC table's real values
    qc = qc_frame()
    plots = svg_plots(text)
    assert list(plots) == ["n_counts", "n_genes", "pct_mito", "scatter"]
    for key in ("n_counts", "n_genes", "pct_mito"):
        assert sum(bar_counts(plots[key])) == len(qc)
        median = re.search(r'data-median="([^"]+)"', plots[key]).group(1)
        assert float(median) == pytest.approx(float(qc[key].median()), rel=1e-5)
    assert sum(int(n) for n in re.findall(r'<path d="M[^"]*" [^>]*data-n="(\d+)"', plots["scatter"])) == len(qc)
    assert all(p.startswith('<svg xmlns="http://www.w3.org/2000/svg"') for p in plots.values())


def test_valid_report_without_qc(tmp_path: Path) -> None:
    report = ValidationReport(submission_id="s2", data_path="a.h5ad", manifest_path="m.yaml")
    json_path, html_path = write_report(report, tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert "VALID" in text and "REJECTED" not in text
    assert "No errors." in text and "No per-cell QC metrics available." in text
    assert "<svg" not in text and "data:image/png" not in text
    assert json.loads(json_path.read_text(encoding="utf-8"))["valid"] is True

    report.qc = pd.DataFrame({"n_counts": [], "n_genes": [], "pct_mito": []})
    _, html_path = write_report(report, tmp_path)
    assert "No per-cell QC metrics available." in html_path.read_text(encoding="utf-8")


def test_thousands_of_findings_are_capped(tmp_path: Path) -> None:
    report = make_report(n_errors=3000)
    json_path, html_path = write_report(report, tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert f"Showing the first {MAX_ROWS} of 3000 rows" in text
    assert "CELL-499" in text and "CELL-500" not in text  # row 0 is OBS_UNKNOWN_LABEL
    assert "<code>QC_EMPTY_CELL</code> × 2999" in text
    assert len(json.loads(json_path.read_text(encoding="utf-8"))["errors"]) == 3000


def test_rewrite_replaces_previous_report(tmp_path: Path) -> None:
    write_report(make_report(), tmp_path)
    report = make_report()
    report.findings = []
    json_path, html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text(encoding="utf-8"))["valid"] is True
    assert "REJECTED" not in html_path.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]
