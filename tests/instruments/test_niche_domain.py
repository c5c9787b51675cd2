"""The niche-domain decoder on the real Visium sample: train on half the niches' domains,
predict every niche into a prediction version in SQL, and draw the tissue map.

The niche URs here are the CellCharter-style mean of each spot's and its 6 nearest spots'
PCA URs, published as ``niche:nbmean@1`` (how the URs were made does not matter to the
decoder); the domains are 3 k-means clusters of those URs, so they are learnable, and the
decoder sees only half of them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aivc.demo_spatial import VISIUM_EXAMPLE, visium_manifest
from aivc.store.lake import Lake
from tests.ingest.test_cite_submit import write_manifest


@pytest.fixture(scope="module")
def domain_lake(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from sklearn.cluster import KMeans

    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.features import EmbeddingWriter
    from aivc.store.lineage import Lineage
    from aivc.training.niche_data import niche_inputs
    from aivc.training.niche_graph import NicheGraphSpec

    root = tmp_path_factory.mktemp("domain")
    lake = Lake.init(root / "lake")
    assert submit(lake, VISIUM_EXAMPLE, write_manifest(root / "m.yaml", visium_manifest()), report_dir=root / "r").status == "committed"
    embed_pca(lake, params=PcaParams(n_components=10, n_top_genes=90))
    inp = niche_inputs(lake, "cell:pca@1", graph=NicheGraphSpec(rule="knn", k=6).to_dict())
    a = inp.graph.to_scipy().astype(bool).astype(np.float32)
    x = ((a @ inp.x + inp.x) / (np.asarray(a.sum(1)).ravel()[:, None] + 1)).astype(np.float32)
    with EmbeddingWriter(lake, "niche", "nbmean", x.shape[1], source={"kind": "test"}, lineage=Lineage(datasets=inp.lineage.datasets, embedding="cell:pca@1")) as w:
        w.write(inp.obs_ids, x, soma_joinids=inp.soma_joinids, dataset_ids=inp.dataset_ids)
    domain = np.array(["cortex", "white-matter", "border"])[KMeans(3, n_init=10, random_state=0).fit_predict(x)]
    rng = np.random.default_rng(0)
    train = rng.permutation(len(x))[: len(x) // 2]
    labels = root / "domains.csv"
    pd.DataFrame({"niche_id": inp.obs_ids[train], "domain": domain[train]}).to_csv(labels, index=False)
    truth = pd.Series(domain, index=inp.obs_ids)
    return {"lake": lake, "labels": labels, "truth": truth, "train": set(inp.obs_ids[train]), "root": root}


@pytest.fixture(scope="module")
def app():  # noqa: ANN201
    import typer

    from aivc.cli_instruments import register

    a = typer.Typer(pretty_exceptions_enable=False)
    register(a)
    return a


def _run(app, lake: Lake, *args: str):  # noqa: ANN001, ANN202
    return CliRunner().invoke(app, [*args, "--lake", str(lake.root), "--json"])


@pytest.fixture(scope="module")
def trained(app, domain_lake: dict) -> dict:  # noqa: ANN001
    r = _run(app, domain_lake["lake"], "instruments", "train", "niche-domain", "--embedding", "niche:nbmean@1", "--labels", str(domain_lake["labels"]), "--min-cells", "5")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_decoder_registers_with_its_labels_and_calibration(trained: dict, domain_lake: dict) -> None:
    from aivc.instruments.registry import get_instrument

    rec = get_instrument(domain_lake["lake"], trained["ref"])
    assert (rec.kind, rec.type, rec.reads) == ("decoder", "niche-domain", "niche:nbmean@1")
    assert sorted(c["term_id"] for c in rec.outputs["classes"]) == ["border", "cortex", "white-matter"]
    assert rec.metrics["n_train"] == 50 and rec.lineage.extra["training_niches"] == {"visium-sample": 50}
    assert rec.lineage.extra["labels"].endswith("domains.csv: domain") and rec.config["labels"].endswith("domains.csv")
    assert rec.metrics["calibration"]["macro_f1"] > 0.7  # out of fold, over the 50 labelled niches


def test_annotate_predicts_held_out_niches_into_sql_with_a_tissue_map(app, trained: dict, domain_lake: dict) -> None:  # noqa: ANN001
    from aivc.cli import app as main_app
    from aivc.instruments.sql import query

    lake = domain_lake["lake"]
    r = CliRunner().invoke(main_app, ["annotate", "--instrument", trained["ref"], "--datasets", "visium-sample", "--lake", str(lake.root), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    rows = query(
        lake,
        f"SELECT p.obs_id, p.predicted_term_id, p.probability, p.set_size, p.prediction_set, s.x, s.y FROM {out['sql_view']} p JOIN spatial_cells s USING (obs_id)",
    ).to_pandas()
    assert len(rows) == 100 and rows["obs_id"].is_unique and rows["probability"].between(0, 1).all()
    held = rows[~rows["obs_id"].isin(domain_lake["train"])]
    truth = domain_lake["truth"].loc[held["obs_id"]].to_numpy()
    assert len(held) == 50 and np.mean(held["predicted_term_id"].to_numpy() == truth) > 0.8  # 3 domains: chance is ~1/3
    covered = np.mean([t in set(s) for t, s in zip(truth, held["prediction_set"], strict=True)])
    assert covered >= 0.75  # nominal 90 %, on 50 niches

    folder = Path(out["folder"])
    report = json.loads((folder / "report.json").read_text())
    entry = report["datasets"]["visium-sample"]
    assert entry["n_niches"] == 100 and entry["role"] == "trained on (in-sample)" and entry["map"] is True
    assert entry["domains"] == rows["predicted_term_id"].value_counts().reindex(entry["domains"]).fillna(0).astype(int).to_dict()
    assert entry["n_uncertain"] >= int((rows["set_size"] != 1).sum())
    html = (folder / "report.html").read_text()
    png = base64.b64decode(html.split("data:image/png;base64,")[1].split("'")[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 600 and int.from_bytes(png[20:24], "big") == 600


@pytest.mark.parametrize(
    ("args", "where", "message"),
    [
        (["--embedding", "cell:pca@1", "--labels", "LABELS"], "--embedding", "reads niche URs"),
        (["--embedding", "niche:nbmean@1"], "--label", "say where the domains are"),
        (["--embedding", "niche:nbmean@1", "--labels", "MISSING"], "--labels", "does not exist"),
        (["--embedding", "niche:nbmean@1", "--labels", "LABELS", "--label", "region"], "region", "has no column 'region'"),
        (["--embedding", "niche:nbmean@1", "--labels", "NOIDS"], "noids.csv", "no id of labels file"),
        (["--embedding", "niche:nbmean@1", "--label", "tissue_domain"], "--label tissue_domain", "no submitted obs column 'tissue_domain'"),
        (["--embedding", "niche:nbmean@1", "--labels", "LABELS", "--min-cells", "40"], "domains.csv: domain", "at least 2 such domains"),
    ],
    ids=["cell-urs", "no-labels", "missing-file", "missing-column", "ids-match-nothing", "obs-column-missing", "too-few-per-domain"],
)
def test_bad_decoder_input_is_refused_and_registers_nothing(app, domain_lake: dict, args: list[str], where: str, message: str) -> None:  # noqa: ANN001
    from aivc.instruments.registry import list_instruments

    lake, root = domain_lake["lake"], domain_lake["root"]
    pd.DataFrame({"niche_id": ["nope@1:X"], "domain": ["a"]}).to_csv(root / "noids.csv", index=False)
    subst = {"LABELS": str(domain_lake["labels"]), "MISSING": str(root / "missing.csv"), "NOIDS": str(root / "noids.csv")}
    before = [r.ref for r in list_instruments(lake)]
    r = _run(app, lake, "instruments", "train", "niche-domain", *[subst.get(a, a) for a in args], "--name", "bad-domain")
    assert r.exit_code != 0, r.output
    err = json.loads(r.output)["errors"][0]
    assert where in err["where"] and message in err["message"], err
    assert [x.ref for x in list_instruments(lake)] == before
