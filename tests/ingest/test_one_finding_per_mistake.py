"""One finding per mistake: a value harmonization refused is not checked again by QC.

Issue 11: four ontology mistakes read as six or seven errors, because the Great Expectations
suite ran its term-id regexes (and its not-null checks) on the values harmonization had
already refused, adding ``QC_TERM_ID_INVALID ... malformed ... (allowed: none)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aivc.ingest.manifest import Manifest
from aivc.ingest.obs_fields import harmonize_obs
from aivc.ingest.submission import validate_submission
from aivc.ontology import with_article
from tests.conftest import base_manifest

N = 60


def _columns(**values: list[Any]) -> Any:
    def mutate(adata: Any) -> None:
        for name, column in values.items():
            adata.obs[name] = np.resize(np.asarray(column, dtype=object), N)

    return mutate


def _four_mistakes() -> tuple[Any, dict[str, Any]]:
    m = base_manifest()
    m["obs"].update(
        cell_type={"column": "ct"},  # a label no CL term has
        tissue={"column": "tis"},  # an EFO id given as tissue
        assay={"column": "assay_id"},  # an EFO id from the wrong branch
        disease={"column": "dis"},  # an id MONDO does not have
    )
    mutate = _columns(ct=["CD14 monocyte"], tis=["EFO:0009901"], assay_id=["EFO:0000001"], dis=["MONDO:9999999"])
    return mutate, m


def test_four_ontology_mistakes_give_four_errors(write_submission) -> None:
    mutate, manifest = _four_mistakes()
    h5, mf = write_submission(mutate, manifest)
    report = validate_submission(h5, mf).report
    got = sorted((f.code, f.where.split(" ", 1)[0]) for f in report.errors)
    assert got == [
        ("OBS_UNKNOWN_TERM", "obs['dis']"),
        ("OBS_UNMATCHED_LABEL", "obs['ct']"),
        ("OBS_WRONG_ONTOLOGY", "obs['assay_id']"),
        ("OBS_WRONG_ONTOLOGY", "obs['tis']"),
    ]
    tissue = next(f for f in report.errors if f.where.startswith("obs['tis']"))
    assert "'EFO:0009901' (10x 3' v1) is an EFO term; tissue must be an UBERON descendant" in tissue.message
    # The suite still ran on those columns, over the accepted values only (here: none).
    rows = {r["column"]: r for r in report.expectations if r["suite"] == "obs_metadata"}
    for column in ("cell_type", "tissue", "assay", "disease"):
        assert rows[f"{column}_ontology_term_id"]["success"] is True


def test_cli_shows_one_line_per_mistake(write_submission, tmp_path) -> None:
    mutate, manifest = _four_mistakes()
    h5, mf = write_submission(mutate, manifest)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    cmd = [sys.executable, "-m", "aivc.cli", "validate", str(h5), "-m", str(mf), "--json", "--report-dir", str(tmp_path / "r")]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 1, run.stderr
    errors = json.loads(run.stdout)["errors"]
    assert Counter(e["code"] for e in errors) == {"OBS_WRONG_ONTOLOGY": 2, "OBS_UNMATCHED_LABEL": 1, "OBS_UNKNOWN_TERM": 1}
    assert not any("(allowed: none)" in e["message"] for e in errors)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_columns(label=["Bcell", None]), "OBS_NULL_VALUE"),  # a missing cell type ('' after harmonization)
        (_columns(donor=["d1", "   "]), "OBS_BAD_DONOR_ID"),  # a blank donor id
        (_columns(donor=["d1", None]), "OBS_NULL_VALUE"),  # a missing donor id
        (_columns(sex=["PATO:0000383", "male"]), None),  # a label: accepted, so no error at all
        (_columns(sex=["PATO:0000383", "PATO:0000461"]), "OBS_WRONG_ONTOLOGY"),  # "normal" is no sex
    ],
    ids=["missing-cell-type", "blank-donor", "missing-donor", "sex-label", "bad-sex"],
)
def test_each_mistake_is_reported_once(write_submission, mutate: Any, code: str | None) -> None:
    h5, mf = write_submission(mutate)
    report = validate_submission(h5, mf).report
    assert [f.code for f in report.errors] == ([code] if code else [])


def test_unknown_tissue_of_a_cell_culture_passes_the_suite(write_submission) -> None:
    # Harmonization accepts 'unknown' as the tissue of a primary cell culture; the suite's
    # regex refused it (QC_TERM_ID_INVALID) though nothing was wrong.
    h5, mf = write_submission(
        obs={**base_manifest()["obs"], "tissue": {"value": "unknown"}, "tissue_type": {"value": "primary cell culture"}}
    )
    report = validate_submission(h5, mf).report
    assert report.errors == []
    row = next(r for r in report.expectations if r["column"] == "tissue_ontology_term_id")
    assert row["success"] is True and row["unexpected_count"] == 0


def test_accepted_frame_blanks_exactly_the_refused_values() -> None:
    manifest = Manifest.model_validate(base_manifest())
    obs = pd.DataFrame(
        {
            "label": ["Bcell", "not a cell type", None, "Tcell"],
            "sex": ["PATO:0000383", "PATO:0000384", "PATO:0000383", "UBERON:0002048"],
            "donor": ["d1", "  ", "d2", "d2"],
        },
        index=["a", "b", "c", "d"],
    )
    res = harmonize_obs(obs, manifest)
    assert res.frame["cell_type_ontology_term_id"].tolist() == ["CL:0000236", "not a cell type", "", "CL:0000084"]
    accepted = res.accepted_frame()
    assert accepted["cell_type_ontology_term_id"].tolist() == ["CL:0000236", None, None, "CL:0000084"]
    assert accepted["sex_ontology_term_id"].tolist() == ["PATO:0000383", "PATO:0000384", "PATO:0000383", None]
    assert accepted["donor_id"].tolist() == ["d1", None, "d2", "d2"]
    assert accepted["tissue_ontology_term_id"].tolist() == ["UBERON:0000178"] * 4
    assert accepted["cell_type"].tolist() == res.frame["cell_type"].tolist()  # labels are left as they are
    assert {f.code for f in res.errors} == {"OBS_UNMATCHED_LABEL", "OBS_NULL_VALUE", "OBS_WRONG_ONTOLOGY", "OBS_BAD_DONOR_ID"}


def test_articles_for_every_shipped_prefix() -> None:
    from aivc.ontology import get_ontologies

    expected = {
        "AfPO": "an", "CHEBI": "a", "CL": "a", "CVCL": "a", "EFO": "an", "FBbt": "an", "FBdv": "an",
        "HANCESTRO": "a", "HsapDv": "an", "MONDO": "a", "MmusDv": "an", "NCBITaxon": "an", "PATO": "a",
        "UBERON": "an", "UniProt": "a", "WBbt": "a", "WBls": "a", "ZFA": "a", "ZFS": "a",
    }
    shipped = get_ontologies().prefixes
    assert shipped <= set(expected), sorted(shipped - set(expected))
    for prefix in shipped:
        assert with_article(prefix) == f"{expected[prefix]} {prefix}"
    assert with_article("SO") == "an SO" and with_article("GO") == "a GO"  # not shipped: read by letter
