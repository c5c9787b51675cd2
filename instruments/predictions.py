"""Prediction versions: immutable, versioned Parquet tables of a decoder's outputs.

Layout::

    <lake>/predictions/<instrument>/v000001/
        _version.json                         the record (schema_name aivc.prediction_version)
        dataset=<dataset_id>/part-*.parquet   one row per cell (schema aivc.prediction_rows)
        report.json, report.html              the reannotation report (when written)

Rows: ``obs_id`` (joins ``cells`` / ``cells_all_versions``), ``soma_joinid``,
``dataset_id`` and the decoder's output columns (for the cell-type decoder:
``predicted_term_id, predicted_label, probability, prediction_set, set_size, novelty,
abstain``). The record names the exact instrument version and embedding version the rows
came from, and the dataset versions they cover, so retraining or re-embedding makes new
versions and never changes an old one.

A version is staged in the lake's staging folder and published by :func:`publish`: one
folder rename under the lake's write lock; a crash at any point leaves no version
visible (``aivc recover`` removes the staging leftovers).

Example
-------
>>> import tempfile
>>> from aivc.store.lake import Lake
>>> list_prediction_versions(Lake.init(tempfile.mkdtemp() + "/lake"))
[]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aivc.instruments.registry import InstrumentError
from aivc.store.collection import Collection, sql_name
from aivc.store.lake import Lake
from aivc.store.records import dump_record, load_record

RECORD_NAME = "_version.json"
RECORD_SCHEMA = "aivc.prediction_version"
ROWS_SCHEMA = "aivc.prediction_rows"


@dataclass(frozen=True)
class PredictionVersion:
    """The record of one published, immutable prediction version."""

    instrument: str
    version: int
    instrument_ref: str
    instrument_kind: str
    instrument_type: str
    embedding_ref: str
    datasets: tuple[str, ...]
    rows_per_dataset: dict[str, int]
    n_rows: int
    columns: dict[str, str]
    created_at: str
    job: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, str] = field(default_factory=dict)
    partitions: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The collection name: the instrument's."""
        return self.instrument

    @property
    def ref(self) -> str:
        return f"predictions:{self.instrument}@{self.version}"

    @property
    def view_name(self) -> str:
        return f"predictions_{sql_name(self.instrument)}_v{self.version}"

    @property
    def alias_name(self) -> str:
        return f"predictions_{sql_name(self.instrument)}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, RECORD_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> PredictionVersion:
        return load_record(cls, d, RECORD_SCHEMA, error=InstrumentError)


def predictions(lake: Lake) -> Collection[PredictionVersion]:
    """The lake's prediction versions (``<lake>/predictions/<instrument>/v000001/_version.json``)."""
    return Collection(
        lake, folder="predictions", kinds=("predictions",), record_name=RECORD_NAME, load=PredictionVersion.from_record,
        what="prediction version of instrument", hint="aivc instruments predictions", error=InstrumentError,
        form="[predictions:]INSTRUMENT[@VERSION]", example="predictions:celltype@1",
    )  # fmt: skip


def version_dir(lake: Lake, instrument: str, version: int) -> Path:
    return predictions(lake).version_dir("predictions", instrument, version)


def list_prediction_versions(lake: Lake, instrument: str | None = None) -> list[PredictionVersion]:
    """Every published prediction version (optionally of one instrument name)."""
    return predictions(lake).list(name=instrument)


def get_prediction_version(lake: Lake, ref: str) -> PredictionVersion:
    """The record of ``[predictions:]INSTRUMENT[@VERSION]`` (latest when no version is given)."""
    return predictions(lake).get(ref)


def parquet_files(lake: Lake, v: PredictionVersion, datasets: set[str] | None = None) -> list[Path]:
    """The Parquet files of a version, optionally only those of some datasets."""
    root = version_dir(lake, v.instrument, v.version)
    files = sorted(root.rglob("*.parquet"))
    if datasets is None:
        return files
    keep = {f"dataset={d}" for d in datasets}
    return [f for f in files if f.parent.name in keep]


def read_predictions(lake: Lake, ref: str | PredictionVersion, datasets: set[str] | None = None) -> Any:
    """The rows of a prediction version as one Arrow table (optionally of some datasets)."""
    import pyarrow as pa
    import pyarrow.dataset as pds

    v = ref if isinstance(ref, PredictionVersion) else get_prediction_version(lake, ref)
    files = parquet_files(lake, v, datasets)
    if not files:
        return pa.table({"obs_id": pa.array([], pa.string())})
    return pds.dataset([str(f) for f in files], format="parquet").to_table()


def publish(
    lake: Lake,
    staging: Path,
    instrument: str,
    make_record: Callable[[int], PredictionVersion],
    before_rename: Callable[[Path, PredictionVersion], None] | None = None,
    wait: float = 600.0,
) -> PredictionVersion:
    """Publish the staged folder as the next prediction version of ``instrument`` (a name).

    Under the lake's write lock: number the version, build its record with
    ``make_record(version)``, let ``before_rename(staging, record)`` add last files (the
    report), write the record and rename the folder into place. The rename is the commit.
    """
    return predictions(lake).publish(
        staging, "predictions", instrument, make_record, before_rename=before_rename, fault="before_prediction_publish", fault_exit=23, wait=wait
    )


