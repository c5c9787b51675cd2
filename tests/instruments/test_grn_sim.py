"""The GRN screen simulator: deterministic, and its ground truth follows the network."""

from __future__ import annotations

import numpy as np
import pytest

from aivc.errors import UsageError
from benchmarks.grn_sim import GrnParams, lognormalize, make_network, simulate_screen, steady_state


@pytest.fixture(scope="module")
def sim():  # noqa: ANN201
    return simulate_screen(GrnParams(n_genes=60, n_regulators=12, seed=7), n_control=300, n_cells_per_perturbation=60, n_doubles=6)


def test_same_seed_same_screen_other_seed_differs(sim) -> None:  # noqa: ANN001
    again = simulate_screen(GrnParams(n_genes=60, n_regulators=12, seed=7), n_control=300, n_cells_per_perturbation=60, n_doubles=6)
    assert np.array_equal(again.counts, sim.counts)
    assert again.obs.equals(sim.obs)
    assert np.array_equal(again.network.weights, sim.network.weights)
    assert again.true_effects.equals(sim.true_effects)
    other = simulate_screen(GrnParams(n_genes=60, n_regulators=12, seed=8), n_control=300, n_cells_per_perturbation=60, n_doubles=6)
    assert not np.array_equal(other.network.weights, sim.network.weights)
    assert not np.array_equal(other.counts, sim.counts)


def test_layout_of_the_screen(sim) -> None:  # noqa: ANN001
    obs = sim.obs
    assert sim.counts.shape == (300 + 60 * (12 + 6), 60)
    assert sim.counts.dtype == np.int64 and sim.counts.min() >= 0
    assert (obs["perturbation_targets"] == "control").sum() == 300
    assert obs["n_targets"].value_counts().to_dict() == {0: 300, 1: 12 * 60, 2: 6 * 60}
    assert set(obs["perturbation_targets"]) == {"control", *sim.true_effects.index}
    doubles = [c for c in sim.true_effects.index if ";" in c]
    assert len(doubles) == 6 and all(c == ";".join(sorted(c.split(";"))) for c in doubles)
    # library sizes vary around the median asked for
    assert 3500 < np.median(sim.counts.sum(axis=1)) < 7000
    adata = sim.to_anndata()
    assert adata.shape == sim.counts.shape and adata.obs["perturbation_targets"].iloc[0] == "control"
    assert np.array_equal(adata.X.toarray(), sim.counts)


def test_knockdown_changes_exactly_the_target_and_its_descendants(sim) -> None:  # noqa: ANN001
    f = sim.params.knockdown_fraction
    genes = sim.gene_names
    checked_children = 0
    for target in [c for c in sim.true_effects.index if ";" not in c]:
        effect = sim.true_effects.loc[target]
        down = sim.descendants(target)
        untouched = [g for g in genes if g not in down and g != target]
        assert (effect[untouched] == 0.0).all(), target  # common random numbers: exactly unchanged
        assert (effect[list(down)].abs() > 1e-6).all(), target
        # the target itself is scaled by the knockdown fraction
        assert effect[target] == pytest.approx((f - 1.0) * sim.true_means.loc["control", target], rel=1e-9)
        # a child with this single regulator moves with the sign of the edge (activator: down)
        t = genes.index(target)
        for child in np.flatnonzero(sim.network.weights[t]):
            if len(sim.network.parents(int(child))) == 1:
                assert np.sign(effect.iloc[child]) == -np.sign(sim.network.weights[t, child])
                checked_children += 1
    assert checked_children >= 5


def test_observed_counts_follow_the_ground_truth(sim) -> None:  # noqa: ANN001
    L = lognormalize(sim.counts)
    labels = sim.obs["perturbation_targets"].to_numpy()
    ctrl = L[labels == "control"].mean(axis=0)
    observed = np.stack([L[labels == c].mean(axis=0) - ctrl for c in sim.true_lognorm_effects.index])
    truth = sim.true_lognorm_effects.to_numpy()
    assert np.corrcoef(observed.ravel(), truth.ravel())[0, 1] > 0.9
    for c in [c for c in sim.true_lognorm_effects.index if ";" not in c]:
        assert observed[list(sim.true_lognorm_effects.index).index(c), sim.gene_names.index(c)] < -1.0  # 10% left: ~log(0.1)


def test_linear_response_adds_up_and_hill_response_interacts() -> None:
    params = GrnParams(n_genes=40, n_regulators=10, seed=2, response="linear", weight_range=(0.2, 0.5))
    net = make_network(params)  # the network simulate_screen draws for this seed
    ancestors = {g: {a for a in range(40) if g in net.descendants(a)} for g in range(10)}
    unrelated = [(a, b) for a in range(10) for b in range(a + 1, 10) if a not in ancestors[b] and b not in ancestors[a]]
    shared = [(a, b) for a, b in unrelated if net.descendants(a) & net.descendants(b)]
    assert len(shared) >= 3
    linear = simulate_screen(params, n_control=20, n_cells_per_perturbation=5, perturbed=range(10), doubles=shared, n_truth_cells=500)
    hill = simulate_screen(
        GrnParams(**{**params.__dict__, "response": "hill", "weight_range": (1.0, 2.0)}),
        n_control=20, n_cells_per_perturbation=5, perturbed=range(10), doubles=shared, n_truth_cells=500,
    )  # fmt: skip
    gaps = {}
    for name, s in (("linear", linear), ("hill", hill)):
        eff = s.true_effects
        gaps[name] = max(
            float(np.abs(eff.loc[f"{s.gene_names[a]};{s.gene_names[b]}"] - eff.loc[s.gene_names[a]] - eff.loc[s.gene_names[b]]).max())
            for a, b in shared
        )
    assert gaps["linear"] < 1e-9
    assert gaps["hill"] > 1e-2


def test_steady_state_without_noise_is_the_baseline() -> None:
    net = make_network(GrnParams(n_genes=20, n_regulators=5, seed=1), np.random.default_rng(3))
    assert np.allclose(steady_state(net, np.ones((2, 20)))[0], net.baseline)


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [({"n_regulators": 0}, "GrnParams.n_regulators"), ({"knockdown_fraction": 1.0}, "GrnParams.knockdown_fraction"),
     ({"response": "cubic"}, "GrnParams.response"), ({"dispersion": 0.0}, "GrnParams.dispersion")],
)  # fmt: skip
def test_bad_parameters_are_usage_errors(kwargs: dict, where: str) -> None:
    with pytest.raises(UsageError) as e:
        GrnParams(**kwargs)
    assert e.value.where == where and str(next(iter(kwargs.values()))) in e.value.message
