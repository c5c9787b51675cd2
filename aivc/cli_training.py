"""CLI for training and the model registry: ``aivc train cell-vae|cell-transformer|cell-multimodal-vae|niche-gnn``
and ``aivc models list|show``."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, brief, print_record, print_table, run_command, typer_app
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json

train_app = typer_app(help="Train scale models on the lake with Ray Train and register them.")
models_app = typer_app(help="Registered models: NAME@VERSION under <lake>/models/.")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _epoch_printer(total: int | str, model_type: str) -> Any:
    """Prints each epoch's metrics; ``show.total`` (``auto`` until the run resolves it) is the
    epoch count it prints against."""

    def show(m: dict[str, Any]) -> None:
        total = show.total  # type: ignore[attr-defined]
        val = f" validation_loss={_fmt(m['validation_loss'])}" if m.get("validation_loss") is not None else ""
        parts = f" (reconstruction {_fmt(m['train_reconstruction'])}, kl {_fmt(m['train_kl'])})" if model_type in ("cell-vae", "cell-multimodal-vae") else ""
        wait = f", data wait {m['data_wait_fraction']:.0%}" if m.get("data_wait_fraction") is not None else ""
        sys.stderr.write(f"epoch {m['epoch']}/{total} train_loss={_fmt(m['train_loss'])}{parts}{val} [{m['seconds']:.1f}s{wait}]\n")
        sys.stderr.flush()

    show.total = total  # type: ignore[attr-defined]
    return show


def _planned(s: dict[str, Any]) -> str:
    if not s.get("epochs"):
        return ""
    warm = f", KL warm-up {s['kl_warmup_epochs']}" if s.get("kl_warmup_epochs") else ""
    return f"; up to {s['epochs']} epochs{warm}"


ConfigOpt = Annotated[Optional[str], typer.Option("--config", help="Config YAML (default: the packaged schemas/configs/<model type>.yaml).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable).")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Ray Train workers (data-parallel, 1 CPU each).")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (default: start Ray locally).")]
RunIdOpt = Annotated[Optional[str], typer.Option("--run-id", help="Run id; an existing unfinished run with this id is resumed from its latest checkpoint.")]


def _train(model_type: str, config: str | None, set_: list[str] | None, workers: int, ray_address: str | None, run_id: str | None, lake: str | None, json_: bool, debug: bool) -> None:
    """What every ``aivc train <model type>`` command does: config, Ray Train run, registration."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.training.config import load_config
        from aivc.training.trainer import train

        lk = Lake.open(lake)
        cfg = load_config(config, model_type=model_type, overrides=set_ or [])

        printer = None if json_ else _epoch_printer(cfg.optim.epochs, cfg.model_type)

        def started(s: dict[str, Any]) -> None:
            if printer is not None and s.get("epochs"):
                printer.total = s["epochs"]
            what = f"resuming run {s['run_id']} after epoch {s['resumed_from_epoch']}" if s["resumed_from_epoch"] else f"run {s['run_id']}"
            tokens = f" with URs from {s['gene_ur']}" if s.get("gene_ur") else ""
            sys.stderr.write(
                f"{what}: {s['n_train']} training + {s['n_validation']} validation cells, {s['n_genes']} genes{tokens}, "
                f"{len(s['batches'])} batches; {s['workers']} Ray Train worker(s){_planned(s)}\n"
            )

        res = train(
            lk,
            cfg,
            workers=workers,
            ray_address=ray_address,
            run_id=run_id,
            on_epoch=printer,
            on_start=None if json_ else started,
        )
        if json_:
            _print_json({"status": "registered", "model": res.model_ref, "run_id": res.run_id, "epochs": res.epochs, "resumed_from_epoch": res.resumed_from_epoch, "metrics": res.metrics})
        else:
            val = res.metrics.get("validation_loss")
            extra = f", validation_loss {_fmt(val)}" if val is not None else ""
            stop = res.metrics.get("best_epoch")
            extra += f"; weights of epoch {stop}, the best validation loss" if stop else ""
            _console().print(f"registered {res.model_ref} (run {res.run_id}, {res.epochs} epochs, train_loss {_fmt(res.metrics['train_loss'])}{extra})")
        return 0

    run_command(json_, debug, body)


@train_app.command("cell-vae")
def cell_vae(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    run_id: RunIdOpt = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the cell-vae baseline (NB VAE with batch covariate) and register it as NAME@VERSION."""
    _train("cell-vae", config, set_, workers, ray_address, run_id, lake, json_, debug)


@train_app.command("cell-transformer")
def cell_transformer(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    run_id: RunIdOpt = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the cell-transformer (tokens = gene URs, needs --set gene_ur=gene:NAME@VERSION) and register it."""
    _train("cell-transformer", config, set_, workers, ray_address, run_id, lake, json_, debug)


@train_app.command("cell-multimodal-vae")
def cell_multimodal_vae(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    run_id: RunIdOpt = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the multimodal cell model (RNA + ADT/ATAC, product of experts; cells without a
    measurement have it masked) and register it. Choose measurements with e.g.
    --set "measurements=[{name: ADT, n_top: 20}]"."""
    _train("cell-multimodal-vae", config, set_, workers, ray_address, run_id, lake, json_, debug)


@train_app.command("niche-gnn")
def niche_gnn(
    cells: Annotated[str, typer.Option("--cells", help="Cell UR version the niches are built from, CELL:NAME@VERSION (its spatial datasets' located cells).")],
    name: Annotated[str, typer.Option("--name", help="Model name (registered as NAME@VERSION).")] = "niche-gnn",
    graph: Annotated[Optional[str], typer.Option("--graph", help="Neighbour rule: radius:R, knn:K, delaunay or delaunay:R (R in location units); default: Visium's 6 touching spots, else knn:8.")] = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated spatial dataset ids to train on (default: every located dataset of --cells).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Model setting KEY=VALUE, e.g. --set epochs=50 or --set hops=1,2,4 (repeatable; see NicheModelConfig).")] = None,
    workers: WorkersOpt = 1,
    ray_address: RayAddressOpt = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Run id (default: NAME-<time>).")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train the niche model (a GNN over the spatial graph of cell URs, self-supervised by masked
    neighbours and neighbour contrast) with Ray Train and register it; `aivc embed NAME@V` then
    publishes niche:NAME@V."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.training.niche_train import parse_graph, parse_settings, train_niche

        cfg = parse_settings(set_)
        spec = parse_graph(graph)

        printer = None if json_ else _epoch_printer(cfg.optim.epochs, cfg.model_type)

        def started(s: dict[str, Any]) -> None:
            if printer is not None and s.get("epochs"):
                printer.total = s["epochs"]
            g = s["graph"]
            sys.stderr.write(
                f"run {s['run_id']}: {s['n_cells']:,} located cells of {s['cells']} ({s['n_features']} dims) in {len(s['datasets'])} dataset(s); "
                f"{g['rule']} graph, mean degree {g['mean_degree']:.1f}, {g['n_isolated']} isolated; {s['workers']} Ray Train worker(s)\n"
            )

        def epoch(m: dict[str, Any]) -> None:
            sys.stderr.write(f"epoch {m['epoch']}/{cfg.epochs} loss={_fmt(m['loss'])} (contrastive {_fmt(m['contrastive'])}, reconstruction {_fmt(m['reconstruction'])}) [{m['seconds']:.1f}s]\n")

        ds = [d.strip() for d in datasets.split(",") if d.strip()] if datasets else None
        res = train_niche(
            Lake.open(lake), cells, name=name, graph=spec, datasets=ds, config=cfg, workers=workers, ray_address=ray_address,
            run_id=run_id, on_start=None if json_ else started, on_epoch=None if json_ else epoch,
        )  # fmt: skip
        if json_:
            _print_json({"status": "registered", "model": res.model_ref, "run_id": res.run_id, "epochs": res.epochs, "metrics": res.metrics})
        else:
            _console().print(f"registered {res.model_ref} (run {res.run_id}, {res.epochs} epochs, loss {_fmt(res.metrics['loss'])}); publish its niche URs with: aivc embed {res.model_ref}")
        return 0

    run_command(json_, debug, body)


def _summary(r: Any) -> dict[str, Any]:
    return {
        "ref": r.ref,
        "name": r.name,
        "version": r.version,
        "model_type": r.model_type,
        "n_genes": len(r.gene_ids),
        "latent_dim": r.init.get("latent_dim"),
        "datasets": list(r.lineage.datasets),
        "epochs": r.training.get("epochs"),
        "validation_loss": r.metrics.get("validation_loss"),
        "created_at": r.created_at,
    }


@models_app.command("list")
def list_(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List registered model versions."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.training.registry import list_models

        rows = [_summary(r) for r in list_models(Lake.open(lake))]
        if json_:
            _print_json(rows)
            return 0
        cols = ("ref", "model_type", "n_genes", "latent_dim", "datasets", "epochs", "validation_loss", "created_at")
        print_table(cols, [(r["ref"], r["model_type"], r["n_genes"], r["latent_dim"], ", ".join(r["datasets"]), r["epochs"], _fmt(r["validation_loss"]), r["created_at"]) for r in rows], title="models")
        return 0

    run_command(json_, debug, body)


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION], e.g. cell-vae@1.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show one model version: config, genes, encodings, metrics, lineage (--json: the full record)."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.training.registry import get_model

        m = get_model(Lake.open(lake), ref)
        rec = m.to_record() | {"ref": m.ref}
        if json_:
            _print_json(rec)
            return 0
        fields = {
            "created": m.created_at,
            "init": m.init,
            "genes": brief(list(m.gene_ids)),
            "encodings": m.encodings,
            "config": m.config,
            "training": m.training,
            "history": f"{len(m.history)} epochs",
            "lineage": m.lineage.to_record(),
            "weights": f"{m.weights} (sha256 {m.weights_sha256})",
        }
        reads = f"{m.init.get('n_features')}-dim cell URs of {m.lineage.embedding}" if m.model_type == "niche-gnn" else f"{len(m.gene_ids)} genes"
        print_record(f"{m.ref}: {m.model_type}, {reads}", fields, metrics=m.metrics, full=f"aivc models show {m.ref} --json")
        return 0

    run_command(json_, debug, body)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.add_typer(models_app, name="models")
