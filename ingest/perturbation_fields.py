"""Harmonize and validate the optional ``perturbation_targets`` cell field of a screen.

A perturbation screen (CRISPR Perturb-seq and the like) declares in its manifest the obs column
holding each cell's target genes: ``obs: {perturbation_targets: {column: guide_target}}``. A
value lists one or more genes joined by ``;`` (``"TP53"``, ``"TP53;MYC"``), as Ensembl ids or
symbols, resolved to the organism's reference gene ids exactly as the var genes of a submission
are (:mod:`aivc.ingest.genes`); ``"control"`` (any case), an empty string or a missing value
marks a non-targeting control. ``label_map`` may translate guide names first (``{"NTC":
"control", "sgTP53": "TP53"}``). Work is done once per distinct value.

The harmonized cells carry two more columns, written to the dataset's ``cells.parquet`` and so
visible in the ``cells`` SQL view (datasets that are not screens read NULL there):

``perturbation_targets``
    The sorted reference ids joined by ``;`` (``"ENSG00000136997;ENSG00000141510"``), or
    ``"control"``.
``perturbation_target_symbols``
    Their symbols in the same order, or ``"control"``.

Problems are :class:`~aivc.errors.Finding` s naming the column, the first offending row and
how many rows share it: ``PERTURBATION_UNKNOWN_GENE`` (not in the reference; closest symbols
offered), ``PERTURBATION_AMBIGUOUS_GENE`` (a symbol of several genes), ``PERTURBATION_BAD_VALUE``
(an empty target, or ``control`` combined with genes) and ``PERTURBATION_NO_CONTROLS`` (a screen
without control cells, whose effects cannot be measured).

Example
-------
>>> from aivc.ingest.manifest import Manifest
>>> obs_spec = {f: {"value": v} for f, v in [("assay", "EFO:0009922"), ("cell_type", "unknown"),
...     ("development_stage", "unknown"), ("disease", "normal"), ("self_reported_ethnicity", "unknown"),
...     ("sex", "unknown"), ("tissue", "blood"), ("suspension_type", "cell"), ("donor_id", "d1")]}
>>> m = Manifest.model_validate({"dataset_id": "screen", "title": "t", "license": "CC0", "access": "public",
...     "organism": "NCBITaxon:9606", "genes": {"id_type": "symbol"},
...     "obs": obs_spec | {"perturbation_targets": {"column": "guide"}}})
>>> res = harmonize_perturbations(pd.DataFrame({"guide": ["TP53", "", "MYC;TP53"]}, index=["a", "b", "c"]), m)
>>> res.frame["perturbation_target_symbols"].tolist(), res.findings
(['TP53', 'control', 'MYC;TP53'], [])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.findings import Decision, How
from aivc.ingest.genes import _ENSEMBL, _organism_case, _symbol_index
from aivc.ingest.manifest import Manifest
from aivc.ingest.obs_fields import _factorize, _missing_column, _rows
from aivc.store.reference import gene_reference, previous_symbols

FIELD = "perturbation_targets"
CONTROL = "control"
DELIMITER = ";"
#: Columns a screen's harmonized cells gain (and its ``cells.parquet``), in order.
PERTURBATION_COLUMNS: tuple[str, ...] = ("perturbation_targets", "perturbation_target_symbols")

PERTURBATION_UNKNOWN_GENE = "PERTURBATION_UNKNOWN_GENE"
PERTURBATION_AMBIGUOUS_GENE = "PERTURBATION_AMBIGUOUS_GENE"
PERTURBATION_BAD_VALUE = "PERTURBATION_BAD_VALUE"
PERTURBATION_NO_CONTROLS = "PERTURBATION_NO_CONTROLS"
#: Every code :func:`harmonize_perturbations` can report (``OBS_COLUMN_MISSING`` too).
PERTURBATION_CODES: tuple[str, ...] = (
    PERTURBATION_UNKNOWN_GENE,
    PERTURBATION_AMBIGUOUS_GENE,
    PERTURBATION_BAD_VALUE,
    PERTURBATION_NO_CONTROLS,
)
_HOW_RANK: dict[str, int] = {"ensembl": 0, "ensembl_unversioned": 1, "symbol": 2, "symbol_case": 3, "previous_symbol": 4, "label_map": 5}
_MAX_SUGGESTIONS = 20  # distinct unknown genes that get "did you mean" (difflib over ~60k symbols)


@dataclass
class PerturbationResult:
    """The harmonized ``PERTURBATION_COLUMNS`` (index of the submitted obs), findings, decisions."""

    frame: pd.DataFrame
    findings: list[Finding] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


@dataclass(frozen=True)
class GeneResolution:
    """One submitted gene identifier resolved against the reference (``gene_id`` None: failed)."""

    gene_id: str | None
    symbol: str = ""
    how: How = "symbol"
    code: str = ""
    message: str = ""


def resolve_gene(identifier: str, organism_name: str, *, suggest: bool = True) -> GeneResolution:
    """Resolve one gene symbol or Ensembl id to the reference, as submissions' var genes are.

    Examples
    --------
    >>> resolve_gene("tp53", "homo_sapiens").gene_id
    'ENSG00000141510'
    >>> resolve_gene("TP53X", "homo_sapiens").code
    'PERTURBATION_UNKNOWN_GENE'
    """
    ref = gene_reference(organism_name)
    text = identifier.strip()
    m = _ENSEMBL.match(text)
    if m and not m.group(3):
        gid = m.group(1)
        if gid in ref.index:
            return GeneResolution(gid, str(ref.at[gid, "symbol"]), "ensembl_unversioned" if m.group(2) else "ensembl")
        return GeneResolution(None, code=PERTURBATION_UNKNOWN_GENE, message=f"{text!r} is not a gene id of the {organism_name} reference")
    by_symbol = _symbol_index(organism_name)
    ids, how = by_symbol.get(text), "symbol"
    if ids is None:
        ids, how = by_symbol.get(_organism_case(text, organism_name)), "symbol_case"
    if ids is None:
        by_previous = previous_symbols(organism_name)
        ids, how = by_previous.get(text) or by_previous.get(_organism_case(text, organism_name)), "previous_symbol"
    if ids is None:
        close = difflib.get_close_matches(_organism_case(text, organism_name), list(by_symbol), n=3, cutoff=0.8) if suggest else []
        hint = f"; closest symbols: {', '.join(close)}" if close else "; give an Ensembl id or a current symbol"
        return GeneResolution(None, code=PERTURBATION_UNKNOWN_GENE, message=f"{text!r} is not a gene of the {organism_name} reference{hint}")
    if len(ids) > 1:
        return GeneResolution(
            None,
            code=PERTURBATION_AMBIGUOUS_GENE,
            message=f"symbol {text!r} names {len(ids)} reference genes ({', '.join(ids[:5])}); give the Ensembl id",
        )
    return GeneResolution(ids[0], str(ref.at[ids[0], "symbol"]), how)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Outcome:
    ids: str = ""
    symbols: str = ""
    how: How | None = None
    problems: tuple[tuple[str, str], ...] = ()


def _resolve_value(raw: object, label_map: dict[str, str], organism_name: str, budget: list[int]) -> _Outcome:
    submitted = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw)
    mapped = label_map.get(submitted, label_map.get(submitted.strip()))
    text = (mapped if mapped is not None else submitted).strip()
    shown = repr(submitted) if mapped is None else f"{submitted!r} (label_map -> {mapped!r})"
    if not text or text.casefold() == CONTROL:
        return _Outcome(CONTROL, CONTROL, "label_map" if mapped is not None else None)
    parts = [p.strip() for p in text.split(DELIMITER)]
    if any(not p for p in parts):
        return _Outcome(problems=((PERTURBATION_BAD_VALUE, f"{shown} has an empty target; join target genes with {DELIMITER!r}, e.g. 'TP53;MYC'"),))
    if any(p.casefold() == CONTROL for p in parts):
        return _Outcome(problems=((PERTURBATION_BAD_VALUE, f"{shown} combines 'control' with target genes; 'control' must stand alone"),))
    resolved: dict[str, str] = {}
    hows: list[str] = []
    problems: list[tuple[str, str]] = []
    for p in parts:
        r = resolve_gene(p, organism_name, suggest=budget[0] > 0)
        if r.gene_id is None:
            budget[0] -= r.code == PERTURBATION_UNKNOWN_GENE
            problems.append((r.code, r.message if len(parts) == 1 and mapped is None else f"{r.message} (in {shown})"))
            continue
        resolved[r.gene_id] = r.symbol
        hows.append(r.how)
    if problems:
        return _Outcome(problems=tuple(problems))
    ids = sorted(resolved)
    how: How = "label_map" if mapped is not None else max(hows, key=lambda h: _HOW_RANK[h])  # type: ignore[assignment]
    return _Outcome(DELIMITER.join(ids), DELIMITER.join(resolved[i] for i in ids), how)


def harmonize_perturbations(obs: pd.DataFrame, manifest: Manifest) -> PerturbationResult:
    """Resolve and validate the perturbation targets of ``obs`` (the manifest must declare them).

    Parameters
    ----------
    obs
        The submitted cell metadata (its index is kept).
    manifest
        A manifest with ``obs.perturbation_targets`` (``manifest.is_perturbation_screen``).

    Returns
    -------
    PerturbationResult
        ``frame`` with :data:`PERTURBATION_COLUMNS` (unresolvable values are left as submitted,
        their symbols empty), one finding per (distinct value, problem) and one decision per
        distinct resolved non-control value (and per label_map translation).
    """
    spec = manifest.obs[FIELD]
    assert spec.column is not None  # the manifest model enforces it
    column = spec.column
    n = len(obs)
    if column not in obs.columns:
        empty = pd.DataFrame({c: np.full(n, "", dtype=object) for c in PERTURBATION_COLUMNS}, index=obs.index)
        return PerturbationResult(empty, [_missing_column(FIELD, column, obs)])
    codes, uniques = _factorize(obs[column])
    uniques.append(None)  # missing values (code -1) are controls
    codes = np.where(codes < 0, len(uniques) - 1, codes)
    counts = np.bincount(codes, minlength=len(uniques))
    first = np.full(len(uniques), n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(n))
    ids = np.empty(len(uniques), dtype=object)
    symbols = np.empty(len(uniques), dtype=object)
    where = f"obs[{column!r}] ({FIELD})"
    findings: list[Finding] = []
    decisions: list[Decision] = []
    budget = [_MAX_SUGGESTIONS]
    order = sorted((u for u in range(len(uniques)) if counts[u]), key=lambda u: str(uniques[u]))
    for u in order:
        out = _resolve_value(uniques[u], dict(spec.label_map), manifest.organism_name, budget)
        if out.problems:
            ids[u], symbols[u] = ("" if uniques[u] is None else str(uniques[u])), ""
            for code, message in out.problems:
                findings.append(Finding(code, f"{where} {_rows(obs.index, int(first[u]), int(counts[u]))}", message))
            continue
        ids[u], symbols[u] = out.ids, out.symbols
        if out.how is not None:
            decisions.append(Decision(FIELD, str(uniques[u]), out.ids, out.symbols, out.how, int(counts[u])))
    is_control = np.array([ids[u] == CONTROL for u in range(len(uniques))], dtype=bool)
    if n and not (counts * is_control).any():
        findings.append(
            Finding(
                PERTURBATION_NO_CONTROLS,
                where,
                f"none of the {n} cells is a control ('control', empty or missing); a screen needs control cells "
                "to measure effects against (label_map can translate e.g. 'non-targeting' to 'control')",
            )
        )
    frame = pd.DataFrame({"perturbation_targets": ids[codes], "perturbation_target_symbols": symbols[codes]}, index=obs.index)
    return PerturbationResult(frame, findings, decisions)


def split_targets(value: str | None) -> tuple[str, ...]:
    """The target ids of a harmonized ``perturbation_targets`` value (``()`` for a control).

    Examples
    --------
    >>> split_targets("ENSG1;ENSG2"), split_targets("control"), split_targets(None)
    (('ENSG1', 'ENSG2'), (), ())
    """
    if value is None or (isinstance(value, float) and np.isnan(value)) or value in ("", CONTROL):
        return ()
    return tuple(value.split(DELIMITER))
