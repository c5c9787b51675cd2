"""Ray Train jobs end to end: train, register, list; kill a run and resume it exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from aivc.errors import UsageError
from aivc.store.catalog import Catalog
from aivc.training.config import CellVaeConfig, apply_overrides
from aivc.training.data import CellDataset, TrainingPlan
from aivc.training.registry import get_model, list_models, load_model, version_dir
from aivc.training.trainer import latest_checkpoint_epoch, train
from tests.training.helpers import kill_tree, run_dir_of, tiny_overrides

CLI_SCRIPT = """
import sys, typer
from aivc.cli_training import register
app = typer.Typer(pretty_exceptions_enable=False)
register(app)
app(sys.argv[1:], prog_name="aivc")
"""


def _set_args(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_train_registers_model_with_genes_and_lineage(train_lake, ray_session, cli_app):
    runner = CliRunner()
    res = runner.invoke(cli_app, ["train", "cell-vae", "--lake", str(train_lake.root), "--run-id", "basic", "--json", *_set_args(tiny_overrides(2))])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "registered" and out["epochs"] == 2 and out["resumed_from_epoch"] == 0
    rec = get_model(train_lake, out["model"])
    assert rec.model_type == "cell-vae" and rec.name == "cell-vae"
    # the gene list: genes both datasets measured, in var soma_joinid order
    cat = Catalog(train_lake)
    ga, gb = (pd.read_parquet(cat.artifacts_path(cat.get(d)) / "genes.parquet") for d in ("synth-a", "synth-b"))
    assert list(rec.gene_ids) == ga[ga.gene_id.isin(gb.gene_id)].sort_values("soma_joinid").gene_id.tolist()
    assert rec.encodings == {"batch": ["synth-a", "synth-b"]}
    assert rec.lineage["datasets"] == ["synth-a@1", "synth-b@1"]
    assert rec.lineage["lake_state"] == {"homo_sapiens": cat.high_water("homo_sapiens")}
    assert [h["epoch"] for h in rec.history] == [1, 2] and rec.metrics["epoch"] == 2
    assert rec.training["run_id"] == "basic" and rec.init["latent_dim"] == 4
    # the file on disk describes itself
    raw = json.loads((version_dir(train_lake, rec.name, rec.version) / "model.json").read_text())
    assert (raw["schema_name"], raw["schema_version"]) == ("aivc.model", 1)
    # the registered weights load and embed the lake's cells
    module, rec2 = load_model(train_lake, rec.ref)
    assert rec2 == rec and not module.training
    plan = TrainingPlan.load(run_dir_of(train_lake, "basic") / "plan", train_lake)
    z = torch.cat([module.embed(b) for b in CellDataset(plan, "all", batch_size=64, shuffle=False)])
    assert z.shape == (100, 4) and torch.isfinite(z).all()
    # CLI listing
    listed = json.loads(runner.invoke(cli_app, ["models", "list", "--lake", str(train_lake.root), "--json"]).stdout)
    assert rec.ref in [m["ref"] for m in listed]
    shown = json.loads(runner.invoke(cli_app, ["models", "show", rec.ref, "--lake", str(train_lake.root), "--json"]).stdout)
    assert shown["gene_ids"] == list(rec.gene_ids)
    # a finished run is not silently retrained; another config under the same id is refused
    with pytest.raises(UsageError, match="already finished and was registered"):
        train(train_lake, apply_overrides(CellVaeConfig(), tiny_overrides(2)), run_id="basic")
    with pytest.raises(UsageError, match=r"different config \(optim.lr\)"):
        train(train_lake, apply_overrides(CellVaeConfig(), [*tiny_overrides(2), "optim.lr=0.1"]), run_id="basic")
    bad = runner.invoke(cli_app, ["models", "show", "cell-vae@99", "--lake", str(train_lake.root)])
    assert bad.exit_code == 1 and "has no version 99" in bad.output and "Traceback" not in bad.output


def test_killed_run_resumes_from_its_checkpoint_exactly(train_lake, ray_session, tmp_path):
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    cmd = [sys.executable, str(script), "train", "cell-vae", "--lake", str(train_lake.root), "--run-id", "killed", "--json", *_set_args(tiny_overrides(500))]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while latest_checkpoint_epoch(train_lake, "killed") is None:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 150 s"
            time.sleep(0.2)
    finally:
        kill_tree(proc.pid)  # the run, the Ray it started, and Ray's workers (own process groups)
        proc.wait()
    done = latest_checkpoint_epoch(train_lake, "killed")
    assert done is not None and 1 <= done < 500
    assert json.loads((run_dir_of(train_lake, "killed") / "run.json").read_text())["status"] == "running"
    assert not [m for m in list_models(train_lake) if m.training.get("run_id") == "killed"]

    # same run id, same config (training to fewer epochs is the one change allowed)
    resumed = train(train_lake, apply_overrides(CellVaeConfig(), tiny_overrides(done + 2)), run_id="killed")
    assert resumed.resumed_from_epoch == done > 0 and resumed.epochs == done + 2
    rec = get_model(train_lake, resumed.model_ref)
    assert [h["epoch"] for h in rec.history] == list(range(1, done + 3))
    assert [h["resumed_from_epoch"] for h in rec.history] == [0] * done + [done, done]
    assert rec.training["resumed_from_epoch"] == done

    # seeded: an uninterrupted run of as many epochs ends with the very same weights
    fresh = train(train_lake, apply_overrides(CellVaeConfig(), tiny_overrides(done + 2)), run_id="fresh")
    assert fresh.resumed_from_epoch == 0
    w1 = torch.load(version_dir(train_lake, "cell-vae", rec.version) / "model.pt", weights_only=True)
    rec_fresh = get_model(train_lake, fresh.model_ref)
    w2 = torch.load(version_dir(train_lake, "cell-vae", rec_fresh.version) / "model.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=0)
    assert rec_fresh.history[-1]["train_loss"] == rec.history[-1]["train_loss"]
