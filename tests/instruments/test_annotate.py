"""Batch reannotation: the Ray Data job behind `aivc annotate`, prediction versions, errors, atomicity."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from aivc.store.features import EmbeddingWriter, read_vectors
from aivc.errors import UsageError
from aivc.instruments.annotate import AUTO_LOCAL_MAX_CELLS, annotate, choose_engine
from aivc.instruments.celltype import train_celltype
from aivc.instruments.predictions import get_prediction_version, list_prediction_versions, read_predictions, version_dir
from aivc.instruments.registry import InstrumentError, load_instrument
from aivc.store.lineage import Lineage
from tests.conftest import lake_snapshot
from tests.instruments.support import run_cli


@pytest.fixture(scope="module")
def annotated(pbmc_base, ray_session, tmp_path_factory, cli_app):
    """A lake copy where `aivc annotate --engine ray` ran over part 2."""
    import shutil

    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("annotated") / "lake"
    shutil.copytree(pbmc_base.root, root, symlinks=True)
    code, out = run_cli(cli_app, "annotate", "--instrument", "celltype@1", "--datasets", "pbmc68k-part2", "--rollup", "CL:0000084,CL:0000236", "--engine", "ray", "--lake", str(root))
    assert code == 0, out
    return Lake.open(root), out


def test_cli_publishes_a_prediction_version_with_ray(annotated, cli_app):
    lake, out = annotated
    assert out["status"] == "published" and out["ref"] == "predictions:celltype@1" and out["sql_view"] == "predictions_celltype_v1"
    assert (out["instrument_ref"], out["embedding_ref"], out["datasets"], out["n_rows"]) == ("celltype@1", "cell:pca@1", ["pbmc68k-part2@1"], 350)
    assert out["job"]["engine"] == "ray" and out["job"]["actors"] == 0 and out["job"]["ray_mode"] == "tasks"
    assert out["job"]["engine_reason"] == "--engine ray"  # explicit: 350 cells would otherwise run locally
    pv = get_prediction_version(lake, "celltype")
    assert pv.rows_per_dataset == {"pbmc68k-part2": 350} and pv.partitions == ("dataset=pbmc68k-part2",)
    assert out["report"] == str(version_dir(lake, "celltype", 1) / "report.html")
    files = sorted(p.name for p in version_dir(lake, "celltype", 1).iterdir())
    assert files == ["_version.json", "dataset=pbmc68k-part2", "report.html", "report.json"]
    code, listed = run_cli(cli_app, "instruments", "predictions", "--lake", str(lake.root))
    assert code == 0 and [(x["ref"], x["n_rows"], x["summary"]["n_labelled_known_type"]) for x in listed] == [("predictions:celltype@1", 350, 329)]


def test_rows_match_the_decoder_on_the_stored_vectors(annotated):
    lake, _ = annotated
    rows = read_predictions(lake, "celltype@1").to_pandas().set_index("obs_id")
    table, vec = read_vectors(lake, "cell:pca@1", datasets={"pbmc68k-part2"}, columns=("id", "soma_joinid"))
    ids = table.column("id").to_pylist()
    assert sorted(rows.index) == sorted(ids) and rows["dataset_id"].unique().tolist() == ["pbmc68k-part2"]
    direct = load_instrument(lake, "celltype@1").predict(vec)
    got = rows.loc[ids]
    assert got["soma_joinid"].tolist() == table.column("soma_joinid").to_pylist()
    assert got["predicted_term_id"].tolist() == direct.column("predicted_term_id").to_pylist()
    assert [list(s) for s in got["prediction_set"]] == direct.column("prediction_set").to_pylist()
    np.testing.assert_allclose(got["probability"], direct.column("probability").to_numpy(), rtol=1e-5)
    assert (got["set_size"] == got["prediction_set"].map(len)).all() and got["abstain"].sum() == direct.column("abstain").to_numpy(zero_copy_only=False).sum()
    meta = read_predictions(lake, "celltype@1").schema.metadata
    assert meta[b"schema_name"] == b"aivc.prediction_rows" and meta[b"instrument"] == b"celltype@1" and meta[b"embedding"] == b"cell:pca@1"


def test_new_versions_never_change_old_ones(plake, ray_session):
    first = annotate(plake, "celltype@1", datasets=["pbmc68k-part2"], engine="local", report=False)
    v1 = version_dir(plake, "celltype", 1)
    before = {k: v for k, v in lake_snapshot(v1).items()}
    train_celltype(plake, "cell:pca@1", datasets=["pbmc68k-part1", "pbmc68k-part2"])  # retrain: celltype@2
    second = annotate(plake, "celltype@2", all_datasets=True, engine="ray")
    assert (first.ref, second.ref) == ("predictions:celltype@1", "predictions:celltype@2")
    assert second.instrument_ref == "celltype@2" and second.rows_per_dataset == {"pbmc68k-part1": 350, "pbmc68k-part2": 350}
    assert lake_snapshot(v1) == before
    assert [v.instrument_ref for v in list_prediction_versions(plake)] == ["celltype@1", "celltype@2"]
    # the in-process engine, Ray tasks and a Ray actor pool give the same rows
    a = read_predictions(plake, first).to_pandas().set_index("obs_id").sort_index()
    dec = load_instrument(plake, "celltype@1")
    for actors in (0, 1):  # explicit Ray tasks; the default engine (auto) given an actor pool
        again = annotate(plake, "celltype@1", datasets=["pbmc68k-part2"], actors=actors, report=False, **({"engine": "ray"} if actors == 0 else {}))
        assert again.job["ray_mode"] == ("tasks" if actors == 0 else "actor pool of 1") and again.job["engine"] == "ray"
        assert again.job["engine_reason"] == ("--engine ray" if actors == 0 else "auto: --actors 1 asks for a Ray actor pool")
        b = read_predictions(plake, again).to_pandas().set_index("obs_id").sort_index()
        assert a["predicted_term_id"].equals(b["predicted_term_id"]) and dec.record.ref == "celltype@1"
        np.testing.assert_allclose(a["novelty"], b["novelty"], rtol=1e-5)


def test_auto_engine_runs_a_small_job_locally_and_says_why(plake, cli_app):
    from typer.testing import CliRunner

    code, out = run_cli(cli_app, "annotate", "--instrument", "celltype@1", "--datasets", "pbmc68k-part2", "--no-report", "--lake", str(plake.root))
    assert code == 0, out
    assert out["job"]["engine"] == "local" and out["job"]["engine_reason"] == f"auto: 350 cells < {AUTO_LOCAL_MAX_CELLS}" and "ray_mode" not in out["job"]
    assert get_prediction_version(plake, "celltype@1").job["engine_reason"] == out["job"]["engine_reason"]  # in the version's record
    # the human summary says which engine ran and why, and names every denominator
    res = CliRunner().invoke(cli_app, ["annotate", "--instrument", "celltype@1", "--all", "--rollup", "CL:0000084,CL:0000236", "--lake", str(plake.root)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert f"on the local engine (auto: 700 cells < {AUTO_LOCAL_MAX_CELLS})" in text
    s = get_prediction_version(plake, "celltype@2").summary
    assert f"700 of 700 cells labelled: {s['agree']} agree ({s['agree_fraction']:.1%} of the labelled cells)" in text
    r = s["rollup"]
    assert f"roll-up to CL:0000084,CL:0000236: {r['agree']} of {r['n_in_groups']} labelled cells in the groups agree" in text
    assert r["n_in_groups"] == r["agree"] + r["conflict"] and r["n_in_groups"] + r["n_not_in_rollup"] == 700


def test_choose_engine():
    n = AUTO_LOCAL_MAX_CELLS
    assert choose_engine("auto", n - 1) == ("local", f"auto: {n - 1} cells < {n}")
    assert choose_engine("auto", n) == ("ray", f"auto: {n} cells >= {n}")
    assert choose_engine("auto", 700, actors=2) == ("ray", "auto: --actors 2 asks for a Ray actor pool")
    assert choose_engine("auto", 700, ray_address="auto") == ("ray", "auto: --ray-address auto names a Ray cluster")
    assert choose_engine("local", 10 * n, actors=2) == ("local", "--engine local") and choose_engine("ray", 1) == ("ray", "--engine ray")
    with pytest.raises(UsageError) as bad:
        choose_engine("spark", 1)
    assert bad.value.where == "--engine"
    from aivc.cli_instruments import annotate as command

    import typing

    option = typing.get_type_hints(command, include_extras=True)["engine"].__metadata__[0]
    assert f"local below {n:,} cells" in option.help  # the documented threshold is the one in the code


def _pca_v2(lake) -> None:  # noqa: ANN001
    """cell:pca@2: the same cells, other vectors (as a re-embedding would give)."""
    table, vec = read_vectors(lake, "cell:pca@1", columns=("id", "soma_joinid", "dataset_id"))
    w = EmbeddingWriter(lake, "cell", "pca", vec.shape[1], source={"kind": "test"}, lineage=Lineage(datasets=("pbmc68k-part1@1", "pbmc68k-part2@1")))
    w.write(table.column("id"), vec[:, ::-1], soma_joinids=table.column("soma_joinid").to_numpy(), dataset_ids=table.column("dataset_id").to_pylist())
    w.commit()


def test_wrong_embedding_version_and_missing_vectors_are_refused(plake, cli_app, ray_session):
    _pca_v2(plake)
    before = lake_snapshot(plake.root / "predictions")
    code, err = run_cli(cli_app, "annotate", "--instrument", "celltype@1", "--embedding", "cell:pca@2", "--all", "--lake", str(plake.root))
    assert code == 1 and err["errors"][0]["code"] == "INSTRUMENT_ERROR" and err["errors"][0]["where"] == "--embedding"
    msg = err["errors"][0]["message"]
    assert "\n" not in msg and msg.startswith("celltype@1 was trained on cell:pca@1 and cannot read cell:pca@2")
    # an embedding version holding only part 1, and a decoder trained on it
    table, vec = read_vectors(plake, "cell:pca@1", datasets={"pbmc68k-part1"}, columns=("id", "soma_joinid", "dataset_id"))
    with EmbeddingWriter(plake, "cell", "half", vec.shape[1], source={"kind": "test"}, lineage=Lineage(datasets=("pbmc68k-part1@1",))) as w:
        w.write(table.column("id"), vec, soma_joinids=table.column("soma_joinid").to_numpy(), dataset_ids=table.column("dataset_id").to_pylist())
    train_celltype(plake, "cell:half@1", name="half")
    code, err = run_cli(cli_app, "annotate", "--instrument", "half@1", "--datasets", "pbmc68k-part2", "--lake", str(plake.root))
    assert code == 1 and err["errors"][0]["where"] == "--datasets"
    assert err["errors"][0]["message"] == "cell:half@1 has no vectors for dataset 'pbmc68k-part2' (datasets with vectors: pbmc68k-part1); embed it first"
    code, err = run_cli(cli_app, "annotate", "--instrument", "celltype@1", "--datasets", "pbmc68k-part2@2", "--lake", str(plake.root))
    assert code == 1 and "holds the vectors of pbmc68k-part2@1, not of pbmc68k-part2@2" in err["errors"][0]["message"]
    code, err = run_cli(cli_app, "annotate", "--instrument", "celltype@1", "--lake", str(plake.root))
    assert code == 2 and err["errors"][0]["code"] == "USAGE"
    with pytest.raises(UsageError, match="--actors 2 would hold all 2 CPUs"):  # auto with --actors 2: the Ray engine, which checks the pool
        annotate(plake, "celltype@1", all_datasets=True, actors=2)
    with pytest.raises(UsageError, match=r"--actors must be 0 \(Ray tasks\) or more, got -1"):
        annotate(plake, "celltype@1", all_datasets=True, actors=-1)
    with pytest.raises(UsageError, match="--batch-size must be at least 1, got 0") as bad:
        annotate(plake, "celltype@1", all_datasets=True, batch_size=0)
    assert bad.value.where == "--batch-size"
    assert lake_snapshot(plake.root / "predictions") == before
    assert not any((plake.root / "catalog" / ".staging").iterdir())


def test_crash_before_publish_leaves_no_version(plake, tmp_path):
    env = {**os.environ, "AIVC_FAULT": "before_prediction_publish", "RAY_AUTH_MODE": "disabled"}
    args = [sys.executable, "-m", "aivc.cli", "annotate", "--instrument", "celltype@1", "--all", "--engine", "local", "--lake", str(plake.root), "--json"]
    p = subprocess.run(args, env=env, capture_output=True, text=True)
    assert p.returncode == 23, p.stderr
    assert list_prediction_versions(plake) == []
    assert not any(d.name.startswith("v") for d in (plake.root / "predictions").rglob("v*"))
    staged = [d for d in (plake.root / "catalog" / ".staging").iterdir() if d.is_dir()]
    assert len(staged) == 1 and (staged[0] / "_version.json").is_file()  # complete, but never renamed
    from aivc.store.recovery import recover

    with plake.write_lock():
        removed = recover(plake)
    assert any(staged[0].name in r for r in removed) and not staged[0].exists()
    p = subprocess.run(args, env={**env, "AIVC_FAULT": ""}, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert [v.ref for v in list_prediction_versions(plake)] == ["predictions:celltype@1"]


def test_a_failed_ray_job_publishes_nothing(plake, ray_session):
    from aivc.store.features import get_version, parquet_files

    part = parquet_files(plake, get_version(plake, "cell:pca@1"), {"pbmc68k-part2"})[0]
    data = bytearray(part.read_bytes())
    data[8 : len(data) // 2] = bytes(len(data) // 2 - 8)  # pages destroyed, footer intact: fails inside the Ray read tasks
    part.write_bytes(bytes(data))
    with pytest.raises(InstrumentError, match="Ray annotation job failed") as info:
        annotate(plake, "celltype@1", all_datasets=True, engine="ray")
    assert "\n" not in str(info.value) and "retry" not in str(info.value)
    part.write_bytes(b"PAR1 not parquet")  # unreadable footer: refused before the job starts
    with pytest.raises(InstrumentError, match="a Parquet file of cell:pca@1 is unreadable"):
        annotate(plake, "celltype@1", all_datasets=True, engine="ray")
    assert list_prediction_versions(plake) == []
    assert not any((plake.root / "catalog" / ".staging").iterdir())


def test_task_cache_loads_each_decoder_once_and_never_serves_stale_weights(plake, monkeypatch):
    """The Ray task function keeps one decoder per (lake, ref, weights digest) in its worker."""
    import pyarrow.parquet as pq

    from aivc.store.features import get_version, parquet_files
    from aivc.instruments import annotate as ann
    from aivc.instruments.registry import get_instrument

    loads: list[str] = []
    real = ann.load_instrument
    monkeypatch.setattr(ann, "load_instrument", lambda lake, ref: loads.append(ref) or real(lake, ref))
    monkeypatch.setattr(ann, "_DECODERS", {})
    batch = pq.read_table(parquet_files(plake, get_version(plake, "cell:pca@1"), {"pbmc68k-part2"})[0])
    sha = get_instrument(plake, "celltype@1").weights_sha256
    first = ann.predict_task(batch, str(plake.root), "celltype@1", sha, 32)
    again = ann.predict_task(batch, str(plake.root), "celltype@1", sha, 32)
    assert loads == ["celltype@1"] and first.equals(again) and first.num_rows == batch.num_rows
    with pytest.raises(InstrumentError, match="the job was planned with 000000000000"):  # weights changed under the ref
        ann.predict_task(batch, str(plake.root), "celltype@1", "0" * 64, 32)
    assert loads == ["celltype@1", "celltype@1"] and len(ann._DECODERS) == 1


def test_ray_failures_are_reported_by_their_cause():
    from aivc.instruments.annotate import ray_failure

    wrapped = RuntimeError(
        "Failed to execute task\nray.exceptions.RayTaskError(InstrumentError): ray::MapBatches(predict_task)()\n"
        "  File \"x.py\", line 3, in f\naivc.instruments.registry.InstrumentError: weights of celltype@1 do not match\n\n"
        "To change retry attempts, set DataContext.max_errored_blocks."
    )
    assert ray_failure(wrapped) == "InstrumentError: weights of celltype@1 do not match"
    assert ray_failure(ValueError("plain")) == "ValueError: plain"
