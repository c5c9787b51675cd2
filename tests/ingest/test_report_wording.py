"""The report's harmonization headings say what they count ("genes : 59 distinct values, 59
cells" counted genes as cells, and its name sat in a separate code element)."""

from __future__ import annotations

import re
from typing import Any

from aivc.ingest.report import render_html
from aivc.ingest.submission import validate_submission


def _outdated_and_recased(adata: Any) -> Any:
    names = list(adata.var_names)
    assert "JCHAIN" not in names
    names[0] = "IGJ"  # HGNC previous symbol of JCHAIN
    names[1] = names[1].lower()  # a current symbol in the wrong case
    adata.var_names = names
    return adata


def _headings(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h3>.*?</h3>", page)]


def test_decision_headings_count_genes_as_genes_and_values_in_cells(write_submission) -> None:
    h5, mf = write_submission(_outdated_and_recased)
    prepared = validate_submission(h5, mf)
    try:
        report = prepared.report
        genes = [d for d in report.decisions if d.field == "genes"]
        assert sorted(d.how for d in genes) == ["previous_symbol", "symbol_case"]
        n_cells = prepared.data.n_obs  # type: ignore[union-attr]
    finally:
        prepared.close()
    page = render_html(report)
    headings = _headings(page)
    assert "genes: 2 submitted genes mapped to a current gene indirectly (1 by an outdated symbol, 1 by the symbol in another letter case)" in headings
    assert f"cell_type: 2 submitted values in {n_cells} cells" in headings
    assert f"sex: 2 submitted values in {n_cells} cells" in headings
    assert not any(" :" in h or "distinct values" in h for h in headings)
    gene_table = page.split("genes: 2 submitted genes", 1)[1].split("</table>", 1)[0]
    assert "<th>cells</th>" not in gene_table and "<th>resolved (symbol)</th>" in gene_table
    assert "<td>by an outdated symbol</td>" in gene_table
