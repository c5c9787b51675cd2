"""Ray Train jobs end to end: train, register, list; kill a run and resume it exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from aivc.embeddings.gene_coexpr import embed_gene_coexpression
from aivc.store.features import EmbeddingWriter, gene_table, read_vectors
from aivc.errors import NotFoundError, UsageError
from aivc.store.catalog import Catalog
from aivc.store.lineage import Lineage
from aivc.training.config import CellVaeConfig, apply_overrides, load_config
from aivc.training.data import CellDataset, TrainingPlan
from aivc.training.models.cell_transformer import CellTransformer
from aivc.training.registry import get_model, list_models, load_model, register_model, version_dir
from aivc.training.run_plan import run_gene_table
from aivc.training.runs import latest_checkpoint_epoch, prepare_run
from aivc.training.trainer import train
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
    assert rec.lineage.datasets == ("synth-a@1", "synth-b@1")
    assert rec.lineage.lake_state == {"homo_sapiens": cat.high_water("homo_sapiens")}
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


TINY_TRANSFORMER = ["optim.batch_size=32", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.max_tokens=32", "model.latent_dim=4", "data.chunk_rows=64"]


@pytest.fixture(scope="module")
def coexpr_tf(train_lake):  # noqa: ANN001, ANN201
    """Co-expression gene URs (dim 16) of the training lake: ``gene:coexpr_tf@1``."""
    return embed_gene_coexpression(train_lake, name="coexpr_tf", dim=16)


def test_cell_transformer_trains_on_gene_urs_and_registers(train_lake, ray_session, cli_app, coexpr_tf):
    gene_ur = coexpr_tf
    runner = CliRunner()
    args = ["train", "cell-transformer", "--lake", str(train_lake.root), "--run-id", "tf-basic", "--json"]
    res = runner.invoke(cli_app, [*args, *_set_args(["gene_ur=gene:coexpr_tf", "optim.epochs=2", *TINY_TRANSFORMER])])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rec = get_model(train_lake, out["model"])
    assert (rec.name, rec.model_type, out["epochs"]) == ("cell-transformer", "cell-transformer", 2)
    # the exact gene UR version is recorded (the config named only the latest)
    assert rec.lineage.gene_ur == gene_ur.ref == "gene:coexpr_tf@1"
    assert json.loads((run_dir_of(train_lake, "tf-basic") / "run.json").read_text())["gene_ur"] == gene_ur.ref
    assert rec.init == {"gene_dim": 16, "d_model": 16, "n_heads": 2, "n_layers": 1, "max_tokens": 32, "n_bins": 32, "mask_fraction": 0.15, "dropout": 0.1, "latent_dim": 4}
    # the genes: union of both datasets' genes that have a gene UR, in soma_joinid order
    cat = Catalog(train_lake)
    union = pd.concat([pd.read_parquet(cat.artifacts_path(cat.get(d)) / "genes.parquet") for d in ("synth-a", "synth-b")]).drop_duplicates("gene_id")
    with_ur = set(read_vectors(train_lake, gene_ur)[0].column("id").to_pylist())
    assert list(rec.gene_ids) == union[union.gene_id.isin(with_ur)].sort_values("soma_joinid").gene_id.tolist()
    assert len(rec.gene_ids) >= 50 and rec.lineage.extra["genes_mode"] == "union" and rec.lineage.extra["unmeasured_genes"]["synth-b"]
    for h in rec.history:
        assert 0.0 <= h["data_wait_fraction"] <= 1.0 and h["train_kl"] == 0.0 and h["train_loss"] > 0
    assert rec.metrics["data_wait_fraction"] == rec.history[-1]["data_wait_fraction"]
    # the weights do not hold the gene table: load_model sets it from the recorded version, then embed the lake
    module, _ = load_model(train_lake, rec.ref)
    assert not any("gene_table" in k for k in torch.load(version_dir(train_lake, rec.name, rec.version) / "model.pt", weights_only=True))
    table = gene_table(train_lake, rec.lineage.gene_ur, rec.gene_ids, dim=rec.init["gene_dim"])
    assert table.gene_ids == rec.gene_ids
    torch.testing.assert_close(module.gene_table, torch.from_numpy(table.vectors), rtol=0, atol=0)
    plan = TrainingPlan.load(run_dir_of(train_lake, "tf-basic") / "plan", train_lake)
    z = torch.cat([module.embed(b) for b in CellDataset(plan, "all", batch_size=64, shuffle=False)])
    assert z.shape == (100, 4) and torch.isfinite(z).all() and float(z.std(0).min()) > 0


def test_cell_transformer_run_keeps_its_gene_ur_version_on_resume(train_lake, coexpr_tf):
    """The run records the exact gene UR version when it starts; a resume reuses it (no Ray
    needed: this is the driver's part; the worker reads what it is given)."""
    table, vectors = read_vectors(train_lake, coexpr_tf)
    with EmbeddingWriter(train_lake, "gene", "resume_tf", 16, source={"kind": "test"}) as w:
        w.write(table.column("id"), vectors)
    cfg = load_config(model_type="cell-transformer", overrides=["gene_ur=gene:resume_tf", "data.n_top_genes=60", *TINY_TRANSFORMER])
    rdir, resumed, ref = prepare_run(train_lake, cfg, "tf-resume")
    assert (resumed, ref) == (False, "gene:resume_tf@1")
    plan = TrainingPlan.load(rdir / "plan", train_lake)
    with_ur = set(table.column("id").to_pylist())
    assert plan.n_genes == 60 and set(plan.gene_ids) <= with_ur  # most variable among genes with a UR
    # a newer version of the gene URs appears: the run keeps the version it started with
    with EmbeddingWriter(train_lake, "gene", "resume_tf", 16, source={"kind": "test"}) as w:
        w.write(list(plan.gene_ids[:50]), np.ones((50, 16), np.float32))
    cfg40 = apply_overrides(cfg, ["optim.epochs=40"])
    _, resumed, ref = prepare_run(train_lake, cfg40, "tf-resume")
    assert (resumed, ref) == (True, "gene:resume_tf@1")
    assert TrainingPlan.load(rdir / "plan", train_lake).gene_ids == plan.gene_ids
    # the workers get the recorded version's vectors, in plan gene order
    t = run_gene_table(train_lake, plan, ref, rdir)
    assert t is not None and (t.ref, t.gene_ids, t.dim) == ("gene:resume_tf@1", plan.gene_ids, 16)
    ids, want = read_vectors(train_lake, "gene:resume_tf@1", ids=list(plan.gene_ids))
    row = {g: i for i, g in enumerate(ids.column("id").to_pylist())}
    np.testing.assert_array_equal(t.vectors, want[[row[g] for g in plan.gene_ids]])
    with pytest.raises(UsageError, match=r"different config \(gene_ur\)"):
        prepare_run(train_lake, apply_overrides(cfg, ["gene_ur=gene:resume_tf@2"]), "tf-resume")


def test_cell_transformer_gene_ur_problems_are_usage_errors(train_lake):
    cat = Catalog(train_lake)
    genes = pd.read_parquet(cat.artifacts_path(cat.get("synth-a")) / "genes.parquet")["gene_id"].tolist()
    with EmbeddingWriter(train_lake, "gene", "few_tf", 8, source={"kind": "test"}) as w:
        w.write(genes[:20], np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    cfg = load_config(model_type="cell-transformer", overrides=["gene_ur=gene:few_tf@1", *TINY_TRANSFORMER])
    with pytest.raises(UsageError, match=r"only 20 of the 120 genes of the training data have a vector in gene:few_tf@1; cell-transformer needs at least 50"):
        train(train_lake, cfg, run_id="tf-few")
    assert not run_dir_of(train_lake, "tf-few").exists()
    with pytest.raises(NotFoundError, match="no embedding gene:missing_tf"):
        train(train_lake, apply_overrides(cfg, ["gene_ur=gene:missing_tf@1"]), run_id="tf-missing")
    with pytest.raises(UsageError, match="has 8-dimensional vectors but the model takes 16"):
        gene_table(train_lake, "gene:few_tf@1", genes, dim=16)
    with pytest.raises(UsageError, match="is a cell embedding; gene tokens need a gene embedding"):
        gene_table(train_lake, "cell:pca@1", genes)
    t = gene_table(train_lake, "gene:few_tf", list(reversed(genes)))
    assert t.ref == "gene:few_tf@1" and t.gene_ids == tuple(reversed(genes[:20])) and t.vectors.shape == (20, 8)
    _, vecs = read_vectors(train_lake, "gene:few_tf@1", ids=[genes[3]])
    np.testing.assert_array_equal(t.vectors[t.gene_ids.index(genes[3])], vecs[0])


def test_gene_token_model_reads_its_gene_table_from_the_feature_store(train_lake, coexpr_tf):
    """Training and loading read a gene-token model's gene URs themselves (store.features)."""
    init = {"gene_dim": 16, "d_model": 16, "n_heads": 2, "n_layers": 1, "max_tokens": 32, "latent_dim": 4}
    genes = read_vectors(train_lake, coexpr_tf)[0].column("id").to_pylist()[:10]
    rec = register_model(
        train_lake, "tf-store-read", model_type="cell-transformer", state_dict=CellTransformer(**init).state_dict(), init=init, config={},
        gene_ids=genes, encodings={"batch": ["synth-a"]}, metrics={}, lineage=Lineage(gene_ur=coexpr_tf.ref),
    )
    module, _ = load_model(train_lake, rec.ref)
    want = gene_table(train_lake, coexpr_tf.ref, genes, dim=16)
    assert tuple(module.gene_table.shape) == (10, 16)
    torch.testing.assert_close(module.gene_table, torch.from_numpy(want.vectors), rtol=0, atol=0)
    gone = register_model(
        train_lake, "tf-store-gone", model_type="cell-transformer", state_dict=CellTransformer(**init).state_dict(), init=init, config={},
        gene_ids=genes, encodings={"batch": ["synth-a"]}, metrics={}, lineage=Lineage(gene_ur="gene:no_such_ur@1"),
    )
    with pytest.raises(NotFoundError, match="no embedding gene:no_such_ur in this lake") as info:
        load_model(train_lake, gone.ref)
    assert "\n" not in info.value.message


def test_cli_cell_transformer_without_gene_ur_is_one_line(train_lake, cli_app):
    runner = CliRunner()
    res = runner.invoke(cli_app, ["train", "cell-transformer", "--lake", str(train_lake.root), "--run-id", "tf-no-ur"])
    assert res.exit_code == 2 and "gene_ur is required" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli_app, ["train", "cell-transformer", "--lake", str(train_lake.root), "--json", "--set", "gene_ur=gene:nope_tf@1"])
    err = json.loads(res.stdout)
    assert res.exit_code == 1 and err["status"] == "error" and err["errors"][0]["code"] == "NOT_FOUND"
    assert not run_dir_of(train_lake, "tf-no-ur").exists()
    assert "cell-transformer" in runner.invoke(cli_app, ["train", "--help"]).output
