"""What the CLI prints for people: square brackets survive, ids are never cut, -h/--version,
short summaries for the ``show`` commands, both report paths, correct plurals."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import scipy.sparse as sp
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from aivc.cli import app
from tests.conftest import base_manifest, make_adata

DATASET = "synthetic-peripheral-blood-mononuclear-cells-with-a-long-id-01"  # 63 characters, the longest allowed
EMBEDDING = "pca_embedding_with_a_long_name"
INSTRUMENT = "celltype_decoder_with_a_long_name"


def cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """``aivc ARGS`` in a subprocess, stdout and stderr piped (not a terminal)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "COLUMNS": str(columns)}
    return subprocess.run([sys.executable, "-m", "aivc.cli", *args], capture_output=True, text=True, env=env)


def _flat(text: str) -> str:
    return " ".join(text.split())


def _solid(text: str) -> str:
    """``text`` without any whitespace (Click's wrapping also breaks lines after hyphens)."""
    return "".join(text.split())


# -- square brackets ------------------------------------------------------------------------
def _negative(adata: Any) -> None:
    X = adata.X.toarray()
    X[0, 11] = -3
    adata.X = sp.csr_matrix(X)


def test_finding_where_keeps_its_square_brackets(tmp_path, write_submission):
    h5, mf = write_submission(mutate=_negative)
    as_json = cli("validate", str(h5), "-m", str(mf), "--report-dir", str(tmp_path / "r1"), "--json")
    where = json.loads(as_json.stdout)["errors"][0]["where"]
    assert where.startswith("X[cell 'cell-0000' (row 0), gene '") and where.endswith("(column 11)]")
    plain = cli("validate", str(h5), "-m", str(mf), "--report-dir", str(tmp_path / "r2"))
    assert plain.returncode == 1
    assert f"error   [MATRIX_NEGATIVE] {where}: value -3 is negative" in plain.stdout


def test_error_line_keeps_square_brackets(tmp_path):
    cli("init", "--lake", str(tmp_path / "lake"))
    p = cli("features", "show", "cell:[pca]", "--lake", str(tmp_path / "lake"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "embedding reference 'cell:[pca]' must look like ENTITY:NAME[@VERSION], e.g. cell:pca@1" in p.stderr


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and group under ``cmd`` (typer's own Click objects) with its path."""
    out = [(path, cmd)]
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        out.extend(_commands(sub, (*path, name)))
    return out


COMMANDS = _commands(get_command(app))


def _help(*args: str) -> str:
    res = CliRunner().invoke(app, list(args), terminal_width=100)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("instruments", "report"), "Prediction version, [predictions:]INSTRUMENT[@VERSION]."),
        (("features", "show"), "ENTITY:NAME[@VERSION], e.g. cell:pca@1."),
        (("instruments", "show"), "NAME[@VERSION], e.g. celltype@1."),
        (("models", "show"), "NAME[@VERSION], e.g. cell-vae@1."),
        (("embed", "pca"), "Comma-separated DATASET[@VERSION] (default: all current)."),
        (("embed", "model"), "A registered model, NAME[@VERSION] (e.g. cell-vae@1; latest when no version)."),
    ],
)
def test_help_keeps_square_brackets(path, text):
    assert _solid(text) in _solid(_help(*path, "--help"))


def test_every_help_text_is_printed_verbatim():
    """Each command's help and each of its options' help appears word for word in its --help."""
    checked = 0
    for path, cmd in COMMANDS:
        page = _solid(_help(*path, "--help"))
        texts = [cmd.help or ""] + [getattr(p, "help", None) or "" for p in cmd.params]
        for text in texts:
            assert _solid(text) in page, (path, text)
            checked += "[" in text
    assert len(COMMANDS) > 40
    assert checked >= 8  # the help texts with square brackets are among them


def test_dash_h_is_help_on_every_command():
    for path, _ in COMMANDS:
        assert _help(*path, "-h") == _help(*path, "--help"), path


def test_command_lists_are_not_cut_short():
    commands = _flat(_help("--help").split("Commands:")[1])
    assert "Run SQL over the views: datasets, cells, genes, dataset_genes, cells_all_versions, embedding_versions, prediction_versions" in commands
    assert "..." not in commands


def test_version():
    p = cli("--version")
    assert p.returncode == 0 and p.stdout == f"aivc {version('aivc')}\n"
    assert re.fullmatch(r"aivc \d+\.\d+\.\d+\S*\n", p.stdout)


# -- tables ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_lake(tmp_path_factory: pytest.TempPathFactory, human_genes):  # noqa: ANN001, ANN201
    """A lake whose dataset, embedding, instrument and prediction ids are long."""
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("long")
    lake = Lake.init(root / "lake")
    h5, mf = root / "a.h5ad", root / "a.yaml"
    make_adata(human_genes, n_cells=80, seed=3).write_h5ad(h5)
    mf.write_text(yaml.safe_dump(base_manifest(DATASET), sort_keys=False))
    assert submit(lake, h5, mf, report_dir=root / "reports").status == "committed"
    emb = embed_pca(lake, name=EMBEDDING, params=PcaParams(n_components=4, n_top_genes=50))
    rec = train_celltype(lake, emb.ref, name=INSTRUMENT, config=CellTypeConfig(hidden=0, weight_decay=0.01, folds=3))
    annotate(lake, rec.ref, datasets=[DATASET], engine="local", report=False)
    return lake


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        (("datasets",), [DATASET]),
        (("features", "list"), [f"cell:{EMBEDDING}@1", f"cell_{EMBEDDING}_v1"]),
        (("instruments", "list"), [f"{INSTRUMENT}@1", f"cell:{EMBEDDING}@1"]),
        (("instruments", "predictions"), [f"predictions:{INSTRUMENT}@1", f"{INSTRUMENT}@1", f"cell:{EMBEDDING}@1", f"{DATASET}@1"]),
        (("sql", "SELECT obs_id, cell_type FROM cells LIMIT 3"), [f"{DATASET}@1:cell-0000"]),
    ],
)
def test_piped_tables_print_ids_whole(long_lake, args, ids):
    p = cli(*args, "--lake", str(long_lake.root), columns=80)
    assert p.returncode == 0, p.stderr
    assert "…" not in p.stdout
    for i in ids:
        assert re.search(rf"(?<![\w:@.-]){re.escape(i)}(?![\w@.-])", p.stdout), (i, p.stdout)
    assert max(len(line) for line in p.stdout.splitlines()) > 80  # its natural width, not COLUMNS


def _terminal(width: int) -> Any:
    from rich.console import Console

    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def test_terminal_table_keeps_ids_on_one_line_and_folds_the_rest():
    from aivc.cli_common import print_table

    path = "/data/submissions/pbmc/part-0001/report.html"
    con = _terminal(40)
    print_table(("ref", "report"), [["cell:pbmc_vae@12", path]], out=con)
    text = con.file.getvalue()
    assert "│ cell:pbmc_vae@12 │" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 40
    report = [line.split("│")[2].strip() for line in text.splitlines() if line.count("│") == 3]
    assert len(report) > 1 and "".join(report) == path  # folded over lines, every character kept


def test_terminal_table_folds_ids_too_wide_for_it():
    from aivc.cli_common import print_table

    con = _terminal(40)
    print_table(("dataset_id", "other_id"), [[DATASET, "x" * 30]], out=con)
    text = con.file.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 40
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.count("│") == 3)
    assert cells == DATASET  # folded over several lines, every character kept


def test_table_cells_are_not_markup():
    from aivc.cli_common import print_table

    con = _terminal(200)
    print_table(("where", "message"), [["X[cell 'A' (row 0)]", "[bold]not bold[/bold]"]], title="findings [x]", out=con)
    text = con.file.getvalue()
    assert "X[cell 'A' (row 0)]" in text and "[bold]not bold[/bold]" in text and "findings [x]" in text


# -- show commands --------------------------------------------------------------------------
def test_features_show_is_a_summary_and_json_the_full_record(long_lake):
    from aivc.store.features import get_version

    ref = f"cell:{EMBEDDING}@1"
    v = get_version(long_lake, ref)
    full = cli("features", "show", ref, "--lake", str(long_lake.root), "--json")
    assert json.loads(full.stdout) == json.loads(json.dumps(v.to_record() | {"ref": v.ref, "sql_view": v.view_name, "sql_alias": v.alias_name}))
    p = cli("features", "show", ref, "--lake", str(long_lake.root))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"{ref}: cell embedding, 80 rows x 4 dims"
    assert len(lines) < 40 and not p.stdout.lstrip().startswith("{")
    top = v.lineage.extra["top_genes"]
    assert len(top) == 50
    assert f"top_genes   {', '.join(top[:5])}, … (50 in all)" in p.stdout
    assert not any(g in p.stdout for g in top[5:])
    assert f"datasets    {DATASET}@1" in p.stdout
    assert f"explained_variance_total  {v.metrics['explained_variance_total']:.4g}" in p.stdout
    assert f"SQL view       cell_{EMBEDDING}_v1 (alias cell_{EMBEDDING}" in p.stdout
    assert lines[-1] == f"full record: aivc features show {ref} --json"


def test_instruments_show_is_a_summary(long_lake):
    p = cli("instruments", "show", f"{INSTRUMENT}@1", "--lake", str(long_lake.root))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{INSTRUMENT}@1: decoder (celltype) reading cell:{EMBEDDING}@1\n")
    assert "classes  T cell (CL:0000084), B cell (CL:0000236)\n" in p.stdout
    assert re.search(r"\n    calibration\.macro_f1 +0\.\d+\n", p.stdout)
    assert not p.stdout.lstrip().startswith("{") and len(p.stdout.splitlines()) < 70
    full = json.loads(cli("instruments", "show", f"{INSTRUMENT}@1", "--lake", str(long_lake.root), "--json").stdout)
    assert full["ref"] == f"{INSTRUMENT}@1" and len(full["outputs"]["classes"]) == 2


def test_models_show_is_a_summary(lake):
    from aivc.store.lineage import Lineage
    from aivc.training.registry import register_model

    genes = [f"ENSG{i:011d}" for i in range(40)]
    register_model(
        lake, "tiny-vae", model_type="cell-vae", state_dict={}, init={"n_genes": 40, "latent_dim": 2}, config={"seed": 0, "optim": {"lr": 0.001}},
        gene_ids=genes, encodings={"batch": ["ds"]}, metrics={"train_loss": 1.5, "validation_loss": 1.25}, lineage=Lineage(datasets=("ds@1",)),
    )  # fmt: skip
    p = cli("models", "show", "tiny-vae@1", "--lake", str(lake.root))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("tiny-vae@1: cell-vae, 40 genes\n")
    assert f"  genes      {', '.join(genes[:5])}, … (40 in all)\n" in p.stdout and genes[5] not in p.stdout
    assert "    optim  lr=0.001\n" in p.stdout and "    validation_loss  1.25\n" in p.stdout
    full = json.loads(cli("models", "show", "tiny-vae@1", "--lake", str(lake.root), "--json").stdout)
    assert full["gene_ids"] == genes


def test_brief_and_metric_rows():
    from aivc.cli_common import brief, metric_rows

    assert brief([f"g{i}" for i in range(12)]) == "g0, g1, g2, g3, g4, … (12 in all)"
    assert brief({"chunk_rows": 4096, "clip": 10.0, "target_sum": 1e4, "x": 0.123456}) == "chunk_rows=4096, clip=10, target_sum=10000, x=0.1235"
    assert brief([{"label": "B cell", "term_id": "CL:0000236"}]) == "B cell (CL:0000236)"
    assert brief({"CL:1": {"label": "a", "n_cells": 5}, "CL:2": {"n": 1}}) == "CL:1 (a), CL:2 (n=1)"
    assert brief(None) == "none" and brief(True) == "true" and brief([]) == "none"
    assert metric_rows({"a": {"f1": 0.5, "acc": 1.0}, "b": [1, 2]}) == [("a.f1", "0.5"), ("a.acc", "1"), ("b", "1, 2")]


# -- report paths and plurals ---------------------------------------------------------------
def test_validate_and_submit_print_both_report_paths_and_plurals(tmp_path, write_submission):
    h5, mf = write_submission(mutate=_negative)
    v = cli("validate", str(h5), "-m", str(mf), "--report-dir", str(tmp_path / "rv"))
    rv = tmp_path / "rv"
    assert f"synth-a: invalid (1 error); 60 cells, 120 genes mapped; report: {rv / 'report.html'}, {rv / 'report.json'}" in v.stdout
    lake = tmp_path / "lake"
    cli("init", "--lake", str(lake))
    s = cli("submit", str(h5), "-m", str(mf), "--lake", str(lake), "--report-dir", str(tmp_path / "rs"))
    rs = tmp_path / "rs"
    assert s.returncode == 1
    assert f"rejected synth-a: 1 error; nothing was written to the lake; report: {rs / 'report.html'}, {rs / 'report.json'}" in s.stdout
    assert (rs / "report.html").is_file() and (rs / "report.json").is_file()
    h5b, mfb = write_submission()
    ok = cli("submit", str(h5b), "-m", str(mfb), "--lake", str(lake))
    res = json.loads(cli("submit", str(h5b), "-m", str(mfb), "--lake", str(lake), "--json").stdout)
    html = Path(res["report"]).with_name("report.html")
    assert html.is_file() and res["report_html"] == str(html)
    assert f"committed synth-a@1: 60 cells x 120 genes; report: {html}, {res['report']}" in ok.stdout
    m = base_manifest()
    m["obs"]["tissue"] = {"value": "UBERON:9999999"}
    h5c, mfc = write_submission(mutate=_negative, manifest=m)
    n = len(json.loads(cli("validate", str(h5c), "-m", str(mfc), "--report-dir", str(tmp_path / "r3"), "--json").stdout)["errors"])
    assert n >= 2
    assert f"synth-a: invalid ({n} errors);" in cli("validate", str(h5c), "-m", str(mfc), "--report-dir", str(tmp_path / "r3")).stdout


def test_invalid_manifest_without_dataset_id_names_the_submission(tmp_path, write_submission):
    m = base_manifest()
    del m["dataset_id"]
    h5, mf = write_submission(manifest=m)
    p = cli("validate", str(h5), "-m", str(mf), "--report-dir", str(tmp_path / "r"))
    sid = json.loads((tmp_path / "r" / "report.json").read_text())["submission_id"]
    assert p.returncode == 1
    assert re.search(rf"^submission {sid}: invalid \(1 error\);", p.stdout, re.M), p.stdout
    assert "None:" not in p.stdout


def test_progress_bars_print_brackets_as_text():
    """Phase names and notes carry file names and ids: they are never read as Rich markup."""
    import io

    from rich.console import Console

    from aivc.progress import RichProgress

    buf = io.StringIO()
    p = RichProgress(console=Console(file=buf, force_terminal=True, width=120, markup=False))
    p.phase("reading X[cell 'AAAC-1' (row 0)] of data[1].h5ad", total=2)
    p.advance(2)
    p.note("waiting for [bold]lake[/bold]")
    p.close()
    out = buf.getvalue()
    assert "X[cell 'AAAC-1' (row 0)] of data[1].h5ad" in out
    assert "waiting for [bold]lake[/bold]" in out
