"""Validation of the measurements besides RNA: protein (ADT) and chromatin (ATAC).

For each further measurement of a submission, :func:`check_measurement` aligns its cells to
the RNA cells, harmonizes its features (antibodies to canonical markers and target genes
with :mod:`aivc.ingest.proteins`; peaks to genomic intervals checked against the assembly
with :mod:`aivc.ingest.intervals`), streams its counts once through the same
:class:`~aivc.ingest.matrix.MatrixChecker` as RNA (integers >= 0, finite, exactly
storable), computes its per-cell QC (protein library size and isotype background; ATAC
fragments per cell, fraction in peaks, TSS enrichment from a fragments file) and runs the
measurement's expectation suite. The result, a :class:`CheckedMeasurement`, carries what the
commit writes: the lake ``var``, the features table, the QC table and the content hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.manifest import DEFAULT_GENOME, Manifest
from aivc.ingest.matrix import MatrixChecker
from aivc.ingest.sources import MeasurementData
from aivc.store.measurements import MeasurementSpec
from aivc.store.measurements import get as get_measurement

__all__ = ["CheckedMeasurement", "check_measurement"]


@dataclass
class CheckedMeasurement:
    """One further measurement, validated; what its commit writes."""

    data: MeasurementData
    spec: MeasurementSpec
    var: pd.DataFrame  # index: feature_id; columns: spec.var_columns
    features: pd.DataFrame  # the version's features table, without soma_joinid
    findings: list[Finding] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    qc: pd.DataFrame | None = None  # per-cell QC, index = RNA barcodes
    content_hash: str = ""
    nnz: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    fragments: Any = None  # aivc.ingest.fragments.FragmentReport of a chromatin measurement
    fragments_path: Path | None = None
    gene_activity: Any = None  # (var, csr cells x genes) derived from the fragments, or None

    @property
    def valid(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


def check_measurement(
    data: MeasurementData,
    manifest: Manifest,
    rna_cells: pd.Index,
    *,
    manifest_dir: Path,
    chunk_rows: int,
    advance: Callable[[int], None] | None = None,
    rna_var: pd.DataFrame | None = None,
    rna_gene_ids: list[str] | None = None,
    rna_keep: np.ndarray | None = None,
) -> CheckedMeasurement:
    """Validate one further measurement of a submission (nothing is written).

    ``rna_var``, ``rna_keep`` and ``rna_gene_ids`` (the RNA features, the committed columns
    and their reference ids) give a chromatin measurement its gene coordinates (a var
    ``interval`` column, as Cell Ranger ARC writes) for TSS enrichment and gene activity.
    """
    spec = get_measurement(data.name)
    findings = data.align(rna_cells)
    if spec.modality == "protein":
        var, features, f, d, keep = _protein_features(data, manifest)
    else:
        var, features, f, d, keep = _peak_features(data, manifest)
    out = CheckedMeasurement(data, spec, var, features, findings + f, d)
    if not data.aligned or data.counts.shape[0] != len(data.cell_ids) or data.counts.shape[1] != len(data.feature_names):
        if data.counts.shape[1] != len(data.feature_names):
            out.findings.append(Finding("MATRIX_SHAPE_MISMATCH", data.where, f"matrix has {data.counts.shape[1]} columns but {len(data.feature_names)} features"))
        return out
    checker = MatrixChecker(cell_ids=rna_cells, gene_names=pd.Index(data.feature_names), keep_cols=keep, mito_cols=np.zeros(0, dtype=np.int64), where=data.where.replace("/", "."))
    qc_acc = _qc_accumulator(data, var, keep)
    for start, chunk in data.iter_chunks(chunk_rows):
        checker.update(start, chunk)
        if qc_acc is not None:
            qc_acc.update(start, chunk[:, keep])
        if advance is not None:
            advance(chunk.shape[0])
    out.findings.extend(f for f in checker.findings() if f.code not in ("MATRIX_EMPTY_CELLS",) or spec.modality == "protein")
    out.nnz = int(checker.nnz)
    h = hashlib.sha256(checker.content_hash.encode())
    h.update("\x00".join(map(str, var.index)).encode())
    qc = qc_acc.frame(rna_cells) if qc_acc is not None else pd.DataFrame(index=rna_cells)
    if spec.modality == "chromatin":
        genes = _gene_intervals(rna_var, rna_keep, rna_gene_ids)
        qc, frag_hash = _fragments(out, manifest, manifest_dir, rna_cells, qc, genes)
        h.update(frag_hash.encode())
    out.qc = qc
    out.content_hash = h.hexdigest()
    if not any(f.code.startswith("MATRIX_") for f in out.findings if f.severity == "error") and len(qc.columns):
        from aivc.ingest.qc import run_expectations

        if spec.modality == "chromatin":
            from aivc.ingest.atac_qc import run_atac_expectations

            qc_findings, results = run_atac_expectations(qc)
        else:
            qc_findings, results = run_expectations(qc, suites=spec.qc_suites)
        out.findings.extend(qc_findings)
        out.summary["expectations"] = results
    out.summary.update({"n_features": int(len(var)), "nnz": out.nnz, "where": data.where})
    return out


# -- protein ---------------------------------------------------------------------------------------
def _protein_features(data: MeasurementData, manifest: Manifest):  # noqa: ANN202 - five values
    from aivc.ingest.proteins import harmonize_panel

    where = _features_where(data)
    panel = harmonize_panel(list(data.feature_names), manifest.organism_name, where=where)
    table = panel.to_frame()
    keep = np.arange(len(table), dtype=np.int64)
    var = pd.DataFrame(
        {
            "feature_name": table["submitted_name"].astype(str).to_numpy(dtype=object),
            "target_gene_id": table["target_gene_id"].astype(str).to_numpy(dtype=object),
            "target_symbol": table["target_symbol"].astype(str).to_numpy(dtype=object),
            "is_isotype": np.where(table["is_isotype"].astype(bool), "true", "false").astype(object),
        },
        index=pd.Index(table["feature_id"].astype(str), name="feature_id"),
    )
    features = pd.DataFrame(
        {
            "feature_id": var.index.to_numpy(dtype=object),
            "feature_name": var["feature_name"].to_numpy(),
            "target_gene_id": var["target_gene_id"].to_numpy(),
            "target_symbol": var["target_symbol"].to_numpy(),
            "is_isotype": table["is_isotype"].astype(bool).to_numpy(),
            "panel": table["panel"].astype(str).to_numpy(dtype=object) if "panel" in table else "",
            "submitted_id": table["submitted_name"].astype(str).to_numpy(dtype=object),
            "submitted_position": keep,
        }
    )
    return var, features, list(panel.findings), list(panel.decisions), keep


def _features_where(data: MeasurementData) -> str:
    spec = data.source.features
    if spec and spec.startswith("uns:"):
        return f"uns[{spec.split(':', 1)[1]!r}]"
    if spec and spec.startswith("var:"):
        return f"{data.where.rsplit('/', 1)[0]}/var[{spec.split(':', 1)[1]!r}]" if "/" in data.where else f"var[{spec.split(':', 1)[1]!r}]"
    return f"{data.where} columns"


def _qc_accumulator(data: MeasurementData, var: pd.DataFrame, keep: np.ndarray) -> Any:
    if data.source.modality != "protein":
        return None
    from aivc.ingest.proteins import ProteinQc

    return _IndexedQc(ProteinQc(var["is_isotype"].to_numpy() == "true"))


class _IndexedQc:
    """A chunk accumulator whose frame is indexed by the RNA cells."""

    def __init__(self, acc: Any) -> None:
        self.acc = acc

    def update(self, start: int, chunk: Any) -> None:
        self.acc.add(chunk)

    def frame(self, index: pd.Index) -> pd.DataFrame:
        return self.acc.frame(index)


# -- chromatin -------------------------------------------------------------------------------------
def _peak_features(data: MeasurementData, manifest: Manifest):  # noqa: ANN202 - five values
    from aivc.ingest.intervals import check_peaks, genome, parse_intervals

    assembly = data.source.genome or DEFAULT_GENOME[manifest.organism_name]
    g = genome(assembly)
    col = data.source.peaks.column if data.source.peaks is not None else None
    where = f"{data.where.rsplit('/', 1)[0]}/var[{col!r}]" if col else f"{data.where.rsplit('/', 1)[0]}/var.index"
    iv = parse_intervals(list(data.feature_names))
    findings = check_peaks(iv, g, where=where)
    contig = np.array([g.resolve(c) or c for c in iv.contig], dtype=object)
    fid = np.array([f"{c}:{s}-{e}" if ok else str(sub) for c, s, e, ok, sub in zip(contig, iv.start, iv.end, iv.ok, iv.submitted, strict=True)], dtype=object)
    keep = np.arange(len(iv), dtype=np.int64)
    var = pd.DataFrame(
        {"feature_name": fid, "chrom": contig, "start": iv.start.astype(str).astype(object), "end": iv.end.astype(str).astype(object), "genome": np.full(len(iv), g.assembly, dtype=object)},
        index=pd.Index(fid, name="feature_id"),
    )
    features = pd.DataFrame(
        {
            "feature_id": fid,
            "feature_name": fid,
            "chrom": contig,
            "start": iv.start,
            "end": iv.end,
            "genome": g.assembly,
            "submitted_id": iv.submitted,
            "submitted_position": keep,
        }
    )
    return var, features, findings, [], keep


def _gene_intervals(rna_var: pd.DataFrame | None, keep: np.ndarray | None, gene_ids: list[str] | None) -> tuple[Any, list[str]] | None:
    """The committed RNA genes' coordinates (var ``interval``), when the submission has them."""
    if rna_var is None or keep is None or gene_ids is None or "interval" not in rna_var.columns:
        return None
    from aivc.ingest.intervals import parse_intervals

    iv = parse_intervals(list(rna_var["interval"].astype(str).to_numpy()[keep]))
    if not iv.ok.any():
        return None
    return iv, list(gene_ids)


def _fragments(out: CheckedMeasurement, manifest: Manifest, manifest_dir: Path, cells: pd.Index, qc: pd.DataFrame, genes: tuple[Any, list[str]] | None) -> tuple[pd.DataFrame, str]:
    """Check the fragments file (if any) and add the per-cell ATAC QC and gene activity it gives."""
    src = out.data.source
    if src.fragments is None:
        out.summary["fragments"] = "none given: fragment QC (fragments per cell, FRiP, TSS enrichment) not computed"
        return qc, ""
    path = Path(src.fragments)
    path = path if path.is_absolute() else manifest_dir / path
    if not path.is_file():
        out.findings.append(Finding("FRAGMENTS_NOT_FOUND", f"measurements/ATAC/fragments {src.fragments!r}", f"the fragments file {path} does not exist (relative paths are relative to the manifest)"))
        return qc, ""
    from aivc.ingest.atac_qc import compute_atac_qc
    from aivc.ingest.intervals import genome, parse_intervals

    g = genome(src.genome or DEFAULT_GENOME[manifest.organism_name])
    peaks = parse_intervals(list(out.var.index))
    gene_iv, gene_ids = genes if genes is not None else (None, None)
    report, atac = compute_atac_qc(path, g, cells, peaks=peaks, genes=gene_iv, gene_names=gene_ids, where=f"measurements/ATAC/fragments {path.name}")
    out.findings.extend(report.findings)
    out.fragments, out.fragments_path = report, path
    out.summary["fragments"] = report.to_dict() | {"pooled_tss_enrichment": atac.pooled_tss_enrichment}
    if gene_iv is not None and report.ok:
        out.gene_activity = (pd.Index(gene_ids, name="gene_id"), atac.gene_activity)
    h = hashlib.sha256()
    with open(path, "rb") as fh:  # the file as submitted is part of the version's content
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    frame = atac.qc.copy()
    frame.index = cells
    return pd.concat([qc, frame], axis=1), h.hexdigest()
