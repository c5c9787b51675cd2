"""The submission lifecycle: validate and harmonize (dry run), then commit atomically.

``validate_submission`` reads the manifest and the data (streaming the matrix once),
and returns a :class:`Prepared` with the full :class:`ValidationReport`. It never
touches a lake. ``submit`` validates, then under the lake's write lock recovers any
interrupted write, recognises identical resubmissions, appends the cells to the
organism's SOMA experiment at one timestamp and publishes the version by writing its
catalog record last.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from aivc.errors import Finding, ManifestError, UsageError
from aivc.ingest.findings import ValidationReport
from aivc.ingest.genes import GeneMapping, map_genes
from aivc.ingest.manifest import Manifest, parse_manifest, read_manifest_data, submitted_dataset_id
from aivc.ingest.matrix import MatrixChecker
from aivc.ingest.readers import SubmittedData, UnreadableDataError
from aivc.progress import NullProgress, Progress
from aivc.store import soma_io
from aivc.store import artifacts
from aivc.store.artifacts import VersionWriter, submission_dir
from aivc.store.catalog import Catalog, DatasetVersion, Measured
from aivc.store.lake import Lake, utcnow
from aivc.store.measurements import GENE_ACTIVITY, RNA
from aivc.store.recovery import recover

DEFAULT_CHUNK_ROWS = 4096
#: Crash points for fault-injection tests (``AIVC_FAULT=<point>`` makes the process exit
#: abruptly there, as a kill would).
FAULT_POINTS = ("after_soma_write", "after_artifacts", "before_record", "after_tables_published")


def _fault(point: str) -> None:
    if os.environ.get("AIVC_FAULT") == point:
        os._exit(97)


def new_submission_id() -> str:
    import datetime as dt

    return f"sub-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass
class Prepared:
    """A validated (or rejected) submission, ready to commit when ``report.valid``."""

    manifest: Manifest | None
    data: SubmittedData | None
    report: ValidationReport
    obs: pd.DataFrame | None = None  # harmonized standard fields, index = submitted barcodes
    genes: GeneMapping | None = None
    content_hash: str | None = None
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    others: dict[str, Any] = field(default_factory=dict)  # name -> modalities.CheckedMeasurement
    spatial: Any = None  # spatial_checks.CheckedSpatial of a spatial submission

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        for m in self.others.values():
            m.data.close()


@dataclass
class SubmitResult:
    status: Literal["committed", "unchanged", "rejected", "valid"]
    dataset_id: str | None
    version: int | None
    n_cells: int
    n_genes: int
    report: str | None
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    submission_id: str | None = None
    measurements: dict[str, int] = field(default_factory=dict)  # further measurements: name -> features
    spatial: dict[str, Any] = field(default_factory=dict)  # technology, n_located, images

    def to_dict(self) -> dict[str, Any]:
        return {
            "measurements": {"RNA": self.n_genes, **self.measurements},
            "spatial": self.spatial or None,
            "status": self.status,
            "dataset_id": self.dataset_id,
            "version": self.version,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "report": self.report,
            "submission_id": self.submission_id,
            "errors": [{"code": f.code, "where": f.where, "message": f.message} for f in self.errors],
            "warnings": [{"code": f.code, "where": f.where, "message": f.message} for f in self.warnings],
        }


# -- validation ------------------------------------------------------------------------
def _structure_findings(data: SubmittedData) -> list[Finding]:
    out: list[Finding] = []
    n_rows, n_cols = data.counts.shape
    if n_rows != data.n_obs or n_cols != data.n_vars:
        out.append(
            Finding(
                "MATRIX_SHAPE_MISMATCH",
                data.counts.path,
                f"matrix is {n_rows} x {n_cols} but obs has {data.n_obs} rows and var has {data.n_vars}; they must agree",
            )
        )
    if data.n_obs == 0 or data.n_vars == 0:
        out.append(Finding("DATASET_EMPTY", data.counts.path, f"the dataset has {data.n_obs} cells and {data.n_vars} genes; nothing to submit"))
    idx = data.obs.index.astype(str)
    dup = idx.duplicated()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        out.append(
            Finding(
                "OBS_DUPLICATE_IDS",
                f"obs.index row {first}",
                f"{int(dup.sum())} cell ids occur more than once, first {idx[first]!r}; cell ids must be unique",
            )
        )
    empty = idx == ""
    if empty.any():
        out.append(Finding("OBS_EMPTY_ID", f"obs.index row {int(np.flatnonzero(empty)[0])}", "cell ids must not be empty"))
    return out


def _obsm_findings(data: SubmittedData) -> list[Finding]:
    out: list[Finding] = []
    for key in data.obsm_keys:
        try:
            arr = data.read_obsm(key)
        except Exception as exc:  # noqa: BLE001 - any unreadable embedding is a finding
            out.append(Finding("OBSM_UNREADABLE", f"obsm[{key!r}]", f"cannot read this embedding ({type(exc).__name__})"))
            continue
        if arr.ndim != 2 or arr.shape[0] != data.n_obs or arr.shape[1] < 1:
            out.append(Finding("OBSM_BAD_SHAPE", f"obsm[{key!r}]", f"embedding shape {arr.shape} must be (n_cells={data.n_obs}, d>=1)"))
        elif not np.issubdtype(arr.dtype, np.number):
            out.append(Finding("OBSM_BAD_DTYPE", f"obsm[{key!r}]", f"embedding dtype {arr.dtype} is not numeric"))
        elif not np.isfinite(arr).all():
            row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            out.append(Finding("OBSM_NOT_FINITE", f"obsm[{key!r}] row {row} ({data.obs.index[row]!r})", "embedding has NaN or infinite values"))
    return out


def validate_submission(
    data_path: str | Path,
    manifest_path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    submission_id: str | None = None,
) -> Prepared:
    """Validate and harmonize a submission without writing anything.

    Raises
    ------
    UsageError
        If the data or manifest file does not exist.
    """
    progress = progress or NullProgress()
    if chunk_rows < 1:
        raise UsageError(f"chunk size must be at least 1 row, got {chunk_rows}", where="--chunk-rows")
    report = ValidationReport(submission_id or new_submission_id(), str(data_path), str(manifest_path))
    if not Path(manifest_path).is_file():
        raise UsageError(f"manifest file not found: {manifest_path}", where=str(manifest_path))
    if not Path(data_path).exists():
        raise UsageError(f"data file not found: {data_path}", where=str(data_path))
    try:
        raw = read_manifest_data(manifest_path)
        report.dataset_id = submitted_dataset_id(raw)  # what the submitter named, even if the rest is invalid
        manifest = parse_manifest(raw, source=str(manifest_path))
    except ManifestError as exc:
        report.extend(list(exc.findings))
        return Prepared(None, None, report)
    report.dataset_id = manifest.dataset_id
    source, _ = manifest.counts_source
    from aivc.ingest.sources import open_submission

    try:
        data, opened = open_submission(data_path, manifest)
    except UnreadableDataError as exc:
        report.add(Finding(exc.code, exc.where, exc.message))
        return Prepared(manifest, None, report)
    prepared = Prepared(manifest, data, report, chunk_rows=chunk_rows)
    structural = _structure_findings(data)
    report.extend(structural)
    where_var = _var_where(data.counts.path)
    genes = map_genes(
        data.var,
        organism_name=manifest.organism_name,
        id_type=manifest.rna_genes.id_type,
        column=manifest.rna_genes.column,
        min_mapped_fraction=manifest.qc.min_mapped_fraction,
        where=where_var,
    )
    prepared.genes = genes
    report.extend(genes.findings)
    report.decisions.extend(genes.decisions)

    from aivc.ingest.obs_fields import harmonize_obs

    progress.phase("harmonizing cell metadata")
    obs_result = harmonize_obs(data.obs, manifest)
    report.extend(obs_result.findings)
    report.decisions.extend(obs_result.decisions)
    prepared.obs = obs_result.frame
    report.extend(_obsm_findings(data))
    from aivc.ingest.spatial_submit import spatial_part

    spatial_part(prepared, data_path, manifest, Path(manifest_path).resolve().parent, progress)

    fatal = any(f.code in ("MATRIX_SHAPE_MISMATCH", "DATASET_EMPTY") for f in structural)
    if not fatal:
        checker = MatrixChecker(
            cell_ids=data.obs.index.astype(str),
            gene_names=pd.Index(data.var.index.astype(str)),
            keep_cols=genes.keep_cols,
            mito_cols=genes.mito_cols,
            where=data.counts.path.replace("/", "."),
        )
        progress.phase("checking counts", total=data.n_obs)
        for start, chunk in data.iter_chunks(chunk_rows):
            checker.update(start, chunk)
            progress.advance(chunk.shape[0])
        qc = checker.qc_frame()
        from aivc.ingest.spatial_submit import out_of_tissue

        outside = out_of_tissue(prepared)  # a whole Visium slide's spots outside the tissue may be empty
        empty_outside = outside is not None and bool((qc["n_counts"].to_numpy() == 0)[~outside].sum() == 0)
        report.extend(f for f in checker.findings() if not (empty_outside and f.code == "MATRIX_EMPTY_CELLS"))
        report.qc = qc
        if not any(f.code.startswith("MATRIX_") and f.code != "MATRIX_EMPTY_CELLS" for f in report.errors):
            from aivc.ingest.qc import run_expectations

            progress.phase("data-quality expectations")
            # Values harmonization refused are missing here: each has its finding already.
            meta = obs_result.accepted_frame().reindex(qc.index)
            frame = pd.concat([qc, meta], axis=1)
            if outside is not None:  # QC is about the tissue: out-of-tissue spots are background
                frame = frame[~outside]
            qc_findings, results = run_expectations(
                frame, n_genes_total=data.n_vars, max_pct_mito=manifest.qc.max_pct_mito
            )
            report.extend(qc_findings)
            report.expectations = results
        if opened:
            from aivc.ingest.modalities import check_measurement

            for name, m in opened.items():
                progress.phase(f"checking {name}", total=data.n_obs)
                checked = check_measurement(
                    m, manifest, data.obs.index.astype(str), manifest_dir=Path(manifest_path).resolve().parent, chunk_rows=chunk_rows,
                    advance=progress.advance, rna_var=data.var, rna_keep=genes.keep_cols, rna_gene_ids=list(genes.gene_ids),
                )
                prepared.others[name] = checked
                report.extend(checked.findings)
                report.decisions.extend(checked.decisions)
        parts = [m.content_hash for m in prepared.others.values()] + ([prepared.spatial.content_hash] if prepared.spatial is not None else [])
        prepared.content_hash = _content_hash(manifest, checker.content_hash, obs_result.frame, genes, data, parts)
        report.summary.update(
            {
                "nnz": int(checker.nnz),
                "total_counts": float(checker.n_counts.sum()),
                "median_counts_per_cell": float(np.median(checker.n_counts)) if data.n_obs else 0.0,
                "content_hash": prepared.content_hash,
            }
        )
    report.summary.update(
        {
            "dataset_id": manifest.dataset_id,
            "title": manifest.title,
            "organism": manifest.organism,
            "access": manifest.access,
            "counts_source": manifest.counts,
            "n_cells": data.n_obs,
            "n_genes_submitted": data.n_vars,
            "n_genes_mapped": len(genes.gene_ids),
            "mapped_fraction": round(genes.mapped_fraction, 4),
            "n_genes_unmapped": genes.n_unmapped,
            "n_genes_ambiguous": genes.n_ambiguous,
            "obsm": list(data.obsm_keys),
        }
    )
    if prepared.others:
        report.summary["measurements"] = {"RNA": {"n_features": len(genes.gene_ids), "where": data.counts.path}} | {
            n: {k: v for k, v in m.summary.items() if k != "expectations"} for n, m in prepared.others.items()
        }
        report.expectations = list(report.expectations or []) + [r for m in prepared.others.values() for r in m.summary.get("expectations", [])]
    if prepared.spatial is not None:
        report.summary["spatial"] = prepared.spatial.summary
    return prepared


def _var_where(matrix_path: str) -> str:
    """Where a matrix's feature table is, for messages: ``var``, ``raw.var``, ``mod/rna/var``, ``features``."""
    if matrix_path.startswith("matrix["):
        return "features"
    parts = matrix_path.split("/")
    prefix = "/".join(parts[:2]) + "/" if parts[0] == "mod" and len(parts) > 2 else ""
    rest = matrix_path[len(prefix) :]
    return prefix + ("raw.var" if rest.startswith("raw/") else "var")


def _content_hash(manifest: Manifest, matrix_hash: str, obs: pd.DataFrame, genes: GeneMapping, data: SubmittedData, others: list[str] | None = None) -> str:
    h = hashlib.sha256()
    for other in others or []:  # RNA-only submissions hash as they always did
        h.update(other.encode())
    h.update(manifest.canonical_json().encode())
    h.update(matrix_hash.encode())
    h.update("\x00".join(genes.gene_ids).encode())
    h.update("\x00".join(data.obs.index.astype(str)).encode())
    h.update(pd.util.hash_pandas_object(obs.astype(str), index=False).to_numpy().tobytes())
    extra = data.obs.drop(columns=[c for c in data.obs.columns if c in obs.columns], errors="ignore")
    if extra.shape[1]:
        h.update(",".join(map(str, extra.columns)).encode())
        h.update(pd.util.hash_pandas_object(extra.astype(str), index=False).to_numpy().tobytes())
    for key in data.obsm_keys:
        h.update(key.encode())
        h.update(np.ascontiguousarray(data.read_obsm(key), dtype=np.float64).tobytes())
    return h.hexdigest()


# -- commit ----------------------------------------------------------------------------
def _lake_obs(prepared: Prepared, version: int) -> pd.DataFrame:
    assert prepared.manifest is not None and prepared.obs is not None and prepared.data is not None
    m = prepared.manifest
    qc = prepared.report.qc
    assert qc is not None
    barcodes = prepared.data.obs.index.astype(str)
    frame = prepared.obs.copy()
    frame.index = pd.Index([f"{m.dataset_id}@{version}:{b}" for b in barcodes], name="obs_id")
    frame.insert(0, "dataset_id", m.dataset_id)
    frame.insert(1, "dataset_version", np.int32(version))
    frame.insert(2, "barcode", np.asarray(barcodes, dtype=object))
    frame.insert(3, "organism_ontology_term_id", m.organism)
    frame["n_counts"] = qc["n_counts"].to_numpy(dtype=np.float64)
    frame["n_genes"] = qc["n_genes"].to_numpy(dtype=np.int64)
    frame["pct_mito"] = qc["pct_mito"].to_numpy(dtype=np.float64)
    for c in soma_io.OBS_STRING_COLUMNS:
        frame[c] = frame[c].astype(str).astype(object)
    frame["is_primary_data"] = frame["is_primary_data"].astype(bool)
    cols = ["dataset_id", "dataset_version", "barcode", *[c for c in soma_io.OBS_STRING_COLUMNS if c not in ("dataset_id", "barcode")], "is_primary_data", "n_counts", "n_genes", "pct_mito"]
    return frame[cols]


def _lake_var(prepared: Prepared) -> pd.DataFrame:
    assert prepared.genes is not None and prepared.manifest is not None
    from aivc.store.reference import gene_reference

    ref = gene_reference(prepared.manifest.organism_name).loc[prepared.genes.gene_ids]
    var = pd.DataFrame(
        {
            "feature_name": ref["symbol"].astype(str).to_numpy(dtype=object),
            "feature_biotype": np.full(len(ref), "gene", dtype=object),
            "feature_reference": np.full(len(ref), prepared.manifest.organism, dtype=object),
        },
        index=pd.Index(prepared.genes.gene_ids, name="gene_id"),
    )
    return var


def _write_artifacts(w: VersionWriter, prepared: Prepared, obs: pd.DataFrame, obs_joinids: np.ndarray, var: pd.DataFrame, var_joinids: np.ndarray) -> None:
    assert prepared.data is not None and prepared.genes is not None and prepared.manifest is not None
    cells = obs.reset_index()
    cells.insert(1, "soma_joinid", obs_joinids)
    from aivc.ingest.perturbation_fields import PERTURBATION_COLUMNS

    for c in PERTURBATION_COLUMNS:  # optional fields live in the version's cells table (the `cells` view), not in SOMA obs
        if prepared.obs is not None and c in prepared.obs.columns:
            cells[c] = prepared.obs[c].to_numpy(dtype=object)
    w.write_cells(cells)
    submitted_ids = prepared.data.var.index.astype(str)[prepared.genes.keep_cols]
    w.write_features(
        pd.DataFrame(
            {
                "gene_id": var.index.to_numpy(dtype=object),
                "soma_joinid": var_joinids,
                "feature_name": var["feature_name"].to_numpy(),
                "submitted_id": np.asarray(submitted_ids, dtype=object),
                "submitted_position": prepared.genes.keep_cols,
            }
        )
    )
    extra = prepared.data.obs.copy()
    extra.index = extra.index.astype(str)
    extra.index.name = "barcode"
    for c in extra.columns:
        if isinstance(extra[c].dtype, pd.CategoricalDtype) or extra[c].dtype == object:
            extra[c] = extra[c].astype(str).where(extra[c].notna(), None)
    w.write_submitted_obs(extra.reset_index())
    for key in prepared.data.obsm_keys:
        w.write_obsm(key, obs.index.to_numpy(dtype=object), prepared.data.read_obsm(key))
    w.copy_manifest(prepared.report.manifest_path)


def _write_measurement(w: VersionWriter, checked: Any, plan: soma_io.MeasurementPlan, uri: str, ts: int, obs: pd.DataFrame, obs_joinids: np.ndarray, chunk_rows: int, progress: Progress) -> dict[str, Any]:
    """Append one further measurement (same cells, same timestamp) and stage its tables."""
    spec = checked.spec
    res = soma_io.append_measurement(uri, plan, obs_joinids, checked.data.iter_chunks(chunk_rows), timestamp=ts, progress=progress.advance)
    features = checked.features.copy()
    features.insert(1, "soma_joinid", res.var_joinids)
    w.write_features(features, measurement=spec)
    record = Measured(len(checked.var), len(obs), int(res.nnz), spec.layers).to_record()
    if checked.qc is not None and len(checked.qc.columns):
        qc = checked.qc.reset_index(drop=True)
        qc.insert(0, "obs_id", obs.index.to_numpy(dtype=object))
        w.write_qc(qc, measurement=spec)
    if checked.fragments_path is not None:
        from aivc.ingest.fragments_write import write_cell_fragments

        folder = w.scratch("fragments")
        folder.mkdir(exist_ok=True)
        dest = folder / "fragments.tsv.gz"
        written = write_cell_fragments(checked.fragments_path, dest, list(obs["barcode"]))
        w.add_files(folder, "fragments")
        record["fragments"] = artifacts.FRAGMENTS
        record["n_fragments"] = int(written.n_fragments)
        record["n_cells_with_fragments"] = int(checked.fragments.n_cells_with_fragments)
    return record


def _gene_activity(prepared: Prepared) -> tuple[pd.DataFrame, Any] | None:
    """The gene-activity derived measurement of a chromatin measurement with fragments: lake
    var (the RNA genes, by reference id) and the cells x genes fragment counts."""
    atac = prepared.others.get("ATAC")
    if atac is None or atac.gene_activity is None or prepared.genes is None:
        return None
    var = _lake_var(prepared)[["feature_name"]]
    gene_ids, matrix = atac.gene_activity
    if list(gene_ids) != list(var.index):
        return None
    return var, matrix


def _write_gene_activity(w: VersionWriter, activity: tuple[pd.DataFrame, Any], plan: soma_io.MeasurementPlan, uri: str, ts: int, obs: pd.DataFrame, obs_joinids: np.ndarray) -> dict[str, Any]:
    var, matrix = activity
    res = soma_io.append_measurement(uri, plan, obs_joinids, [(0, matrix.tocsr().astype(np.float32))], timestamp=ts)
    w.write_features(pd.DataFrame({"gene_id": var.index.to_numpy(dtype=object), "soma_joinid": res.var_joinids, "feature_name": var["feature_name"].to_numpy()}), measurement=GENE_ACTIVITY)
    return Measured(len(var), len(obs), int(res.nnz), GENE_ACTIVITY.layers).to_record() | {"derived_from": "ATAC fragments overlapping each gene +/- 2 kb (ingest/atac_qc.py)"}


def submit(
    lake: Lake,
    data_path: str | Path,
    manifest_path: str | Path,
    *,
    report_dir: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    wait: float = 600.0,
) -> SubmitResult:
    """Validate, harmonize and commit a submission into ``lake``.

    A rejected submission writes its report to ``report_dir`` (default
    ``./aivc-reports/<submission_id>``) and leaves the lake untouched.
    """
    from aivc.ingest.report import write_report

    progress = progress or NullProgress()
    prepared = validate_submission(data_path, manifest_path, chunk_rows=chunk_rows, progress=progress)
    report = prepared.report
    try:
        n_cells = prepared.data.n_obs if prepared.data else 0
        n_genes = len(prepared.genes.gene_ids) if prepared.genes else 0
        if not report.valid:
            out = Path(report_dir) if report_dir else Path("aivc-reports") / report.submission_id
            json_path, _ = write_report(report, out)
            return SubmitResult("rejected", report.dataset_id, None, n_cells, n_genes, str(json_path), report.errors, report.warnings, report.submission_id)
        assert prepared.manifest is not None and prepared.data is not None and prepared.genes is not None
        manifest = prepared.manifest
        catalog = Catalog(lake)
        with lake.write_lock(wait=wait, on_wait=lambda: progress.note("waiting for another writer to finish...")):
            recover(lake)
            versions = catalog.versions(manifest.dataset_id)
            if versions and versions[-1].content_hash == prepared.content_hash:
                last = versions[-1]
                rep = f"{submission_dir(lake, last.submission_id)}/report.json"
                return SubmitResult("unchanged", last.dataset_id, last.version, last.n_cells, last.n_genes, str(rep), [], report.warnings, last.submission_id)
            version = catalog.next_version(manifest.dataset_id)
            record = _commit(lake, catalog, prepared, version, progress)
        rep = f"{submission_dir(lake, record.submission_id)}/report.json"
        further = {n: int(m["n_features"]) for n, m in (record.measurements or {}).items() if n != RNA.name}
        where = {k: record.spatial[k] for k in ("technology", "is_single", "n_located")} | {"images": sorted(record.spatial["images"])} if record.spatial else {}
        return SubmitResult("committed", record.dataset_id, record.version, record.n_cells, record.n_genes, str(rep), [], report.warnings, record.submission_id, further, where)
    finally:
        prepared.close()


def _commit(lake: Lake, catalog: Catalog, prepared: Prepared, version: int, progress: Progress) -> DatasetVersion:
    """Write the version (SOMA, its tables, its report) and commit its record; on an error
    nothing is visible and the staged files are removed."""
    assert prepared.manifest is not None
    manifest = prepared.manifest
    obs = _lake_obs(prepared, version)
    var = _lake_var(prepared)
    uri = lake.soma_uri(manifest.organism_name)
    hw = catalog.high_water(manifest.organism_name)
    ts = soma_io.write_timestamp(hw)
    w = VersionWriter(lake, manifest.dataset_id, version)
    try:
        return _write_version(lake, catalog, prepared, w, ts, uri, obs, var, progress)
    except BaseException:
        w.discard()  # SOMA fragments above the high-water mark go at the next recovery
        raise


def _write_version(
    lake: Lake, catalog: Catalog, prepared: Prepared, w: VersionWriter, ts: int, uri: str, obs: pd.DataFrame, var: pd.DataFrame, progress: Progress
) -> DatasetVersion:
    from aivc.ingest.report import write_report

    assert prepared.manifest is not None and prepared.data is not None and prepared.genes is not None
    manifest, data, genes, report = prepared.manifest, prepared.data, prepared.genes, prepared.report
    version = w.version
    report_dir = w.scratch("report")
    report.summary["version"] = version
    write_report(report, report_dir)
    keep = genes.keep_cols

    def chunks():  # noqa: ANN202
        for start, chunk in data.iter_chunks(prepared.chunk_rows):
            yield start, chunk[:, keep]

    plans = {name: soma_io.plan_measurement(uri, checked.var, timestamp=ts, measurement=checked.spec) for name, checked in prepared.others.items()}
    activity = _gene_activity(prepared)
    if activity is not None:
        plans[GENE_ACTIVITY.name] = soma_io.plan_measurement(uri, activity[0], timestamp=ts, measurement=GENE_ACTIVITY)
    progress.phase("writing to the lake", total=data.n_obs)
    result = soma_io.append_dataset(uri, obs, var, chunks(), timestamp=ts, progress=progress.advance)
    measured = {RNA.name: Measured(len(genes.gene_ids), int(data.n_obs), int(result.nnz), RNA.layers).to_record()}
    for name, checked in prepared.others.items():
        progress.phase(f"writing {name} to the lake", total=data.n_obs)
        measured[name] = _write_measurement(w, checked, plans[name], uri, ts, obs, result.obs_joinids, prepared.chunk_rows, progress)
    if activity is not None:
        measured[GENE_ACTIVITY.name] = _write_gene_activity(w, activity, plans[GENE_ACTIVITY.name], uri, ts, obs, result.obs_joinids)
    from aivc.ingest.spatial_submit import write_spatial

    spatial = write_spatial(w, prepared, uri, ts, obs, result.obs_joinids, progress) if prepared.spatial is not None else {}
    _fault("after_soma_write")
    _write_artifacts(w, prepared, obs, result.obs_joinids, var, result.var_joinids)
    _fault("after_artifacts")
    w.publish_report(report_dir, report.submission_id)
    high_water = max(soma_io.now_ms(), ts)
    record = DatasetVersion(
        dataset_id=manifest.dataset_id,
        version=version,
        title=manifest.title,
        description=manifest.description,
        license=manifest.license,
        access=manifest.access,
        embargo_until=manifest.embargo_until.isoformat() if manifest.embargo_until else None,
        organism=manifest.organism,
        organism_name=manifest.organism_name,
        n_cells=int(data.n_obs),
        n_genes=len(genes.gene_ids),
        nnz=int(result.nnz),
        content_hash=str(prepared.content_hash),
        submission_id=report.submission_id,
        committed_at=utcnow(),
        soma_timestamp=ts,
        soma_high_water=high_water,
        obs_joinid_min=int(result.obs_joinids.min()),
        obs_joinid_max=int(result.obs_joinids.max()),
        artifacts=w.artifacts,
        obsm_keys=tuple(data.obsm_keys),
        extra={"contact": manifest.contact, "citation": manifest.citation, "n_genes_submitted": data.n_vars},
        measurements=measured,
        spatial=spatial,
    )
    _fault("before_record")
    w.commit(record, fault="after_tables_published", fault_exit=97)
    return record
