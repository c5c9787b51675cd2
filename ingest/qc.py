"""Data-quality expectations over the per-cell QC table, run with Great Expectations.

The expectations live as Great Expectations 1.x suites in ``schemas/expectations/*.json``
(the format ``gx.ExpectationSuite(**d)`` / ``suite.to_json_dict()`` round-trips). Each
expectation carries aivc's extras in its ``meta``:

``code``
    The :class:`~aivc.errors.Finding` code a failure produces, e.g. ``"QC_PCT_MITO_HIGH"``
    (default: ``"QC_" + expectation type in upper case``).
``description``
    What is expected, in words, with ``$name`` placeholders for suite parameters.

GX's own ``severity`` decides what a failure means: ``"critical"`` becomes an aivc
``"error"`` (rejects the submission), ``"warning"`` and ``"info"`` become ``"warning"``.
Run-time values enter through GX suite parameters (``{"$PARAMETER": "max_pct_mito"}``),
whose defaults sit in the suite's top-level ``meta["parameters"]``.

Example
-------
>>> import pandas as pd
>>> qc = pd.DataFrame({"n_counts": [1500, 0], "n_genes": [700, 0], "pct_mito": [3.0, 0.0]},
...                   index=["AAAC-1", "AAAG-1"])
>>> findings, results = run_expectations(qc, n_genes_total=30000)  # doctest: +SKIP
>>> sorted({f.code for f in findings})  # doctest: +SKIP
['QC_COLUMN_MISSING', 'QC_EMPTY_CELL', 'QC_N_GENES_RANGE']
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import gc
import json
import logging
import os
import string
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pandas as pd

from aivc.errors import Finding, Severity

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult

__all__ = ["load_suites", "run_expectations"]

#: How many offending rows a finding names (in ``where`` and in ``message``).
N_EXAMPLES = 3
#: How many offending values GX returns per expectation (``partial_unexpected_count``).
_PARTIAL_COUNT = 20
_INDEX_KEY = "aivc_index"
_COLUMN_KEYS = ("column", "column_A", "column_B")


#: The suites of the RNA per-cell table (``RNA.qc_suites``), the default of :func:`run_expectations`.
RNA_SUITES: tuple[str, ...] = ("cell_qc", "obs_metadata")


def load_suites(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Read expectation suites shipped in ``schemas/expectations/<name>.json``.

    Parameters
    ----------
    names
        The suites to read, in that order; ``None`` reads every shipped suite, sorted by
        file name.

    Raises
    ------
    ValueError
        A named suite is not shipped.
    """
    folder = resources.files("aivc.schemas").joinpath("expectations")
    if names is None:
        files = sorted((f for f in folder.iterdir() if f.name.endswith(".json")), key=lambda f: f.name)
    else:
        files = [folder.joinpath(f"{n}.json") for n in names]
        missing = [n for n, f in zip(names, files, strict=True) if not f.is_file()]
        if missing:
            raise ValueError(f"no expectation suite named {', '.join(missing)} in schemas/expectations")
    return [json.loads(f.read_text(encoding="utf-8")) for f in files]


def run_expectations(
    qc: pd.DataFrame,
    *,
    n_genes_total: int | None = None,
    max_pct_mito: float | None = None,
    suites: Sequence[str] = RNA_SUITES,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Run expectation suites (default: the RNA ones) on a per-cell QC table.

    Parameters
    ----------
    qc
        One row per cell, indexed by cell label, with ``n_counts``, ``n_genes``,
        ``pct_mito`` and the harmonized ``*_ontology_term_id`` and ``donor_id`` columns.
    n_genes_total
        Number of genes in the counts matrix (upper bound of ``n_genes``).
    max_pct_mito
        Override of the ``pct_mito`` threshold (the manifest's ``qc.max_pct_mito``);
        ``None`` keeps the suite default.
    suites
        Names of the suites to run (a measurement's ``qc_suites``).
    parameters
        Further suite parameters (a suite takes those it declares).

    Returns
    -------
    findings
        One :class:`Finding` per failed expectation (and per missing column).
    results
        One dict per expectation, for the report: ``suite``, ``expectation``, ``column``,
        ``code``, ``success``, ``severity``, ``observed``, ``description``,
        ``unexpected_count``.
    """
    if n_genes_total is not None and n_genes_total < 1:
        raise ValueError(f"n_genes_total must be at least 1, got {n_genes_total}")
    if max_pct_mito is not None and not 0 <= max_pct_mito <= 100:
        raise ValueError(f"max_pct_mito must be between 0 and 100, got {max_pct_mito}")
    if len(qc) == 0:
        finding = Finding("QC_NO_CELLS", "qc table", "the dataset has no cells; submit at least one cell")
        return [finding], []
    given: dict[str, Any] = dict(parameters or {})
    if n_genes_total is not None:
        given["n_genes_total"] = int(n_genes_total)
    if max_pct_mito is not None:
        given["max_pct_mito"] = float(max_pct_mito)

    findings: list[Finding] = []
    results: list[dict[str, Any]] = []
    planned = [_plan(suite, set(map(str, qc.columns)), given) for suite in load_suites(suites)]
    for plan in planned:
        findings.extend(plan.missing_findings())
    gx_results = _validate(qc, planned)
    for plan, suite_results in zip(planned, gx_results, strict=True):
        rows: list[_Row] = list(plan.missing_rows)
        for r in suite_results:
            finding, row = _convert(plan.name, r, plan.parameters)
            rows.append((int(r.expectation_config.meta.get(_INDEX_KEY, 0)), finding, row))
        for _, finding, row in sorted(rows, key=lambda t: t[0]):
            results.append(row)
            if finding is not None:
                findings.append(finding)
    return findings, results


_Row = tuple[int, "Finding | None", dict[str, Any]]


@dataclass
class _Plan:
    """One suite ready to run: parameters resolved, expectations on missing columns set aside."""

    name: str
    suite: dict[str, Any]
    parameters: dict[str, Any]
    missing: dict[str, int] = field(default_factory=dict)  # column -> expectations needing it
    missing_rows: list[_Row] = field(default_factory=list)

    def missing_findings(self) -> list[Finding]:
        return [
            Finding(
                "QC_COLUMN_MISSING",
                f"qc column '{col}'",
                f"the per-cell table has no column '{col}', so {n} expectation(s) of suite "
                f"'{self.name}' could not run; the harmonized metadata must provide it",
            )
            for col, n in self.missing.items()
        ]


def _plan(suite: dict[str, Any], columns: set[str], given: Mapping[str, Any]) -> _Plan:
    name = str(suite.get("name", "suite"))
    meta = {k: v for k, v in suite.get("meta", {}).items() if k != "great_expectations_version"}
    declared: dict[str, Any] = meta.get("parameters", {})
    parameters = {k: (v or {}).get("default") for k, v in declared.items()}
    parameters.update({k: v for k, v in given.items() if k in declared})
    unset = sorted(k for k, v in parameters.items() if v is None)
    if unset:
        raise ValueError(f"suite '{name}' needs parameter(s) {', '.join(unset)}")
    plan = _Plan(name, {"name": name, "expectations": [], "meta": meta}, parameters)
    for i, exp in enumerate(suite.get("expectations", [])):
        exp = copy.deepcopy(exp)
        exp.setdefault("meta", {})[_INDEX_KEY] = i
        kwargs = exp.get("kwargs", {})
        absent = [c for c in _columns(kwargs) if c not in columns]
        if not absent:
            plan.suite["expectations"].append(exp)
            continue
        for col in absent:
            plan.missing[col] = plan.missing.get(col, 0) + 1
        row = _row(name, exp["type"], kwargs, exp["meta"], _severity(exp.get("severity")), parameters)
        row.update(success=False, observed=f"column missing: {', '.join(absent)}")
        plan.missing_rows.append((i, None, row))
    return plan


def _validate(qc: pd.DataFrame, plans: Sequence[_Plan]) -> list[list[ExpectationValidationResult]]:
    """Validate each planned suite against an in-memory batch of the columns it uses."""
    with _quiet_gx():
        gx = _import_gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = context.data_sources.add_pandas("aivc_qc").add_dataframe_asset("cells")
        batch_definition = asset.add_batch_definition_whole_dataframe("all_cells")
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL_COUNT}
        out: list[list[ExpectationValidationResult]] = []
        for plan in plans:
            if not plan.suite["expectations"]:
                out.append([])
                continue
            # Only the suite's own columns: GX copies the whole frame for every row filter.
            columns = list(dict.fromkeys(c for e in plan.suite["expectations"] for c in _columns(e["kwargs"])))
            frame = qc[columns]
            # A named index makes GX report offending rows as dicts instead of labels.
            frame.index = frame.index.rename(None)
            batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
            suite = gx.ExpectationSuite(**plan.suite)
            res = batch.validate(suite, result_format=result_format, expectation_parameters=plan.parameters)
            out.append(list(res.results))
        return out


def _import_gx() -> ModuleType:
    """Import Great Expectations (the first time: ~2 s, ~1,300 modules) as cheaply as it goes.

    GX has one entry point: importing any of its submodules runs its package ``__init__``,
    which imports every expectation, datasource and checkpoint module, scipy.stats and altair
    with them, so a smaller import is not available. Two costs around it are avoidable:

    - the cycle collector's passes during and just after the import, which walk every object
      created so far and find no garbage (the new modules stay alive): it is paused for the
      import, and the import's objects go to the oldest generation (~0.5 s in all);
    - the interpreter's exit, whose final collections walk the ~300,000 container objects
      the process then holds (~1 s): an ``atexit`` handler moves them to the collector's
      permanent generation (:func:`gc.freeze`) first, so the process ends without that walk.
      Objects are still freed by reference counting, and the handlers registered before this
      one still run (after it).
    """
    loaded = sys.modules.get("great_expectations")
    if loaded is not None:
        return loaded
    enabled = gc.isenabled()
    gc.disable()
    try:
        import great_expectations as gx
    finally:
        if gc.get_freeze_count() == 0:  # (never undo a freeze the application made itself)
            # Straight into the oldest generation: otherwise the first young-generation
            # passes after the import walk every object it created (~0.2 s).
            gc.freeze()
            gc.unfreeze()
        if enabled:
            gc.enable()
    atexit.register(gc.freeze)
    return gx


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Run Great Expectations without analytics, progress bars, log lines or warnings."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _convert(
    suite: str, r: ExpectationValidationResult, parameters: Mapping[str, Any]
) -> tuple[Finding | None, dict[str, Any]]:
    """Turn one GX result into a report row and, if it failed, a Finding."""
    cfg = r.expectation_config
    kwargs, meta, etype = dict(cfg.kwargs), dict(cfg.meta), str(cfg.type)
    severity = _severity(cfg.severity)
    row = _row(suite, etype, kwargs, meta, severity, parameters)
    result: dict[str, Any] = dict(r.result or {})
    error = _exception(r.exception_info)
    if error is not None:
        row.update(success=False, observed=f"could not run: {error}")
        where = f"qc column '{row['column']}'"
        msg = f"expectation {etype} could not run on the QC table: {error}"
        return Finding("QC_EXPECTATION_ERROR", where, msg, "error"), row
    row["success"] = bool(r.success)
    if "unexpected_count" in result:
        row["unexpected_count"] = int(result.get("unexpected_count") or 0)
        row["observed"] = _observed_map(result)
    else:
        row["observed"] = _fmt(result.get("observed_value"))
    if r.success:
        return None, row
    return _finding(row, etype, kwargs, result), row


def _row(
    suite: str,
    etype: str,
    kwargs: Mapping[str, Any],
    meta: Mapping[str, Any],
    severity: Severity,
    parameters: Mapping[str, Any],
) -> dict[str, Any]:
    template = string.Template(str(meta.get("description", "")))
    return {
        "suite": suite,
        "expectation": etype,
        "column": ", ".join(_columns(kwargs)),
        "code": str(meta.get("code") or f"QC_{etype.upper()}"),
        "success": None,
        "severity": severity,
        "observed": None,
        "description": template.safe_substitute({k: _fmt(v) for k, v in parameters.items()}),
        "unexpected_count": None,
    }


def _finding(row: dict[str, Any], etype: str, kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> Finding:
    """Word a failed expectation: what was observed, what is allowed, the first offenders."""
    cols = _columns(kwargs)
    where = "qc column" + ("s " if len(cols) > 1 else " ") + ", ".join(f"'{c}'" for c in cols)
    expected = f"expected: {row['description']}" if row["description"] else f"expected: {etype}"
    if "unexpected_count" not in result:
        message = f"{_aggregate(etype, kwargs)} is {row['observed']} ({expected})"
        return Finding(row["code"], where, message, row["severity"])
    labels, examples = _examples(kwargs, result)
    count = int(result.get("unexpected_count") or 0)
    if labels:
        more = count - len(labels)
        where += " rows " + ", ".join(labels) + (f" and {more} more" if more > 0 else "")
    mostly = kwargs.get("mostly")  # without it no cell may fail, which the expected text says
    allowed = "" if mostly is None else f" (allowed: at most {_fmt(round((1 - float(mostly)) * 100, 6))}%)"
    message = f"{row['observed']} {_violation(etype, kwargs)}{allowed}"
    if examples:
        message += f"; first: {examples}"
    return Finding(row["code"], where, f"{message}; {expected}", row["severity"])


def _observed_map(result: Mapping[str, Any]) -> str:
    count = int(result.get("unexpected_count") or 0)
    n = int(result.get("element_count") or 0)
    pct = 100.0 * count / n if n else 0.0
    return f"{_pct(pct)} of cells ({count} of {n})"


def _violation(etype: str, kwargs: Mapping[str, Any]) -> str:
    col = kwargs.get("column")
    if etype == "expect_column_values_to_not_be_null":
        return f"have no {col}"
    if etype == "expect_column_values_to_be_between":
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        if lo is not None and hi is not None:
            return f"have {col} outside [{_fmt(lo)}, {_fmt(hi)}]"
        return f"have {col} > {_fmt(hi)}" if hi is not None else f"have {col} < {_fmt(lo)}"
    if etype == "expect_column_pair_values_a_to_be_greater_than_b":
        op = ">" if kwargs.get("or_equal") else ">="
        return f"have {kwargs.get('column_B')} {op} {kwargs.get('column_A')}"
    if etype == "expect_column_values_to_match_regex":
        return f"have a malformed {col}"
    if etype == "expect_column_values_to_not_match_regex":
        return f"have a {col} matching {kwargs.get('regex')!r}"
    return f"fail {etype} on {', '.join(_columns(kwargs))}"


def _aggregate(etype: str, kwargs: Mapping[str, Any]) -> str:
    stat = etype.removeprefix("expect_column_").split("_to_")[0]
    return f"{stat} of {kwargs.get('column')}"


def _examples(kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> tuple[list[str], str]:
    """The first offending row labels, and ``'label' (value)`` pairs for the message."""
    index = list(result.get("partial_unexpected_index_list") or [])[:N_EXAMPLES]
    values = list(result.get("partial_unexpected_list") or [])[: len(index)]
    labels = [_label(i) for i in index]
    shown = []
    for label, value in zip(labels, values + [None] * (len(labels) - len(values)), strict=True):
        if isinstance(value, (list, tuple)) and "column_A" in kwargs:
            value_text = f"{kwargs['column_A']}={_fmt(value[0])}, {kwargs['column_B']}={_fmt(value[1])}"
        else:
            value_text = _fmt(value)
        shown.append(f"{label} ({value_text})")
    return labels, ", ".join(shown)


def _label(index_item: Any) -> str:
    if isinstance(index_item, Mapping):  # GX's shape when the index is named
        index_item = next(iter(index_item.values())) if len(index_item) == 1 else list(index_item.values())[-1]
    return repr(index_item) if isinstance(index_item, str) else str(index_item)


def _columns(kwargs: Mapping[str, Any]) -> list[str]:
    cols = [str(kwargs[k]) for k in _COLUMN_KEYS if k in kwargs]
    return cols + [str(c) for c in kwargs.get("column_list", [])]


def _severity(gx_severity: Any) -> Severity:
    value = str(getattr(gx_severity, "value", gx_severity) or "critical").lower()
    return "error" if value == "critical" else "warning"


def _exception(info: Any) -> str | None:
    """The message of an exception GX caught while computing an expectation, if any."""
    if not isinstance(info, Mapping) or not info:
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, Mapping)]
    for entry in entries:
        if entry.get("raised_exception", True) and entry.get("exception_message"):
            return str(entry["exception_message"]).splitlines()[0][:300]
    return None


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "missing"
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        with contextlib.suppress(ValueError, TypeError):
            value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _pct(p: float) -> str:
    return "0%" if p == 0 else f"{p:.3g}%"
