"""The reannotation report: every section, numbers that match the rows, a page that loads nothing."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from aivc.instruments.agreement import RollUp, agreement_many
from aivc.instruments.predictions import read_predictions, version_dir
from aivc.instruments.report import SECTIONS, TOP_DISAGREEMENTS
from tests.instruments.support import run_cli


@pytest.fixture(scope="module")
def reported(pbmc_base, tmp_path_factory):
    """Part 2 annotated in-process with a roll-up to T cell / B cell; its rows joined to the submitted labels."""
    import shutil

    from aivc.instruments.annotate import annotate
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("report") / "lake"
    shutil.copytree(pbmc_base.root, root, symlinks=True)
    lake = Lake.open(root)
    pv = annotate(lake, "celltype@1", datasets=["pbmc68k-part2"], engine="local", rollup="CL:0000084,CL:0000236")
    folder = version_dir(lake, "celltype", 1)
    rows = read_predictions(lake, pv).to_pandas()
    cells = pd.read_parquet(lake.root / "catalog" / "datasets" / "pbmc68k-part2" / "v000001" / "cells.parquet")
    rows = rows.merge(cells[["obs_id", "cell_type_ontology_term_id"]], on="obs_id")
    return lake, pv, json.loads((folder / "report.json").read_text()), (folder / "report.html").read_text(), rows


def test_json_has_every_section_and_consistent_numbers(reported):
    _, pv, rep, _, rows = reported
    assert (rep["schema_name"], rep["schema_version"]) == ("aivc.prediction_report", 2) and set(SECTIONS) <= rep.keys()
    assert (rep["prediction"], rep["instrument"], rep["embedding"], rep["datasets"]) == ("predictions:celltype@1", "celltype@1", "cell:pca@1", ["pbmc68k-part2"])
    cats = agreement_many(rows["predicted_term_id"].tolist(), rows["cell_type_ontology_term_id"].tolist())
    counts = {c: int((cats == c).sum()) for c in ("exact", "ancestor", "descendant", "conflict", "unlabelled")}
    assert rep["agreement"]["counts"] == counts and sum(counts.values()) == 350 and counts["unlabelled"] == 0
    assert rep["agreement"]["fractions_of_labelled"]["exact"] == round(counts["exact"] / 350, 6) and rep["agreement"]["unlabelled_fraction_of_cells"] == 0
    assert pv.summary["agree_fraction"] == rep["agreement"]["agree_fraction"]
    # conformal coverage: labelled cells of the decoder's seven types whose submitted term is in the set
    classes = [c["term_id"] for c in rep["classes"]]
    known = rows["cell_type_ontology_term_id"].isin(classes)
    covered = [t in s for t, s in zip(rows["cell_type_ontology_term_id"], rows["prediction_set"], strict=True)]
    assert rep["conformal"]["n_evaluated"] == known.sum() == 329 and rep["conformal"]["n_labelled_unknown_type"] == 21
    assert rep["conformal"]["coverage"] == round(float(np.mean(np.array(covered)[known])), 6)
    assert rep["conformal"]["nominal_coverage"] == 0.9 and rep["conformal"]["mean_set_size_known"] == round(float(rows.loc[known, "set_size"].mean()), 6)
    # per-class precision / recall
    b = next(r for r in rep["per_class"]["classes"] if r["term_id"] == "CL:0000236")
    tp = int(((rows["predicted_term_id"] == "CL:0000236") & (rows["cell_type_ontology_term_id"] == "CL:0000236")).sum())
    assert b["support"] == int((rows["cell_type_ontology_term_id"] == "CL:0000236").sum()) and b["recall"] == round(tp / b["support"], 6)
    assert [r["known"] for r in rep["per_class"]["classes"]].count(False) == 3
    # confusion matrix: submitted rows x the decoder's classes
    m = np.array(rep["confusion"]["counts"])
    assert m.shape == (10, 7) and m.sum() == 350 and rep["confusion"]["columns"] == classes


def test_disagreements_map_novelty_rollup(reported):
    _, _, rep, _, rows = reported
    d = rep["disagreements"]
    assert len(d) == TOP_DISAGREEMENTS and all(x["predicted_term_id"] != x["submitted_term_id"] for x in d)
    probs = [x["probability"] for x in d]
    assert probs == sorted(probs, reverse=True)
    conflicts = agreement_many(rows["predicted_term_id"].tolist(), rows["cell_type_ontology_term_id"].tolist()) == "conflict"
    assert probs[0] == round(float(rows.loc[conflicts, "probability"].max()), 6)
    assert rep["map"]["method"] == "pca" and rep["map"]["n_points"] == 350 and len(rep["map"]["explained_variance_ratio"]) == 2
    assert rep["novelty"]["n_abstain"] == int(rows["abstain"].sum())
    r = rep["rollup"]
    assert r["spec"] == "CL:0000084,CL:0000236" and [c["label"] for c in r["groups"]] == ["T cell", "B cell"]
    b = r["groups"][1]
    assert b["n_submitted"] == int((rows["cell_type_ontology_term_id"] == "CL:0000236").sum())
    # recomputed from the rows: every labelled cell submitted into T or B counts, wherever it was predicted
    spec = RollUp.parse("CL:0000084,CL:0000236")
    sub = pd.Series(spec.apply_many(rows["cell_type_ontology_term_id"].tolist()))
    pred = pd.Series(spec.apply_many(rows["predicted_term_id"].tolist()))
    counted = sub.notna()
    assert r["n_in_groups"] == int(counted.sum()) and r["agree"] == int((counted & (sub == pred)).sum())
    assert r["conflict_no_group"] == int((counted & pred.isna()).sum()) > 0  # part 2 has T cells predicted NK
    assert r["n_in_groups"] == r["agree"] + r["conflict"] and r["n_in_groups"] + r["n_not_in_rollup"] == 350
    assert rep["summary"]["rollup"]["agree"] == r["agree"] and rep["summary"]["rollup"]["n_in_groups"] == r["n_in_groups"]


def _cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row_html)]


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<h2 id="{anchor}"')
    nxt = html.find("<h2 ", start + 1)
    return html[start : nxt if nxt > 0 else len(html)]


def test_rollup_table_and_headline_add_up_on_a_constructed_case():
    """A T cell predicted NK and a B cell predicted dendritic cell are conflicts, in the JSON, the headline and the table."""
    from aivc.instruments.report import _rollup, _rollup_section

    df = pd.DataFrame({
        "submitted_term_id": ["CL:0000084", "CL:0000084", "CL:0000624", "CL:0000236", "CL:0000236", "CL:0000815", "CL:0001054", None],
        "predicted_term_id": ["CL:0000084", "CL:0000623", "CL:0000084", "CL:0000236", "CL:0000451", "CL:0000236", "CL:0000236", "CL:0000084"],
    })  # fmt: skip
    r = _rollup(df, RollUp.parse("CL:0000084,CL:0000236"), {})
    assert (r["n_in_groups"], r["agree"], r["conflict"], r["conflict_other_group"], r["conflict_no_group"]) == (6, 3, 3, 1, 2)
    assert (r["n_not_in_rollup"], r["n_not_in_rollup_predicted_in_group"], r["n_unlabelled"], r["n_cells"]) == (1, 1, 1, 8)
    html = _rollup_section(r)
    head = re.search(r"<p>(\d+) of (\d+) labelled cells in the groups agree \(([\d.]+)%\); (\d+) conflict \((\d+) predicted in another group, (\d+) outside every group\)\. "
                     r"Not in the roll-up: (\d+) labelled cells submitted with a term outside every group, (\d+) unlabelled cells\.</p>", html)  # fmt: skip
    assert head is not None, html
    assert head.groups() == ("3", "6", "50.0", "3", "1", "2", "1", "1")
    rows = [_cells(tr) for tr in re.findall(r"<tr>(.*?)</tr>", html) if "<td" in tr]
    assert rows == [
        ["T cell CL:0000084", "4", "2", "1", "1", "50.0%"],  # T, CD4 T agree; Treg -> B cell; T -> NK
        ["B cell CL:0000236", "2", "1", "0", "1", "50.0%"],  # B agrees; B -> dendritic cell
        ["all groups", "6", "3", "1", "2", "50.0%"],
    ]
    # the table's columns add up to its total row, and the total row is the headline
    body, total = [[int(x) for x in row[1:5]] for row in rows[:-1]], [int(x) for x in rows[-1][1:5]]
    assert [sum(col) for col in zip(*body, strict=True)] == total == [6, 3, 1, 2]
    assert total[0] == total[1] + total[2] + total[3]


def test_agreement_fractions_name_their_denominator(reported):
    _, _, rep, html, _ = reported
    sec = _section(html, "agreement")
    assert "<th>of 350 labelled cells</th><th>of all 350 cells</th>" in sec
    rows = {r[0]: r[1:] for r in (_cells(tr) for tr in re.findall(r"<tr>(.*?)</tr>", sec)) if r and r[0] in ("exact", "conflict", "labelled, all", "unlabelled", "all cells")}
    a = rep["agreement"]
    assert rows["exact"] == [str(a["counts"]["exact"]), f"{100 * a['counts']['exact'] / 350:.1f}%", f"{100 * a['counts']['exact'] / 350:.1f}%"]
    assert rows["labelled, all"] == ["350", "100.0%", "100.0%"] and rows["unlabelled"] == ["0", "", "0.0%"] and rows["all cells"] == ["350", "", "100.0%"]


def test_html_is_self_contained(reported):
    _, _, rep, html, _ = reported
    ids = re.findall(r'<h2 id="([a-z-]+)"', html)
    assert ids == ["summary", "agreement", "per-class", "confusion", "disagreements", "map", "conformal", "novelty", "rollup"]
    assert html.count("<svg") == 2 and "data:image" not in html  # the map and the confusion heatmap, inline SVG
    n_map = sum(int(n) for n in re.findall(r'data-n="(\d+)"', html[html.index('id="map"') :].split("</svg>")[0]))
    assert n_map == rep["map"]["n_points"] == 350  # every plotted cell is in one category's path (or the abstentions')
    conf = html[html.index('id="confusion"') :].split("</svg>")[0]
    m = rep["confusion"]
    assert len(re.findall(r"<rect [^>]*data-v=", conf)) == len(m["rows"]) * len(m["columns"])
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html and "<link" not in html
    assert "predictions:celltype@1" in html and "CD8-positive, alpha-beta cytotoxic T cell" in html
    assert rep["disagreements"][0]["obs_id"] in html


def test_report_can_be_recomputed_with_another_rollup(reported, cli_app, tmp_path):
    lake, _, rep, _, _ = reported
    code, out = run_cli(cli_app, "instruments", "report", "predictions:celltype@1", "--out", str(tmp_path / "r"), "--rollup", "depth:8", "--lake", str(lake.root))
    assert code == 0
    again = json.loads((tmp_path / "r" / "report.json").read_text())
    assert again["rollup"]["spec"] == "depth:8" and again["agreement"] == rep["agreement"]
    r = again["rollup"]
    assert {c["term_id"] for c in r["groups"]} >= {"CL:0000542"}  # lymphocyte
    # every term has an ancestor at depth <= 8 (cell is depth 0): all 350 labelled cells are in the roll-up
    assert (r["n_in_groups"], r["n_not_in_rollup"], r["conflict_no_group"]) == (350, 0, 0) and r["agree"] + r["conflict"] == 350
    code, out = run_cli(cli_app, "instruments", "report", "celltype@1", "--out", str(tmp_path / "r2"), "--rollup", "depth:z", "--lake", str(lake.root))
    assert code == 2 and out["errors"][0]["where"] == "--rollup"
