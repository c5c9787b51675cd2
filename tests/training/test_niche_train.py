"""The niche model on a real Visium slide subset: Ray Train, the registry, ``aivc embed`` and SQL.

The lake holds the demo's Visium sample (100 real spots, Space Ranger 1.0.0) with PCA cell URs;
the niche model trains through ``aivc train niche-gnn`` (Ray Train), ``aivc embed`` publishes
its niche URs with their members, and SQL reads both.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from aivc.demo_spatial import VISIUM_EXAMPLE, visium_manifest
from aivc.store.lake import Lake
from tests.ingest.test_cite_submit import write_manifest

FAST = ["--set", "epochs=4", "--set", "n_states=8", "--set", "anchors=64"]


@pytest.fixture(scope="module")
def visium_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit

    root = tmp_path_factory.mktemp("niche")
    lake = Lake.init(root / "lake")
    res = submit(lake, VISIUM_EXAMPLE, write_manifest(root / "m.yaml", visium_manifest()), report_dir=root / "r")
    assert res.status == "committed", [str(e) for e in res.errors]
    embed_pca(lake, params=PcaParams(n_components=10, n_top_genes=90))
    return lake


@pytest.fixture(scope="module")
def app():  # noqa: ANN201
    import typer

    from aivc.cli_features import register as register_features
    from aivc.cli_training import register as register_training

    a = typer.Typer(pretty_exceptions_enable=False)
    register_training(a)
    register_features(a)
    return a


def _run(app, lake: Lake, *args: str):  # noqa: ANN001, ANN202
    return CliRunner().invoke(app, [*args, "--lake", str(lake.root), "--json"])


@pytest.fixture(scope="module")
def trained(app, visium_lake: Lake, ray_session: None) -> dict:  # noqa: ANN001
    r = _run(app, visium_lake, "train", "niche-gnn", "--cells", "cell:pca@1", *FAST)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_niche_model_trains_through_ray_and_records_its_lineage(trained: dict, visium_lake: Lake) -> None:
    from aivc.training.registry import get_model

    assert trained["status"] == "registered" and trained["model"] == "niche-gnn@1" and trained["epochs"] == 4
    rec = get_model(visium_lake, "niche-gnn@1")
    assert rec.model_type == "niche-gnn" and rec.init["n_features"] == 10 and rec.init["n_states"] == 8
    assert rec.lineage.embedding == "cell:pca@1" and rec.lineage.datasets == ("visium-sample@1",)
    graph = rec.lineage.extra["graph"]
    # the Visium default is the 6 touching spots (1.5 x the spacing); these 100 spots are a sparse
    # subset of the slide's 4,235 that radius leaves mostly alone, so the 6 nearest spots instead
    assert (graph["rule"], graph["k"]) == ("knn", 6)
    assert rec.config["graph_given"] is None and rec.config["model"]["epochs"] == 4
    assert [h["epoch"] for h in rec.history] == [1, 2, 3, 4]
    assert all(np.isfinite(h["loss"]) and h["contrastive"] > 0 for h in rec.history)
    assert rec.training["workers"] == 1 and rec.training["ray_version"]
    run = json.loads((visium_lake.root / "models" / ".runs" / trained["run_id"] / "run.json").read_text())
    assert run["status"] == "registered" and run["model_ref"] == "niche-gnn@1"


def test_embed_publishes_niche_urs_with_members_in_sql(app, trained: dict, visium_lake: Lake) -> None:  # noqa: ANN001
    from aivc.embeddings.sql import query
    from aivc.store.catalog import Catalog
    from aivc.store.spatial import read_locations

    r = _run(app, visium_lake, "embed", "model", "niche-gnn@1")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["ref"] == "niche:niche_gnn@1" and out["lineage"]["model"] == "niche-gnn@1" and out["lineage"]["embedding"] == "cell:pca@1"
    niches = query(visium_lake, "SELECT niche_id, vector FROM niche_niche_gnn_v1").to_pandas()
    assert len(niches) == 100 and niches["niche_id"].is_unique
    assert np.isfinite(np.stack(niches["vector"].to_numpy())).all() and len(niches["vector"][0]) == 16

    members = query(visium_lake, "SELECT niche_id, obs_id, distance FROM niche_niche_gnn_members").to_pandas()
    assert (members[members.niche_id == members.obs_id]["distance"] == 0).all()
    assert (members.groupby("niche_id").size() == 7).all() and set(members.niche_id) == set(niches.niche_id)  # centre + 6 nearest
    # the distances are the spots' real ones, and the 6 members are the nearest spots
    locs = read_locations(visium_lake, Catalog(visium_lake).get("visium-sample")).set_index("obs_id")
    pairs = members[members.niche_id != members.obs_id]
    assert len(pairs) == out["metrics"]["n_members"] - 100 > 0
    d = np.hypot(*(locs.loc[pairs.niche_id, c].to_numpy() - locs.loc[pairs.obs_id, c].to_numpy() for c in ("x", "y")))
    np.testing.assert_allclose(pairs["distance"].to_numpy(), d, rtol=1e-5)
    xy = locs[["x", "y"]].to_numpy()
    centre = locs.index[0]
    nearest = set(locs.index[np.argsort(np.hypot(*(xy - xy[0]).T))[1:7]])
    assert set(pairs[pairs.niche_id == centre].obs_id) == nearest
    # niches join to the spots' locations and cells
    n = query(visium_lake, "SELECT count(*) AS n FROM niche_niche_gnn n JOIN spatial_cells s ON s.obs_id = n.niche_id JOIN cells c USING (obs_id)").to_pandas()
    assert int(n["n"][0]) == 100


def test_two_ray_workers_train_data_parallel(app, visium_lake: Lake, ray_session: None) -> None:  # noqa: ANN001
    from aivc.training.registry import get_model

    r = _run(app, visium_lake, "train", "niche-gnn", "--cells", "cell:pca@1", "--name", "niche-ddp", "--graph", "knn:6", "--workers", "2", "--set", "epochs=2", "--set", "n_states=8")
    assert r.exit_code == 0, r.output
    rec = get_model(visium_lake, json.loads(r.output)["model"])
    assert rec.training["workers"] == 2 and rec.lineage.extra["graph"]["rule"] == "knn" and rec.lineage.extra["graph"]["k"] == 6
    assert rec.config["graph_given"] == {"rule": "knn", "k": 6}


@pytest.mark.parametrize(
    ("args", "code", "where", "message"),
    [
        (["--cells", "cell:nope@1"], 1, "cell:nope@1", "no embedding"),
        (["--cells", "cell:pca@1", "--graph", "ring:3"], 2, "--graph", "expected radius:R"),
        (["--cells", "cell:pca@1", "--set", "epoch=3"], 2, "--set", "KEY one of"),
        (["--cells", "cell:pca@1", "--set", "mask_rate=1.5"], 2, "mask_rate", "between 0 and 1"),
        (["--cells", "cell:pca@1", "--set", "n_states=500"], 2, "--cells", "too few"),
        (["--cells", "cell:pca@1", "--graph", "radius:1"], 2, "--graph", "joins none"),
        (["--cells", "cell:pca@1", "--name", "Bad Name"], 2, "--name", "name"),
    ],
    ids=["unknown-cells", "bad-graph", "bad-key", "bad-value", "too-few-cells", "empty-graph", "bad-name"],
)
def test_bad_niche_training_input_is_refused(app, visium_lake: Lake, args: list[str], code: int, where: str, message: str) -> None:  # noqa: ANN001
    from aivc.training.registry import list_models

    before = [m.ref for m in list_models(visium_lake)]
    r = _run(app, visium_lake, "train", "niche-gnn", *FAST, *args)
    assert r.exit_code == code, r.output
    err = json.loads(r.output)["errors"][0]
    assert where in err["where"] and message in err["message"], err
    assert [m.ref for m in list_models(visium_lake)] == before
    assert not any(p.name.startswith("niche-gnn-") and not (p / "run.json").exists() for p in (visium_lake.root / "models" / ".runs").glob("*"))


def test_embedding_a_niche_model_over_other_width_cell_urs_is_refused(app, trained: dict, visium_lake: Lake) -> None:  # noqa: ANN001
    from aivc.embeddings.niche_job import embed_niches_job
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.errors import UsageError
    from aivc.store.features import list_versions

    embed_pca(visium_lake, name="pca5", params=PcaParams(n_components=5, n_top_genes=90))
    before = [v.ref for v in list_versions(visium_lake, "niche")]
    with pytest.raises(UsageError) as e:
        embed_niches_job(visium_lake, "niche-gnn@1", cells="cell:pca5@1")
    assert e.value.where == "--cells" and "reads 10-dim" in str(e.value)
    assert [v.ref for v in list_versions(visium_lake, "niche")] == before


def test_niche_model_and_members_on_an_s3_lake(s3_lake_uri: str, tmp_path, ray_session: None) -> None:  # noqa: ANN001
    from aivc.embeddings.niche_job import embed_niches_job
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.embeddings.sql import query
    from aivc.ingest.submission import submit
    from aivc.training.niche_nets import NicheModelConfig
    from aivc.training.niche_train import train_niche

    lake = Lake.init(s3_lake_uri)
    assert submit(lake, VISIUM_EXAMPLE, write_manifest(tmp_path / "m.yaml", visium_manifest()), report_dir=tmp_path / "r").status == "committed"
    embed_pca(lake, params=PcaParams(n_components=6, n_top_genes=90))
    res = train_niche(lake, "cell:pca@1", name="s3-niche", graph={"rule": "knn", "k": 4}, config=NicheModelConfig(epochs=2, n_states=6, anchors=32))
    v = embed_niches_job(Lake.open(s3_lake_uri), res.model_ref)
    assert (v.ref, v.n_rows, v.metrics["n_members"]) == ("niche:s3_niche@1", 100, 500)
    back = Lake.open(s3_lake_uri)
    assert query(back, "SELECT count(*), count(DISTINCT niche_id), sum((distance = 0)::INT) FROM niche_s3_niche_members").rows == [(500, 100, 100)]
    assert query(back, "SELECT count(*) FROM niche_s3_niche n JOIN spatial_cells s ON s.obs_id = n.niche_id").rows == [(100,)]
