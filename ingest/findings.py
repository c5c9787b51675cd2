"""The validation result model: findings, harmonization decisions and QC, for reports."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from aivc.errors import Finding

How = Literal[
    "term_id", "label", "synonym", "label_map", "constant", "symbol", "symbol_case", "previous_symbol", "ensembl",
    "ensembl_unversioned",
]


@dataclass(frozen=True)
class Decision:
    """One harmonization decision: a submitted value and what aivc resolved it to."""

    field: str
    submitted: str
    resolved: str
    label: str
    how: How
    n: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "submitted": self.submitted,
            "resolved": self.resolved,
            "label": self.label,
            "how": self.how,
            "n": int(self.n),
        }


@dataclass
class ValidationReport:
    """Everything one validation found, enough to write the JSON and HTML reports.

    ``qc`` holds one row per cell with ``n_counts``, ``n_genes`` and ``pct_mito`` (for
    the QC plots); ``expectations`` holds one dict per Great Expectations result
    (``suite``, ``expectation``, ``column``, ``success``, ``severity``, ``observed``).
    """

    submission_id: str
    data_path: str
    manifest_path: str
    dataset_id: str | None = None
    created_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    findings: list[Finding] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    qc: pd.DataFrame | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not self.errors

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def extend(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)

    def qc_summary(self) -> dict[str, dict[str, float]]:
        if self.qc is None or self.qc.empty:
            return {}
        out: dict[str, dict[str, float]] = {}
        for col in self.qc.columns:
            v = self.qc[col].to_numpy(dtype=float)
            out[col] = {
                "min": float(np.min(v)),
                "median": float(np.median(v)),
                "mean": float(np.mean(v)),
                "max": float(np.max(v)),
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_name": "aivc.validation_report",
            "schema_version": 1,
            "submission_id": self.submission_id,
            "dataset_id": self.dataset_id,
            "data_path": self.data_path,
            "manifest_path": self.manifest_path,
            "created_at": self.created_at,
            "valid": self.valid,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "decisions": [d.to_dict() for d in self.decisions],
            "summary": _jsonable(self.summary),
            "qc": self.qc_summary(),
            "expectations": _jsonable(self.expectations),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
