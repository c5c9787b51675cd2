"""CLI for Virtual Instruments: ``aivc instruments train|list|show|predictions|report`` and ``aivc annotate``."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, print_record, print_table, run_command, typer_app
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json

instruments_app = typer_app(help="Virtual Instruments (decoders, manipulators): NAME@VERSION under <lake>/instruments/.")
train_app = typer_app(help="Train an instrument over an embedding version (cell URs; niche URs for niche-domain) and register it.")
instruments_app.add_typer(train_app, name="train")


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def instrument_summary(r: Any) -> dict[str, Any]:
    m = r.metrics
    return {
        "ref": r.ref, "name": r.name, "version": r.version, "kind": r.kind, "type": r.type, "reads": r.reads,
        "classes": len(r.outputs.get("classes", [])), "alpha": r.outputs.get("alpha"), "created_at": r.created_at,
        "calibration_macro_f1": (m.get("calibration") or {}).get("macro_f1"), "ece_before": m.get("ece_before"), "ece_after": m.get("ece_after"),
    }  # fmt: skip


def prediction_summary(v: Any) -> dict[str, Any]:
    return {
        "ref": v.ref, "instrument_ref": v.instrument_ref, "embedding_ref": v.embedding_ref, "datasets": list(v.datasets), "n_rows": v.n_rows,
        "created_at": v.created_at, "sql_view": v.view_name, "summary": v.summary, "job": v.job,
    }  # fmt: skip


@train_app.command("celltype")
def train_celltype(
    embedding: Annotated[str, typer.Option("--embedding", help="Cell embedding version to read, CELL:NAME@VERSION, e.g. cell:pca@1.")],
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated dataset ids whose labelled cells train it (default: all in the embedding).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Conformal error rate: sets contain the true type with probability about 1 - alpha.")] = 0.1,
    name: Annotated[str, typer.Option("--name", help="Instrument name.")] = "celltype",
    score: Annotated[str, typer.Option("--score", help="Conformal score: lac (smallest sets) or aps (adaptive).")] = "lac",
    hidden: Annotated[Optional[int], typer.Option("--hidden", help="Hidden units of the one hidden layer (0: multinomial logistic regression); default: chosen by cross-validation from 0 and 64.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 strength; default: chosen by cross-validation from 0.001, 0.01, 0.1.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-fitting folds: out-of-fold predictions select the model and calibrate it.")] = 5,
    min_cells: Annotated[int, typer.Option("--min-cells", help="Cell types with fewer labelled cells are excluded (default 2: rare types are kept; a 1-cell type cannot be cross-fitted).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the optimiser.")] = 0,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train, calibrate (temperature, conformal, novelty) and register a cell-type decoder."""

    def body() -> int:
        from aivc.instruments.celltype import train_celltype as train
        from aivc.instruments.celltype_model import CellTypeConfig
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        cfg = CellTypeConfig(alpha=alpha, score=score, hidden=hidden, weight_decay=weight_decay, folds=folds, min_cells_per_class=min_cells, seed=seed)  # type: ignore[arg-type]
        progress = make_progress(json_)
        try:
            rec = train(Lake.open(lake), embedding, datasets=_csv(datasets), name=name, config=cfg, progress=progress)
        finally:
            progress.close()
        if json_:
            _print_json({"status": "registered", **instrument_summary(rec), "metrics": rec.metrics, "lineage": rec.lineage.to_record()})
            return 0
        m = rec.metrics
        con = _console()
        con.print(
            f"registered {rec.ref}: {m['n_classes']} cell types from {m['n_train']} labelled cells of {rec.reads} "
            f"(hidden={m['selected']['hidden']}, weight decay {m['selected']['weight_decay']:g}, chosen over {m['folds']} folds); "
            f"out-of-fold macro-F1 {m['calibration']['macro_f1']:.3f}, ECE {m['ece_before']:.3f} -> {m['ece_after']:.3f} (T={m['temperature']:.2f}), "
            f"out-of-fold conformal coverage {m['calibration_coverage']:.3f} with mean set size {m['calibration_mean_set_size']:.2f} at alpha={alpha:g}",
            highlight=False,
        )
        for t, x in m["excluded_classes"].items():
            con.print(f"  excluded {x['label']} ({t}): {x['n_cells']} labelled cells < {min_cells}", highlight=False)
        return 0

    run_command(json_, debug, body)


@train_app.command("niche-domain")
def train_niche_domain(
    embedding: Annotated[str, typer.Option("--embedding", help="Niche embedding version to read, NICHE:NAME@VERSION, e.g. niche:niche_gnn@1.")],
    label: Annotated[Optional[str], typer.Option("--label", help="The obs column (as submitted) holding each cell's tissue domain; with --labels, the domain column of the file (default domain).")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="CSV/TSV/Parquet of domains: niche_id or obs_id (or barcode + dataset_id) and the domain column.")] = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated dataset ids whose labelled niches train it (default: all in the embedding).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Conformal error rate: sets contain the true domain with probability about 1 - alpha.")] = 0.1,
    name: Annotated[str, typer.Option("--name", help="Instrument name.")] = "niche-domain",
    score: Annotated[str, typer.Option("--score", help="Conformal score: lac (smallest sets) or aps (adaptive).")] = "lac",
    hidden: Annotated[Optional[int], typer.Option("--hidden", help="Hidden units (0: multinomial logistic regression); default chosen by cross-validation.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 strength; default chosen by cross-validation from 0.001, 0.01, 0.1.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-fitting folds.")] = 5,
    cv: Annotated[str, typer.Option("--cv", help="spatial (default: folds of spatial blocks, for predicting new slides or regions) or random (niche by niche, for niches interleaved with the labelled ones).")] = "spatial",
    block_size: Annotated[Optional[float], typer.Option("--block-size", help="--cv spatial: side of a block in the locations' units (spatial_cells x, y); default a third of each dataset's labelled extent.")] = None,
    min_cells: Annotated[int, typer.Option("--min-cells", help="Domains with fewer labelled niches are excluded.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the optimiser.")] = 0,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train, calibrate and register a tissue-domain decoder over niche URs; `aivc annotate
    --instrument niche-domain@N --datasets …` then predicts every niche's domain."""

    def body() -> int:
        from aivc.instruments.celltype_model import CellTypeConfig
        from aivc.instruments.niche_domain import train_niche_domain as train
        from aivc.instruments.niche_domain_model import NicheFolds
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        cfg = CellTypeConfig(alpha=alpha, score=score, hidden=hidden, weight_decay=weight_decay, folds=folds, min_cells_per_class=min_cells, seed=seed)  # type: ignore[arg-type]
        how = NicheFolds(cv=cv, block_size=block_size)  # type: ignore[arg-type]
        progress = make_progress(json_)
        try:
            rec = train(Lake.open(lake), embedding, label=label, labels=labels, datasets=_csv(datasets), name=name, config=cfg, folds=how, progress=progress)
        finally:
            progress.close()
        if json_:
            _print_json({"status": "registered", **instrument_summary(rec), "metrics": rec.metrics, "lineage": rec.lineage.to_record()})
            return 0
        m = rec.metrics
        _console().print(
            f"registered {rec.ref}: {m['n_classes']} tissue domains from {m['n_train']} labelled niches of {rec.reads} ({rec.lineage.extra['labels']}); "
            f"{_folds_said(m['cross_fitting'])}: out-of-fold macro-F1 {m['calibration']['macro_f1']:.3f}, conformal coverage {m['calibration_coverage']:.3f} with mean set size "
            f"{m['calibration_mean_set_size']:.2f} at alpha={alpha:g}",
            highlight=False,
        )
        return 0

    run_command(json_, debug, body)


def _folds_said(info: dict[str, Any]) -> str:
    if info.get("cv") != "spatial":
        return "random folds"
    sides = ", ".join(f"{d} {s:g}" for d, s in info["block_size"].items())
    return f"{info['n_blocks']} spatial blocks (side {sides})"


@train_app.command("protein")
def train_protein_cmd(
    embedding: Annotated[str, typer.Option("--embedding", help="Cell embedding version to read, CELL:NAME@VERSION, e.g. cell:pca@1.")],
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated datasets with ADT whose cells train it (default: every dataset of the embedding with ADT).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Intervals hold the measured abundance with probability about 1 - alpha.")] = 0.1,
    name: Annotated[str, typer.Option("--name", help="Instrument name.")] = "protein",
    target: Annotated[str, typer.Option("--target", help="What is predicted: log1p or clr of the antibody counts.")] = "log1p",
    hidden: Annotated[Optional[int], typer.Option("--hidden", help="Hidden units (0: linear); default chosen by cross-validation.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 strength; default chosen by cross-validation.")] = None,
    folds: Annotated[int, typer.Option("--folds", help="Cross-fitting folds (model choice and intervals).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the folds and the optimiser.")] = 0,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train a cross-modal protein decoder (UR -> ADT abundance with per-protein intervals) and register it."""

    def body() -> int:
        from aivc.instruments.crossmodal import CrossModalConfig
        from aivc.instruments.protein import train_protein
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        cfg = CrossModalConfig(alpha=alpha, hidden=hidden, weight_decay=weight_decay, folds=folds, target=target, seed=seed)  # type: ignore[arg-type]
        progress = make_progress(json_)
        try:
            rec = train_protein(Lake.open(lake), embedding, datasets=_csv(datasets), name=name, config=cfg, progress=progress)
        finally:
            progress.close()
        oof = rec.metrics["out_of_fold"]
        if json_:
            _print_json({"status": "registered", **instrument_summary(rec), "proteins": rec.outputs["proteins"], "metrics": rec.metrics, "lineage": rec.lineage.to_record()})
            return 0
        _console().print(
            f"registered {rec.ref}: {len(rec.outputs['proteins'])} proteins from {rec.metrics['n_train']} cells of {rec.reads}; out-of-fold mean Pearson "
            f"{oof['mean_pearson']:.3f}, Spearman {oof['mean_spearman']:.3f}, interval coverage {oof['mean_coverage']:.3f} at alpha={alpha:g}",
            highlight=False,
        )
        return 0

    run_command(json_, debug, body)


@instruments_app.command("list")
def list_(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List registered instrument versions."""

    def body() -> int:
        from aivc.instruments.registry import list_instruments
        from aivc.store.lake import Lake

        rows = [instrument_summary(r) for r in list_instruments(Lake.open(lake))]
        if json_:
            _print_json(rows)
            return 0
        cols = ("ref", "kind", "type", "reads", "classes", "alpha", "calibration_macro_f1", "created_at")
        print_table(cols, [[r[c] for c in cols] for r in rows], title="instruments")
        return 0

    run_command(json_, debug, body)


@instruments_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME[@VERSION], e.g. celltype@1.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show one instrument version: reads, outputs, metrics, lineage, config (--json: the full record)."""

    def body() -> int:
        from aivc.instruments.registry import get_instrument
        from aivc.store.lake import Lake

        rec = get_instrument(Lake.open(lake), ref)
        out = rec.to_record() | {"ref": rec.ref}
        if json_:
            _print_json(out)
            return 0
        outputs = dict(rec.outputs)
        if isinstance(outputs.get("columns"), dict):
            outputs["columns"] = list(outputs["columns"])
        fields = {
            "description": rec.description,
            "created": rec.created_at,
            "outputs": outputs,
            "lineage": rec.lineage.to_record(),
            "config": rec.config,
            "weights": f"{rec.weights} (sha256 {rec.weights_sha256})",
            **({"extra": rec.extra} if rec.extra else {}),
        }
        heading = f"{rec.ref}: {rec.kind} ({rec.type}) reading {rec.reads}"
        print_record(heading, fields, metrics=rec.metrics, full=f"aivc instruments show {rec.ref} --json")
        return 0

    run_command(json_, debug, body)


@instruments_app.command("predictions")
def predictions(
    instrument: Annotated[Optional[str], typer.Option("--instrument", help="Only the predictions of this instrument name.")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List prediction versions (the outputs of `aivc annotate`)."""

    def body() -> int:
        from aivc.instruments.predictions import list_prediction_versions
        from aivc.store.lake import Lake

        rows = [prediction_summary(v) for v in list_prediction_versions(Lake.open(lake), instrument)]
        if json_:
            _print_json(rows)
            return 0
        cols = ("ref", "instrument_ref", "embedding_ref", "datasets", "n_rows", "sql_view", "created_at")
        print_table(cols, [[", ".join(r[c]) if c == "datasets" else r[c] for c in cols] for r in rows], title="prediction versions")
        return 0

    run_command(json_, debug, body)


@instruments_app.command("report")
def report(
    prediction: Annotated[str, typer.Argument(help="Prediction version, [predictions:]INSTRUMENT[@VERSION].")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for report.json and report.html.")],
    rollup: Annotated[Optional[str], typer.Option("--rollup", help="Roll terms up to CL ids (comma-separated) or depth:N.")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Recompute the reannotation report of a prediction version, for instance with another roll-up."""

    def body() -> int:
        from aivc.instruments.report import write_report
        from aivc.store.lake import Lake

        j, h = write_report(Lake.open(lake), prediction, out, rollup=rollup)
        if json_:
            _print_json({"status": "ok", "json": str(j), "html": str(h)})
        else:
            _console().print(f"report: {h}, {j}")
        return 0

    run_command(json_, debug, body)


def annotate(
    instrument: Annotated[str, typer.Option("--instrument", help="Decoder NAME@VERSION, e.g. celltype@1.")],
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated dataset ids to annotate.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Annotate every dataset with vectors in the instrument's embedding version.")] = False,
    embedding: Annotated[Optional[str], typer.Option("--embedding", help="Embedding version to read (default and only allowed: the one the instrument was trained on).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="auto (default: local below 2,000,000 cells, Ray from there or with --actors/--ray-address), ray (a Ray Data job) or local (in-process).")] = "auto",
    actors: Annotated[int, typer.Option("--actors", help="Ray engine: 0 runs the decoder in Ray tasks fused with the writes (reusing running workers); N >= 1 in a pool of N actors.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Cells per batch.")] = 65536,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (default: start Ray locally).")] = None,
    rollup: Annotated[Optional[str], typer.Option("--rollup", help="Add a roll-up table to the report: CL ids (comma-separated) or depth:N.")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write report.json/report.html.")] = False,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run a decoder over stored URs (batch reannotation) and publish a prediction version with its report."""

    def body() -> int:
        from aivc.instruments.annotate import annotate as run
        from aivc.instruments.predictions import version_dir
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        lk = Lake.open(lake)
        progress = make_progress(json_)
        try:
            pv = run(
                lk, instrument, datasets=_csv(datasets), all_datasets=all_, embedding=embedding, engine=engine,  # type: ignore[arg-type]
                actors=actors, batch_size=batch_size, ray_address=ray_address, report=not no_report, rollup=rollup, progress=progress,
            )  # fmt: skip
        finally:
            progress.close()
        folder = version_dir(lk, pv.instrument, pv.version)
        res = prediction_summary(pv) | {"status": "published", "folder": str(folder)}
        if pv.report:
            res["report"] = str(folder / pv.report["html"])
        if json_:
            _print_json(res)
            return 0
        s = pv.summary
        job = pv.job
        line = (
            f"published {pv.ref}: {pv.n_rows} {'niches' if pv.instrument_type == 'niche-domain' else 'cells'} of {', '.join(pv.datasets)} by {pv.instrument_ref} over {pv.embedding_ref} "
            f"in {job['seconds']:.2f}s on the {job['engine']} engine ({job.get('engine_reason', '')}) (SQL view {pv.view_name})"
        )
        _console().print(line, highlight=False)
        if s and pv.instrument_type == "protein-abundance":
            held = "n/a" if s.get("held_out_mean_pearson") is None else f"{s['held_out_mean_pearson']:.3f}"
            sys.stdout.write(f"  {len(s.get('proteins', []))} proteins per cell (abundance, std, lower, upper); mean Pearson with the measured proteins of held-out cells: {held}\n")
            sys.stdout.write(f"  report: {res['report']}\n")
        elif s and pv.instrument_type == "niche-domain":
            sys.stdout.write(f"  {s['n_niches']} niches into {len(s['domains'])} tissue domains ({', '.join(s['domains'])}); {s['n_uncertain']} uncertain (conformal set of more or fewer than one domain, or abstained)\n")
            sys.stdout.write(f"  report with the tissue maps: {res['report']}\n")
        elif s:
            from aivc.instruments.report import rollup_headline

            agree = "n/a" if s.get("agree_fraction") is None else f"{s['agree_fraction']:.1%}"
            cov = "n/a" if s.get("coverage") is None else f"{s['coverage']:.1%}"
            sys.stdout.write(
                f"  {s['n_labelled']} of {s['n_cells']} cells labelled: {s['agree']} agree ({agree} of the labelled cells); conformal coverage {cov} "
                f"of the {s['n_labelled_known_type']} labelled cells of a type the decoder knows (nominal {s['nominal_coverage']:.0%}); "
                f"abstained {s['n_abstain']} of {s['n_cells']} cells\n"
            )
            if s.get("rollup"):
                sys.stdout.write(f"  roll-up to {s['rollup']['spec']}: {rollup_headline(s['rollup'])}\n")
            sys.stdout.write(f"  report: {res['report']}\n")
        return 0

    run_command(json_, debug, body)


def register(app: typer.Typer) -> None:
    app.add_typer(instruments_app, name="instruments")
    app.command("annotate")(annotate)
