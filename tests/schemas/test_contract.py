"""The cell-field contract (schemas/cell_fields.yaml) and what is generated from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from aivc.schemas.contract import _parse, contract
from schemas.build_manifest_schema import SCHEMA, generate, render
from tests.conftest import base_manifest

ROOT = Path(__file__).resolve().parents[2]


def _valid(schema: dict, manifest: dict) -> bool:
    return not list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))


def test_committed_schema_is_generated_from_the_contract():
    current = SCHEMA.read_text(encoding="utf-8")
    assert render(generate(json.loads(current), contract())) == current
    done = subprocess.run([sys.executable, str(ROOT / "schemas" / "build_manifest_schema.py"), "--check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_the_model_and_the_lake_columns_follow_the_contract():
    from aivc.ingest import manifest
    from aivc.ingest.obs_rules import SUSPENSION_TYPES, TISSUE_TYPES
    from aivc.store.soma_io import OBS_STRING_COLUMNS

    c = contract()
    assert manifest.ORGANISMS == {"NCBITaxon:9606": "homo_sapiens", "NCBITaxon:10090": "mus_musculus"}
    assert manifest.STANDARD_FIELDS[:2] == ("assay", "cell_type") and manifest.STANDARD_FIELDS[-1] == "is_primary_data"
    assert len(manifest.STANDARD_FIELDS) == 11 and len(manifest.ONTOLOGY_FIELDS) == 7
    assert TISSUE_TYPES == ("tissue", "organoid", "primary cell culture") and SUSPENSION_TYPES == ("cell", "nucleus", "na")
    assert OBS_STRING_COLUMNS == c.obs_columns
    assert [f"{f}_ontology_term_id" for f in c.ontology_fields] == [x for x in OBS_STRING_COLUMNS if x.endswith("_ontology_term_id")][1:]
    # the model fills in the contract's defaults, per organism
    mouse = base_manifest(organism="NCBITaxon:10090")
    del mouse["obs"]["self_reported_ethnicity"], mouse["obs"]["tissue_type"], mouse["obs"]["is_primary_data"]
    m = manifest.Manifest.model_validate(mouse)
    assert (m.obs["self_reported_ethnicity"].value, m.obs["tissue_type"].value, m.obs["is_primary_data"].value) == ("na", "tissue", True)
    human = base_manifest()
    del human["obs"]["self_reported_ethnicity"]
    schema = json.loads(SCHEMA.read_text())
    assert not _valid(schema, human) and _valid(schema, mouse)
    with pytest.raises(Exception, match="self_reported_ethnicity"):
        manifest.Manifest.model_validate(human)


def test_a_field_or_an_organism_is_one_edit_of_the_contract():
    import yaml

    data = yaml.safe_load((ROOT / "schemas" / "cell_fields.yaml").read_text())
    data["organisms"]["NCBITaxon:10116"] = {"name": "rattus_norvegicus", "label": "Rattus norvegicus", "common": "rat"}
    data["fields"]["sample_id"] = {"kind": "string", "required_for": ["NCBITaxon:10116"]}
    c = _parse(data)
    schema = generate(json.loads(SCHEMA.read_text()), c)
    rat = base_manifest(organism="NCBITaxon:10116")
    assert not _valid(schema, rat)  # the rat needs sample_id
    rat["obs"]["sample_id"] = {"column": "sample"}
    assert _valid(schema, rat)
    assert "sample_id" in schema["properties"]["obs"]["properties"] and "NCBITaxon:10116" in schema["properties"]["organism"]["enum"]
    assert c.obs_columns.index("sample_id") == c.obs_columns.index("donor_id") + 1  # a new lake obs column


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["fields"]["assay"].update(kind="ontolgy"), "kind must be one of"),
        (lambda d: d["fields"]["assay"].update(requried=True), "unknown keys"),
        (lambda d: d["fields"]["sex"].update(required_for=["NCBITaxon:1"]), "unknown organisms"),
        (lambda d: d.update(schema_version=2), "expected aivc.cell_fields/1"),
    ],
)
def test_a_broken_contract_is_refused(edit, message):
    import yaml

    data = yaml.safe_load((ROOT / "schemas" / "cell_fields.yaml").read_text())
    edit(data)
    with pytest.raises(ValueError, match=message):
        _parse(data)
