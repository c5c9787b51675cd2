"""The perturbation manipulator on simulated screens with known effects, and through the lake and CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aivc.errors import NotFoundError, UsageError
from aivc.instruments.manipulator import ManipulatorParams, evaluate
from aivc.instruments.perturbation_fit import fit_manipulator
from aivc.instruments.perturbation_screen import GeneURs, PerturbationScreen, baseline_effects, coexpression_gene_urs, mse, pearson_delta, split_conditions
from benchmarks.grn_sim import GrnParams, make_network, simulate_screen

FAST = ManipulatorParams(steps=400, hidden=64)


@dataclasses.dataclass(frozen=True)
class Fitted:
    sim: Any
    screen: PerturbationScreen
    urs: GeneURs
    train: list[str]
    test: list[str]
    m: Any
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def fitted() -> Fitted:
    sim = simulate_screen(GrnParams(seed=0), n_control=400, n_cells_per_perturbation=40, n_doubles=15)
    screen = PerturbationScreen.from_counts(sim.counts, sim.gene_names, sim.obs["perturbation_targets"])
    urs = coexpression_gene_urs(screen, dim=32)
    train, test = split_conditions(screen.condition_names, 0.25, seed=0)
    m = fit_manipulator(screen, urs, FAST, train_conditions=train)
    return Fitted(sim, screen, urs, train, test, m, evaluate(m, screen, test).summary())


def test_beats_no_change_and_mean_on_held_out_single_knockdowns(fitted: Fitted) -> None:
    s = fitted.summary["single"]
    assert s["manipulator"]["n"] == s["no_change"]["n"] == s["mean"]["n"] == 5
    assert s["manipulator"]["mse"] < 0.8 * s["no_change"]["mse"]
    assert s["manipulator"]["mse"] < 0.8 * s["mean"]["mse"]
    assert s["manipulator"]["pearson_delta"] > 0.45
    assert s["manipulator"]["pearson_delta"] > s["mean"]["pearson_delta"] + 0.2
    assert s["no_change"]["pearson_delta"] == 0.0  # a constant prediction carries no information


def test_combinations_against_the_baselines(fitted: Fitted) -> None:
    c = fitted.summary["combo"]
    assert c["manipulator"]["n"] >= 8 and 1 <= c["additive"]["n"] < c["manipulator"]["n"]  # additive: both singles trained
    assert c["manipulator"]["pearson_delta"] > c["mean"]["pearson_delta"] + 0.2
    assert c["manipulator"]["mse"] < 0.5 * c["no_change"]["mse"]
    assert c["additive"]["pearson_delta"] > 0.8  # near-additive pairs in this network


def test_unseen_targets_drop_by_the_learned_knockdown_efficiency(fitted: Fitted) -> None:
    assert np.all((fitted.m.remaining_fraction > 0.05) & (fitted.m.remaining_fraction < 0.15))  # simulated: 0.1
    z = fitted.m.encode(fitted.screen.control_expression)
    observed = fitted.screen.observed_effects(fitted.test)
    for c in [c for c in fitted.test if ";" not in c]:
        i = fitted.sim.gene_names.index(c)
        pred = fitted.m.predict(z, [c])
        assert observed[c][i] < -1.5 and pred.delta[i] < -1.5, c
        assert abs(pred.delta[i] - observed[c][i]) < 0.6 * abs(observed[c][i]), c  # co-expression URs add some downstream-like drop


def test_additive_baseline_is_exact_on_additive_ground_truth() -> None:
    params = GrnParams(n_genes=40, n_regulators=10, seed=2, response="linear", weight_range=(0.2, 0.5))
    net = make_network(params)
    related = {(a, b) for a in range(10) for b in net.descendants(a) if b < 10}
    pairs = [(a, b) for a in range(10) for b in range(a + 1, 10) if (a, b) not in related and net.descendants(a) & net.descendants(b)]
    sim = simulate_screen(params, n_control=10, n_cells_per_perturbation=5, perturbed=range(10), doubles=pairs, n_truth_cells=400)
    truth = {c: sim.true_effects.loc[c].to_numpy() for c in sim.true_effects.index}
    singles = {c: v for c, v in truth.items() if ";" not in c}
    for c in [c for c in truth if ";" in c]:
        b = baseline_effects(c, singles)
        assert mse(b["additive"], truth[c]) < 1e-20
        assert pearson_delta(b["additive"], truth[c]) == pytest.approx(1.0)
        assert mse(b["mean"], truth[c]) > 1e-3 and mse(b["no_change"], truth[c]) > 1e-3
    assert baseline_effects(next(iter(singles)), singles)["additive"] is None  # singles have no additive baseline


def test_ensemble_spread_is_positive_and_larger_out_of_distribution(fitted: Fitted) -> None:
    rng = np.random.default_rng(0)
    far = rng.normal(size=fitted.urs.dim)
    far *= 4 * np.linalg.norm(fitted.urs.vectors, axis=1).max() / np.linalg.norm(far)
    urs = GeneURs((*fitted.urs.ids, "OOD"), np.vstack([fitted.urs.vectors, far[None]]).astype(np.float32))
    m = dataclasses.replace(fitted.m, gene_urs=urs)
    z = m.encode(fitted.screen.control_expression)
    held = [m.predict(z, [c]) for c in fitted.test if ";" not in c]
    ood = m.predict(z, ["OOD"])
    assert all((p.delta_std > 0).all() and (p.ur_shift_std > 0).all() for p in held)
    in_dist = max(float(p.delta_std.mean()) for p in held)
    assert float(ood.delta_std.mean()) > 2 * in_dist
    assert float(ood.ur_shift_std.mean()) > 2 * max(float(p.ur_shift_std.mean()) for p in held)


def test_prediction_tables_and_the_ur_protocol(fitted: Fitted) -> None:
    m = fitted.m
    z = m.encode(fitted.screen.control_expression)
    single = next(c for c in fitted.test if ";" not in c)
    pred = m.predict(z, [single])
    top = pred.top(10)
    assert list(top.columns) == ["gene_id", "symbol", "control", "perturbed", "delta", "std"]
    assert top["gene_id"].iloc[0] == single  # the knocked-down gene changes most
    assert np.all(np.diff(np.abs(top["delta"].to_numpy())) <= 1e-12)
    assert (pred.perturbed >= 0).all() and np.allclose(pred.perturbed, np.maximum(pred.control + pred.delta, 0))
    moved = m.apply(z[:7], genes=[single])
    assert moved.shape == (7, z.shape[1]) and np.allclose(moved - z[:7], m.member_shifts(z[:7], [single]).mean(axis=0))
    nothing = m.predict(z, [])
    assert np.abs(nothing.delta).mean() < 0.1 * np.abs(pred.delta).mean()  # no target, (almost) no change


def test_same_seed_same_weights(fitted: Fitted) -> None:
    small = ManipulatorParams(steps=20, hidden=16, n_members=2)
    a = fit_manipulator(fitted.screen, fitted.urs, small, train_conditions=fitted.train)
    b = fit_manipulator(fitted.screen, fitted.urs, small, train_conditions=fitted.train)
    c = fit_manipulator(fitted.screen, fitted.urs, dataclasses.replace(small, seed=1), train_conditions=fitted.train)
    wa, wb, wc = a.weights(), b.weights(), c.weights()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not np.array_equal(wa["W0"], wc["W0"])


def test_user_errors_name_what_and_where(fitted: Fitted) -> None:
    with pytest.raises(NotFoundError) as e:
        fitted.urs.embed(["G0001", "NOPE"])
    assert e.value.where == "--genes" and "'NOPE'" in e.value.message
    other = GeneURs(("X1", "X2"), np.eye(2, dtype=np.float32), "gene:other@1")
    with pytest.raises(UsageError) as e:
        fit_manipulator(fitted.screen, other, FAST)
    assert e.value.where == "--gene-ur" and "gene:other@1" in e.value.message
    with pytest.raises(UsageError) as e:
        split_conditions(["A", "B"], 1.5)
    assert e.value.where == "--holdout-fraction"
    with pytest.raises(UsageError) as e:
        ManipulatorParams(n_members=0)
    assert e.value.where == "--n-members"


# -- through the lake, the registry and the CLI -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScreenLake:
    root: Path
    sim: Any
    symbols: list[str]
    n_control: int


@pytest.fixture(scope="module")
def screen_lake(tmp_path_factory: pytest.TempPathFactory) -> ScreenLake:
    """A lake with one simulated screen over real human genes and co-expression gene URs."""
    import yaml

    from aivc.store.features import EmbeddingWriter
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake
    from aivc.store.reference import gene_reference
    from tests.conftest import base_manifest

    root = tmp_path_factory.mktemp("screen")
    ref = gene_reference("homo_sapiens")
    pc = ref[(ref["gene_type"] == "protein_coding") & ~ref["symbol"].duplicated(keep=False)]
    genes = pc.iloc[:: len(pc) // 60].head(60)
    sim = simulate_screen(GrnParams(n_genes=60, n_regulators=12, seed=5), n_control=200, n_cells_per_perturbation=30, n_doubles=6,
                          gene_names=genes["symbol"].tolist())  # fmt: skip
    adata = sim.to_anndata()
    adata.uns.clear()
    adata.obs = adata.obs.assign(
        guide=adata.obs["perturbation_targets"].replace({"control": "non-targeting"}), donor="d1", sex="PATO:0000383", label="Tcell"
    ).drop(columns=["perturbation_targets"])
    adata.write_h5ad(root / "screen.h5ad")
    manifest = base_manifest("sim-screen")
    manifest["obs"]["perturbation_targets"] = {"column": "guide", "label_map": {"non-targeting": "control"}}
    (root / "screen.yaml").write_text(yaml.safe_dump(manifest))
    lake = Lake.init(root / "lake")
    res = submit(lake, root / "screen.h5ad", root / "screen.yaml", report_dir=root / "report")
    assert res.status == "committed", res.errors
    ctrl = (sim.obs["perturbation_targets"] == "control").to_numpy()
    controls = PerturbationScreen.from_counts(sim.counts[ctrl], genes["gene_id"].tolist(), ["control"] * int(ctrl.sum()))
    urs = coexpression_gene_urs(controls, dim=16)
    with EmbeddingWriter(lake, "gene", "coexpr_sim", dim=16, source={"kind": "test", "method": "control-cell correlation"}) as w:
        w.write(list(urs.ids), urs.vectors)
    return ScreenLake(root, sim, genes["symbol"].tolist(), int(ctrl.sum()))


def _cli(app: Any, *args: str) -> tuple[int, dict[str, Any]]:
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, [*args, "--json"])
    return res.exit_code, json.loads(res.stdout)


@pytest.fixture(scope="module")
def trained(screen_lake: ScreenLake) -> dict[str, Any]:
    from aivc.cli import app

    code, out = _cli(app, "manipulator", "train", "--dataset", "sim-screen", "--gene-ur", "gene:coexpr_sim", "--name", "knockdown",
                     "--steps", "300", "--lake", str(screen_lake.root / "lake"))  # fmt: skip
    assert code == 0, out
    return out


def test_cli_train_registers_a_manipulator_with_baselines_and_lineage(screen_lake: ScreenLake, trained: dict[str, Any]) -> None:
    from aivc.instruments.registry import get_instrument, load_instrument
    from aivc.store.lake import Lake

    lake = Lake.open(screen_lake.root / "lake")
    assert (trained["status"], trained["instrument"], trained["kind"], trained["reads"]) == ("registered", "knockdown@1", "manipulator", "gene:coexpr_sim@1")
    rec = get_instrument(lake, "knockdown@1")
    assert (rec.kind, rec.type, rec.config["encoder"], rec.config["cell_ur"]) == ("manipulator", "perturbation", "pca", None)
    assert rec.lineage.dataset == "sim-screen@1" and rec.lineage.extra["gene_ur"]["ref"] == "gene:coexpr_sim@1"
    single = rec.metrics["held_out"]["single"]
    assert set(single) == {"manipulator", "no_change", "mean"} and single["manipulator"]["n"] >= 2
    assert single["manipulator"]["mse"] < single["no_change"]["mse"]
    assert trained["metrics"] == rec.metrics
    m = load_instrument(lake, rec)  # the registry finds the loader; gene URs re-read from the store
    assert m.gene_urs.ref == "gene:coexpr_sim@1" and len(m.gene_ids) == 60 and m.n_members == 5


def test_cli_perturb_prints_top_genes_with_uncertainty(screen_lake: ScreenLake, trained: dict[str, Any]) -> None:
    from aivc.cli import app

    target = screen_lake.symbols[0]  # the first regulator
    lake = str(screen_lake.root / "lake")
    code, out = _cli(app, "perturb", "--instrument", "knockdown@1", "--genes", target.lower(), "--top", "8", "--lake", lake)
    assert code == 0, out
    assert out["genes"][0]["symbol"] == target and out["genes"][0]["gene_id"].startswith("ENSG")
    assert (out["dataset"], out["n_cells"], out["cell_type"]) == ("sim-screen@1", screen_lake.n_control, None)
    assert len(out["top"]) == 8 and all(r["std"] > 0 for r in out["top"])
    row = next(r for r in out["top"] if r["symbol"] == target)
    assert row["delta"] < -1.0 and row["perturbed"] < row["control"]
    code, out2 = _cli(app, "perturb", "--instrument", "knockdown", "--genes", f"{target},{screen_lake.symbols[1]}", "--cell-type", "T cell", "--lake", lake)
    assert code == 0 and out2["n_cells"] == screen_lake.n_control and [g["symbol"] for g in out2["genes"]] == screen_lake.symbols[:2]


@pytest.mark.parametrize(
    ("args", "code", "where", "text"),
    [
        (["--genes", "TP53X"], "PERTURBATION_UNKNOWN_GENE", "--genes TP53X", "closest symbols: TP53"),
        (["--genes", "TP53"], "NOT_FOUND", "--genes TP53", "no UR in gene:coexpr_sim@1"),
        (["--genes", "{0}", "--cell-type", "B cell"], "USAGE", "--cell-type", "'B cell'"),
        (["--genes", "{0}", "--dataset", "nope"], "NOT_FOUND", "nope", "no dataset 'nope'"),
    ],
)
def test_cli_perturb_errors(screen_lake: ScreenLake, trained: dict[str, Any], args: list[str], code: str, where: str, text: str) -> None:
    from aivc.cli import app

    args = [a.format(screen_lake.symbols[0]) for a in args]
    exit_code, out = _cli(app, "perturb", "--instrument", "knockdown@1", *args, "--lake", str(screen_lake.root / "lake"))
    assert exit_code in (1, 2) and out["status"] == "error"
    err = out["errors"][0]
    assert (err["code"], err["where"]) == (code, where) and text in err["message"]
