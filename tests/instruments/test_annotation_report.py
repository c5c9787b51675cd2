"""The reannotation report: every section, numbers that match the rows, a page that loads nothing."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from aivc.instruments.agreement import agreement_many
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
    assert rep["schema_name"] == "aivc.prediction_report" and set(SECTIONS) <= rep.keys()
    assert (rep["prediction"], rep["instrument"], rep["embedding"], rep["datasets"]) == ("predictions:celltype@1", "celltype@1", "cell:pca@1", ["pbmc68k-part2"])
    cats = agreement_many(rows["predicted_term_id"].tolist(), rows["cell_type_ontology_term_id"].tolist())
    counts = {c: int((cats == c).sum()) for c in ("exact", "ancestor", "descendant", "conflict", "unlabelled")}
    assert rep["agreement"]["counts"] == counts and sum(counts.values()) == 350 and counts["unlabelled"] == 0
    assert rep["agreement"]["fractions"]["exact"] == round(counts["exact"] / 350, 6)
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
    assert r["spec"] == "CL:0000084,CL:0000236" and [c["label"] for c in r["classes"]] == ["T cell", "B cell"]
    b = r["classes"][1]
    assert b["n_submitted"] == int((rows["cell_type_ontology_term_id"] == "CL:0000236").sum())
    assert r["n_compared"] + r["n_not_rolled"] == 350


def test_html_is_self_contained(reported):
    _, _, rep, html, _ = reported
    ids = re.findall(r'<h2 id="([a-z-]+)"', html)
    assert ids == ["summary", "agreement", "per-class", "confusion", "disagreements", "map", "conformal", "novelty", "rollup"]
    assert html.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=\"(https?:)?//", html) and "<script" not in html and "<link" not in html
    assert "predictions:celltype@1" in html and "CD8-positive, alpha-beta cytotoxic T cell" in html
    assert rep["disagreements"][0]["obs_id"] in html


def test_report_can_be_recomputed_with_another_rollup(reported, cli_app, tmp_path):
    lake, _, rep, _, _ = reported
    code, out = run_cli(cli_app, "instruments", "report", "predictions:celltype@1", "--out", str(tmp_path / "r"), "--rollup", "depth:8", "--lake", str(lake.root))
    assert code == 0
    again = json.loads((tmp_path / "r" / "report.json").read_text())
    assert again["rollup"]["spec"] == "depth:8" and again["agreement"] == rep["agreement"]
    assert {c["term_id"] for c in again["rollup"]["classes"]} >= {"CL:0000542"}  # lymphocyte
    code, out = run_cli(cli_app, "instruments", "report", "celltype@1", "--out", str(tmp_path / "r2"), "--rollup", "depth:z", "--lake", str(lake.root))
    assert code == 2 and out["errors"][0]["where"] == "--rollup"
