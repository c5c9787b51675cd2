"""CLI for the feature store: ``aivc features list|show|import`` and ``aivc embed``.

``aivc embed`` computes URs over the lake and publishes them as embedding versions:
``aivc embed pca`` (baseline cell URs), ``aivc embed coexpr`` (gene URs from
co-expression) and ``aivc embed MODEL@VERSION`` (a registered model, as a Ray Data job;
the same as ``aivc embed model MODEL@VERSION``).
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, HelpGroup, JsonOpt, LakeOpt, print_record, print_table, run_command, typer_app
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json

features_app = typer_app(help="Versioned Universal Representations (embeddings) in the feature store.")


class _EmbedGroup(HelpGroup):
    """``aivc embed NAME@VERSION`` runs ``aivc embed model NAME@VERSION``."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["model", *args]
        return super().resolve_command(ctx, args)


embed_app = typer_app(
    cls=_EmbedGroup,
    help="Compute URs over the lake and publish them as embedding versions: `aivc embed pca`, `aivc embed coexpr`, `aivc embed MODEL@VERSION`.",
)


def version_summary(v: Any) -> dict[str, Any]:
    return {
        "ref": v.ref,
        "entity": v.entity,
        "name": v.name,
        "version": v.version,
        "dim": v.dim,
        "n_rows": v.n_rows,
        "normalization": v.normalization,
        "source": v.source,
        "created_at": v.created_at,
        "sql_view": v.view_name,
    }


@features_app.command("list")
def list_(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List embedding versions."""

    def body() -> int:
        from aivc.store.features import list_versions
        from aivc.store.lake import Lake

        rows = [version_summary(v) for v in list_versions(Lake.open(lake))]
        if json_:
            _print_json(rows)
            return 0
        def src(r: dict[str, Any]) -> Any:
            return r["source"].get("model") or r["source"].get("method") or r["source"].get("file") or r["source"].get("kind")

        cols = ("ref", "dim", "n_rows", "source", "created_at", "sql_view")
        print_table(cols, [[src(r) if c == "source" else r[c] for c in cols] for r in rows], title="embedding versions")
        return 0

    run_command(json_, debug, body)


@features_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="ENTITY:NAME[@VERSION], e.g. cell:pca@1.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show one embedding version: source, lineage, metrics (--json: the full record)."""

    def body() -> int:
        from aivc.store.features import get_version
        from aivc.store.lake import Lake

        v = get_version(Lake.open(lake), ref)
        rec = v.to_record() | {"ref": v.ref, "sql_view": v.view_name, "sql_alias": v.alias_name}
        if json_:
            _print_json(rec)
            return 0
        fields = {
            "dtype": v.dtype,
            "normalization": v.normalization,
            "created": v.created_at,
            "source": v.source,
            "lineage": v.lineage.to_record(),
            "partitions": list(v.partitions),
            "SQL view": f"{v.view_name} (alias {v.alias_name}, the latest version)",
        }
        heading = f"{v.ref}: {v.entity} embedding, {v.n_rows} rows x {v.dim} dims"
        print_record(heading, fields, metrics=v.metrics, full=f"aivc features show {v.ref} --json")
        return 0

    run_command(json_, debug, body)


@features_app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="Parquet (id + vector) or CSV/TSV (id, then one column per dimension).")],
    entity: Annotated[str, typer.Option("--entity", help="cell or gene.")],
    name: Annotated[str, typer.Option("--name", help="Embedding name, e.g. esm2.")],
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Import external embeddings with validation, as a new version."""

    def body() -> int:
        from aivc.embeddings.importer import import_embeddings
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        progress = make_progress(json_)
        try:
            v = import_embeddings(Lake.open(lake), file, entity=entity, name=name, progress=progress)
        finally:
            progress.close()
        if json_:
            _print_json({"status": "published", **version_summary(v)})
        else:
            _console().print(f"published {v.ref}: {v.n_rows} x {v.dim} (SQL view {v.view_name})")
        return 0

    run_command(json_, debug, body)


@embed_app.command("pca")
def pca(
    name: Annotated[str, typer.Option("--name", help="Embedding name.")] = "pca",
    n_components: Annotated[int, typer.Option("--n-components", help="Dimensions.")] = 32,
    n_top_genes: Annotated[int, typer.Option("--n-top-genes", help="Most variable genes used.")] = 2000,
    organism: Annotated[Optional[str], typer.Option("--organism", help="homo_sapiens or mus_musculus (needed if the lake has both).")] = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated DATASET[@VERSION] (default: all current).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Cells read at a time.")] = 4096,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """PCA baseline cell UR over the current lake (log-normalized counts, streamed)."""

    def body() -> int:
        from aivc.embeddings.pca import PcaParams, embed_pca
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        progress = make_progress(json_)
        try:
            v = embed_pca(
                Lake.open(lake),
                name=name,
                organism=organism,
                datasets=[d.strip() for d in datasets.split(",")] if datasets else None,
                params=PcaParams(n_components=n_components, n_top_genes=n_top_genes, chunk_rows=chunk_rows),
                progress=progress,
            )
        finally:
            progress.close()
        if json_:
            _print_json({"status": "published", **version_summary(v), "metrics": v.metrics})
        else:
            _console().print(f"published {v.ref}: {v.n_rows} cells x {v.dim} dims, explained variance {v.metrics['explained_variance_total']:.1%} (SQL view {v.view_name})")
        return 0

    run_command(json_, debug, body)


@embed_app.command("coexpr")
def coexpr(
    name: Annotated[str, typer.Option("--name", help="Embedding name (gene:NAME).")] = "coexpr",
    dim: Annotated[int, typer.Option("--dim", help="Dimensions of the gene URs.")] = 32,
    n_top_genes: Annotated[int, typer.Option("--n-top-genes", help="Most variable genes embedded.")] = 2000,
    organism: Annotated[Optional[str], typer.Option("--organism", help="homo_sapiens or mus_musculus (needed if the lake has both).")] = None,
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated DATASET[@VERSION] (default: all current).")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Molecular-scale gene URs from co-expression across the lake's datasets."""

    def body() -> int:
        from aivc.embeddings.gene_coexpr import embed_gene_coexpression
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        progress = make_progress(json_)
        try:
            v = embed_gene_coexpression(Lake.open(lake), name=name, organism=organism, datasets=_split(datasets), dim=dim, n_top_genes=n_top_genes, progress=progress)
        finally:
            progress.close()
        if json_:
            _print_json({"status": "published", **version_summary(v), "metrics": v.metrics})
        else:
            _console().print(f"published {v.ref}: {v.n_rows} genes x {v.dim} dims (SQL view {v.view_name})")
        return 0

    run_command(json_, debug, body)


@embed_app.command("image")
def image(
    dataset: Annotated[str, typer.Argument(help="An image dataset with a segmentation, DATASET[@VERSION].")],
    name: Annotated[str, typer.Option("--name", help="Embedding name (cell:NAME).")] = "image_cnn",
    crop: Annotated[int, typer.Option("--crop", help="Crop size in level-0 pixels, centred on each cell (even).")] = 48,
    dim: Annotated[int, typer.Option("--dim", help="Dimensions of the image URs.")] = 16,
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs of the crop CNN.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the CNN's weights, batches and views.")] = 0,
    image_name: Annotated[Optional[str], typer.Option("--image", help="Which image of the dataset (default: the first with a segmentation).")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Image-derived cell URs: a small CNN trained self-supervised (SimCLR) on each cell's crop
    of the dataset's image and mask, published as cell:NAME@V (joins the expression URs on obs_id)."""

    def body() -> int:
        from aivc.embeddings.image_cells import embed_image_cells
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        progress = make_progress(json_)
        try:
            v = embed_image_cells(Lake.open(lake), dataset, name=name, crop=crop, dim=dim, epochs=epochs, seed=seed, image=image_name, progress=progress)
        finally:
            progress.close()
        if json_:
            _print_json({"status": "published", **version_summary(v), "lineage": v.lineage.to_record(), "metrics": v.metrics})
        else:
            _console().print(f"published {v.ref}: {v.n_rows} cells x {v.dim} dims from image {v.lineage.extra['image']!r} of {v.lineage.datasets[0]} (SQL view {v.view_name})")
        return 0

    run_command(json_, debug, body)


@embed_app.command("model")
def model(
    ref: Annotated[str, typer.Argument(help="A registered model, NAME[@VERSION] (e.g. cell-vae@1; latest when no version).")],
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated DATASET[@VERSION] (default: all current datasets of the model's organism).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Embedding name (default: the model name with - as _).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Cells per forward pass.")] = 1024,
    actors: Annotated[Optional[int], typer.Option("--actors", help="Ray Data actors (default: one per CPU).")] = None,
    min_gene_overlap: Annotated[float, typer.Option("--min-gene-overlap", help="Smallest fraction of the model's genes a dataset must have measured.")] = 0.5,
    where: Annotated[Optional[str], typer.Option("--where", help="Embed only cells matching this SQL condition on cells_all_versions, e.g. \"cell_type = 'B cell'\".")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster address (default: start Ray locally); always runs the Ray engine.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="auto (in-process below 1M cells unless --ray-address/--actors), ray or local.")] = "auto",
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Apply a registered model to the lake's cells (in-process or Ray Data) and publish cell URs."""

    def body() -> int:
        from aivc.progress import make_progress
        from aivc.store.lake import Lake
        from aivc.embeddings.model_job import embed_model

        progress = make_progress(json_)
        try:
            v = embed_model(
                Lake.open(lake), ref, datasets=_split(datasets), name=name, batch_size=batch_size, actors=actors,
                ray_address=ray_address, engine=engine, min_gene_overlap=min_gene_overlap, where=where, progress=progress,
            )
        finally:
            progress.close()
        masked = {d: o.get("masked", 0) for d, o in v.lineage.extra.get("gene_overlap", {}).items() if o.get("masked")}
        if json_:
            _print_json({"status": "published", **version_summary(v), "lineage": v.lineage.to_record(), "metrics": v.metrics})
        else:
            note = "; masked unmeasured genes: " + ", ".join(f"{d} {n}" for d, n in masked.items()) if masked else ""
            what = "niches" if v.entity == "niche" else "cells"
            members = f", members in {v.view_name}_members" if v.entity == "niche" else ""
            _console().print(f"published {v.ref} from {v.lineage.model}: {v.n_rows} {what} x {v.dim} dims (SQL view {v.view_name}{members}){note}")
        return 0

    run_command(json_, debug, body)


def _split(items: str | None) -> list[str] | None:
    return [d.strip() for d in items.split(",") if d.strip()] if items else None


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")
    app.add_typer(embed_app, name="embed")
