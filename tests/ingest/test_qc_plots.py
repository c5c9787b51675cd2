"""Tests for the report's inline SVG QC plots: the drawn numbers are the data's numbers."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from aivc.ingest import qc_plots
from aivc.ingest.qc_plots import MAX_SCATTER_POINTS, N_BINS, histogram, scatter

SVG = "{http://www.w3.org/2000/svg}"


def bars(svg: str) -> list[tuple[int, str]]:
    """``(count, hover text)`` of every histogram bar, parsed as XML."""
    root = ET.fromstring(svg)
    return [(int(r.get("data-n")), r.find(f"{SVG}title").text) for r in root.iter(f"{SVG}rect") if r.get("data-n")]


def tick_labels(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text for g in root.iter(f"{SVG}g") if g.get("font-size") == "10" for t in g.iter(f"{SVG}text")]


def test_histogram_bars_hold_every_value_and_the_median() -> None:
    values = np.array([1.0, 2.0, 2.0, 3.0, 10.0, np.nan, np.inf])
    svg = histogram(values, "n_genes")
    drawn = bars(svg)
    assert sum(n for n, _ in drawn) == 5  # NaN and inf are not values
    assert len(drawn) <= N_BINS
    assert drawn[0] == (1, "1 to 1.15: 1 cell") and drawn[1] == (2, "1.9 to 2.05: 2 cells")
    assert re.search(r'data-median="([^"]+)"', svg).group(1) == "2"
    assert "median 2</text>" in svg and ">n_genes</text>" in svg


def test_log_histogram_leaves_out_zeros_and_says_so() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(3), np.exp(rng.normal(8, 1, 997))])
    svg = histogram(values, "n_counts", log=True)
    assert sum(n for n, _ in bars(svg)) == 997  # min and max included despite float edges
    assert "n_counts (3 cells with 0 not shown)" in svg
    labels = tick_labels(svg)
    assert {"100", "1,000", "10,000"} <= set(labels)  # decades on a log axis
    assert float(re.search(r'data-median="([^"]+)"', svg).group(1)) == pytest.approx(np.median(values[3:]), rel=1e-5)


def test_histogram_of_one_value_and_of_none() -> None:
    one = histogram(np.array([5.0, 5.0]), "pct_mito")
    assert [n for n, _ in bars(one)] == [2]
    assert "0.25" not in tick_labels(one)  # counts of cells are whole numbers
    assert "no positive values" in histogram(np.zeros(4), "n_counts", log=True)
    assert "no values" in histogram(np.array([np.nan]), "n_genes")


def test_linear_ticks_are_round_numbers() -> None:
    assert qc_plots._linear_ticks(0, 31) == [0, 10, 20, 30]
    assert qc_plots._linear_ticks(0.5, 1.5) == [0.6, 0.8, 1.0, 1.2, 1.4]
    assert qc_plots._linear_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]
    assert qc_plots._linear_ticks(0, 3, min_step=1) == [0, 1, 2, 3]


def test_scatter_draws_every_cell_coloured_by_the_third_column() -> None:
    rng = np.random.default_rng(1)
    x = np.exp(rng.normal(7, 1, 300))
    y = x**0.8
    c = rng.uniform(0, 20, 300)
    c[:5] = np.nan
    x[-1] = 0  # not drawable on a log axis
    svg = scatter(x, y, c, xlabel="n_counts", ylabel="n_genes", clabel="pct_mito")
    root = ET.fromstring(svg)
    paths = [p for p in root.iter(f"{SVG}path") if p.get("data-n")]
    assert sum(int(p.get("data-n")) for p in paths) == 299
    assert sum(p.get("d").count("M") for p in paths) == 299
    grey = [p for p in paths if p.get("stroke") == qc_plots._GREY]
    assert len(grey) == 1 and grey[0].get("data-n") == "5"  # no pct_mito: grey, not a colour
    assert ">pct_mito</text>" in svg and "random sample" not in svg


def test_scatter_samples_large_tables_and_says_so() -> None:
    n = MAX_SCATTER_POINTS + 1000
    x = np.arange(1, n + 1, dtype=float)
    svg = scatter(x, x, None, xlabel="n_counts", ylabel="n_genes", clabel="")
    paths = [p for p in ET.fromstring(svg).iter(f"{SVG}path") if p.get("data-n")]
    assert [int(p.get("data-n")) for p in paths] == [MAX_SCATTER_POINTS]
    assert f"random sample of {MAX_SCATTER_POINTS:,} of {n:,} cells" in svg
    assert "no cells with counts" in scatter(np.zeros(3), np.ones(3), None, xlabel="a", ylabel="b", clabel="c")


def test_text_is_escaped() -> None:
    svg = histogram(np.array([1.0, 2.0]), "<b>&name")
    assert "&lt;b&gt;&amp;name" in svg and "<b>" not in svg
    ET.fromstring(svg)  # well-formed XML
