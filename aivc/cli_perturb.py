"""CLI for perturbation manipulators: ``aivc manipulator train`` and ``aivc perturb``.

``aivc manipulator train --dataset SCREEN --gene-ur gene:NAME@V [--cell-ur cell:NAME@V] --name NAME``
trains a manipulator on a perturbation screen, prints its held-out metrics next to the baselines
and registers it as an instrument (kind ``manipulator``; ``aivc instruments list|show`` see it).

``aivc perturb --instrument NAME@V --genes G1[,G2] [--dataset DS] [--cell-type CT]`` knocks the
genes down in silico in a dataset's control cells and prints the most changed genes with their
ensemble standard deviation.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, print_table, run_command, typer_app
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json

manipulator_app = typer_app(help="Perturbation manipulators: train on a screen and register as an instrument.")


def _fmt(x: Any) -> str:
    return "" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


@manipulator_app.command("train")
def train(
    dataset: Annotated[str, typer.Option("--dataset", help="The perturbation screen, DATASET or DATASET@VERSION.")],
    gene_ur: Annotated[str, typer.Option("--gene-ur", help="Gene UR version, gene:NAME@VERSION (or gene:NAME for the latest).")],
    cell_ur: Annotated[Optional[str], typer.Option("--cell-ur", help="Cell UR version to read (default: a PCA fitted on the screen).")] = None,
    name: Annotated[str, typer.Option("--name", help="Instrument name.")] = "perturbation",
    holdout_fraction: Annotated[float, typer.Option("--holdout-fraction", help="Fraction of conditions held out for evaluation.")] = 0.2,
    n_components: Annotated[int, typer.Option("--n-components", help="PCA dimensions (when no --cell-ur).")] = 32,
    n_top_genes: Annotated[int, typer.Option("--n-top-genes", help="Most variable genes modelled (targets always kept).")] = 2000,
    members: Annotated[int, typer.Option("--members", help="Ensemble members (uncertainty).")] = 5,
    steps: Annotated[int, typer.Option("--steps", help="Optimisation steps per member.")] = 600,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the training.")] = 0,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train, evaluate against baselines and register a perturbation manipulator."""

    def body() -> int:
        from aivc.instruments.manipulator import ManipulatorParams
        from aivc.instruments.perturb import train_manipulator
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        params = ManipulatorParams(n_components=n_components, n_top_genes=n_top_genes, n_members=members, steps=steps, seed=seed)
        progress = make_progress(json_)
        try:
            res = train_manipulator(
                Lake.open(lake), name, dataset=dataset, gene_ur=gene_ur, cell_ur=cell_ur, params=params,
                holdout_fraction=holdout_fraction, progress=progress,
            )  # fmt: skip
        finally:
            progress.close()
        rec = res.record
        if json_:
            _print_json({"status": "registered", "instrument": rec.ref, "kind": rec.kind, "type": rec.type, "reads": rec.reads,
                         "cell_ur": rec.config.get("cell_ur"), "metrics": rec.metrics, "lineage": rec.lineage.to_record()})  # fmt: skip
            return 0
        held = rec.metrics["held_out"]
        rows = [
            [group, method, v["n"], _fmt(v["pearson_delta"]), _fmt(v["mse"])]
            for group in sorted(held)
            for method, v in sorted(held[group].items(), key=lambda kv: kv[0] != "manipulator")
        ]
        print_table(("held out", "method", "conditions", "pearson_delta", "mse"), rows, title=f"{rec.ref}: held-out conditions vs baselines")
        _console().print(
            f"registered {rec.ref} (manipulator) reading {rec.reads}; trained on {rec.metrics['n_train_conditions']} conditions of "
            f"{rec.lineage.dataset}",
        )
        return 0

    run_command(json_, debug, body)


def perturb(
    instrument: Annotated[str, typer.Option("--instrument", help="Manipulator NAME or NAME@VERSION.")],
    genes: Annotated[str, typer.Option("--genes", help="Comma-separated genes to knock down (symbols or Ensembl ids).")],
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Cells of this DATASET or DATASET@VERSION (default: the training screen); its control cells if it is a screen.")] = None,
    cell_type: Annotated[Optional[str], typer.Option("--cell-type", help="Only cells of this cell type (label or CL id).")] = None,
    top: Annotated[int, typer.Option("--top", help="Genes to show.")] = 20,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """In-silico knockdown: the most changed genes of the chosen cells, with ensemble uncertainty."""

    def body() -> int:
        from aivc.instruments.perturb import perturb as run

        from aivc.store.lake import Lake

        names = [g.strip() for g in genes.split(",") if g.strip()]
        res = run(Lake.open(lake), instrument, names, dataset=dataset, cell_type=cell_type)
        out = res.to_dict(top)
        if json_:
            _print_json(out)
            return 0
        title = (
            f"{res.instrument}: knockdown of {' + '.join(g['symbol'] for g in res.genes)} in {out['n_cells']} cells of {res.dataset}"
            + (f" ({cell_type})" if cell_type else "")
        )
        rows = [[r["symbol"], r["gene_id"], _fmt(r["control"]), _fmt(r["perturbed"]), f"{r['delta']:+.3f} ± {r['std']:.3f}"] for r in out["top"]]
        print_table(("gene", "gene_id", "control", "perturbed", "change ± std"), rows, title=title)
        _console().print(f"UR shift norm {out['ur_shift_norm']:.3f} (ensemble std {out['ur_shift_std_mean']:.3f} per dimension)")
        return 0

    run_command(json_, debug, body)


def register(app: typer.Typer) -> None:
    app.add_typer(manipulator_app, name="manipulator")
    app.command("perturb")(perturb)
