"""The cell-type decoder trained on real PBMC URs: what it records, how well it transfers, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.embeddings.store import read_vectors
from aivc.errors import UsageError
from aivc.instruments.celltype import CellTypeConfig, labelled_cells, train_celltype
from aivc.instruments.registry import get_instrument, load_instrument
from aivc.store.lake import Lake
from tests.instruments.support import run_cli

#: part 1's cell types with fewer than 10 labelled cells (counts of pbmc68k_reduced's first 350 cells)
EXCLUDED = {"CL:0000897": 9, "CL:0000895": 5, "CL:0008001": 5}


@pytest.fixture(scope="module")
def held_out(pbmc_base):
    """Part 2's labelled URs: (cells, vectors, truth term ids)."""
    lake = Lake.open(pbmc_base.root)
    cells, x = labelled_cells(lake, pbmc_base.emb, ["pbmc68k-part2"])
    return cells, x, cells["cell_type_ontology_term_id"].to_numpy()


def test_record_names_what_it_read_and_what_it_left_out(pbmc_base):
    rec = pbmc_base.rec
    assert (rec.ref, rec.kind, rec.type, rec.reads) == ("celltype@1", "decoder", "celltype", "cell:pca@1")
    assert {t: x["n_cells"] for t, x in rec.metrics["excluded_classes"].items()} == EXCLUDED
    classes = [c["term_id"] for c in rec.outputs["classes"]]
    assert classes == sorted(["CL:0000236", "CL:0000451", "CL:0000623", "CL:0000794", "CL:0000815", "CL:0000900", "CL:0001054"])
    assert rec.lineage["training_cells"] == {"pbmc68k-part1": 350 - sum(EXCLUDED.values())}
    assert rec.lineage["datasets"] == ["pbmc68k-part1@1"]
    assert rec.lineage["embedding_lineage_datasets"] == ["pbmc68k-part1@1", "pbmc68k-part2@1"]
    m = rec.metrics
    assert m["n_train"] + m["n_calibration"] == 331 and m["n_calibration"] == sum(c["n_calibration"] for c in rec.outputs["classes"])
    assert all(c["n_calibration"] >= 2 for c in rec.outputs["classes"])  # stratified
    assert m["nll_after"] <= m["nll_before"]
    assert m["calibration_coverage"] >= 0.9 and rec.config["alpha"] == 0.1 and rec.config["hidden"] == 64


def test_transfers_to_the_held_out_half(pbmc_base, held_out):
    cells, x, truth = held_out
    dec = load_instrument(Lake.open(pbmc_base.root), "celltype@1")
    t = dec.predict(x)
    known = np.isin(truth, dec.term_ids)
    assert known.sum() == 329  # 21 part 2 cells are of the three excluded types
    pred = np.array(t.column("predicted_term_id").to_pylist())
    assert (pred[known] == truth[known]).mean() > 0.8
    # cells of types the decoder never saw abstain far more often than cells of known types
    abstain = t.column("abstain").to_numpy(zero_copy_only=False)
    assert abstain[~known].mean() > 5 * abstain[known].mean()


def test_held_out_coverage_is_close_to_nominal(plake, held_out):
    """Averaged over five calibration splits, part 2 coverage is within a few points of 1 - alpha.

    With 83 calibration cells the expected coverage is 76/84 = 0.905 (split conformal is
    conservative by ceil((n+1)(1-alpha))/(n+1)); part 2 comes from other 10x lanes than
    part 1 (barcode suffixes -5..-8 vs -1..-4), so it is close to, not exactly, exchangeable.
    """
    lake = plake
    cells, x, truth = held_out
    covs, sizes = [], []
    for seed in range(5):
        rec = train_celltype(lake, "cell:pca@1", datasets=["pbmc68k-part1"], name="cov", config=CellTypeConfig(seed=seed))
        t = load_instrument(lake, rec).predict(x)
        known = np.isin(truth, [c["term_id"] for c in rec.outputs["classes"]])
        sets = t.column("prediction_set").to_pylist()
        covs.append(np.mean([truth[i] in sets[i] for i in np.flatnonzero(known)]))
        sizes.append(t.column("set_size").to_numpy()[known].mean())
    assert -0.03 < np.mean(covs) - 0.9 < 0.06, (covs, sizes)
    assert min(covs) > 0.85
    assert 1.0 < np.mean(sizes) < 2.5


def test_training_is_deterministic_and_reads_only_its_version(pbmc_base, plake):
    again = train_celltype(plake, "cell:pca@1", datasets=["pbmc68k-part1"])
    assert again.ref == "celltype@2" and again.metrics == pbmc_base.rec.metrics
    table, vec = read_vectors(plake, "cell:pca@1", datasets={"pbmc68k-part1"}, columns=("id",))
    a, b = load_instrument(plake, "celltype@1"), load_instrument(plake, "celltype@2")
    np.testing.assert_array_equal(a.predict_arrays(vec)["probs"], b.predict_arrays(vec)["probs"])


def test_training_errors(plake):
    with pytest.raises(UsageError, match="has no vectors for dataset 'nope'"):
        train_celltype(plake, "cell:pca@1", datasets=["nope"])
    with pytest.raises(UsageError, match="of which 0 have at least 400 cells"):
        train_celltype(plake, "cell:pca@1", config=CellTypeConfig(min_cells_per_class=400))
    with pytest.raises(UsageError, match="alpha must be between 0 and 1"):
        CellTypeConfig(alpha=1.5)


def test_cli_train_list_show(plake, cli_app):
    code, out = run_cli(cli_app, "instruments", "train", "celltype", "--embedding", "cell:pca@1", "--datasets", "pbmc68k-part1", "--alpha", "0.2", "--lake", str(plake.root))
    assert code == 0 and out["status"] == "registered" and out["ref"] == "celltype@2"
    assert out["metrics"]["excluded_classes"].keys() == EXCLUDED.keys() and out["lineage"]["training_cells"] == {"pbmc68k-part1": 331}
    assert get_instrument(plake, "celltype@2").config["alpha"] == 0.2
    code, rows = run_cli(cli_app, "instruments", "list", "--lake", str(plake.root))
    assert code == 0 and [(r["ref"], r["kind"], r["reads"], r["classes"], r["alpha"]) for r in rows] == [
        ("celltype@1", "decoder", "cell:pca@1", 7, 0.1), ("celltype@2", "decoder", "cell:pca@1", 7, 0.2)
    ]  # fmt: skip
    code, rec = run_cli(cli_app, "instruments", "show", "celltype@2", "--lake", str(plake.root))
    assert code == 0 and rec["schema_name"] == "aivc.instrument" and rec["lineage"]["embedding"] == "cell:pca@1"
    code, err = run_cli(cli_app, "instruments", "train", "celltype", "--embedding", "cell:pca@7", "--lake", str(plake.root))
    assert code == 1 and err["errors"][0]["code"] == "NOT_FOUND" and "has no version 7" in err["errors"][0]["message"]
    code, err = run_cli(cli_app, "instruments", "show", "nope@1", "--lake", str(plake.root))
    assert code == 1 and err["errors"][0]["message"].startswith("no instrument 'nope'")
