"""The default cell-vae on the real PBMC cells, as a user gets it: the packaged config
(nothing overridden), trained with Ray Train on the lake, embedded, and its UR's label
structure (15-NN accuracy of the submitted cell types, 5-fold, 3 fold draws) set against the
PCA baseline UR of the same lake.

Measured on this machine (commit 8d905d6): PCA 0.822, default cell-vae 0.813 (the defaults
before it, 20 epochs of batch 256 on raw log1p input: 0.787). The VAE ties PCA within the
split-to-split spread here (0.80-0.825 over training seeds); it does not beat it.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


def knn_accuracy(z: np.ndarray, labels: np.ndarray, *, k: int = 15, folds: int = 5, draws: int = 3) -> float:
    """Mean accuracy of a k-NN majority vote (Euclidean) over stratified folds, averaged over draws."""
    classes, y = np.unique(labels, return_inverse=True)
    sq = (z * z).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * z @ z.T
    scores = []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        fold = np.empty(len(y), dtype=int)
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(y == c))
            fold[idx] = (np.arange(len(idx)) + rng.integers(folds)) % folds
        hits = 0
        for f in range(folds):
            test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
            near = train[np.argsort(d[np.ix_(test, train)], axis=1, kind="stable")[:, :k]]
            votes = np.stack([np.bincount(row, minlength=len(classes)) for row in y[near]])
            hits += int((votes.argmax(1) == y[test]).sum())
        scores.append(hits / len(y))
    return float(np.mean(scores))


def test_knn_accuracy_scores_separated_and_random_labels():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(8, 1, (60, 4))])
    y = np.array(["a"] * 60 + ["b"] * 60)
    assert knn_accuracy(z, y) == 1.0
    assert 0.3 < knn_accuracy(z, rng.permutation(y)) < 0.7


def _vectors(lake, ref):  # noqa: ANN001, ANN202
    """A UR version's vectors and each cell's submitted type, in obs_id order."""
    from aivc.store.features import read_vectors
    from aivc.store.sql import query

    tbl, vec = read_vectors(lake, ref)
    types = dict(query(lake, "SELECT obs_id, cell_type FROM cells").rows)
    ids = np.array(tbl.column("id").to_pylist())
    order = np.argsort(ids)
    return np.asarray(vec, dtype=np.float64)[order], np.array([types[i] for i in ids[order]])


def test_default_cell_vae_keeps_the_label_structure_of_pca_on_real_pbmc(tmp_path, ray_session):  # noqa: ANN001
    from aivc.demo import pbmc_counts, pbmc_manifest
    from aivc.embeddings.model_job import embed_model
    from aivc.embeddings.pca import embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake
    from aivc.training.config import load_config
    from aivc.training.registry import get_model
    from aivc.training.trainer import train

    lake = Lake.init(tmp_path / "lake")
    h5, mf = tmp_path / "pbmc.h5ad", tmp_path / "pbmc.yaml"
    pbmc_counts().write_h5ad(h5)
    mf.write_text(yaml.safe_dump(pbmc_manifest("pbmc-all", labelled=True, title="PBMC, all 700 cells")))
    assert submit(lake, h5, mf).status == "committed"
    pca = embed_pca(lake)

    cfg = load_config(overrides=["name=vae-default"])  # the packaged defaults, only renamed
    res = train(lake, cfg)
    rec = get_model(lake, res.model_ref)
    # epochs "auto" for 630 training cells is 400; early stopping ended the run long before,
    # and the registered weights are those of the best validation epoch
    assert rec.training["stopped_early"] is True and 40 < res.epochs < 400
    best = rec.training["best_epoch"]
    assert rec.metrics["epoch"] == best and best == res.epochs - cfg.optim.early_stopping_patience
    # "better" means by more than 0.1 %: the best epoch is within that of the lowest loss seen
    lowest = min(h["validation_loss"] for h in rec.history if h["epoch"] > 20)
    assert lowest <= rec.metrics["validation_loss"] <= lowest * 1.001
    assert rec.init["encoder_input"] == "lognorm"

    vae = embed_model(lake, res.model_ref)
    z_pca, y_pca = _vectors(lake, pca.ref)
    z_vae, y_vae = _vectors(lake, vae.ref)
    assert len(y_vae) == 700 and (y_pca == y_vae).all()
    acc_pca, acc_vae = knn_accuracy(z_pca, y_pca), knn_accuracy(z_vae, y_vae)
    # the old defaults scored 0.787 against PCA's 0.822 (0.035 behind); the new ones tie
    assert acc_pca > 0.78 and acc_vae >= acc_pca - 0.015, (acc_vae, acc_pca)
