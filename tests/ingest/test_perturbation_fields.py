"""The optional perturbation_targets field: manifest, validation findings, and the lake's cells view."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from aivc.errors import ManifestError, UsageError
from aivc.ingest.findings import Decision
from aivc.ingest.manifest import Manifest, parse_manifest
from aivc.ingest.obs_fields import OUTPUT_COLUMNS, harmonize_obs
from aivc.ingest.perturbation_fields import PERTURBATION_COLUMNS, harmonize_perturbations, split_targets
from tests.conftest import base_manifest

TP53, MYC = "ENSG00000141510", "ENSG00000136997"


def screen_manifest(**spec: Any) -> Manifest:
    m = base_manifest("screen")
    m["obs"]["perturbation_targets"] = {"column": "guide", **spec}
    return parse_manifest(m)


def cells(guides: list[Any]) -> pd.DataFrame:
    n = len(guides)
    return pd.DataFrame(
        {"guide": guides, "label": ["Tcell"] * n, "sex": ["PATO:0000383"] * n, "donor": ["d1"] * n},
        index=[f"c{i}" for i in range(n)],
    )


def only(findings: list, code: str):  # noqa: ANN001, ANN201
    found = [f for f in findings if f.code == code]
    assert len(found) == 1, [str(f) for f in findings]
    return found[0]


def test_targets_resolve_to_sorted_reference_ids_and_controls() -> None:
    guides = ["TP53", "", None, "Control", "NTC", "MYC;TP53", "tp53", f"{MYC}.7", np.nan, "TP53 ; MYC"]
    res = harmonize_perturbations(cells(guides), screen_manifest(label_map={"NTC": "control"}))
    assert res.findings == []
    assert res.frame["perturbation_targets"].tolist() == [
        TP53, "control", "control", "control", "control", f"{MYC};{TP53}", TP53, MYC, "control", f"{MYC};{TP53}",
    ]  # fmt: skip
    assert res.frame["perturbation_target_symbols"].tolist()[:6] == ["TP53", "control", "control", "control", "control", "MYC;TP53"]
    assert res.frame.index.equals(cells(guides).index)
    assert sorted(res.decisions, key=lambda d: d.submitted) == [
        Decision("perturbation_targets", f"{MYC}.7", MYC, "MYC", "ensembl_unversioned", 1),
        Decision("perturbation_targets", "MYC;TP53", f"{MYC};{TP53}", "MYC;TP53", "symbol", 1),
        Decision("perturbation_targets", "NTC", "control", "control", "label_map", 1),
        Decision("perturbation_targets", "TP53", TP53, "TP53", "symbol", 1),
        Decision("perturbation_targets", "TP53 ; MYC", f"{MYC};{TP53}", "MYC;TP53", "symbol", 1),
        Decision("perturbation_targets", "tp53", TP53, "TP53", "symbol_case", 1),
    ]
    assert split_targets(res.frame["perturbation_targets"].iloc[5]) == (MYC, TP53) and split_targets("control") == ()


def test_harmonize_obs_adds_the_columns_only_for_screens() -> None:
    obs = cells(["TP53", "control"])
    plain = harmonize_obs(obs, parse_manifest(base_manifest("plain")))
    assert tuple(plain.frame.columns) == OUTPUT_COLUMNS
    screen = harmonize_obs(obs, screen_manifest())
    assert tuple(screen.frame.columns) == (*OUTPUT_COLUMNS, *PERTURBATION_COLUMNS)
    assert screen.valid and screen.frame["perturbation_targets"].tolist() == [TP53, "control"]


@pytest.mark.parametrize(
    ("guides", "code", "where", "message"),
    [
        (["control", "TP53", "TP53X", "TP53X"], "PERTURBATION_UNKNOWN_GENE", "obs['guide'] (perturbation_targets) rows 'c2' (index 2) and 1 more",
         "'TP53X' is not a gene of the homo_sapiens reference; closest symbols: TP53"),
        (["control", "MYC;NOTAGENE"], "PERTURBATION_UNKNOWN_GENE", "obs['guide'] (perturbation_targets) row 'c1' (index 1)",
         "'NOTAGENE' is not a gene of the homo_sapiens reference; give an Ensembl id or a current symbol (in 'MYC;NOTAGENE')"),
        (["control", "ENSG99999999999"], "PERTURBATION_UNKNOWN_GENE", "row 'c1' (index 1)", "'ENSG99999999999' is not a gene id"),
        (["control", "CD99"], "PERTURBATION_AMBIGUOUS_GENE", "row 'c1' (index 1)", "symbol 'CD99' names 2 reference genes"),
        (["control", "TP53;"], "PERTURBATION_BAD_VALUE", "row 'c1' (index 1)", "'TP53;' has an empty target"),
        (["control", "control;TP53"], "PERTURBATION_BAD_VALUE", "row 'c1' (index 1)", "combines 'control' with target genes"),
        (["TP53", "MYC", "TP53"], "PERTURBATION_NO_CONTROLS", "obs['guide'] (perturbation_targets)", "none of the 3 cells is a control"),
    ],
)  # fmt: skip
def test_bad_targets_are_precise_findings(guides: list[str], code: str, where: str, message: str) -> None:
    res = harmonize_perturbations(cells(guides), screen_manifest())
    f = only(res.findings, code)
    assert f.severity == "error" and where in f.where and message in f.message, str(f)


def test_missing_column_is_reported_like_other_fields() -> None:
    res = harmonize_obs(cells(["TP53"]).rename(columns={"guide": "sgRNA_target"}), screen_manifest())
    f = only(res.findings, "OBS_COLUMN_MISSING")
    assert f.where == "obs['guide'] (perturbation_targets)" and "'sgRNA_target'" in f.message


def test_manifest_needs_a_column_for_the_field() -> None:
    m = base_manifest("screen")
    m["obs"]["perturbation_targets"] = {"value": "TP53"}
    with pytest.raises(ManifestError) as e:
        parse_manifest(m, source="screen.yaml")
    assert e.value.where == "screen.yaml: obs/perturbation_targets/column (missing)"
    m["obs"]["perturbation_target"] = m["obs"].pop("perturbation_targets")
    with pytest.raises(ManifestError) as e:
        parse_manifest(m, source="screen.yaml")
    assert "perturbation_target" in e.value.message and e.value.where.startswith("screen.yaml: obs")
    # the model alone (no JSON Schema) refuses a constant too
    with pytest.raises(ValueError, match="must name an obs column"):
        Manifest.model_validate({**base_manifest("screen"), "obs": {**base_manifest()["obs"], "perturbation_targets": {"value": "TP53"}}})


def test_targets_reach_the_cells_view_and_bad_screens_change_nothing(lake, write_submission, tmp_path) -> None:  # noqa: ANN001
    from aivc.embeddings.sql import query
    from aivc.ingest.submission import submit
    from aivc.instruments.perturb import load_screen
    from tests.conftest import lake_snapshot

    def guides(values: list[str]):  # noqa: ANN202
        def mutate(adata: Any) -> None:
            adata.obs["guide"] = [values[i % len(values)] for i in range(adata.n_obs)]

        return mutate

    screen = base_manifest("screen")
    screen["obs"]["perturbation_targets"] = {"column": "guide", "label_map": {"NT": "control"}}
    h5, mf = write_submission(mutate=guides(["NT", "TP53", "MYC;TP53"]), manifest=screen)
    assert submit(lake, h5, mf, report_dir=tmp_path / "r1").status == "committed"
    h5, mf = write_submission(manifest=base_manifest("plain"), seed=1)
    assert submit(lake, h5, mf, report_dir=tmp_path / "r2").status == "committed"
    rows = query(lake, "SELECT dataset_id, perturbation_targets, perturbation_target_symbols, count(*) AS n FROM cells GROUP BY ALL ORDER BY ALL").rows
    assert rows == [
        ("plain", None, None, 60),
        ("screen", f"{MYC};{TP53}", "MYC;TP53", 20),
        ("screen", TP53, "TP53", 20),
        ("screen", "control", "control", 20),
    ]
    with pytest.raises(UsageError) as e:
        load_screen(lake, "plain")
    assert (e.value.code, e.value.where) == ("NOT_A_SCREEN", "--dataset") and "plain@1 has no perturbation_targets" in e.value.message

    before = lake_snapshot(lake.root)
    h5, mf = write_submission(mutate=guides(["TP53", "TP53X"]), manifest=screen, seed=2)
    res = submit(lake, h5, mf, report_dir=tmp_path / "r3")
    assert res.status == "rejected"
    assert {e.code for e in res.errors} == {"PERTURBATION_UNKNOWN_GENE", "PERTURBATION_NO_CONTROLS"}
    unknown = only(res.errors, "PERTURBATION_UNKNOWN_GENE")
    assert unknown.where == "obs['guide'] (perturbation_targets) rows 'cell-0001' (index 1) and 29 more"
    assert lake_snapshot(lake.root) == before
