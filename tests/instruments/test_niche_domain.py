"""The niche-domain decoder on a simulated tissue with known domains.

``benchmarks/tissue_sim.py`` draws two tissue sections (4 domains: 3 wavy layers and a blob,
each a different mixture of real PBMC profiles) which are submitted as two image datasets
(a segmentation mask with one small label per cell, so the locations are the simulated
positions; the true domain is the submitted obs column ``domain``). The niche URs are the
mean PCA cell UR of each cell and its 15 nearest neighbours, published as ``niche:nbmean@1``
(how niche URs are made does not matter to the decoder). The decoder trains on section S0
and predicts section S1, a slide it never saw.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from aivc.store.lake import Lake
from tests.conftest import base_manifest
from tests.ingest.test_cite_submit import write_manifest
from tests.instruments.support import run_cli

PIXEL_UM = 0.5
NICHE = "niche:nbmean@1"


def _submit_section(lake: Lake, a: Any, sample: str, folder: Path) -> None:
    """One simulated section as an image submission: each cell a 3 x 3 px label at its position."""
    from aivc.ingest.submission import submit

    sub = a[a.obs["sample"] == sample].copy()
    sub.obs_names = [f"{sample}-{i}" for i in range(sub.n_obs)]
    px = np.round(sub.obsm["spatial"] / PIXEL_UM).astype(int)
    mask = np.zeros((px[:, 1].max() + 3, px[:, 0].max() + 3), np.uint16)
    for i, (x, y) in enumerate(px, start=1):
        mask[y - 1 : y + 2, x - 1 : x + 2] = i
    assert len(np.unique(mask)) == sub.n_obs + 1  # every cell keeps a label
    folder.mkdir()
    tifffile.imwrite(folder / "img.tif", (mask > 0).astype(np.uint16) * 1000)
    tifffile.imwrite(folder / "mask.tif", mask)
    sub.obs = pd.DataFrame({"label_id": np.arange(1, sub.n_obs + 1, dtype=np.int64), "domain": sub.obs["domain"].astype(str).to_numpy()}, index=sub.obs_names)
    del sub.obsm["spatial"]
    sub.uns = {}
    sub.write_h5ad(folder / "cells.h5ad")
    m = base_manifest(f"tissue-{sample.lower()}", title=f"simulated tissue section {sample}")
    fixed = {"assay": {"value": "EFO:0008992"}, "suspension_type": {"value": "na"}, "cell_type": {"value": "unknown"}, "sex": {"value": "unknown"}, "donor_id": {"value": "sim"}}
    m["obs"] = {**m["obs"], **fixed}
    m["spatial"] = {"technology": "image", "is_single": True, "image": str(folder / "img.tif"), "labels": str(folder / "mask.tif"), "label_column": "label_id", "channels": ["dapi"], "pixel_size_um": PIXEL_UM}
    res = submit(lake, folder / "cells.h5ad", write_manifest(folder / "m.yaml", m), report_dir=folder / "r")
    assert res.status == "committed", [str(e) for e in res.errors]


@pytest.fixture(scope="module")
def tissue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.store.features import EmbeddingWriter
    from aivc.store.lineage import Lineage
    from aivc.training.niche_data import niche_inputs
    from aivc.training.niche_graph import NicheGraphSpec
    from benchmarks.tissue_sim import TissueParams, simulate_tissue

    root = tmp_path_factory.mktemp("tissue")
    a = simulate_tissue(TissueParams(n_cells=1600, n_samples=2, n_domains=4, seed=3))
    lake = Lake.init(root / "lake")
    for s in ("S0", "S1"):
        _submit_section(lake, a, s, root / s)
    embed_pca(lake, params=PcaParams(n_components=16, n_top_genes=500))
    inp = niche_inputs(lake, "cell:pca@1", graph=NicheGraphSpec(rule="knn", k=15).to_dict())
    adj = inp.graph.to_scipy().astype(bool).astype(np.float32)
    x = ((adj @ inp.x + inp.x) / (np.asarray(adj.sum(1)).ravel()[:, None] + 1)).astype(np.float32)
    with EmbeddingWriter(lake, "niche", "nbmean", x.shape[1], source={"kind": "test"}, lineage=Lineage(datasets=inp.lineage.datasets, embedding="cell:pca@1")) as w:
        w.write(inp.obs_ids, x, soma_joinids=inp.soma_joinids, dataset_ids=inp.dataset_ids)
    truth = pd.Series(a.obs["domain"].astype(str).to_numpy(), index=[f"{s}-{i}" for s in ("S0", "S1") for i in range((a.obs["sample"] == s).sum())])
    return {"lake": lake, "root": root, "truth": truth, "obs_ids": inp.obs_ids, "dataset_ids": inp.dataset_ids}


def _train(cli_app: Any, lake: Lake, *args: str) -> tuple[int, Any]:
    return run_cli(cli_app, "instruments", "train", "niche-domain", "--embedding", NICHE, "--hidden", "0", *args, "--lake", str(lake.root))


@pytest.fixture(scope="module")
def trained(cli_app: Any, tissue: dict[str, Any]) -> dict[str, Any]:
    code, out = _train(cli_app, tissue["lake"], "--label", "domain", "--datasets", "tissue-s0")
    assert code == 0, out
    return out


@pytest.fixture(scope="module")
def annotated(cli_app: Any, tissue: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    code, out = run_cli(cli_app, "annotate", "--instrument", trained["ref"], "--datasets", "tissue-s1", "--lake", str(tissue["lake"].root))
    assert code == 0, out
    return out


def _held_out(tissue: dict[str, Any], view: str) -> pd.DataFrame:
    from aivc.instruments.sql import query

    sql = (
        f"SELECT p.obs_id, p.dataset_id, p.predicted_domain, p.probability, p.prediction_set, p.set_size, p.abstain, s.barcode, s.x, s.y "
        f"FROM {view} p JOIN spatial_cells s USING (obs_id)"
    )
    rows = query(tissue["lake"], sql).to_pandas()
    rows["truth"] = tissue["truth"].loc[rows["barcode"]].to_numpy()
    rows["covered"] = [t in set(s) for t, s in zip(rows["truth"], rows["prediction_set"], strict=True)]
    return rows


def test_trains_from_the_submitted_obs_column_with_spatial_blocks(trained: dict[str, Any], tissue: dict[str, Any]) -> None:
    from aivc.instruments.registry import get_instrument, load_instrument

    lake = tissue["lake"]
    rec = get_instrument(lake, trained["ref"])
    assert (rec.kind, rec.type, rec.reads) == ("decoder", "niche-domain", NICHE)
    assert [c["term_id"] for c in rec.outputs["classes"]] == ["D0", "D1", "D2", "D3"]
    columns = ["predicted_domain", "probability", "prediction_set", "set_size", "novelty", "abstain"]
    assert sorted(rec.outputs["columns"]) == sorted(columns)
    m = rec.metrics
    assert m["n_train"] == 800 and rec.lineage.extra["training_niches"] == {"tissue-s0": 800} and rec.lineage.datasets == ("tissue-s0@1",)
    assert rec.lineage.extra["labels"] == "obs['domain']" and rec.config["cv"] == "spatial"
    # a 3 x 3 grid over the section: side = a third of its extent, in pixels
    xy = tissue["truth"].index.str.startswith("S0-")
    assert m["cross_fitting"]["cv"] == "spatial" and m["cross_fitting"]["n_blocks"] == 9 and sum(m["cross_fitting"]["fold_sizes"]) == 800
    side = m["cross_fitting"]["block_size"]["tissue-s0"]
    assert 150 < side < 200 and xy.sum() == 800  # the section spans ~270 um = ~540 px
    assert m["calibration_coverage"] >= 0.9 and 0.6 < m["calibration"]["accuracy"] < 0.95
    decoder = load_instrument(lake, rec)
    assert type(decoder).__name__ == "NicheDomainDecoder" and decoder.output_schema().names == columns


def test_predicts_a_held_out_slide_into_sql_with_calibrated_sets(annotated: dict[str, Any], tissue: dict[str, Any]) -> None:
    from aivc.instruments.sql import query

    rows = _held_out(tissue, annotated["sql_view"])
    n_niches = query(tissue["lake"], "SELECT count(*) FROM niche_nbmean_v1 WHERE dataset_id = 'tissue-s1'").rows[0][0]
    assert len(rows) == n_niches == 800 and rows["obs_id"].is_unique and set(rows["dataset_id"]) == {"tissue-s1"}
    assert annotated["sql_view"] == "predictions_niche_domain_v1" and annotated["n_rows"] == 800
    accuracy = float(np.mean(rows["predicted_domain"] == rows["truth"]))
    chance = float(rows["truth"].value_counts(normalize=True).max())  # always guessing the largest domain
    assert accuracy > 0.7 and accuracy > chance + 0.35, (accuracy, chance)
    coverage = float(rows["covered"].mean())
    assert 0.84 <= coverage <= 0.97, coverage  # nominal 0.90 on a slide the decoder never saw
    assert (rows["set_size"] == rows["prediction_set"].map(len)).all() and rows["probability"].between(0.25, 1.0).all()
    sure = rows[rows["set_size"] == 1]
    assert len(sure) > 400 and float(np.mean(sure["predicted_domain"] == sure["truth"])) > accuracy  # a single-domain set is right more often


def test_a_principal_who_sees_no_slide_gets_the_niche_columns_and_no_rows(annotated: dict[str, Any], tissue: dict[str, Any]) -> None:
    import duckdb

    from aivc.instruments.sql import prediction_views

    con = duckdb.connect()
    prediction_views(tissue["lake"])(con, set())
    assert con.execute(f"SELECT obs_id, dataset_id, predicted_domain, prediction_set, set_size FROM {annotated['sql_view']}").fetchall() == []


def test_report_maps_the_slide_and_scores_it_against_its_domains(annotated: dict[str, Any], tissue: dict[str, Any]) -> None:
    folder = Path(annotated["folder"])
    rows = _held_out(tissue, annotated["sql_view"])
    report = json.loads((folder / "report.json").read_text())
    assert report["schema_name"] == "aivc.niche_domain_report" and report["prediction"] == "predictions:niche-domain@1"
    entry = report["datasets"]["tissue-s1"]
    assert entry["role"] == "held out" and entry["n_niches"] == 800 and entry["map"] == "tissue_map_tissue-s1.png"
    assert entry["domains"] == {d: int((rows["predicted_domain"] == d).sum()) for d in ("D0", "D1", "D2", "D3")}
    assert entry["n_uncertain"] == int(((rows["set_size"] != 1) | rows["abstain"]).sum())
    assert entry["agreement"]["accuracy"] == pytest.approx(float(np.mean(rows["predicted_domain"] == rows["truth"])))
    assert entry["agreement"]["set_coverage"] == pytest.approx(float(rows["covered"].mean()))
    png = (folder / entry["map"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (600, 600)
    html = (folder / "report.html").read_text()
    assert base64.b64decode(html.split("data:image/png;base64,")[1].split("'")[0]) == png


def test_instruments_report_recomputes_the_tissue_map(cli_app: Any, annotated: dict[str, Any], tissue: dict[str, Any], tmp_path: Path) -> None:
    code, out = run_cli(cli_app, "instruments", "report", "predictions:niche-domain@1", "--out", str(tmp_path), "--lake", str(tissue["lake"].root))
    assert code == 0, out
    again = json.loads((tmp_path / "report.json").read_text())
    first = json.loads((Path(annotated["folder"]) / "report.json").read_text())
    assert again["datasets"] == first["datasets"] and (tmp_path / "tissue_map_tissue-s1.png").read_bytes()[:4] == b"\x89PNG"


def test_random_folds_are_optimistic_next_to_spatial_blocks(cli_app: Any, trained: dict[str, Any], annotated: dict[str, Any], tissue: dict[str, Any]) -> None:
    """Neighbouring niches share cells: random folds overrate the decoder and under-cover a new slide
    (measured: out-of-fold accuracy 0.84 vs 0.76 with blocks; held-out coverage 0.855 vs 0.93)."""
    lake = tissue["lake"]
    code, rnd = _train(cli_app, lake, "--label", "domain", "--datasets", "tissue-s0", "--cv", "random", "--name", "domain-random")
    assert code == 0, rnd
    code, pv = run_cli(cli_app, "annotate", "--instrument", rnd["ref"], "--datasets", "tissue-s1", "--no-report", "--lake", str(lake.root))
    assert code == 0, pv
    spatial, random_ = trained["metrics"], rnd["metrics"]
    assert random_["cross_fitting"] == {"cv": "random"}
    assert random_["calibration"]["accuracy"] > spatial["calibration"]["accuracy"] + 0.03
    assert random_["qhat"] < spatial["qhat"]
    covered_random = float(_held_out(tissue, pv["sql_view"])["covered"].mean())
    covered_blocks = float(_held_out(tissue, annotated["sql_view"])["covered"].mean())
    assert covered_random < 0.9 and covered_random < covered_blocks - 0.04, (covered_random, covered_blocks)


def test_labels_file_trains_on_the_niches_it_names(cli_app: Any, tissue: dict[str, Any]) -> None:
    from aivc.instruments.registry import get_instrument

    lake, root = tissue["lake"], tissue["root"]
    ids = tissue["obs_ids"][tissue["dataset_ids"] == "tissue-s0"][::2]  # every other niche of S0
    frame = pd.DataFrame({"niche_id": ids, "region": tissue["truth"].loc[[i.rpartition(":")[2] for i in ids]].to_numpy()})
    frame.to_parquet(root / "regions.parquet")
    code, out = _train(cli_app, lake, "--labels", str(root / "regions.parquet"), "--label", "region", "--cv", "random", "--name", "domain-file")
    assert code == 0, out
    rec = get_instrument(lake, out["ref"])
    assert rec.metrics["n_train"] == len(ids) == 400 and rec.lineage.extra["labels"] == f"{root / 'regions.parquet'}: region"
    assert [c["n_train"] for c in rec.outputs["classes"]] == frame["region"].value_counts().sort_index().tolist()


def test_labels_by_obs_id_or_barcode_and_dataset(tissue: dict[str, Any]) -> None:
    from aivc.instruments.niche_domain import domain_labels
    from aivc.store.features import get_version

    lake, root = tissue["lake"], tissue["root"]
    emb = get_version(lake, NICHE)
    ids = tissue["obs_ids"][:5]
    pd.DataFrame({"obs_id": ids, "domain": ["a", "b", "unknown", "", "a"]}).to_csv(root / "by_obs.csv", index=False)
    got = domain_labels(lake, emb, label=None, labels=root / "by_obs.csv", datasets=None)
    assert got["niche_id"].tolist() == [ids[0], ids[1], ids[4]] and got["domain"].tolist() == ["a", "b", "a"]  # empty and unknown skipped
    pd.DataFrame({"barcode": ["S1-0", "S1-1", "S0-0"], "dataset_id": ["tissue-s1"] * 3, "domain": ["x", "y", "z"]}).to_csv(root / "by_bc.tsv", sep="\t", index=False)
    got = domain_labels(lake, emb, label=None, labels=root / "by_bc.tsv", datasets=None)
    assert sorted(got["domain"]) == ["x", "y"] and set(got["dataset_id"]) == {"tissue-s1"}  # S0-0 is not a barcode of tissue-s1


def test_spatial_folds_keep_blocks_whole_and_balanced() -> None:
    from aivc.errors import UsageError
    from aivc.instruments.niche_domain_model import spatial_folds

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, size=(2000, 2))
    groups = np.repeat(["a", "b"], 1000)
    fold, info = spatial_folds(xy, groups, n_folds=5, seed=1)
    assert info["n_blocks"] == 18 and set(info["block_size"]) == {"a", "b"}
    block = np.empty(len(xy), dtype=object)
    for g in ("a", "b"):  # each dataset cut 3 x 3 over its own extent
        p = xy[groups == g]
        cell = np.minimum(np.floor((p - p.min(0)) / (np.ptp(p, 0).max() / 3)), 2).astype(int)
        block[groups == g] = [f"{g}{i}{j}" for i, j in cell]
    assert pd.Series(fold).groupby(block).nunique().max() == 1  # a block is never split between folds
    sizes = np.bincount(fold)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 200  # ~111 niches a block, 3-4 blocks a fold
    again, _ = spatial_folds(xy, groups, n_folds=5, seed=1)
    assert (again == fold).all() and not (spatial_folds(xy, groups, n_folds=5, seed=2)[0] == fold).all()
    with pytest.raises(UsageError, match="fall in 2 spatial block"):
        spatial_folds(xy, groups, n_folds=5, seed=1, block_size=1000.0)


def test_a_domain_missing_from_a_training_split_still_calibrates() -> None:
    """A blob domain held out whole by one fold: novelty and sets stay finite, the gap is counted."""
    from aivc.instruments.celltype_fit import fit_decoder
    from aivc.instruments.celltype_model import CellTypeConfig

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [200, 200, 40])
    x = (rng.normal(size=(440, 4)) + 3 * np.eye(4)[y][:, :4]).astype(np.float32)
    folds = np.where(y == 2, 0, rng.integers(0, 4, 440))
    model = fit_decoder(x, y, ["A", "B", "C"], ["A", "B", "C"], CellTypeConfig(hidden=0, weight_decay=1e-2, folds=4), folds=folds)
    m = model.fit_metrics
    assert m["classes_missing_in_training_folds"] == 1 and m["folds"] == 4
    assert np.isfinite(model.novelty_threshold) and m["qhat"] is not None and m["calibration_coverage"] >= 0.9


BAD = [
    # (id, arguments, where contains, message contains)
    ("cell-urs", ["--embedding", "cell:pca@1", "--label", "domain"], "--embedding", "reads niche URs"),
    ("no-labels", [], "--label", "say where the domains are"),
    ("missing-file", ["--labels", "MISSING"], "--labels", "does not exist"),
    ("missing-domain-column", ["--labels", "GOOD", "--label", "region"], "region", "has no column 'region'"),
    ("no-id-column", ["--labels", "NOIDS"], "noids.csv", "needs a niche_id or obs_id column"),
    ("ids-match-nothing", ["--labels", "STRANGERS"], "strangers.csv", "no id of labels file"),
    ("obs-column-missing", ["--label", "tissue_domain"], "--label tissue_domain", "no submitted obs column 'tissue_domain'"),
    ("one-domain", ["--labels", "ONE"], "one.csv: domain", "in 1 domain(s)"),
    ("too-few-per-domain", ["--labels", "GOOD", "--min-cells", "40"], "good.csv: domain", "at least 2 such domains"),
    ("two-domains-for-a-niche", ["--labels", "TWICE"], "twice.csv: domain", "more than one domain"),
    ("blocks-too-big", ["--label", "domain", "--block-size", "100000"], "--block-size", "fewer than the 5 folds"),
    ("unknown-cv", ["--label", "domain", "--cv", "leave-one-out"], "--cv", "--cv must be one of spatial, random"),
]


@pytest.mark.parametrize(("args", "where", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_decoder_input_is_refused_and_registers_nothing(cli_app: Any, tissue: dict[str, Any], args: list[str], where: str, message: str) -> None:
    from aivc.instruments.registry import list_instruments

    lake, root = tissue["lake"], tissue["root"]
    ids = tissue["obs_ids"]
    files = {
        "GOOD": pd.DataFrame({"niche_id": ids[:60], "domain": np.repeat(["a", "b"], 30)}),
        "NOIDS": pd.DataFrame({"cell": ids[:60], "domain": "a"}),
        "STRANGERS": pd.DataFrame({"niche_id": ["elsewhere@1:X"], "domain": ["a"]}),
        "ONE": pd.DataFrame({"niche_id": ids[:60], "domain": "a"}),
        "TWICE": pd.DataFrame({"niche_id": [*ids[:60], ids[0]], "domain": [*np.repeat(["a", "b"], 30), "b"]}),
    }
    subst = {"MISSING": str(root / "missing.csv")}
    for key, frame in files.items():
        frame.to_csv(root / f"{key.lower()}.csv", index=False)
        subst[key] = str(root / f"{key.lower()}.csv")
    args = [subst.get(a, a) for a in args]
    if "--embedding" not in args:
        args = ["--embedding", NICHE, *args]
    before = [r.ref for r in list_instruments(lake)]
    res = CliRunner().invoke(cli_app, ["instruments", "train", "niche-domain", *args, "--name", "bad-domain", "--lake", str(lake.root)])
    assert res.exit_code == 2 and "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3, res.output
    code, out = run_cli(cli_app, "instruments", "train", "niche-domain", *args, "--name", "bad-domain", "--lake", str(lake.root))
    err = out["errors"][0]
    assert code == 2 and err["code"] == "USAGE" and where in err["where"] and message in err["message"], err
    assert [x.ref for x in list_instruments(lake)] == before
