"""The ``aivc`` command line.

Every command takes ``--lake PATH`` (default ``$AIVC_LAKE``, else ``./lake``), ``--json``
(machine-readable output on stdout) and ``--debug`` (show tracebacks). Exit codes: 0 ok,
1 rejected/invalid/failed, 2 usage error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aivc.cli_common import DebugOpt, JsonOpt, LakeOpt, print_table, run_command, styled, typer_app
from aivc.cli_common import console as _console
from aivc.cli_common import print_json as _print_json

app = typer_app(
    name="aivc",
    help="AI Virtual Cells: validated single-cell lake, versioned Universal Representations, virtual instruments.",
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("aivc")
    except PackageNotFoundError:  # run from a source tree that was never installed
        v = "unknown (not installed: pip install -e .)"
    _console().print(f"aivc {v}")
    raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the aivc version and exit.")] = False,
) -> None:
    """AI Virtual Cells: validated single-cell lake, versioned Universal Representations, virtual instruments."""


@app.command()
def init(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Create a lake (idempotent)."""

    def body() -> int:
        from aivc.store.lake import Lake

        lk = Lake.init(lake)
        info = lk.info()
        if json_:
            _print_json({"status": "ok", "lake": lk.uri, **info})
        else:
            _console().print(f"lake ready at {lk.uri} (format {info['schema_version']})")
        return 0

    run_command(json_, debug, body)


def _print_findings(result: dict[str, Any]) -> None:
    con = _console()
    for e in result.get("errors", []):
        con.print(styled(("error", "red"), f"   [{e['code']}] {e['where']}: {e['message']}"))
    for w in result.get("warnings", [])[:20]:
        con.print(styled(("warning", "yellow"), f" [{w['code']}] {w['where']}: {w['message']}"))


def _errors(n: int) -> str:
    return f"{n} error" if n == 1 else f"{n} errors"


def _reports(json_path: str | Path | None) -> str:
    """``report: <report.html>, <report.json>`` (the HTML is written beside the JSON)."""
    if not json_path:
        return "no report"
    return f"report: {_html_beside(json_path)}, {json_path}"


def _html_beside(json_path: str | Path) -> str:
    """``report.html`` beside a ``report.json`` given as a path or an ``s3://`` URI."""
    j = str(json_path)
    return j.rsplit("/", 1)[0] + "/report.html" if "/" in j else "report.html"


@app.command()
def validate(
    data: Annotated[str, typer.Argument(help="AnnData .h5ad / .zarr, MuData .h5mu, a 10x .h5 or matrix folder, or a Space Ranger output folder.")],
    manifest: Annotated[str, typer.Option("--manifest", "-m", help="Manifest YAML.")],
    report_dir: Annotated[Optional[str], typer.Option("--report-dir", help="Where to write report.json/html (default ./aivc-reports/<submission>).")] = None,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows of X read at a time.")] = 4096,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Validate and harmonize a submission (dry run: nothing is written to any lake)."""

    def body() -> int:
        from aivc.ingest.report import write_report
        from aivc.ingest.submission import SubmitResult, validate_submission
        from aivc.progress import make_progress

        progress = make_progress(json_)
        prepared = validate_submission(data, manifest, chunk_rows=chunk_rows, progress=progress)
        progress.close()
        try:
            rep = prepared.report
            out = Path(report_dir) if report_dir else Path("aivc-reports") / rep.submission_id
            json_path, html_path = write_report(rep, out)
            res = SubmitResult(
                "valid" if rep.valid else "rejected",
                rep.dataset_id,
                None,
                prepared.data.n_obs if prepared.data else 0,
                len(prepared.genes.gene_ids) if prepared.genes else 0,
                str(json_path),
                rep.errors,
                rep.warnings,
                rep.submission_id,
            ).to_dict() | {"report_html": str(html_path)}
        finally:
            prepared.close()
        if json_:
            _print_json(res)
        else:
            _print_findings(res)
            who = res["dataset_id"] or f"submission {res['submission_id']}"
            verdict = ("valid", "green") if rep.valid else ("invalid", "red")
            errors = "" if rep.valid else f" ({_errors(len(rep.errors))})"
            _console().print(styled(f"{who}: ", verdict, f"{errors}; {res['n_cells']} cells, {res['n_genes']} genes mapped; {_reports(json_path)}"))
        return 0 if rep.valid else 1

    run_command(json_, debug, body)


def _spatial_note(spatial: dict) -> str:
    if not spatial:
        return ""
    images = f", images {', '.join(spatial['images'])}" if spatial.get("images") else ""
    return f"; {spatial['technology']}: {spatial['n_located']} located{images}"


@app.command()
def submit(
    data: Annotated[str, typer.Argument(help="AnnData .h5ad / .zarr, MuData .h5mu, a 10x .h5 or matrix folder, or a Space Ranger output folder.")],
    manifest: Annotated[str, typer.Option("--manifest", "-m", help="Manifest YAML.")],
    report_dir: Annotated[Optional[str], typer.Option("--report-dir", help="Where a rejected submission's report goes (default ./aivc-reports/<submission>).")] = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for another writer to finish.")] = 600.0,
    chunk_rows: Annotated[int, typer.Option("--chunk-rows", help="Rows of X read and written at a time.")] = 4096,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Validate, harmonize and commit a dataset version into the lake."""

    def body() -> int:
        from aivc.ingest.submission import submit as do_submit
        from aivc.progress import make_progress
        from aivc.store.lake import Lake

        lk = Lake.open(lake)
        progress = make_progress(json_)
        try:
            result = do_submit(lk, data, manifest, report_dir=report_dir, chunk_rows=chunk_rows, progress=progress, wait=wait)
        finally:
            progress.close()
        res = result.to_dict()
        if result.report:
            res["report_html"] = _html_beside(result.report)
        if json_:
            _print_json(res)
        else:
            _print_findings(res)
            if result.status == "rejected":
                who = result.dataset_id or f"submission {result.submission_id}"
                _console().print(styled(("rejected", "red"), f" {who}: {_errors(len(result.errors))}; nothing was written to the lake; {_reports(result.report)}"))
            else:
                _console().print(styled((result.status, "green"), f" {result.dataset_id}@{result.version}: {result.n_cells} cells x {result.n_genes} genes{''.join(f' + {n} {k} features' for n, k in result.measurements.items())}{_spatial_note(result.spatial)}; {_reports(result.report)}"))
        return 1 if result.status == "rejected" else 0

    run_command(json_, debug, body)


@app.command()
def datasets(
    current_only: Annotated[bool, typer.Option("--current-only", help="List only the current version of each dataset.")] = False,
    principal: Annotated[
        Optional[str],
        typer.Option("--principal", envvar="AIVC_PRINCIPAL", help="List as this user (`aivc access list`), or 'public'; default the lake owner."),
    ] = None,
    organism: Annotated[Optional[str], typer.Option("--organism", help="Only this organism (NCBITaxon id or name, e.g. homo_sapiens).")] = None,
    tissue: Annotated[Optional[str], typer.Option("--tissue", help="Only versions with cells of this tissue (label or UBERON id).")] = None,
    assay: Annotated[Optional[str], typer.Option("--assay", help="Only versions with cells of this assay (label or EFO id).")] = None,
    access: Annotated[Optional[str], typer.Option("--access", help="Only this access level: public, consortium or embargoed.")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List datasets and their versions."""

    def body() -> int:
        from aivc.store.dataset_rows import COLUMNS, dataset_rows
        from aivc.store.lake import Lake

        rows = dataset_rows(Lake.open(lake), principal, current_only=current_only, organism=organism, tissue=tissue, assay=assay, access=access)
        if json_:
            _print_json(rows)
            return 0
        n_current = sum(1 for r in rows if r["current"])
        print_table(COLUMNS, [[("*" if r[c] else "") if c == "current" else r[c] for c in COLUMNS] for r in rows], title=f"datasets ({n_current} current)")
        return 0

    run_command(json_, debug, body)


@app.command()
def export(
    dataset: Annotated[str, typer.Argument(help="DATASET or DATASET@VERSION.")],
    out: Annotated[str, typer.Option("-o", "--out", help="Output path: .h5ad (CELLxGENE RNA file, plus .fragments.tsv.gz for ATAC), .h5mu (every measurement) or .zarr (SpatialData: images, labels, shapes and the table).")],
    for_analysis: Annotated[
        bool,
        typer.Option(
            "--for-analysis",
            help="Also write gene symbols (var feature_name) and the label next to each ontology term id (obs cell_type, assay, ...), "
            "as CELLxGENE's curated files have; such a file is marked in uns and is not for submission to CELLxGENE.",
        ),
    ] = False,
    measurement: Annotated[str, typer.Option("--measurement", help="Measurement in X and var (RNA, or another the version holds, e.g. ADT).")] = "RNA",
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a committed dataset version as a CELLxGENE-schema AnnData (.h5ad)."""

    def body() -> int:
        from aivc.store.export import export_h5ad
        from aivc.store.lake import Lake

        if out.endswith(".h5mu"):
            from aivc.store.export_multimodal import export_h5mu

            res = export_h5mu(Lake.open(lake), dataset, out)
        elif out.rstrip("/").endswith(".zarr"):
            from aivc.store.export_spatial import export_spatialdata

            res = export_spatialdata(Lake.open(lake), dataset, out)
        else:
            res = export_h5ad(Lake.open(lake), dataset, out, for_analysis=for_analysis, measurement=measurement)
        if json_:
            _print_json({"status": "ok", **res})
        else:
            kind = " (analysis export: gene symbols and labels added; not for CELLxGENE submission)" if for_analysis else ""
            what = "genes" if res["measurement"] == "RNA" else f"{res['measurement']} features"
            if "elements" in res:
                what = "genes; SpatialData " + "; ".join(f"{k} {', '.join(v)}" for k, v in res["elements"].items())
            if "modalities" in res:
                what = "genes; " + ", ".join(f"{m} {shape[1]} features" for m, shape in res["modalities"].items())
            _console().print(f"exported {res['dataset_id']}@{res['version']}: {res['n_cells']} cells x {res['n_genes']} {what} -> {res['path']}{kind}")
            if "fragments" in res:
                _console().print(f"fragments: {res['fragments']} (+ .tbi)")
            if "fragments_warning" in res:
                _console().print(f"warning: {res['fragments_warning']}")
        return 0

    run_command(json_, debug, body)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One read-only SQL statement (DuckDB dialect).")],
    limit: Annotated[int, typer.Option("--limit", help="Maximum rows to print.")] = 1000,
    principal: Annotated[
        Optional[str],
        typer.Option("--principal", envvar="AIVC_PRINCIPAL", help="Query as this user (`aivc access list`), or 'public'; default the lake owner."),
    ] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run SQL over the views: datasets, cells, genes, dataset_genes, cells_all_versions, embedding_versions, prediction_versions, one per embedding version and one per prediction version."""

    def body() -> int:
        from aivc.instruments.sql import query as run_query
        from aivc.store.lake import Lake

        res = run_query(Lake.open(lake), query, principal=principal, limit=limit)
        if json_:
            _print_json({"columns": res.columns, "rows": res.to_dicts()})
            return 0
        print_table(res.columns, res.rows)
        return 0

    run_command(json_, debug, body)


@app.command()
def recover(lake: LakeOpt = None, json_: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Remove what interrupted writes left behind (also done before every write)."""

    def body() -> int:
        from aivc.store.lake import Lake
        from aivc.store.recovery import recover as do_recover

        lk = Lake.open(lake)
        with lk.write_lock():
            removed = do_recover(lk)
        if json_:
            _print_json({"status": "ok", "removed": removed})
        else:
            _console().print(f"removed {len(removed)} leftovers of interrupted writes" if removed else "nothing to recover")
        return 0

    run_command(json_, debug, body)


@app.command()
def demo(
    workdir: Annotated[Optional[str], typer.Option("--workdir", help="Where demo submissions are written (default: <lake>/demo-inputs, never the current folder).")] = None,
    lake: LakeOpt = None,
    json_: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run the main job end to end on real PBMC data (scanpy's pbmc68k_reduced)."""

    def body() -> int:
        from aivc.demo import run_demo

        summary = run_demo(lake, workdir=workdir, json_mode=json_)
        if json_:
            _print_json(summary)
        return 0

    run_command(json_, debug, body)


from aivc.cli_features import register as _register_features  # noqa: E402

_register_features(app)

from aivc.cli_access import register as _reg_access  # noqa: E402

_reg_access(app)


from aivc.cli_neighbors import register as _register_neighbors  # noqa: E402

_register_neighbors(app)


from aivc.cli_training import register as _register_training  # noqa: E402

_register_training(app)

from aivc.cli_instruments import register as _register_instruments  # noqa: E402

_register_instruments(app)
__import__("aivc.cli_perturb").cli_perturb.register(app)  # aivc manipulator train, aivc perturb
__import__("aivc.cli_stats").cli_stats.register(app)  # aivc stats
__import__("aivc.cli_serve").cli_serve.register(app)  # aivc serve


def main() -> None:
    app()


if __name__ == "__main__":
    main()
