"""``aivc export --for-analysis``: gene symbols and term labels beside the CELLxGENE fields,
read from the lake; the default export stays the CELLxGENE-valid file it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np

from aivc.ingest.submission import submit
from aivc.store import sql
from aivc.store.export import export_h5ad

#: The label columns CELLxGENE's curated files have next to the term ids.
LABEL_COLUMNS = ("assay", "cell_type", "development_stage", "disease", "self_reported_ethnicity", "sex", "tissue")
TERM_COLUMNS = tuple(f"{c}_ontology_term_id" for c in LABEL_COLUMNS)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "aivc.cli", *args], capture_output=True, text=True, env=env)


def test_analysis_export_adds_symbols_and_labels_from_the_lake(lake, write_submission, tmp_path):
    h5, mf = write_submission()
    assert submit(lake, h5, mf).status == "committed"
    plain, rich = tmp_path / "plain.h5ad", tmp_path / "analysis.h5ad"
    p = _cli("export", "synth-a@1", "-o", str(rich), "--for-analysis", "--lake", str(lake.root), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) | {"path": None} == {"status": "ok", "dataset_id": "synth-a", "version": 1, "measurement": "RNA", "n_cells": 60, "n_genes": 120, "path": None, "export": "analysis"}
    line = _cli("export", "synth-a@1", "-o", str(plain), "--lake", str(lake.root))
    assert line.returncode == 0 and line.stdout == f"exported synth-a@1: 60 cells x 120 genes -> {plain}\n"
    a, d = ad.read_h5ad(rich), ad.read_h5ad(plain)

    symbols = dict(sql.query(lake, "SELECT gene_id, feature_name FROM dataset_genes WHERE dataset_id = 'synth-a'").rows)
    assert len(symbols) == 120
    assert a.var["feature_name"].astype(str).to_dict() == {g: symbols[g] for g in a.var_names}
    assert a.var["feature_name"].str.match(r"^(MT-)?[A-Z0-9][A-Za-z0-9.-]*$").all()  # symbols, not Ensembl ids

    cols = ", ".join(f"{t}, {lbl}" for t, lbl in zip(TERM_COLUMNS, LABEL_COLUMNS, strict=True))
    cells = sql.query(lake, f"SELECT barcode, {cols} FROM cells WHERE dataset_id = 'synth-a'").to_dicts()
    by_barcode = {c["barcode"]: c for c in cells}
    assert set(by_barcode) == set(a.obs_names)
    for term, label in zip(TERM_COLUMNS, LABEL_COLUMNS, strict=True):
        assert a.obs[term].astype(str).to_dict() == {b: by_barcode[b][term] for b in a.obs_names}
        assert a.obs[label].astype(str).to_dict() == {b: by_barcode[b][label] for b in a.obs_names}
    assert set(a.obs["cell_type"]) == {"B cell", "T cell"}
    assert dict(zip(a.obs["sex_ontology_term_id"], a.obs["sex"], strict=True)) == {"PATO:0000383": "female", "PATO:0000384": "male"}

    assert (a.X != d.X).nnz == 0 and a.X.dtype == d.X.dtype == np.float32  # the raw counts, unchanged
    assert a.obs.drop(columns=list(LABEL_COLUMNS)).equals(d.obs)
    assert a.uns["aivc"]["export"] == "analysis" and "CELLxGENE" in a.uns["aivc"]["note"]
    assert {k: v for k, v in a.uns["aivc"].items() if k not in ("export", "note")} == dict(d.uns["aivc"])


def test_default_export_has_no_analysis_columns(lake, write_submission, tmp_path):
    h5, mf = write_submission()
    assert submit(lake, h5, mf).status == "committed"
    info = export_h5ad(lake, "synth-a", tmp_path / "x.h5ad")
    assert info["export"] == "cellxgene"
    d = ad.read_h5ad(tmp_path / "x.h5ad")
    assert list(d.var.columns) == ["feature_is_filtered"]
    assert d.var_names.str.startswith("ENSG").all()
    assert not set(LABEL_COLUMNS) & set(d.obs.columns)
    assert "export" not in d.uns["aivc"] and set(d.uns) == {"title", "organism_ontology_term_id", "aivc"}
