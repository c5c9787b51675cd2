"""Temperature scaling, split conformal sets, novelty: checked on data whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.instruments.calibration import (
    conformal_quantile,
    conformal_scores,
    expected_calibration_error,
    fit_temperature,
    nll,
    prediction_sets,
    softmax,
)
from aivc.errors import UsageError
from aivc.instruments.celltype_fit import fit_decoder, stratified_folds
from aivc.instruments.celltype_model import CellTypeConfig

TERMS = ["CL:0000236", "CL:0000084", "CL:0000623", "CL:0001054"]
LABELS = ["B cell", "T cell", "natural killer cell", "CD14-positive monocyte"]


def _mixture(n: int, seed: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Four overlapping Gaussian classes (unequal sizes), the same centres for every seed."""
    centres = np.random.default_rng(42).normal(size=(4, d)) * 1.2
    rng = np.random.default_rng(seed)
    y = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.fixture(scope="module")
def fresh():
    return _mixture(40_000, seed=2)


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_conformal_sets_cover_fresh_data_at_the_nominal_rate(fresh, score):
    x, y = _mixture(8_000, seed=1)
    model = fit_decoder(x, y, TERMS, LABELS, CellTypeConfig(alpha=0.1, score=score, hidden=0, weight_decay=1e-2))
    xt, yt = fresh
    a = model.predict_arrays(xt)
    coverage = a["members"][np.arange(len(yt)), yt].mean()
    sizes = a["members"].sum(axis=1)
    assert abs(coverage - 0.9) < 0.02, coverage
    assert 1.0 < sizes.mean() < 3.0  # informative: the classes overlap, but not entirely
    if score == "aps":
        assert sizes.min() >= 1  # APS keeps the top class
    assert model.fit_metrics["n_calibration"] == 8000  # cross-fitting: every labelled cell calibrates, out of fold
    assert abs(model.fit_metrics["calibration_coverage"] - 0.9) < 0.01


def test_sets_shrink_as_alpha_grows(fresh):
    x, y = _mixture(8_000, seed=1)
    xt, yt = fresh
    sizes, covs = [], []
    for alpha in (0.05, 0.2):
        a = fit_decoder(x, y, TERMS, LABELS, CellTypeConfig(alpha=alpha)).predict_arrays(xt)
        sizes.append(a["members"].sum(axis=1).mean())
        covs.append(a["members"][np.arange(len(yt)), yt].mean())
    assert sizes[0] > sizes[1] and covs[0] > 0.93 and 0.77 < covs[1] < 0.83


def test_quantile_and_sets_on_small_examples():
    assert conformal_quantile(np.arange(1, 10) / 10, alpha=0.2) == 0.8  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(np.array([0.1, 0.2]), alpha=0.1) == np.inf  # too few: every class
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(conformal_scores(p, np.array([1, 2]), "lac"), [0.8, 0.75], rtol=1e-6)
    np.testing.assert_allclose(conformal_scores(p, np.array([1, 2]), "aps"), [0.7, 0.75], rtol=1e-6)
    assert prediction_sets(p, 0.85, "lac").tolist() == [[True, True, False], [True, True, True]]
    assert prediction_sets(p, 0.5, "aps").tolist() == [[True, False, False], [True, True, False]]
    assert prediction_sets(p, 0.0, "aps").tolist() == [[True, False, False], [True, False, False]]
    assert prediction_sets(p, np.inf, "lac").all()


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 5000)
    logits = 8 * np.eye(3)[y] + 4 * rng.normal(size=(5000, 3))  # right ~85 %, claims ~99 %
    t = fit_temperature(logits, y)
    assert t > 1.5
    assert nll(logits, y, t) < nll(logits, y)
    before, after = expected_calibration_error(softmax(logits), y), expected_calibration_error(softmax(logits, t), y)
    assert before > 0.05 and after < 0.03
    well = np.log(np.array([[0.8, 0.1, 0.1]] * 10))  # a calibrated model keeps T near 1
    assert fit_temperature(well, np.array([0] * 8 + [1, 2])) == pytest.approx(1.0, abs=0.15)


def test_novelty_flags_far_cells_only(fresh):
    x, y = _mixture(8_000, seed=1)
    model = fit_decoder(x, y, TERMS, LABELS, CellTypeConfig())
    xt, _ = fresh
    rate = model.predict_arrays(xt)["abstain"].mean()
    assert 0.003 < rate < 0.025  # threshold: the calibration 99th percentile
    far = model.predict_arrays(xt[:500] + 12.0)
    assert far["abstain"].all()


def test_predict_table_is_consistent(fresh):
    x, y = _mixture(8_000, seed=1)
    model = fit_decoder(x, y, TERMS, LABELS, CellTypeConfig(score="aps"))
    xt, _ = fresh
    t = model.predict(xt[:2000])
    a = model.predict_arrays(xt[:2000])
    sets = t.column("prediction_set").to_pylist()
    assert t.column("set_size").to_pylist() == [len(s) for s in sets]
    assert all(s[0] == p for s, p in zip(sets, t.column("predicted_term_id").to_pylist(), strict=True))  # most probable first
    order_ok = [
        all(a["probs"][i, TERMS.index(s[j])] >= a["probs"][i, TERMS.index(s[j + 1])] for j in range(len(s) - 1)) for i, s in enumerate(sets)
    ]
    assert all(order_ok)
    assert t.column("predicted_label").to_pylist()[:5] == [LABELS[k] for k in a["top"][:5]]
    np.testing.assert_allclose(t.column("probability").to_numpy(), a["probs"].max(axis=1), rtol=1e-6)


def test_folds_are_stratified_and_balanced():
    y = np.repeat([0, 1, 2], [103, 7, 2])
    f = stratified_folds(y, 5, seed=3)
    assert np.bincount(f).tolist() == [23, 23, 22, 22, 22]  # 112 cells, dealt round-robin
    for k, n in ((0, 103), (1, 7), (2, 2)):
        per_fold = np.bincount(f[y == k], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1
    for fold in range(5):  # every training split (all folds but one) keeps every class
        assert set(y[f != fold]) == {0, 1, 2}
    assert (stratified_folds(y, 5, seed=3) == f).all() and not (stratified_folds(y, 5, seed=4) == f).all()


def test_cross_validation_picks_a_hidden_layer_when_the_classes_are_not_linearly_separable():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(1200, 2)).astype(np.float32)
    y = ((x[:, 0] * x[:, 1]) > 0).astype(np.int64)  # XOR: no line separates it
    model = fit_decoder(x, y, TERMS[:2], LABELS[:2], CellTypeConfig(steps=400))
    trials = model.fit_metrics["model_selection"]
    assert [(t["hidden"], t["weight_decay"]) for t in trials] == [(h, w) for h in (0, 64) for w in (1e-3, 1e-2, 1e-1)]
    linear = max(t["macro_f1"] for t in trials if t["hidden"] == 0)
    assert model.fit_metrics["selected"]["hidden"] == 64 and linear < 0.7
    assert model.fit_metrics["calibration"]["macro_f1"] == max(t["macro_f1"] for t in trials) > 0.9
    xt = rng.uniform(-1, 1, size=(2000, 2)).astype(np.float32)
    assert (model.predict_arrays(xt)["top"] == ((xt[:, 0] * xt[:, 1]) > 0)).mean() > 0.9
    fixed = fit_decoder(x, y, TERMS[:2], LABELS[:2], CellTypeConfig(hidden=0, weight_decay=1e-2))
    assert [(t["hidden"], t["weight_decay"]) for t in fixed.fit_metrics["model_selection"]] == [(0, 1e-2)]


def test_a_type_with_one_labelled_cell_is_refused():
    x, y = _mixture(400, seed=5)
    y[np.flatnonzero(y == 3)[1:]] = 0  # type 3 keeps one cell: no training fold would hold it
    with pytest.raises(UsageError, match=r"cell type CL:0001054 has 1 labelled cell\(s\); cross-fitting needs at least 2"):
        fit_decoder(x, y, TERMS, LABELS, CellTypeConfig(hidden=0, weight_decay=1e-2))
