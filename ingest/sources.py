"""Opening a submission's measurements wherever the manifest says they are.

A submission is one data path and a manifest. :func:`open_submission` opens the RNA
measurement as :class:`~aivc.ingest.readers.SubmittedData` (cell metadata in memory, counts
streamed in row chunks) and every further measurement (``ADT``, ``ATAC``) as a
:class:`MeasurementData` whose rows are aligned to the RNA cells. The formats:

- AnnData ``.h5ad`` or ``.zarr``: RNA in ``X`` / ``raw`` / ``layer:<name>``; protein counts
  in ``obsm:<key>`` (the CITE-seq layout of scvi-tools and Seurat exports), with names in
  ``uns:<key>`` or the obsm table's columns.
- MuData ``.h5mu``: one modality per measurement (``mod:<name>``), cell metadata from the
  global ``obs`` (and the RNA modality's own ``obs`` columns it lacks).
- 10x Cell Ranger / Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` or its MTX folder:
  ``mod:rna`` (Gene Expression), ``mod:prot`` (Antibody Capture), ``mod:atac`` (Peaks), as
  muon names them; the feature type itself (``mod:Antibody Capture``) works too.

Each problem with where a measurement is raises :class:`~aivc.ingest.readers.UnreadableDataError`
with its code: ``MEASUREMENT_SOURCE_MISSING`` (no such modality / obsm key / layer),
``MEASUREMENT_SOURCE_UNSUPPORTED`` (a source that the data format cannot have),
``MEASUREMENT_FEATURES_MISSING`` (the feature names are not where ``features`` says, or
their number is not the matrix's). Cells present in one measurement and not in another
are validation findings (``MEASUREMENT_CELLS_MISSING``), reported by the submission.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.errors import Finding
from aivc.ingest.manifest import Manifest, MeasurementSource, counts_location
from aivc.ingest.readers import MatrixHandle, SubmittedData, UnreadableDataError, open_anndata

__all__ = ["MeasurementData", "data_format", "open_submission"]

#: 10x feature types by the modality names muon gives them.
TENX_FEATURE_TYPES: dict[str, str] = {"rna": "Gene Expression", "prot": "Antibody Capture", "atac": "Peaks"}


class SourceError(UnreadableDataError):
    """A measurement is not where the manifest says it is."""

    def __init__(self, code: str, message: str, where: str) -> None:
        super().__init__(message, where=where)
        self.code = code


def data_format(path: str | Path) -> str:
    """``"h5ad"``, ``"zarr"``, ``"h5mu"``, ``"10x_h5"``, ``"10x_mtx"`` or ``"spaceranger"`` for a data path."""
    p = Path(path)
    if p.is_dir():
        if (p / "matrix.mtx.gz").is_file() or (p / "matrix.mtx").is_file():
            return "10x_mtx"
        if (p / "spatial").is_dir() and not (p / ".zattrs").is_file() and not (p / "zarr.json").is_file():
            return "spaceranger"
        return "zarr"
    if p.suffix == ".h5mu":
        return "h5mu"
    if p.suffix == ".zarr":
        return "zarr"
    if p.suffix == ".h5":
        return "10x_h5"
    return "h5ad"


# -- matrices other than an AnnData X ---------------------------------------------------------
@dataclass
class DenseRows(MatrixHandle):
    """A dense 2-D dataset (an obsm array) read in row slices."""

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return sp.csr_matrix(np.asarray(self.element[start:stop]))


@dataclass
class FrameRows(MatrixHandle):
    """An obsm DataFrame (one dataset per column), read in row slices."""

    columns: tuple[str, ...] = ()

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        block = np.column_stack([np.asarray(self.element[c][start:stop]) for c in self.columns]) if self.columns else np.zeros((stop - start, 0))
        return sp.csr_matrix(block)


@dataclass
class TenxRows(MatrixHandle):
    """Cell Ranger's ``matrix`` group (features x barcodes, CSC: CSR by barcode), one feature type."""

    columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_all: int = 0

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        indptr = np.asarray(self.element["indptr"][start : stop + 1], dtype=np.int64)
        lo, hi = int(indptr[0]), int(indptr[-1])
        block = sp.csr_matrix(
            (np.asarray(self.element["data"][lo:hi]), np.asarray(self.element["indices"][lo:hi]), indptr - lo),
            shape=(stop - start, self.n_all),
        )
        return block[:, self.columns]


@dataclass
class MemoryRows(MatrixHandle):
    """A matrix already in memory (a 10x MTX folder, which has no random access)."""

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        return self.element[start:stop]


# -- one further measurement --------------------------------------------------------------------
@dataclass
class MeasurementData:
    """One measurement besides RNA, rows aligned to the RNA cells.

    ``row_of[i]`` is this measurement's matrix row of RNA cell ``i`` (``-1``: the cell has no
    row here); ``extra_cells`` are this measurement's cells that RNA does not have.
    """

    name: str
    source: MeasurementSource
    var: pd.DataFrame
    feature_names: pd.Index
    counts: MatrixHandle
    cell_ids: pd.Index
    where: str
    row_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    extra_cells: pd.Index = field(default_factory=lambda: pd.Index([]))
    uns: dict[str, Any] = field(default_factory=dict)
    opened: SubmittedData | None = None  # a file handle of its own, closed with :meth:`close`

    def close(self) -> None:
        if self.opened is not None:
            self.opened.close()

    def align(self, rna_cells: pd.Index) -> list[Finding]:
        """Match rows to ``rna_cells``; a cell in one and not the other is a finding."""
        self.row_of = np.asarray(self.cell_ids.get_indexer(rna_cells), dtype=np.int64)
        out: list[Finding] = []
        missing = np.flatnonzero(self.row_of < 0)
        if missing.size:
            first = rna_cells[missing[0]]
            more = f" and {missing.size - 1} more" if missing.size > 1 else ""
            out.append(Finding("MEASUREMENT_CELLS_MISSING", f"{self.where} cell {first!r}{more}", f"{missing.size} cells with RNA have no {self.name} row; every cell needs every measurement of the dataset"))
        self.extra_cells = self.cell_ids[~self.cell_ids.isin(rna_cells)]
        if len(self.extra_cells):
            more = f" and {len(self.extra_cells) - 1} more" if len(self.extra_cells) > 1 else ""
            out.append(Finding("MEASUREMENT_CELLS_MISSING", f"{self.where} cell {self.extra_cells[0]!r}{more}", f"{len(self.extra_cells)} cells with {self.name} have no RNA row; every cell needs every measurement of the dataset"))
        return out

    @property
    def aligned(self) -> bool:
        return bool(len(self.row_of)) and bool((self.row_of >= 0).all())

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        """``(row_start, csr)`` in RNA cell order (call :meth:`align` first; every cell must match)."""
        n = len(self.row_of)
        identity = bool(np.array_equal(self.row_of, np.arange(n)))
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            if identity:
                yield start, self.counts.rows(start, stop)
                continue
            want = self.row_of[start:stop]
            lo, hi = int(want.min()), int(want.max()) + 1
            block = self.counts.rows(lo, hi)  # one contiguous read, then reorder
            yield start, block[want - lo]


# -- opening --------------------------------------------------------------------------------------
def open_submission(path: str | Path, manifest: Manifest) -> tuple[SubmittedData, dict[str, MeasurementData]]:
    """Open the RNA measurement and every further measurement of a submission.

    Raises
    ------
    UnreadableDataError
        The file is not readable, or a measurement is not where the manifest says.
    """
    p = Path(path)
    fmt = data_format(p)
    rna = manifest.rna
    if fmt == "spaceranger":  # a Space Ranger folder: its filtered matrix, RNA its Gene Expression features
        matrix = p / "filtered_feature_bc_matrix.h5"
        if not matrix.is_file():
            raise SourceError("SPATIAL_FILE_MISSING", "the Space Ranger folder has no filtered_feature_bc_matrix.h5 (the spots x genes matrix)", str(matrix))
        p, fmt = matrix, "10x_h5"
        if rna.mod is None:
            rna = rna.model_copy(update={"source": "mod:rna"})
    if manifest.spatial is not None and manifest.spatial.technology in ("merfish", "xenium"):  # a SpatialData store: RNA is its table
        from aivc.ingest.spatialdata_sources import spatialdata_table_group

        kind, layer = counts_location(rna.source)
        return open_anndata(p, kind, layer, group=spatialdata_table_group(p, manifest.spatial)), {}
    if fmt in ("h5ad", "zarr"):
        if rna.mod is not None:
            raise SourceError("MEASUREMENT_SOURCE_UNSUPPORTED", f"an AnnData file has no modalities; RNA source {rna.source!r} needs a MuData .h5mu or a 10x .h5", f"{p}: measurements/RNA/source")
        kind, layer = counts_location(rna.source)
        data = open_anndata(p, kind, layer)
        others = {name: _from_anndata(data, name, m) for name, m in manifest.other_measurements.items()}
        used = {m.source.split(":", 1)[1] for m in manifest.other_measurements.values() if m.source.startswith("obsm:")}
        data.obsm_keys = tuple(k for k in data.obsm_keys if k not in used)  # a measurement, not an embedding
    elif fmt == "h5mu":
        data = _open_h5mu_rna(p, rna)
        others = {name: _from_h5mu(data, name, m) for name, m in manifest.other_measurements.items()}
    else:
        data, loader = _open_10x(p, rna, fmt)
        others = {name: loader(name, m) for name, m in manifest.other_measurements.items()}
    return data, others


def _from_anndata(data: SubmittedData, name: str, m: MeasurementSource) -> MeasurementData:
    store, where_file = data._store, str(data.path)
    if m.mod is not None:
        raise SourceError("MEASUREMENT_SOURCE_UNSUPPORTED", f"an AnnData file has no modalities; {name} source {m.source!r} needs a MuData .h5mu or a 10x .h5 (here: obsm:<key>, X, raw or layer:<name>)", f"{where_file}: measurements/{name}/source")
    if m.source.startswith("obsm:"):
        key = m.source.split(":", 1)[1]
        if "obsm" not in store or key not in store["obsm"]:
            have = sorted(store["obsm"].keys()) if "obsm" in store else []
            raise SourceError("MEASUREMENT_SOURCE_MISSING", f"measurement {name} is in obsm[{key!r}], but the file's obsm keys are {have}", f"{where_file}: obsm/{key}")
        handle, columns = _obsm_handle(store["obsm"][key], f"obsm/{key}")
        names = _feature_names(store, m, columns, handle.shape[1], where_file, f"obsm[{key!r}]", var=None)
        var = pd.DataFrame(index=names)
        return MeasurementData(name, m, var, names, handle, data.obs.index.astype(str), f"obsm[{key!r}]")
    kind, layer = counts_location(m.source)
    other = open_anndata(data.path, kind, layer)
    names = _feature_names(store, m, None, other.n_vars, where_file, other.counts.path, var=other.var)
    return MeasurementData(name, m, other.var, names, other.counts, other.obs.index.astype(str), other.counts.path, opened=other)


def _obsm_handle(element: Any, path: str) -> tuple[MatrixHandle, tuple[str, ...] | None]:
    enc = dict(element.attrs).get("encoding-type")
    if enc == "dataframe":
        from anndata.io import read_elem

        columns = tuple(str(c) for c in element.attrs.get("column-order", []))
        n = len(read_elem(element[element.attrs["_index"]])) if "_index" in element.attrs else 0
        first = np.asarray(element[columns[0]][:1]) if columns else np.zeros(0)
        return FrameRows(element, "array", (n, len(columns)), first.dtype, path, columns=columns), columns
    if enc in ("csr_matrix", "csc_matrix"):
        shp = tuple(int(s) for s in element.attrs["shape"])
        return MatrixHandle(element, enc, (shp[0], shp[1]), np.dtype(element["data"].dtype), path), None
    shape = tuple(int(s) for s in element.shape)
    if len(shape) != 2:
        raise SourceError("MEASUREMENT_SOURCE_UNSUPPORTED", f"{path} has {len(shape)} dimensions; a measurement is a cells x features matrix", path)
    return DenseRows(element, "array", (shape[0], shape[1]), np.dtype(element.dtype), path), None


def _feature_names(store: Any, m: MeasurementSource, columns: tuple[str, ...] | None, n: int, where_file: str, where: str, var: pd.DataFrame | None) -> pd.Index:
    """The feature names, from where ``m.features`` says (default: obsm columns, else var index)."""
    from anndata.io import read_elem

    spec = m.features
    if spec is None:
        if columns is not None:
            names = list(columns)
        elif var is not None:
            names = list(var.index.astype(str))
        else:
            raise SourceError("MEASUREMENT_FEATURES_MISSING", f"the feature names of {where} are not given; set 'features' (uns:<key>, var or var:<column>)", f"{where_file}: measurements/{m.source}")
    elif spec.startswith("uns:"):
        key = spec.split(":", 1)[1]
        if "uns" not in store or key not in store["uns"]:
            raise SourceError("MEASUREMENT_FEATURES_MISSING", f"'features' says uns[{key!r}], but the file has no such entry", f"{where_file}: uns/{key}")
        value = read_elem(store["uns"][key])
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]
    elif var is None:
        raise SourceError("MEASUREMENT_FEATURES_MISSING", f"'features' says {spec!r}, but {where} has no var; use uns:<key> or leave it out", f"{where_file}: {where}")
    elif spec == "var":
        names = list(var.index.astype(str))
    else:
        col = spec.split(":", 1)[1]
        if col not in var.columns:
            raise SourceError("MEASUREMENT_FEATURES_MISSING", f"'features' says var column {col!r}, but var's columns are {sorted(map(str, var.columns))}", f"{where_file}: var/{col}")
        names = [str(v) for v in var[col]]
    if len(names) != n:
        raise SourceError("MEASUREMENT_FEATURES_MISSING", f"{len(names)} feature names for a matrix of {n} columns; they must agree", f"{where_file}: {spec or where}")
    return pd.Index(names)


def _open_h5mu_rna(p: Path, rna: MeasurementSource) -> SubmittedData:
    import h5py
    from anndata.io import read_elem

    try:
        probe = h5py.File(p, "r")
    except OSError as exc:
        raise UnreadableDataError(f"not a readable .h5mu MuData file ({type(exc).__name__})", where=str(p)) from None
    with probe:
        mods = sorted(probe["mod"].keys()) if "mod" in probe else []
        glob = read_elem(probe["obs"]) if "obs" in probe else None
    if rna.mod is None or rna.mod not in mods:
        raise SourceError("MEASUREMENT_SOURCE_MISSING", f"RNA source {rna.source!r}: the file's modalities are {mods}", f"{p}: measurements/RNA/source")
    kind, layer = counts_location(rna.counts)
    data = open_anndata(p, kind, layer, group=f"mod/{rna.mod}")
    if glob is not None:  # cell metadata: the global obs, then the modality's own columns it lacks
        glob = glob.reindex(data.obs.index)
        own = data.obs[[c for c in data.obs.columns if c not in glob.columns]]
        data.obs = pd.concat([glob, own], axis=1)
    return data


def _from_h5mu(data: SubmittedData, name: str, m: MeasurementSource) -> MeasurementData:
    mods = sorted(data._store.file["mod"].keys())
    if m.mod is None:
        raise SourceError("MEASUREMENT_SOURCE_UNSUPPORTED", f"in a MuData file a measurement is a modality; use mod:<name> (the file has {mods})", f"{data.path}: measurements/{name}/source")
    if m.mod not in mods:
        raise SourceError("MEASUREMENT_SOURCE_MISSING", f"measurement {name} is in modality {m.mod!r}, but the file's modalities are {mods}", f"{data.path}: mod/{m.mod}")
    kind, layer = counts_location(m.counts)
    other = open_anndata(data.path, kind, layer, group=f"mod/{m.mod}")
    where = other.counts.path
    if m.modality == "chromatin":
        col = m.peaks.column if m.peaks is not None else None
        names = _feature_names(other._store, m.model_copy(update={"features": f"var:{col}" if col else "var"}), None, other.n_vars, str(data.path), where, other.var)
    else:
        names = _feature_names(other._store, m, None, other.n_vars, str(data.path), where, other.var)
    uns = {"peak_annotation": True} if m.modality == "chromatin" and "uns" in other._store and "atac" in other._store["uns"] else {}
    return MeasurementData(name, m, other.var, names, other.counts, other.obs.index.astype(str), where, uns=uns, opened=other)


def _open_10x(p: Path, rna: MeasurementSource, fmt: str) -> tuple[SubmittedData, Any]:
    """A 10x matrix as RNA + loaders of its other feature types."""
    matrix, features, barcodes, store = _read_10x(p, fmt)
    types = features["feature_type"].astype(str)

    def columns_of(name: str, m: MeasurementSource) -> np.ndarray:
        mod = m.mod
        if mod is None:
            raise SourceError("MEASUREMENT_SOURCE_UNSUPPORTED", f"a 10x matrix holds feature types, not {m.source!r}; use mod:rna, mod:prot or mod:atac", f"{p}: measurements/{name}/source")
        ftype = TENX_FEATURE_TYPES.get(mod, mod)
        cols = np.flatnonzero(types.to_numpy() == ftype)
        if not cols.size:
            raise SourceError("MEASUREMENT_SOURCE_MISSING", f"measurement {name} is feature type {ftype!r}, but the file's feature types are {sorted(set(types))}", f"{p}: features/feature_type")
        return cols

    def handle(cols: np.ndarray, path: str) -> MatrixHandle:
        if fmt == "10x_h5":
            return TenxRows(matrix, "csr_matrix", (len(barcodes), len(cols)), np.dtype(matrix["data"].dtype), path, columns=cols, n_all=len(features))
        return MemoryRows(matrix[:, cols].tocsr(), "csr_matrix", (len(barcodes), len(cols)), matrix.dtype, path)

    cols = columns_of("RNA", rna)
    var = features.iloc[cols].set_index("id", drop=False)
    var.index.name = None
    var = var.rename(columns={"id": "gene_ids", "name": "gene_symbols"})
    obs = pd.DataFrame(index=pd.Index(barcodes, dtype=object))
    data = SubmittedData(p, obs, var, handle(cols, f"matrix[{TENX_FEATURE_TYPES.get(rna.mod or '', rna.mod)}]"), (), store)

    def loader(name: str, m: MeasurementSource) -> MeasurementData:
        c = columns_of(name, m)
        fv = features.iloc[c].reset_index(drop=True)
        if m.modality == "chromatin":
            names = pd.Index(fv["interval"] if m.peaks is None or m.peaks.column in (None, "interval") else fv[m.peaks.column]).astype(str) if "interval" in fv else pd.Index(fv["id"].astype(str))
        else:
            names = pd.Index(fv["name" if m.features in (None, "var:name") else "id"].astype(str))
        ftype = TENX_FEATURE_TYPES.get(m.mod or "", m.mod)
        return MeasurementData(name, m, fv.set_index(names), names, handle(c, f"matrix[{ftype}]"), pd.Index(barcodes, dtype=object), f"matrix[{ftype}]")

    return data, loader


def _read_10x(p: Path, fmt: str) -> tuple[Any, pd.DataFrame, list[str], Any]:
    def text(values: Any) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values)]

    if fmt == "10x_h5":
        import h5py

        try:
            store = h5py.File(p, "r")
        except OSError as exc:
            raise UnreadableDataError(f"not a readable 10x .h5 file ({type(exc).__name__})", where=str(p)) from None
        if "matrix" not in store or "features" not in store["matrix"]:
            store.close()
            raise UnreadableDataError("not a Cell Ranger 3+ feature-barcode matrix: it has no matrix/features group", where=str(p))
        g = store["matrix"]
        f = g["features"]
        features = pd.DataFrame({k: text(f[k][:]) for k in ("id", "name", "feature_type") if k in f})
        if "interval" in f:
            features["interval"] = text(f["interval"][:])
        return g, features, text(g["barcodes"][:]), store
    import gzip

    import scipy.io

    def opener(name: str) -> Any:
        gz = p / f"{name}.gz"
        return gzip.open(gz, "rt") if gz.is_file() else open(p / name)

    try:
        with opener("features.tsv") as fh:
            features = pd.read_csv(fh, sep="\t", header=None, dtype=str)
        with opener("barcodes.tsv") as fh:
            barcodes = [line.strip() for line in fh if line.strip()]
        with (gzip.open(p / "matrix.mtx.gz", "rb") if (p / "matrix.mtx.gz").is_file() else open(p / "matrix.mtx", "rb")) as fh:
            matrix = sp.csr_matrix(scipy.io.mmread(fh).T)
    except (OSError, ValueError) as exc:
        raise UnreadableDataError(f"not a readable Cell Ranger matrix folder ({type(exc).__name__}: {exc})", where=str(p)) from None
    names = ["id", "name", "feature_type", "chrom", "start", "end"][: features.shape[1]]
    features.columns = names
    if {"chrom", "start", "end"} <= set(names):
        features["interval"] = features["chrom"] + ":" + features["start"] + "-" + features["end"]
    return matrix, features, barcodes, None
