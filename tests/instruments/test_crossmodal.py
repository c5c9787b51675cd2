"""The cross-modal protein decoder on real CITE-seq cells: it predicts held-out proteins far better
than their mean, its intervals cover near their nominal level, and it round-trips the registry."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.errors import UsageError
from aivc.instruments.crossmodal import (
    TYPE,
    CrossModalConfig,
    CrossModalDecoder,
    evaluate,
    fit_crossmodal,
    outputs_of,
    protein_targets,
)
from tests.training.data import cite_data

FAST = {"hidden": 0, "weight_decay": 1e-2, "members": 3, "steps": 150, "folds": 3}


def _pca(rna: np.ndarray, k: int = 30) -> np.ndarray:
    x = np.log1p(rna / rna.sum(axis=1, keepdims=True) * 1e4)
    x -= x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return (u[:, :k] * s[:k]).astype(np.float32)


@pytest.fixture(scope="module")
def cells() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per dataset: PCA URs of the RNA, log1p protein targets, protein names (real PBMC, 200 each)."""
    out = {}
    for name in ("pbmc10k", "pbmc5k"):
        d = cite_data.load(name).top_genes(2000)
        out[name] = (_pca(d.rna), protein_targets(d.adt, "log1p"), d.proteins)
    return out


def _split(n: int, seed: int, frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = int(frac * n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def test_decoder_beats_the_mean_prediction_on_held_out_real_cells(cells) -> None:  # noqa: ANN001
    z, y, proteins = cells["pbmc10k"]
    train, test = _split(len(z), 0)
    dec = fit_crossmodal(z[train], y[train], proteins, CrossModalConfig(**FAST))
    got = evaluate(y[test], dec.predict_arrays(z[test]), proteins)
    baseline = evaluate(y[test], {"mean": np.broadcast_to(y[train].mean(axis=0), y[test].shape)}, proteins)
    assert baseline["mean_pearson"] is None  # a constant carries no ranking at all
    assert got["mean_mse"] < 0.6 * baseline["mean_mse"], (got["mean_mse"], baseline["mean_mse"])
    assert got["mean_pearson"] > 0.55  # measured, mean over the 14 proteins
    lineage = [list(proteins).index(p) for p in ("CD3", "CD14", "CD19")]
    assert min(got["per_protein"][proteins[j]]["pearson"] for j in lineage) > 0.8
    oof = dec.fit_metrics["out_of_fold"]
    assert dec.fit_metrics["calibration"] == {"cells": "out-of-fold", "n": len(train)}
    assert abs(oof["mean_pearson"] - got["mean_pearson"]) < 0.15  # out-of-fold is an honest estimate


def test_intervals_cover_held_out_cells_near_their_nominal_level(cells) -> None:  # noqa: ANN001
    for alpha, seeds in ((0.1, (0, 1)), (0.3, (2,))):
        cov = []
        for name in ("pbmc10k", "pbmc5k"):
            z, y, proteins = cells[name]
            for seed in seeds:
                train, test = _split(len(z), seed)
                dec = fit_crossmodal(z[train], y[train], proteins, CrossModalConfig(alpha=alpha, seed=seed, **FAST))
                cov.append(evaluate(y[test], dec.predict_arrays(z[test]), proteins)["mean_coverage"])
        assert abs(np.mean(cov) - (1 - alpha)) < 0.05, (alpha, cov)


def test_held_out_calibration_cells_make_split_conformal_intervals(cells) -> None:  # noqa: ANN001
    z, y, proteins = cells["pbmc5k"]
    train, test = _split(len(z), 3)
    fit, cal = train[: len(train) // 2], train[len(train) // 2 :]
    dec = fit_crossmodal(z[fit], y[fit], proteins, CrossModalConfig(**FAST), calibration=(z[cal], y[cal]))
    assert dec.fit_metrics["calibration"] == {"cells": "held-out cells", "n": len(cal)}
    out = dec.predict_arrays(z[cal])
    scores = np.abs(y[cal] - out["mean"]) / (out["upper"] - out["mean"])
    assert np.all((scores <= 1.0 + 1e-5).mean(axis=0) >= 0.9)  # by construction on the calibration cells
    assert np.all(out["std"] > 0) and np.all(out["upper"] > out["lower"])
    with pytest.raises(UsageError, match="too few"):
        fit_crossmodal(z[fit], y[fit], proteins, CrossModalConfig(**FAST), calibration=(z[cal[:5]], y[cal[:5]]))


def test_model_selection_picks_from_the_grid_by_out_of_fold_error(cells) -> None:  # noqa: ANN001
    z, y, proteins = cells["pbmc10k"]
    dec = fit_crossmodal(z, y, proteins, CrossModalConfig(hidden=None, weight_decay=1e-2, members=2, steps=100, folds=3))
    trials = dec.fit_metrics["model_selection"]
    assert [t["hidden"] for t in trials] == [0, 64]
    best = min(trials, key=lambda t: t["oof_mse_standardized"])
    assert dec.fit_metrics["selected"] == {"hidden": best["hidden"], "weight_decay": best["weight_decay"]}


def test_registered_decoder_loads_and_predicts_the_same(cells, tmp_path) -> None:  # noqa: ANN001
    from aivc.instruments.registry import load_instrument, register_instrument
    from aivc.store.lake import Lake

    z, y, proteins = cells["pbmc10k"]
    dec = fit_crossmodal(z, y, proteins, CrossModalConfig(**FAST))
    lake = Lake.init(tmp_path / "lake")
    rec = register_instrument(
        lake, "adt-from-rna", kind="decoder", type=TYPE, reads="cell:cell_multimodal_vae@1", weights=dec.to_weights(),
        outputs=outputs_of(dec, z.shape[1]), metrics=dec.fit_metrics, config={"alpha": dec.alpha, "target": dec.target},
    )  # fmt: skip
    loaded = load_instrument(lake, rec.ref)
    assert isinstance(loaded, CrossModalDecoder) and loaded.record is not None and loaded.record.ref == "adt-from-rna@1"
    a, b = dec.predict_arrays(z[:7]), loaded.predict_arrays(z[:7])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-5)
    t = loaded.predict(z[:7])
    assert t.schema == loaded.output_schema() and t.num_rows == 7 and t.schema.field("abundance").type.list_size == len(proteins)
    np.testing.assert_allclose(np.array(t.column("abundance").to_pylist()), a["mean"], rtol=1e-6)
    assert rec.outputs["proteins"] == list(proteins)
    with pytest.raises(Exception, match=r"reads \(30,\)-dimensional"):
        loaded.predict(z[:2, :5])


def test_targets_and_config_are_checked() -> None:
    counts = np.array([[0.0, 3.0, 7.0], [1.0, 1.0, 0.0]])
    clr = protein_targets(counts, "clr", mask=np.array([[True, True, False], [True, True, True]]))
    assert clr[0, 0] == pytest.approx(-np.log(4) / 2, rel=1e-5) and clr[0, 2] == pytest.approx(np.log(8) - np.log(4) / 2, rel=1e-5)
    np.testing.assert_allclose(protein_targets(counts).sum(), np.log1p(counts).sum(), rtol=1e-6)
    for bad in ({"alpha": 1.0}, {"members": 0}, {"folds": 1}, {"target": "raw"}):
        with pytest.raises(UsageError):
            CrossModalConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="too few"):
        fit_crossmodal(np.zeros((6, 2)), np.zeros((6, 1)), ["CD3"])
