"""The per-version tables of a dataset version, written through one store-owned staging writer.

Besides its cells in SOMA, a committed dataset version has a small folder of tables
(``catalog/datasets/<id>/v<NNNNNN>/``): the harmonized cells (``cells.parquet``, the rows of
the ``cells`` SQL view), the features it measured (``genes.parquet`` for RNA), the obs
columns exactly as submitted, submitter embeddings (``obsm/<key>.parquet``) and the
manifest. Ingestion writes them with a :class:`VersionWriter` into a staging folder that
:meth:`VersionWriter.commit` publishes together with the catalog record (the record is the
commit point, see :mod:`aivc.store.catalog`). They are read back with
:mod:`aivc.store.read`; no code outside ``store/`` names these files.

Example
-------
>>> w = VersionWriter(lake, "pbmc", 1)                     # doctest: +SKIP
>>> w.write_cells(cells); w.write_features(genes)          # doctest: +SKIP
>>> w.commit(record)                                       # doctest: +SKIP
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.store.catalog import Catalog, DatasetVersion
from aivc.store.lake import Lake
from aivc.store.measurements import RNA, MeasurementSpec

__all__ = ["CELLS", "FRAGMENTS", "MANIFEST", "qc_file", "SUBMITTED_OBS", "VersionWriter", "artifact_key", "features_file", "submission_dir", "submission_key"]

CELLS = "cells.parquet"
SUBMITTED_OBS = "obs_submitted.parquet"
MANIFEST = "manifest.yaml"
OBSM = "obsm"


def features_file(measurement: MeasurementSpec = RNA) -> str:
    """The file of the features a version measured (RNA keeps its historical name)."""
    return "genes.parquet" if measurement.name == RNA.name else f"features_{measurement.name}.parquet"


def qc_file(measurement: MeasurementSpec) -> str:
    """The per-cell QC table of a further measurement (RNA's QC is in the cells table)."""
    return f"qc_{measurement.name}.parquet"


#: Where a version keeps its ATAC fragments (bgzip) and their tabix index.
FRAGMENTS = "fragments/fragments.tsv.gz"


def artifacts_folder(dataset_id: str, version: int) -> str:
    """Where a version's tables live, relative to the lake root (``DatasetVersion.artifacts``)."""
    return f"catalog/datasets/{dataset_id}/v{version:06d}"


def artifact_key(v: DatasetVersion, name: str) -> str:
    """The lake key of one table of a committed version (read it through the storage)."""
    return f"{v.artifacts}/{name}"


def submission_key(submission_id: str) -> str:
    """The lake key of a submission's validation report folder."""
    return f"submissions/{submission_id}"


def submission_dir(lake: Lake, submission_id: str) -> str:
    """Where a submission's validation report lives (a local path or an ``s3://`` URI)."""
    return lake.location(submission_key(submission_id))


def _table(data: Any):  # noqa: ANN202 - pyarrow.Table
    import pyarrow as pa

    return pa.Table.from_pandas(data, preserve_index=False) if isinstance(data, pd.DataFrame) else data


class VersionWriter:
    """Stage the tables of one dataset version; publish them with its record.

    Everything is written under a fresh staging folder of the lake; nothing is visible
    until :meth:`commit`, and :meth:`discard` (or recovery after a crash) removes it.
    """

    def __init__(self, lake: Lake, dataset_id: str, version: int) -> None:
        self.lake, self.dataset_id, self.version = lake, dataset_id, int(version)
        self.staging = lake.new_staging()
        self.folder = self.staging / "artifacts"
        self.folder.mkdir()

    @property
    def artifacts(self) -> str:
        """The ``artifacts`` value of the version's record."""
        return artifacts_folder(self.dataset_id, self.version)

    def scratch(self, name: str) -> Path:
        """A folder inside the staging area for other staged files (e.g. the report)."""
        return self.staging / name

    def _write(self, data: Any, name: str) -> None:
        import pyarrow.parquet as pq

        pq.write_table(_table(data), self.folder / name)

    def write_cells(self, cells: Any) -> None:
        """The harmonized cells: ``obs_id``, ``soma_joinid``, ``dataset_id``, ``dataset_version``, …"""
        self._write(cells, CELLS)

    def write_features(self, features: Any, measurement: MeasurementSpec = RNA) -> None:
        """The features measured: the measurement's ``feature_id``, ``soma_joinid``, …"""
        self._write(features, features_file(measurement))

    def write_qc(self, qc: Any, measurement: MeasurementSpec) -> None:
        """Per-cell QC of a further measurement: ``obs_id`` and one column per metric."""
        self._write(qc, qc_file(measurement))

    def add_files(self, folder: Path, name: str) -> None:
        """Move a staged folder of files (e.g. fragments and their index) into the version."""
        shutil.move(str(folder), str(self.folder / name))

    def write_submitted_obs(self, obs: Any) -> None:
        """Every obs column as submitted, with ``barcode``."""
        self._write(obs, SUBMITTED_OBS)

    def write_obsm(self, key: str, obs_ids: np.ndarray, matrix: np.ndarray) -> None:
        """One submitter embedding (``obsm[key]``), a fixed-size float32 vector per cell."""
        import pyarrow as pa

        arr = np.ascontiguousarray(matrix, dtype=np.float32)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])
        (self.folder / OBSM).mkdir(exist_ok=True)
        self._write(pa.table({"obs_id": np.asarray(obs_ids, dtype=object), "vector": vec}), f"{OBSM}/{key}.parquet")

    def copy_manifest(self, path: str | Path) -> None:
        shutil.copyfile(path, self.folder / MANIFEST)

    def publish_report(self, report_dir: Path, submission_id: str) -> str:
        """Publish a staged report folder at the submission's place (kept with its version;
        recovery removes it if the version is never committed)."""
        key = submission_key(submission_id)
        if self.lake.storage.exists(key):
            self.lake.storage.delete_tree(key)
        self.lake.storage.publish_tree(report_dir, key)
        return self.lake.location(key)

    def commit(self, record: DatasetVersion, *, fault: str = "", fault_exit: int = 97) -> None:
        """Publish the tables and the record (under the caller's write lock); the record is the commit.

        ``fault`` names the ``AIVC_FAULT`` value at which tests crash after the tables are
        published and before the record is written.
        """
        if record.artifacts != self.artifacts:
            raise ValueError(f"record of {record.ref} names artifacts {record.artifacts!r}, expected {self.artifacts!r}")
        Catalog(self.lake).commit(record, self.folder, fault=fault, fault_exit=fault_exit)
        self.discard()

    def discard(self) -> None:
        self.lake.discard_staging(self.staging)
