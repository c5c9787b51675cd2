"""Exports pass the real CELLxGENE validator (cellxgene-schema 7.x, isolated venv)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aivc.ingest.submission import submit
from aivc.store.export import export_h5ad

REPO = Path(__file__).resolve().parents[2]
CXG = REPO / ".cxg-venv" / "bin" / "cellxgene-schema"


def test_pbmc_export_is_accepted_by_cellxgene_schema(lake, pbmc_files, tmp_path):
    assert CXG.is_file(), f"{CXG} missing: create it with `bash .ci/cxg-venv.sh` (the README's test command does)"
    h5, mf = pbmc_files[0]
    assert submit(lake, h5, mf).status == "committed"
    out = tmp_path / "pbmc-part1.h5ad"
    export_h5ad(lake, "pbmc68k-part1@1", out)
    proc = subprocess.run([str(CXG), "validate", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation complete" in (proc.stdout + proc.stderr)


def test_analysis_export_is_refused_by_cellxgene_schema(lake, pbmc_files, tmp_path):
    """The analysis export's symbols and labels are CELLxGENE's reserved columns: the
    validator refuses it, which is why it is marked in ``uns`` and never the default."""
    assert CXG.is_file(), f"{CXG} missing: create it with `bash .ci/cxg-venv.sh` (the README's test command does)"
    h5, mf = pbmc_files[0]
    assert submit(lake, h5, mf).status == "committed"
    out = tmp_path / "pbmc-part1-analysis.h5ad"
    assert export_h5ad(lake, "pbmc68k-part1@1", out, for_analysis=True)["export"] == "analysis"
    proc = subprocess.run([str(CXG), "validate", str(out)], capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "is_valid=False" in log, log[-3000:]
    assert "Column 'feature_name' is a reserved column name of 'var'" in log
    for label in ("cell_type", "assay", "tissue", "disease", "sex", "development_stage", "self_reported_ethnicity"):
        assert f"Column '{label}' is a reserved column name of 'obs'" in log
