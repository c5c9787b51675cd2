"""The CLI contract: --json shapes, exit codes, one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import base_manifest, lake_snapshot


def cli(*args: str, cwd: Path | None = None):  # noqa: ANN201
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "aivc.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_init_is_idempotent_and_json(tmp_path):
    lake = tmp_path / "lk"
    a = cli("init", "--lake", str(lake), "--json")
    b = cli("init", "--lake", str(lake), "--json")
    assert a.returncode == b.returncode == 0
    assert json.loads(a.stdout)["created_at"] == json.loads(b.stdout)["created_at"]
    assert (lake / "lake.json").is_file()


def test_lake_from_environment(tmp_path):
    env = {**os.environ, "AIVC_LAKE": str(tmp_path / "envlake")}
    p = subprocess.run([sys.executable, "-m", "aivc.cli", "init", "--json"], capture_output=True, text=True, env=env)
    assert p.returncode == 0
    assert json.loads(p.stdout)["lake"] == str(tmp_path / "envlake")


def test_validate_exit_codes(tmp_path, write_submission):
    h5, mf = write_submission()
    ok = cli("validate", str(h5), "--manifest", str(mf), "--json", "--report-dir", str(tmp_path / "r1"))
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["status"] == "valid" and out["n_cells"] == 60 and out["errors"] == []
    bad_mf = tmp_path / "bad.yaml"
    m = base_manifest()
    m["obs"]["tissue"] = {"value": "UBERON:9999999"}
    bad_mf.write_text(yaml.safe_dump(m))
    bad = cli("validate", str(h5), "--manifest", str(bad_mf), "--json", "--report-dir", str(tmp_path / "r2"))
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["errors"][0]["code"] == "OBS_UNKNOWN_TERM"
    usage = cli("validate", str(tmp_path / "missing.h5ad"), "--manifest", str(mf))
    assert usage.returncode == 2
    assert "data file not found" in usage.stderr and "Traceback" not in usage.stderr
    assert not (tmp_path / "lake").exists()


def test_submit_datasets_sql_export(tmp_path, write_submission):
    lake = tmp_path / "lake"
    assert cli("init", "--lake", str(lake)).returncode == 0
    h5, mf = write_submission()
    sub = cli("submit", str(h5), "--manifest", str(mf), "--lake", str(lake), "--json")
    assert sub.returncode == 0, sub.stderr
    res = json.loads(sub.stdout)
    assert set(res) >= {"status", "dataset_id", "version", "n_cells", "n_genes", "report", "errors"}
    assert (res["status"], res["dataset_id"], res["version"], res["n_cells"], res["n_genes"]) == ("committed", "synth-a", 1, 60, 120)
    assert Path(res["report"]).is_file() and str(lake) in res["report"]
    again = json.loads(cli("submit", str(h5), "--manifest", str(mf), "--lake", str(lake), "--json").stdout)
    assert again["status"] == "unchanged"
    ds = json.loads(cli("datasets", "--lake", str(lake), "--json").stdout)
    assert [(d["id"], d["version"], d["current"], d["n_cells"], d["access"]) for d in ds] == [("synth-a", 1, True, 60, "public")]
    q = cli("sql", "SELECT donor_id, count(*) AS n FROM cells GROUP BY 1 ORDER BY 1", "--lake", str(lake), "--json")
    rows = json.loads(q.stdout)["rows"]
    assert sum(r["n"] for r in rows) == 60 and {r["donor_id"] for r in rows} <= {"d1", "d2"}
    out = tmp_path / "x.h5ad"
    ex = cli("export", "synth-a@1", "-o", str(out), "--lake", str(lake), "--json")
    assert ex.returncode == 0, ex.stderr
    assert json.loads(ex.stdout)["n_cells"] == 60 and out.is_file()
    missing = cli("export", "synth-a@9", "-o", str(out), "--lake", str(lake))
    assert missing.returncode == 1 and "no version 9" in missing.stderr and "Traceback" not in missing.stderr


def test_rejected_submit_exit_1_and_lake_unchanged(tmp_path, write_submission):
    lake = tmp_path / "lake"
    cli("init", "--lake", str(lake))
    before = lake_snapshot(lake)
    m = base_manifest()
    m["obs"]["cell_type"] = {"value": "UBERON:0000178"}
    h5, mf = write_submission(manifest=m)
    p = cli("submit", str(h5), "--manifest", str(mf), "--lake", str(lake), "--json", "--report-dir", str(tmp_path / "rep"))
    assert p.returncode == 1
    out = json.loads(p.stdout)
    assert out["status"] == "rejected" and out["version"] is None
    assert out["errors"][0]["code"] == "OBS_WRONG_ONTOLOGY"
    assert lake_snapshot(lake) == before


def test_sql_refusals_are_one_line(tmp_path):
    lake = tmp_path / "lake"
    cli("init", "--lake", str(lake))
    for stmt, word in [
        ("ATTACH '/tmp/x.db'", "ATTACH"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
        ("INSTALL httpfs", "INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("SET threads = 1", "SET"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ]:
        p = cli("sql", stmt, "--lake", str(lake))
        assert p.returncode == 1, stmt
        assert word in p.stderr and "not allowed" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    p = cli("sql", "SELECT * FROM read_csv('/etc/passwd')", "--lake", str(lake))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "SQL_REFUSED" in p.stderr or "Permission" in p.stderr


def test_missing_lake_is_a_clear_error(tmp_path):
    p = cli("datasets", "--lake", str(tmp_path / "nope"))
    assert p.returncode == 2
    assert "aivc init" in p.stderr and "Traceback" not in p.stderr


def test_bad_numeric_options_are_usage_errors(tmp_path, write_submission):
    h5, mf = write_submission()
    p = cli("validate", str(h5), "--manifest", str(mf), "--chunk-rows", "0")
    assert p.returncode == 2
    assert "--chunk-rows" in p.stderr and "at least 1" in p.stderr and "Traceback" not in p.stderr
    lake = tmp_path / "lake"
    cli("init", "--lake", str(lake))
    before = lake_snapshot(lake)
    q = cli("embed", "pca", "--n-components", "0", "--lake", str(lake), "--json")
    assert q.returncode == 2
    assert json.loads(q.stdout)["errors"][0]["where"] == "--n-components"
    assert lake_snapshot(lake) == before
