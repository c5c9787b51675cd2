"""Every manifest error is its own finding with its path, and the schema and model agree.

The case from issue 11: ``licence`` misspelt, ``organism`` removed and ``access: secret`` gave
one ``MANIFEST_INVALID ... (and 2 more)``, the other errors nowhere, and a report saying
``dataset id (not assigned)`` although the manifest has a valid ``dataset_id``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aivc.errors import Finding, ManifestError, ValidationFailed, and_more
from aivc.ingest.manifest import Manifest, load_manifest, parse_manifest, schema_findings
from aivc.ingest.report import write_report
from aivc.ingest.submission import validate_submission
from tests.conftest import base_manifest


def three_mistakes() -> dict[str, Any]:
    m = base_manifest()
    m["licence"] = m.pop("license")
    del m["organism"]
    m["access"] = "secret"
    return m


EXPECTED = [  # (path, message) of the three mistakes, in path order
    ("access", "'secret' is not allowed; use one of 'public', 'consortium', 'embargoed'"),
    ("licence", "'licence' is not a manifest key; did you mean 'license', which is missing?"),
    ("organism (missing)", "required key 'organism' is missing; use one of 'NCBITaxon:9606', 'NCBITaxon:10090'"),
]


def test_parse_manifest_raises_one_error_carrying_every_finding() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(three_mistakes(), source="m.yaml")
    exc = caught.value
    assert [(f.code, f.where, f.message) for f in exc.findings] == [
        ("MANIFEST_INVALID", f"m.yaml: {path}", message) for path, message in EXPECTED
    ]
    assert exc.where == "m.yaml: access"
    assert exc.message == EXPECTED[0][1] + " (and 2 more errors)"
    assert "\n" not in str(exc)


@pytest.fixture
def bad_submission(write_submission) -> tuple[Path, Path]:
    return write_submission(manifest=three_mistakes())


def test_validation_report_lists_every_manifest_error_and_the_dataset_id(bad_submission, tmp_path) -> None:
    h5, mf = bad_submission
    prepared = validate_submission(h5, mf)
    report = prepared.report
    assert report.dataset_id == "synth-a"
    assert [(f.where, f.message) for f in report.errors] == [(f"{mf}: {p}", m) for p, m in EXPECTED]
    json_path, html_path = write_report(report, tmp_path / "r")
    payload = json.loads(json_path.read_text())
    assert payload["dataset_id"] == "synth-a" and payload["n_errors"] == 3
    assert [e["where"] for e in payload["errors"]] == [f"{mf}: {p}" for p, _ in EXPECTED]
    page = html_path.read_text()
    assert "(not assigned)" not in page
    assert "<td>dataset id</td><td class='mono'>synth-a</td>" in page
    for path, _ in EXPECTED:
        assert f'<span class="mono">{mf}: {path}</span>' in page


def test_malformed_dataset_id_is_not_carried(write_submission) -> None:
    h5, mf = write_submission(manifest=base_manifest(dataset_id="Bad Id!", access="secret"))
    report = validate_submission(h5, mf).report
    assert report.dataset_id is None
    assert [f.where.split(": ", 1)[1] for f in report.errors] == ["access", "dataset_id"]


def test_cli_validate_prints_all_three_errors(bad_submission, tmp_path) -> None:
    h5, mf = bad_submission
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    run = [sys.executable, "-m", "aivc.cli", "validate", str(h5), "--manifest", str(mf), "--report-dir", str(tmp_path / "r")]
    text = subprocess.run(run, capture_output=True, text=True, env=env, check=False)
    assert text.returncode == 1 and "Traceback" not in text.stderr
    for path, message in EXPECTED:
        assert f"[MANIFEST_INVALID] {mf}: {path}: {message}" in text.stdout
    assert text.stdout.count("[MANIFEST_INVALID]") == 3
    assert "synth-a: invalid" in text.stdout and "None:" not in text.stdout
    out = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, check=False).stdout)
    assert out["dataset_id"] == "synth-a"
    assert [(e["where"], e["message"]) for e in out["errors"]] == [(f"{mf}: {p}", m) for p, m in EXPECTED]


def test_misspelt_nested_key_is_one_finding() -> None:
    m = base_manifest()
    m["obs"]["sex"] = {"colum": "sex"}
    findings = schema_findings(m, "m.yaml")
    assert [(f.where, f.message) for f in findings] == [
        ("m.yaml: obs/sex/colum", "'colum' is not a key of obs/sex; did you mean 'column', which is missing?")
    ]


def test_missing_cell_fields_and_conditional_keys_name_their_paths() -> None:
    m = base_manifest(access="embargoed")
    del m["obs"]["cell_type"], m["obs"]["self_reported_ethnicity"]
    m["obs"]["tissue"] = {"value": "blood", "label_map": {"a": "b"}}
    got = {f.where: f.message for f in schema_findings(m, "m.yaml")}
    assert got == {
        "m.yaml: embargo_until (missing)": "required key 'embargo_until' is missing: "
        "access 'embargoed' needs 'embargo_until', the date the embargo lifts",
        "m.yaml: obs/cell_type (missing)": "required key 'cell_type' is missing",
        "m.yaml: obs/self_reported_ethnicity (missing)": "required key 'self_reported_ethnicity' is missing: "
        "human cells need self_reported_ethnicity (mouse cells default to 'na')",
        "m.yaml: obs/tissue/column (missing)": "required key 'column' is missing ('label_map' needs it)",
    }


def test_unquoted_yaml_date_is_read_as_the_date(tmp_path) -> None:
    mf = tmp_path / "m.yaml"
    mf.write_text(yaml.safe_dump(base_manifest(access="embargoed")) + "embargo_until: 2027-06-30\n")
    assert load_manifest(mf).embargo_until.isoformat() == "2027-06-30"  # type: ignore[union-attr]
    mf.write_text(yaml.safe_dump(base_manifest(access="embargoed")) + "embargo_until: 2027-13-01\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(mf)
    assert [f.where for f in caught.value.findings] == [f"{mf}: embargo_until"]


def _variant(change: str) -> dict[str, Any]:
    m = copy.deepcopy(base_manifest())
    mouse = {**m, "organism": "NCBITaxon:10090", "obs": {k: v for k, v in m["obs"].items() if k != "self_reported_ethnicity"}}
    variants: dict[str, dict[str, Any]] = {
        "base": m,
        "schema_version 1": {**m, "schema_version": 1},
        "schema_version 2": {**m, "schema_version": 2},
        "embargo date": {**m, "access": "embargoed", "embargo_until": "2027-06-30"},
        "embargo bad date": {**m, "access": "embargoed", "embargo_until": "2027-13-01"},
        "embargo number": {**m, "access": "embargoed", "embargo_until": 20270630},
        "contact null": {**m, "contact": None, "citation": None},
        "title empty": {**m, "title": ""},
        "title number": {**m, "title": 7},
        "dataset_id bad": {**m, "dataset_id": "Bad Id!"},
        "organism zebrafish": {**m, "organism": "NCBITaxon:7955"},
        "counts layer": {**m, "counts": "layer:counts"},
        "counts layer unnamed": {**m, "counts": "layer:"},
        "qc fraction 2": {**m, "qc": {"min_mapped_fraction": 2}},
        "qc mito 150": {**m, "qc": {"max_pct_mito": 150}},
        "mouse default ethnicity": mouse,
        "human without ethnicity": {**mouse, "organism": "NCBITaxon:9606"},
        "obs value number": {**m, "obs": {**m["obs"], "sex": {"value": 1}}},
        "obs value bool": {**m, "obs": {**m["obs"], "is_primary_data": {"value": False}}},
        "obs empty column": {**m, "obs": {**m["obs"], "sex": {"column": ""}}},
        "obs label_map without column": {**m, "obs": {**m["obs"], "tissue": {"value": "blood", "label_map": {"a": "b"}}}},
        "obs unknown field": {**m, "obs": {**m["obs"], "colour": {"value": "blue"}}},
        "obs perturbation constant": {**m, "obs": {**m["obs"], "perturbation_targets": {"value": "TP53"}}},
        "genes column null": {**m, "genes": {"id_type": "symbol", "column": None}},
    }
    return variants[change]


VARIANTS = [
    ("base", True), ("schema_version 1", True), ("schema_version 2", False), ("embargo date", True),
    ("embargo bad date", False), ("embargo number", False), ("contact null", True), ("title empty", False),
    ("title number", False), ("dataset_id bad", False), ("organism zebrafish", False), ("counts layer", True),
    ("counts layer unnamed", False), ("qc fraction 2", False), ("qc mito 150", False),
    ("mouse default ethnicity", True), ("human without ethnicity", False), ("obs value number", False),
    ("obs value bool", True), ("obs empty column", False), ("obs label_map without column", False),
    ("obs unknown field", False), ("obs perturbation constant", False), ("genes column null", True),
]


@pytest.mark.parametrize(("change", "valid"), VARIANTS, ids=[v for v, _ in VARIANTS])
def test_json_schema_and_model_agree(change: str, valid: bool) -> None:
    from pydantic import ValidationError

    data = _variant(change)
    schema_ok = schema_findings(data) == []
    try:
        Manifest.model_validate(data)
        model_ok = True
    except ValidationError:
        model_ok = False
    assert (schema_ok, model_ok) == (valid, valid)


def test_schema_version_does_not_change_the_content_hash() -> None:
    plain = parse_manifest(base_manifest())
    versioned = parse_manifest({**base_manifest(), "schema_version": 1})
    assert versioned.schema_version == 1
    assert versioned.canonical_json() == plain.canonical_json()
    assert "schema_version" not in json.loads(plain.canonical_json())


def test_more_errors_wording_is_grammatical() -> None:
    assert (and_more(0), and_more(1), and_more(2)) == ("", " (and 1 more error)", " (and 2 more errors)")
    one = Finding("X", "here", "first")
    assert str(ValidationFailed([one])) == "[X] here: first"
    assert str(ValidationFailed([one, Finding("Y", "there", "second")])) == "[X] here: first (and 1 more error)"
    many = ValidationFailed([one, *(Finding("Y", f"w{i}", "m") for i in range(3))])
    assert str(many) == "[X] here: first (and 3 more errors)"
