"""CLI: ``aivc stats``, per-gene statistics over the whole lake (chunked SOMA reads on Dask).

Registered on the main app by ``aivc.cli`` through :func:`register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, print_table, run_command
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json


def stats(
    datasets: Annotated[Optional[str], typer.Option("--datasets", help="Comma-separated DATASET[@VERSION] (default: all current).")] = None,
    organism: Annotated[Optional[str], typer.Option("--organism", help="homo_sapiens or mus_musculus (needed if the lake has both).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Cells read at a time (memory: --workers chunks).")] = 4096,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Dask threads (default: one per CPU).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Write every gene's row to this .parquet, .csv or .tsv.")] = None,
    top: Annotated[int, typer.Option("--top", help="Genes shown (highest mean log-normalized value); with --json, rows returned (0: all).")] = 20,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Per-gene n_cells, nnz, detected fraction, mean/variance of counts and of log-normalized values over the lake's cells, without loading a matrix."""

    def body() -> int:
        from aivc.errors import UsageError
        from aivc.store.gene_stats import lake_gene_stats
        from aivc.store.lake import Lake

        if out and Path(out).suffix not in (".parquet", ".csv", ".tsv"):
            raise UsageError(f"--out must end in .parquet, .csv or .tsv, got {out!r}", where="--out")
        if top < 0:
            raise UsageError(f"--top must be >= 0, got {top}", where="--top")
        ds = [d.strip() for d in datasets.split(",") if d.strip()] if datasets else None
        frame, info = lake_gene_stats(Lake.open(lake), organism=organism, datasets=ds, chunk_rows=chunk_rows, num_workers=workers)
        if out:
            p = Path(out)
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.suffix == ".parquet":
                frame.to_parquet(p, index=False)
            else:
                frame.to_csv(p, index=False, sep="\t" if p.suffix == ".tsv" else ",")
            info["out"] = str(p)
        ranked = frame.sort_values("mean_log", ascending=False, kind="stable")
        shown = ranked if (json_ and top == 0) else ranked.head(top)
        if json_:
            _print_json({"status": "ok", **info, "genes": shown.to_dict(orient="records")})
            return 0
        _console().print(f"{info['n_cells']} cells of {', '.join(info['datasets'])}, {info['n_genes']} genes, {info['chunks']} chunks of {chunk_rows} cells" + (f"; written to {out}" if out else ""), highlight=False)
        cols = list(shown.columns)
        print_table(cols, [[f"{x:.4g}" if isinstance(x, float) else x for x in r] for r in shown.itertuples(index=False)], title=f"top {len(shown)} genes by mean log-normalized value")
        return 0

    run_command(json_, debug, body)


def register(app: typer.Typer) -> None:
    app.command("stats")(stats)
