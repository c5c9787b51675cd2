"""Write a validation report as JSON and as one self-contained HTML page.

The HTML page loads nothing from anywhere: styles are inline and the QC plots are inline
SVG (:mod:`aivc.ingest.qc_plots`), so a report can be mailed, archived or opened offline. Every
piece of submitted text is HTML-escaped. Both files are written atomically (a temporary
file in the same folder, then :func:`os.replace`).

Example
-------
>>> from aivc.ingest.findings import ValidationReport
>>> report = ValidationReport(submission_id="s1", data_path="a.h5ad", manifest_path="m.yaml")
>>> json_path, html_path = write_report(report, tmp_path)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivc.errors import Finding
from aivc.ingest.findings import Decision, ValidationReport

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["write_report", "render_html", "MAX_ROWS"]

#: Tables longer than this are cut, with a note saying how many rows were left out.
MAX_ROWS = 500

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  margin:0 auto;max-width:1200px;padding:1.5rem;color:#1f2328;line-height:1.4}
h1{margin:0 0 .5rem 0;font-size:1.6rem} h2{margin-top:2rem;border-bottom:1px solid #d0d7de;
  padding-bottom:.3rem;font-size:1.25rem} h3{font-size:1.05rem;margin-bottom:.3rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa} tr:nth-child(even) td{background:#fbfcfd}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem;
  word-break:break-all}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:1rem;font-weight:600;
  font-size:.8rem;color:#fff}
.status{font-size:1.1rem;padding:.25rem .9rem}
.valid,.pass{background:#1a7f37} .rejected,.fail{background:#cf222e}
.warn{background:#9a6700} .skip{background:#6e7781}
.meta td:first-child{width:12rem;font-weight:600;background:#f6f8fa}
.note{color:#57606a;font-style:italic} .plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0} .plots img{max-width:100%;border:1px solid #d0d7de}
figcaption{font-size:.85rem;color:#57606a}
"""


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir``.

    Parameters
    ----------
    report
        The validation result.
    out_dir
        Folder to write into; created if missing. Existing reports are replaced.

    Returns
    -------
    tuple of Path
        ``(json_path, html_path)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = _finite(report.to_dict())
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    json_path = _write_atomic(out / "report.json", text)
    html_path = _write_atomic(out / "report.html", render_html(report))
    return json_path, html_path


def render_html(report: ValidationReport) -> str:
    """Render the whole report as one HTML page with no external resources."""
    status = "VALID" if report.valid else "REJECTED"
    title = f"aivc validation report: {report.dataset_id or report.submission_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f'<h1>Validation report <span class="badge status {status.lower()}">{status}</span></h1>',
        _header_table(report),
        _summary_section(report),
        _findings_section("Errors", report.errors, "No errors."),
        _findings_section("Warnings", report.warnings, "No warnings."),
        _decisions_section(report.decisions),
        _expectations_section(report.expectations),
        _qc_section(report.qc, report.qc_summary()),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- sections


def _header_table(report: ValidationReport) -> str:
    rows = [
        ("dataset id", report.dataset_id or "(not assigned)"),
        ("submission id", report.submission_id),
        ("created", report.created_at),
        ("data", report.data_path),
        ("manifest", report.manifest_path),
    ]
    body = "".join(f"<tr><td>{_e(k)}</td><td class='mono'>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _summary_section(report: ValidationReport) -> str:
    rows: list[tuple[str, Any]] = [("errors", len(report.errors)), ("warnings", len(report.warnings))]
    rows += [(str(k), v) for k, v in report.summary.items()]
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(_text(v))}</td></tr>" for k, v in rows)
    return f'<h2>Summary</h2><table class="meta">{body}</table>'


def _findings_section(title: str, findings: Sequence[Finding], empty: str) -> str:
    head = f"<h2>{title} ({len(findings)})</h2>"
    if not findings:
        return head + f'<p class="note">{empty}</p>'
    counts = Counter(f.code for f in findings)
    by_code = ", ".join(f"<code>{_e(c)}</code> × {n}" for c, n in counts.most_common())
    rows = [
        (f"<code>{_e(f.code)}</code>", f'<span class="mono">{_e(f.where)}</span>', _e(f.message))
        for f in findings
    ]
    return head + f"<p>By code: {by_code}</p>" + _table(("code", "where", "message"), rows)


#: How a gene was mapped when not by its exact current id (the gene decisions' ``how``).
_GENE_HOWS: dict[str, str] = {
    "symbol_case": "by the symbol in another letter case",
    "previous_symbol": "by an outdated symbol",
    "ensembl_unversioned": "by the Ensembl id without its version",
}


def _decisions_section(decisions: Sequence[Decision]) -> str:
    head = f"<h2>Harmonization decisions ({len(decisions)})</h2>"
    if not decisions:
        return head + '<p class="note">No harmonization decisions recorded.</p>'
    groups: dict[str, list[Decision]] = {}
    for d in decisions:
        groups.setdefault(d.field, []).append(d)
    parts = [head]
    for name in sorted(groups):
        group = sorted(groups[name], key=lambda d: (-int(d.n), d.submitted))
        parts.append(f"<h3>{_e(_decisions_heading(name, group))}</h3>")
        genes = name == "genes"  # one decision per submitted gene: no cell counts
        rows = [
            (
                f'<span class="mono">{_e(d.submitted)}</span>',
                f"<code>{_e(d.resolved)}</code> ({_e(d.label)})",
                _e(_GENE_HOWS.get(d.how, d.how) if genes else d.how),
                *(() if genes else (_num(d.n),)),
            )
            for d in group
        ]
        header = ("submitted", "resolved (symbol)", "how") if genes else ("submitted", "resolved (label)", "how", "cells")
        parts.append(_table(header, rows, numeric=() if genes else (3,)))
    return "".join(parts)


def _decisions_heading(name: str, group: Sequence[Decision]) -> str:
    """``"cell_type: 2 submitted values in 60 cells"``; for genes (one decision per gene, only
    for those not found by their exact current id), how many and how they were mapped."""
    if name == "genes":
        hows = Counter(d.how for d in group)
        ways = ", ".join(f"{n} {_GENE_HOWS.get(how, how)}" for how, n in hows.most_common())
        return f"genes: {_plural(len(group), 'submitted gene')} mapped to a current gene indirectly ({ways})"
    cells = sum(int(d.n) for d in group)
    return f"{name}: {_plural(len(group), 'submitted value')} in {_plural(cells, 'cell')}"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _expectations_section(results: Sequence[Mapping[str, Any]]) -> str:
    head = f"<h2>Great Expectations results ({len(results)})</h2>"
    if not results:
        return head + '<p class="note">No expectations were run.</p>'
    n_failed = sum(1 for r in results if r.get("success") is False)
    rows = []
    for r in results:
        success = r.get("success")
        severity = str(r.get("severity", ""))
        if success is True:
            badge = '<span class="badge pass">PASS</span>'
        elif success is False:
            kind = "warn" if severity == "warning" else "fail"
            badge = f'<span class="badge {kind}">{"WARN" if kind == "warn" else "FAIL"}</span>'
        else:
            badge = '<span class="badge skip">NOT RUN</span>'
        rows.append(
            (
                badge,
                _e(r.get("suite", "")),
                f'<span class="mono">{_e(r.get("expectation", ""))}</span>',
                f"<code>{_e(r.get('column', ''))}</code>",
                f"<code>{_e(r.get('code', ''))}</code>",
                _e(severity),
                _e(_text(r.get("observed"))),
                _e(r.get("description", "")),
            )
        )
    cols = ("result", "suite", "expectation", "column", "code", "severity", "observed", "expected")
    return head + f"<p>{len(results) - n_failed} passed, {n_failed} failed.</p>" + _table(cols, rows)


def _qc_section(qc: pd.DataFrame | None, summary: Mapping[str, Mapping[str, float]]) -> str:
    head = "<h2>QC metrics</h2>"
    if qc is None or qc.empty:
        return head + '<p class="note">No per-cell QC metrics available.</p>'
    parts = [head]
    if summary:
        rows = [
            (f"<code>{_e(col)}</code>", *(_num(stats.get(k)) for k in ("min", "median", "mean", "max")))
            for col, stats in summary.items()
        ]
        parts.append(_table(("metric", "min", "median", "mean", "max"), rows, numeric=(1, 2, 3, 4)))
    plots = qc_figures(qc)
    if plots:
        figures = "".join(
            f'<figure data-plot="{_e(key)}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'
            for key, caption, svg in plots
        )
        parts.append(f'<div class="plots">{figures}</div>')
    else:
        parts.append('<p class="note">No plottable QC columns (n_counts, n_genes, pct_mito).</p>')
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table of already-escaped cells, cut at :data:`MAX_ROWS` rows with a note."""
    num = set(numeric)
    shown = rows[:MAX_ROWS]
    th = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in shown
    )
    note = ""
    if len(rows) > MAX_ROWS:
        note = f'<p class="note">Showing the first {MAX_ROWS} of {len(rows)} rows; report.json lists them all.</p>'
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>{note}"


# ----------------------------------------------------------------------------- plots


def qc_figures(qc: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The QC plots as ``(key, caption, inline SVG)``; those lacking their columns are skipped.

    Drawn by :mod:`aivc.ingest.qc_plots` from numpy histograms (no plotting library).
    """
    from aivc.ingest import qc_plots

    cols = {c: _finite_values(qc, c) for c in ("n_counts", "n_genes", "pct_mito")}
    out: list[tuple[str, str, str]] = []
    if cols["n_counts"] is not None:
        out.append(("n_counts", "n_counts per cell (log scale)", qc_plots.histogram(cols["n_counts"], "n_counts", log=True)))
    if cols["n_genes"] is not None:
        out.append(("n_genes", "genes detected per cell", qc_plots.histogram(cols["n_genes"], "n_genes")))
    if cols["pct_mito"] is not None:
        out.append(("pct_mito", "mitochondrial counts (%) per cell", qc_plots.histogram(cols["pct_mito"], "pct_mito")))
    if {"n_counts", "n_genes"} <= set(map(str, qc.columns)):
        x, y = _float_column(qc, "n_counts"), _float_column(qc, "n_genes")
        if x is not None and y is not None:
            c = _float_column(qc, "pct_mito")
            svg = qc_plots.scatter(x, y, c, xlabel="n_counts", ylabel="n_genes", clabel="pct_mito")
            out.append(("scatter", "n_counts vs n_genes, coloured by pct_mito", svg))
    return out


def _float_column(qc: pd.DataFrame, col: str) -> np.ndarray | None:
    if col not in qc.columns:
        return None
    try:
        return np.asarray(qc[col], dtype=float)
    except (TypeError, ValueError):
        return None


def _finite_values(qc: pd.DataFrame, col: str) -> np.ndarray | None:
    values = _float_column(qc, col)
    return None if values is None else values[np.isfinite(values)]


# ----------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    v = float(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_finite(value), ensure_ascii=False, default=str)
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _finite(obj: Any) -> Any:
    """Make ``obj`` strict JSON: NaN/inf become ``None``, numpy scalars become Python ones."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` so that readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
