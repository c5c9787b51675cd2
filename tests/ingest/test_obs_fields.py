"""Harmonizing the standard cell fields, on real CL / UBERON / EFO / MONDO / HANCESTRO terms."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aivc.errors import Finding
from aivc.ingest.findings import Decision
from aivc.ingest.manifest import Manifest
from aivc.ingest.obs_fields import OUTPUT_COLUMNS, ObsResult, harmonize_obs
from aivc.ingest.obs_rules import term_rule
from aivc.ingest.obs_terms import OBS_CODES
from aivc.ontology import Ontologies, get_ontologies

HUMAN = "NCBITaxon:9606"
MOUSE = "NCBITaxon:10090"


@pytest.fixture(scope="module")
def onto() -> Ontologies:
    return get_ontologies()


def make_manifest(organism: str = HUMAN, **obs: dict[str, Any]) -> Manifest:
    fields: dict[str, Any] = {
        "assay": {"value": "EFO:0009922"},
        "cell_type": {"value": "unknown"},
        "development_stage": {"value": "unknown"},
        "disease": {"value": "PATO:0000461"},
        "sex": {"value": "unknown"},
        "tissue": {"value": "UBERON:0000178"},
        "suspension_type": {"value": "cell"},
        "donor_id": {"value": "d1"},
    }
    if organism == HUMAN:
        fields["self_reported_ethnicity"] = {"value": "unknown"}
    fields.update(obs)
    return Manifest.model_validate(
        {
            "dataset_id": "obs-test",
            "title": "t",
            "license": "CC-BY-4.0",
            "access": "public",
            "organism": organism,
            "genes": {"id_type": "symbol"},
            "obs": fields,
        }
    )


def cells(**columns: list[Any]) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    return pd.DataFrame(columns, index=[f"AAAC-{i}" for i in range(n)])


def run(obs: pd.DataFrame, onto: Ontologies, organism: str = HUMAN, **fields: dict[str, Any]) -> ObsResult:
    return harmonize_obs(obs, make_manifest(organism, **fields), ontologies=onto)


def only(result: ObsResult, code: str) -> Finding:
    found = [f for f in result.findings if f.code == code]
    assert len(found) == 1, [str(f) for f in result.findings]
    return found[0]


def decisions(result: ObsResult, field: str) -> list[Decision]:
    return [d for d in result.decisions if d.field == field]


# -- the happy path ---------------------------------------------------------------------------
def test_ids_labels_and_synonyms_resolve_with_one_decision_per_value(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", "b  cell", "B-lymphocyte", "CL:0000084", "T-lymphocyte", "unknown", "B cell"])
    res = run(obs, onto, cell_type={"column": "ct"})
    assert res.findings == []
    assert res.valid
    assert res.frame["cell_type_ontology_term_id"].tolist() == [
        "CL:0000236", "CL:0000236", "CL:0000236", "CL:0000084", "CL:0000084", "unknown", "CL:0000236",
    ]
    assert res.frame["cell_type"].tolist() == ["B cell", "B cell", "B cell", "T cell", "T cell", "unknown", "B cell"]
    assert decisions(res, "cell_type") == [
        Decision("cell_type", "B cell", "CL:0000236", "B cell", "label", 2),
        Decision("cell_type", "B-lymphocyte", "CL:0000236", "B cell", "synonym", 1),
        Decision("cell_type", "CL:0000084", "CL:0000084", "T cell", "term_id", 1),
        Decision("cell_type", "T-lymphocyte", "CL:0000084", "T cell", "synonym", 1),
        Decision("cell_type", "b  cell", "CL:0000236", "B cell", "label", 1),
        Decision("cell_type", "unknown", "unknown", "unknown", "term_id", 1),
    ]


def test_frame_columns_index_and_types(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", "T cell"], donor=[1, 2])
    res = run(obs, onto, cell_type={"column": "ct"}, donor_id={"column": "donor"})
    assert tuple(res.frame.columns) == OUTPUT_COLUMNS
    assert list(res.frame.columns[:11]) == [
        "assay_ontology_term_id", "cell_type_ontology_term_id", "development_stage_ontology_term_id",
        "disease_ontology_term_id", "self_reported_ethnicity_ontology_term_id", "sex_ontology_term_id",
        "tissue_ontology_term_id", "tissue_type", "suspension_type", "donor_id", "is_primary_data",
    ]
    assert list(res.frame.columns[11:]) == [
        "assay", "cell_type", "development_stage", "disease", "self_reported_ethnicity", "sex", "tissue",
    ]
    assert res.frame.index.equals(obs.index)
    assert res.frame["is_primary_data"].dtype == bool
    for column in OUTPUT_COLUMNS:
        if column != "is_primary_data":
            assert all(isinstance(v, str) for v in res.frame[column]), column
    row = res.frame.iloc[0]
    assert (row["assay_ontology_term_id"], row["assay"]) == ("EFO:0009922", "10x 3' v3")
    assert (row["disease_ontology_term_id"], row["disease"]) == ("PATO:0000461", "normal")
    assert (row["tissue_ontology_term_id"], row["tissue"]) == ("UBERON:0000178", "blood")
    assert (row["self_reported_ethnicity"], row["sex"], row["development_stage"]) == ("unknown", "unknown", "unknown")
    assert (row["tissue_type"], row["suspension_type"], row["donor_id"]) == ("tissue", "cell", "1")
    assert bool(row["is_primary_data"]) is True


def test_constants_decide_once_for_all_cells(onto: Ontologies) -> None:
    obs = cells(x=list(range(5)))
    res = run(obs, onto, tissue={"value": "lung"}, sex={"value": "PATO:0000383"})
    assert decisions(res, "tissue") == [Decision("tissue", "lung", "UBERON:0002048", "lung", "label", 5)]
    assert decisions(res, "sex") == [Decision("sex", "PATO:0000383", "PATO:0000383", "female", "constant", 5)]
    assert decisions(res, "assay") == [Decision("assay", "EFO:0009922", "EFO:0009922", "10x 3' v3", "constant", 5)]
    assert set(res.frame["tissue_ontology_term_id"]) == {"UBERON:0002048"}


def test_categorical_column_and_obo_style_ids(onto: Ontologies) -> None:
    ct = pd.Categorical(["CL_0000236", "T cell", "CL_0000236"], categories=["CL_0000236", "T cell", "never used"])
    res = run(cells(ct=list(ct)).assign(ct=ct), onto, cell_type={"column": "ct"})
    assert res.findings == []
    assert res.frame["cell_type_ontology_term_id"].tolist() == ["CL:0000236", "CL:0000084", "CL:0000236"]
    assert [d.submitted for d in decisions(res, "cell_type")] == ["CL_0000236", "T cell"]


# -- label_map --------------------------------------------------------------------------------
def test_label_map_translates_values_and_warns_on_unused_keys(onto: Ontologies) -> None:
    obs = cells(ct=["Bc", "Tc", "Bc", "monocyte"])
    spec = {"column": "ct", "label_map": {"Bc": "B cell", "Tc": "CL:0000084", "NKc": "natural killer cell"}}
    res = run(obs, onto, cell_type=spec)
    assert res.frame["cell_type_ontology_term_id"].tolist() == ["CL:0000236", "CL:0000084", "CL:0000236", "CL:0000576"]
    assert decisions(res, "cell_type") == [
        Decision("cell_type", "Bc", "CL:0000236", "B cell", "label_map", 2),
        Decision("cell_type", "Tc", "CL:0000084", "T cell", "label_map", 1),
        Decision("cell_type", "monocyte", "CL:0000576", "monocyte", "label", 1),
    ]
    unused = only(res, "OBS_LABEL_MAP_UNUSED")
    assert unused.severity == "warning"
    assert unused.where == "manifest obs/cell_type/label_map['NKc']"
    assert "'NKc'" in unused.message and "obs['ct']" in unused.message
    assert res.valid  # warnings do not reject


def test_label_map_target_is_validated(onto: Ontologies) -> None:
    obs = cells(ct=["Bc", "Bc"])
    res = run(obs, onto, cell_type={"column": "ct", "label_map": {"Bc": "UBERON:0002048"}})
    f = only(res, "OBS_WRONG_ONTOLOGY")
    assert f.where == "obs['ct'] (cell_type) rows 'AAAC-0' (index 0) and 1 more"
    assert "'Bc' (label_map -> 'UBERON:0002048')" in f.message


# -- the error codes --------------------------------------------------------------------------
def test_column_missing_lists_available_columns(onto: Ontologies) -> None:
    obs = cells(cell_type_label=["B cell"], donor=["d1"])
    res = run(obs, onto, cell_type={"column": "celltype_label"})
    f = only(res, "OBS_COLUMN_MISSING")
    assert f.where == "obs['celltype_label'] (cell_type)"
    assert "'cell_type_label', 'donor'" in f.message
    assert "did you mean 'cell_type_label'?" in f.message
    assert res.frame["cell_type_ontology_term_id"].tolist() == [""]


def test_null_values_nan_none_and_empty(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", np.nan, None, "  ", "B cell"])
    res = run(obs, onto, cell_type={"column": "ct"})
    f = only(res, "OBS_NULL_VALUE")
    assert f.where == "obs['ct'] (cell_type) rows 'AAAC-1' (index 1) and 2 more"
    assert "3 cells have no cell_type in column 'ct'" in f.message
    assert res.frame["cell_type_ontology_term_id"].tolist() == ["CL:0000236", "", "", "", "CL:0000236"]
    assert decisions(res, "cell_type") == [Decision("cell_type", "B cell", "CL:0000236", "B cell", "label", 2)]


def test_unknown_term_id(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", "CL:9999999", "B cell", "CL:9999999", "FOO:0001"])
    res = run(obs, onto, cell_type={"column": "ct"})
    unknown = [f for f in res.findings if f.code == "OBS_UNKNOWN_TERM"]
    assert [f.where for f in unknown] == [
        "obs['ct'] (cell_type) rows 'AAAC-1' (index 1) and 1 more",
        "obs['ct'] (cell_type) row 'AAAC-4' (index 4)",
    ]
    assert "'CL:9999999' is not a term of CL v" in unknown[0].message
    assert "'FOO' is not a known ontology" in unknown[1].message
    assert res.frame["cell_type_ontology_term_id"].tolist()[1] == "CL:9999999"  # kept as submitted
    assert res.frame["cell_type"].tolist()[1] == ""


def test_wrong_ontology_for_the_field(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, cell_type={"value": "UBERON:0002048"})
    f = only(res, "OBS_WRONG_ONTOLOGY")
    assert f.where == "manifest obs/cell_type/value"
    assert "'UBERON:0002048' (lung) is an UBERON term" in f.message
    assert "cell_type must be a CL cell type" in f.message


def test_wrong_ontology_without_loading_huge_ontologies(onto: Ontologies) -> None:
    start = time.perf_counter()
    res = run(cells(x=[0]), onto, cell_type={"value": "NCBITaxon:9606"})
    assert time.perf_counter() - start < 2.0  # NCBITaxon alone takes ~25 s to load
    assert "is an NCBITaxon term" in only(res, "OBS_WRONG_ONTOLOGY").message


def test_assay_must_be_an_assay(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, assay={"value": "EFO:0000001"})
    f = only(res, "OBS_WRONG_ONTOLOGY")
    assert "'EFO:0000001' (experimental factor) is not a valid assay" in f.message
    assert "EFO:0002772 (assay by molecule) or EFO:0010183 (single cell library construction)" in f.message


@pytest.mark.parametrize(
    ("field", "value", "term"),
    [
        ("cell_type", "cell", "CL:0000000"),  # via its label
        ("cell_type", "CL:0000255", "CL:0000255"),  # eukaryotic cell
        ("assay", "EFO:0010183", "EFO:0010183"),  # the root itself
        ("disease", "MONDO:0000001", "MONDO:0000001"),
        ("self_reported_ethnicity", "HANCESTRO:0004", "HANCESTRO:0004"),  # ancestry category
    ],
)
def test_forbidden_terms(onto: Ontologies, field: str, value: str, term: str) -> None:
    res = run(cells(x=[0, 1]), onto, **{field: {"value": value}})
    f = only(res, "OBS_FORBIDDEN_TERM")
    assert f.where == f"manifest obs/{field}/value"
    assert term in f.message and f"not allowed as {field}" in f.message


def test_deprecated_term_names_its_replacement(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", "CL:0000054", "CL:0000054"])
    res = run(obs, onto, cell_type={"column": "ct"})
    f = only(res, "OBS_DEPRECATED_TERM")
    assert f.where == "obs['ct'] (cell_type) rows 'AAAC-1' (index 1) and 1 more"
    assert "'CL:0000054' (obsolete bone matrix secreting cell) is obsolete in CL v" in f.message
    assert "replaced by CL:0000062 (osteoblast)" in f.message


def test_deprecated_term_without_replacement_suggests_alternatives(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, development_stage={"value": "HsapDv:0000087"})
    f = only(res, "OBS_DEPRECATED_TERM")
    assert "HsapDv:0000226 (prime adult stage), HsapDv:0000258 (adult stage)" in f.message


def test_unmatched_label_offers_closest_terms(onto: Ontologies) -> None:
    obs = cells(ct=["B cell", "T cell", "B cels", "B cels"])
    res = run(obs, onto, cell_type={"column": "ct"})
    f = only(res, "OBS_UNMATCHED_LABEL")
    assert f.where == "obs['ct'] (cell_type) rows 'AAAC-2' (index 2) and 1 more"
    assert "'B cels'" in f.message
    assert "closest: CL:0000236 (B cell)" in f.message


def test_ambiguous_label_lists_candidates(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, tissue={"value": "nv"})
    f = only(res, "OBS_AMBIGUOUS_LABEL")
    assert "UBERON:0002633 (motor nucleus of trigeminal nerve)" in f.message
    assert "UBERON:2005093 (nasal vein)" in f.message
    eth = run(cells(e=["White"]), onto, self_reported_ethnicity={"column": "e"})
    message = only(eth, "OBS_AMBIGUOUS_LABEL").message
    assert "HANCESTRO:0005 (European ancestry), HANCESTRO:0590 (European American)" in message


def test_enums(onto: Ontologies) -> None:
    obs = cells(tt=["tissue", "blob", "Primary Cell Culture"], st=["Nucleus", "droplet", "na"])
    res = run(obs, onto, tissue_type={"column": "tt"}, suspension_type={"column": "st"}, tissue={"value": "unknown"})
    bad = [f for f in res.findings if f.code == "OBS_BAD_ENUM"]
    assert [f.where for f in bad] == ["obs['tt'] (tissue_type) row 'AAAC-1' (index 1)", "obs['st'] (suspension_type) row 'AAAC-1' (index 1)"]
    assert "'blob' is not a tissue_type" in bad[0].message and "'primary cell culture'" in bad[0].message
    assert "'droplet' is not a suspension_type" in bad[1].message
    assert res.frame["tissue_type"].tolist() == ["tissue", "blob", "primary cell culture"]
    assert res.frame["suspension_type"].tolist() == ["nucleus", "droplet", "na"]


def test_is_primary_data_booleans(onto: Ontologies) -> None:
    good = run(cells(p=[True, False, True]), onto, is_primary_data={"column": "p"})
    assert good.findings == [] and good.frame["is_primary_data"].tolist() == [True, False, True]
    text = run(cells(p=["TRUE", " false", "True"]), onto, is_primary_data={"column": "p"})
    assert text.findings == [] and text.frame["is_primary_data"].tolist() == [True, False, True]
    bad = run(cells(p=["true", "maybe", 1, "maybe"]), onto, is_primary_data={"column": "p"})
    found = [f for f in bad.findings if f.code == "OBS_BAD_BOOL"]
    assert [f.where for f in found] == [
        "obs['p'] (is_primary_data) row 'AAAC-2' (index 2)",
        "obs['p'] (is_primary_data) rows 'AAAC-1' (index 1) and 1 more",
    ]
    assert "'maybe' is not a boolean" in found[1].message
    assert bad.frame["is_primary_data"].tolist() == [True, False, False, False]
    const = run(cells(x=[0]), onto, is_primary_data={"value": False})
    assert const.findings == [] and const.frame["is_primary_data"].tolist() == [False]


def test_donor_ids(onto: Ontologies) -> None:
    res = run(cells(d=["d1", "", np.nan, 7]), onto, donor_id={"column": "d"})
    assert only(res, "OBS_BAD_DONOR_ID").where == "obs['d'] (donor_id) row 'AAAC-1' (index 1)"
    assert only(res, "OBS_NULL_VALUE").where == "obs['d'] (donor_id) row 'AAAC-2' (index 2)"
    assert res.frame["donor_id"].tolist() == ["d1", "", "", "7"]
    assert only(run(cells(x=[0]), onto, donor_id={"value": " "}), "OBS_BAD_DONOR_ID").where == "manifest obs/donor_id/value"


def test_unknown_and_na_only_where_allowed(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, disease={"value": "unknown"}, self_reported_ethnicity={"value": "na"})
    found = [f for f in res.findings if f.code == "OBS_LITERAL_NOT_ALLOWED"]
    assert [f.where for f in found] == ["manifest obs/disease/value", "manifest obs/self_reported_ethnicity/value"]
    assert "PATO:0000461 (normal)" in found[0].message


# -- multi-term fields ------------------------------------------------------------------------
def test_ethnicity_several_terms_sorted_without_duplicates(onto: Ontologies) -> None:
    obs = cells(e=["HANCESTRO:0590, HANCESTRO:0580", "HANCESTRO:0580 || HANCESTRO:0590 || HANCESTRO:0580", "unknown"])
    res = run(obs, onto, self_reported_ethnicity={"column": "e"})
    assert res.findings == []
    joined = "HANCESTRO:0580 || HANCESTRO:0590"
    assert res.frame["self_reported_ethnicity_ontology_term_id"].tolist() == [joined, joined, "unknown"]
    assert res.frame["self_reported_ethnicity"].tolist()[0] == "Malaysian Chinese || European American"


def test_ethnicity_must_descend_from_an_ethnicity_category(onto: Ontologies) -> None:
    res = run(cells(x=[0]), onto, self_reported_ethnicity={"value": "HANCESTRO:0005"})
    assert "'HANCESTRO:0005' (European ancestry) is not a valid self_reported_ethnicity" in only(res, "OBS_WRONG_ONTOLOGY").message


def test_disease_several_mondo_terms(onto: Ontologies) -> None:
    obs = cells(d=["MONDO:0005148 || MONDO:0004975", "PATO:0000461 || MONDO:0004975", "COVID-19"])
    res = run(obs, onto, disease={"column": "d"})
    assert res.frame["disease_ontology_term_id"].tolist()[0] == "MONDO:0004975 || MONDO:0005148"
    assert res.frame["disease"].tolist()[0] == "Alzheimer disease || type 2 diabetes mellitus"
    assert res.frame["disease_ontology_term_id"].tolist()[2] == "MONDO:0100096"
    f = only(res, "OBS_BAD_MULTI_TERM")
    assert f.where == "obs['d'] (disease) row 'AAAC-1' (index 1)"
    assert "PATO:0000461 cannot be combined" in f.message


# -- organism and tissue_type dependent rules -------------------------------------------------
def test_sex_terms(onto: Ontologies) -> None:
    res = run(cells(s=["female", "PATO:0000384", "unknown"]), onto, sex={"column": "s"})
    assert res.findings == []
    assert res.frame["sex_ontology_term_id"].tolist() == ["PATO:0000383", "PATO:0000384", "unknown"]
    bad = run(cells(x=[0]), onto, sex={"value": "PATO:0000461"})
    assert "'PATO:0000461' (normal) is not a valid sex" in only(bad, "OBS_WRONG_ONTOLOGY").message


def test_mouse_rules(onto: Ontologies) -> None:
    ok = run(cells(x=[0, 1]), onto, MOUSE, development_stage={"value": "MmusDv:0000110"})
    assert ok.findings == []
    assert ok.frame["self_reported_ethnicity_ontology_term_id"].tolist() == ["na", "na"]  # manifest default
    assert ok.frame["development_stage"].tolist() == ["mature stage", "mature stage"]
    human_stage = run(cells(x=[0]), onto, MOUSE, development_stage={"value": "HsapDv:0000258"})
    assert "'HsapDv:0000258' (adult stage) is an HsapDv term" in only(human_stage, "OBS_WRONG_ONTOLOGY").message
    ethnic = run(cells(e=["na", "unknown"]), onto, MOUSE, self_reported_ethnicity={"column": "e"})
    f = only(ethnic, "OBS_ETHNICITY_NOT_NA")
    assert f.where == "obs['e'] (self_reported_ethnicity) row 'AAAC-1' (index 1)"
    assert "must be 'na' for mus_musculus" in f.message
    old = run(cells(x=[0]), onto, MOUSE, development_stage={"value": "MmusDv:0000040"})
    assert "replaced by MmusDv:0000110 (mature stage)" in only(old, "OBS_DEPRECATED_TERM").message


def test_human_rules(onto: Ontologies) -> None:
    ok = run(cells(x=[0]), onto, development_stage={"value": "adult stage"})
    assert ok.frame["development_stage_ontology_term_id"].tolist() == ["HsapDv:0000258"]
    mouse_stage = run(cells(x=[0]), onto, development_stage={"value": "MmusDv:0000110"})
    assert "is an MmusDv term" in only(mouse_stage, "OBS_WRONG_ONTOLOGY").message
    assert term_rule("development_stage", HUMAN).prefixes == ("HsapDv",)
    assert term_rule("development_stage", MOUSE).prefixes == ("MmusDv",)


def test_tissue_depends_on_tissue_type(onto: Ontologies) -> None:
    obs = cells(
        tt=["tissue", "cell culture", "cell culture", "organoid", "tissue"],
        tis=["UBERON:0000922", "B cell", "lung", "UBERON:0000922", "CL:0000236"],
    )
    res = run(obs, onto, tissue_type={"column": "tt"}, tissue={"column": "tis"})
    assert res.frame["tissue_ontology_term_id"].tolist()[:2] == ["UBERON:0000922", "CL:0000236"]
    assert res.frame["tissue"].tolist()[:2] == ["embryo", "B cell"]
    codes = {(f.code, f.where) for f in res.findings}
    assert codes == {
        ("OBS_UNMATCHED_LABEL", "obs['tis'] (tissue) row 'AAAC-2' (index 2)"),  # lung is no CL cell
        ("OBS_FORBIDDEN_TERM", "obs['tis'] (tissue) row 'AAAC-3' (index 3)"),  # embryo organoid
        ("OBS_WRONG_ONTOLOGY", "obs['tis'] (tissue) row 'AAAC-4' (index 4)"),  # a cell as tissue
    }


# -- determinism and scale --------------------------------------------------------------------
def test_everything_is_deterministic(onto: Ontologies) -> None:
    values = ["T cell", "B cels", "CL:0000054", "B cell", None, "UBERON:0002048", "monocyte", "T cell"]
    obs = cells(ct=values)
    first = run(obs, onto, cell_type={"column": "ct"})
    shuffled = obs.iloc[[7, 3, 1, 5, 0, 2, 6, 4]]
    second = run(shuffled, onto, cell_type={"column": "ct"})
    assert [f.code for f in first.findings] == [f.code for f in second.findings]
    assert [f.message for f in first.findings] == [f.message for f in second.findings]
    assert first.decisions == second.decisions
    assert [d.submitted for d in decisions(first, "cell_type")] == ["B cell", "T cell", "monocyte"]
    assert all(f.code in OBS_CODES for f in first.findings)


def test_200k_cells_in_well_under_a_second(onto: Ontologies) -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    labels = ["B cell", "T cell", "B-lymphocyte", "CL:0000576", "natural killer cell", "platelet", "B cels"]
    obs = pd.DataFrame(
        {
            "ct": rng.choice(labels, n),
            "donor": rng.choice([f"donor-{i}" for i in range(40)], n),
            "sex": rng.choice(["female", "male"], n),
            "primary": rng.choice(["true", "false"], n),
        },
        index=[f"cell-{i}" for i in range(n)],
    )
    fields = {"cell_type": {"column": "ct"}, "donor_id": {"column": "donor"}, "sex": {"column": "sex"}, "is_primary_data": {"column": "primary"}}
    run(obs.iloc[:50], onto, **fields)  # warm the ontology caches
    start = time.perf_counter()
    res = run(obs, onto, **fields)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, elapsed
    f = only(res, "OBS_UNMATCHED_LABEL")
    n_bad = int((obs["ct"] == "B cels").sum())
    first = int(np.flatnonzero(obs["ct"].to_numpy() == "B cels")[0])
    assert f.where == f"obs['ct'] (cell_type) rows 'cell-{first}' (index {first}) and {n_bad - 1} more"
    by_value = {d.submitted: d.n for d in decisions(res, "cell_type")}
    assert by_value["B cell"] == int((obs["ct"] == "B cell").sum())
    assert sum(by_value.values()) == n - n_bad
    assert len(res.frame) == n


def test_no_cells_still_checks_constants(onto: Ontologies) -> None:
    empty = pd.DataFrame({"ct": pd.Series([], dtype=object)})
    ok = run(empty, onto, cell_type={"column": "ct"})
    assert ok.findings == [] and len(ok.frame) == 0 and tuple(ok.frame.columns) == OUTPUT_COLUMNS
    assert decisions(ok, "tissue") == [Decision("tissue", "UBERON:0000178", "UBERON:0000178", "blood", "constant", 0)]
    bad = run(empty, onto, tissue={"value": "CL:0000236"}, sex={"value": ""})
    assert [f.code for f in bad.findings] == ["OBS_NULL_VALUE", "OBS_WRONG_ONTOLOGY"]
    assert [f.where for f in bad.findings] == ["manifest obs/sex/value", "manifest obs/tissue/value"]
