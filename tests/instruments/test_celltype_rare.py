"""Rare cell types: kept, cross-fitted, predicted on held-out cells, counted in the record.

The default decoder keeps every type with at least 2 labelled cells. On the real PBMC data:
part 1's three rarest types (9, 5 and 5 cells) are kept, and a submission made of part 2's
cells with only 3 B cells and 1 hematopoietic precursor cell trains a decoder that predicts
part 1's B cells as B cells and leaves out only the 1-cell type (with the reason).
"""

from __future__ import annotations

import numpy as np
import pytest

from aivc.errors import UsageError
from aivc.instruments.celltype import labelled_cells, train_celltype
from aivc.instruments.celltype_fit import fit_decoder, stratified_folds
from aivc.instruments.celltype_model import CellTypeConfig
from aivc.instruments.registry import load_instrument
from aivc.store.features import get_version
from aivc.store.lake import Lake
from tests.instruments.support import run_cli

B_CELL, PRECURSOR = "CL:0000236", "CL:0008001"
#: labelled cells of each type in part 1 (pbmc68k_reduced's first 350 cells)
PART1 = {"CL:0000236": 46, "CL:0000451": 116, "CL:0000623": 18, "CL:0000794": 27, "CL:0000815": 33, "CL:0000895": 5, "CL:0000897": 9, "CL:0000900": 27, "CL:0001054": 64, "CL:0008001": 5}


def _macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over every type present in ``truth`` (a type never predicted scores 0)."""
    f1 = []
    for t in np.unique(truth):
        tp = float(((pred == t) & (truth == t)).sum())
        prec, rec = tp / max(float((pred == t).sum()), 1.0), tp / float((truth == t).sum())
        f1.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return float(np.mean(f1))


def test_default_keeps_every_type_and_records_its_cells(pbmc_base, plake):
    rec = train_celltype(plake, "cell:pca@1", datasets=["pbmc68k-part1"])
    m = rec.metrics
    assert m["excluded_classes"] == {} and rec.config["min_cells_per_class"] == 2
    assert {c["term_id"]: c["n_cells"] for c in rec.outputs["classes"]} == PART1
    assert {t: (x["n_cells"], x["kept"]) for t, x in m["class_cells"].items()} == {t: (n, True) for t, n in PART1.items()}
    assert m["n_train"] == 350 and m["classes_missing_in_training_folds"] == 0 and m["classes_smaller_than_folds"] == 0
    # every class has its out-of-fold scores in the record, next to its count
    for c in rec.outputs["classes"]:
        assert c["n_cells"] == m["per_class"][c["term_id"]]["n_cells"] and 0.0 <= c["oof_recall"] <= 1.0 and c["oof_coverage"] is not None
    # on the held-out half, scored over every type present in its truth, keeping the rare types beats leaving them out
    lake = Lake.open(plake.root)
    cells, x = labelled_cells(lake, get_version(lake, "cell:pca@1"), ["pbmc68k-part2"])
    truth = cells["cell_type_ontology_term_id"].to_numpy()
    kept = np.array(load_instrument(lake, rec).predict(x).column("predicted_term_id").to_pylist())
    dropped = np.array(load_instrument(lake, pbmc_base.rec.ref).predict(x).column("predicted_term_id").to_pylist())
    assert len(set(truth)) == 10 and set(kept) - set(dropped) and _macro_f1(truth, kept) > _macro_f1(truth, dropped) + 0.05


@pytest.fixture(scope="module")
def rare_lake(pbmc_base, tmp_path_factory):
    """A copy of the PBMC lake plus ``pbmc68k-rare``: part 2's cells, labelled, with only 3 of
    its B cells and 1 of its hematopoietic precursor cells; PCA URs over all three datasets."""
    import shutil

    import yaml

    from aivc.demo import PBMC_LABEL_MAP, pbmc_counts, pbmc_manifest
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit

    inv = {v: k for k, v in PBMC_LABEL_MAP.items()}
    root = tmp_path_factory.mktemp("rare")
    shutil.copytree(pbmc_base.root, root / "lake", symlinks=True)
    lake = Lake.open(root / "lake")
    part2 = pbmc_counts()[350:700]
    lab = part2.obs["bulk_labels"].to_numpy()
    rows = np.arange(350)
    keep = np.ones(350, bool)
    keep[rows[lab == inv["B cell"]][3:]] = False
    keep[rows[lab == inv["hematopoietic precursor cell"]][1:]] = False
    h5 = root / "pbmc68k-rare.h5ad"
    part2[keep].copy().write_h5ad(h5)
    mf = root / "pbmc68k-rare.yaml"
    mf.write_text(yaml.safe_dump(pbmc_manifest("pbmc68k-rare", labelled=True, title="PBMC part 2 with 3 B cells and 1 precursor"), sort_keys=False))
    res = submit(lake, h5, mf, report_dir=root / "reports")
    assert res.status == "committed", res.errors
    emb = embed_pca(lake, params=PcaParams(n_components=32, n_top_genes=2000))
    rec = train_celltype(lake, emb.ref, datasets=["pbmc68k-rare"])
    return lake, emb, rec, int(keep.sum())


def test_a_three_cell_type_is_kept_and_predicted_on_held_out_cells(rare_lake):
    lake, emb, rec, n = rare_lake
    m = rec.metrics
    classes = {c["term_id"]: c for c in rec.outputs["classes"]}
    # only the 1-cell type is left out, and the record says why; the 3-cell type is in
    assert list(m["excluded_classes"]) == [PRECURSOR] and m["excluded_classes"][PRECURSOR]["n_cells"] == 1
    assert m["excluded_classes"][PRECURSOR]["reason"].startswith("one labelled cell: cross-fitting cannot hold it out")
    assert m["class_cells"][PRECURSOR] == {"label": "hematopoietic precursor cell", "n_cells": 1, "kept": False}
    assert len(classes) == 9 and classes[B_CELL]["n_cells"] == 3 and m["n_train"] == n - 1
    assert m["classes_smaller_than_folds"] == 2 and m["classes_missing_in_training_folds"] == 0  # B cells and part 2's 3 naive CD4 T cells
    # part 1's 46 B cells, never seen: most are predicted B cells, by a decoder that saw 3
    cells, x = labelled_cells(lake, emb, ["pbmc68k-part1"])
    truth = cells["cell_type_ontology_term_id"].to_numpy()
    t = load_instrument(lake, rec).predict(x)
    pred = np.array(t.column("predicted_term_id").to_pylist())
    b = truth == B_CELL
    assert b.sum() == 46 and (pred[b] == B_CELL).mean() > 0.5 and (truth[pred == B_CELL] == B_CELL).mean() > 0.8
    # ... with calibrated uncertainty: the conformal sets hold B for most of them, and B appears in sets of few other cells
    sets = t.column("prediction_set").to_pylist()
    in_set = np.array([B_CELL in s for s in sets])
    assert in_set[b].mean() > 0.6 and in_set[~b].mean() < 0.1
    probs = t.column("probability").to_numpy()
    assert 0.0 < probs[b].min() and probs[b].max() <= 1.0


def test_cli_default_keeps_the_rare_types(rare_lake, cli_app):
    lake, emb, _, _ = rare_lake
    code, out = run_cli(cli_app, "instruments", "train", "celltype", "--embedding", emb.ref, "--datasets", "pbmc68k-rare", "--hidden", "0", "--weight-decay", "0.1", "--lake", str(lake.root))
    assert code == 0 and list(out["metrics"]["excluded_classes"]) == [PRECURSOR]
    assert out["metrics"]["per_class"][B_CELL]["n_cells"] == 3 and out["metrics"]["n_classes"] == 9
    code, out = run_cli(cli_app, "instruments", "train", "celltype", "--embedding", emb.ref, "--datasets", "pbmc68k-rare", "--min-cells", "1", "--lake", str(lake.root))
    assert code == 2 and out["errors"][0]["where"] == "--min-cells" and out["errors"][0]["message"] == "min cells per class must be >= 2, got 1"


def test_folds_give_every_training_split_a_class_smaller_than_the_fold_count():
    y = np.array([0] * 40 + [1] * 30 + [2] * 3 + [3] * 2)
    fold = stratified_folds(y, 5, seed=0)
    for f in range(5):
        assert set(y[fold != f]) == {0, 1, 2, 3}
    assert sorted(fold[y == 2].tolist()) == sorted(set(fold[y == 2].tolist())) and len(set(fold[y == 3].tolist())) == 2
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [0, 6, 0, 0], [0, 0, 6, 0]], dtype=np.float32)
    x = (centres[y] + rng.normal(size=(len(y), 4))).astype(np.float32)
    model = fit_decoder(x, y, ["A", "B", "C", "D"], ["A", "B", "C", "D"], CellTypeConfig(hidden=0, weight_decay=1e-2))
    m = model.fit_metrics
    assert m["classes_smaller_than_folds"] == 2 and m["classes_missing_in_training_folds"] == 0
    assert m["per_class"]["D"]["n_cells"] == 2 and m["per_class"]["C"]["oof_recall"] == 1.0
    fresh = (centres[[2, 3] * 50] + rng.normal(size=(100, 4))).astype(np.float32)
    top = model.predict_arrays(fresh)["top"]
    assert (top == np.array([2, 3] * 50)).mean() > 0.95
    with pytest.raises(UsageError, match="D has 1 labelled cell"):
        fit_decoder(x[:-1], y[:-1], ["A", "B", "C", "D"], ["A", "B", "C", "D"], CellTypeConfig(hidden=0, weight_decay=1e-2))
