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

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aivc.errors import UsageError
from aivc.instruments.registry import InstrumentError
from aivc.store.lake import Lake, write_json_atomic
from aivc.store.records import dump_record, load_record, pick_version

RECORD_NAME = "_version.json"
RECORD_SCHEMA = "aivc.prediction_version"
ROWS_SCHEMA = "aivc.prediction_rows"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_VERSION_DIR = re.compile(r"^v(\d{6})$")
_REF = re.compile(r"^(?:predictions:)?([a-z][a-z0-9_]{0,40})(?:@(\d+|latest))?$")


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
    def ref(self) -> str:
        return f"predictions:{self.instrument}@{self.version}"

    @property
    def view_name(self) -> str:
        return f"predictions_{self.instrument}_v{self.version}"

    @property
    def alias_name(self) -> str:
        return f"predictions_{self.instrument}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, RECORD_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> PredictionVersion:
        return load_record(cls, d, RECORD_SCHEMA, error=InstrumentError)


def predictions_root(lake: Lake) -> Path:
    return lake.root / "predictions"


def version_dir(lake: Lake, instrument: str, version: int) -> Path:
    return predictions_root(lake) / instrument / f"v{version:06d}"


def parse_prediction_ref(ref: str) -> tuple[str, int | None]:
    """``"predictions:celltype@2"`` or ``"celltype@2"`` -> ("celltype", 2).

    >>> parse_prediction_ref("predictions:celltype@2"), parse_prediction_ref("celltype")
    (('celltype', 2), ('celltype', None))
    """
    m = _REF.match(ref)
    if not m:
        raise UsageError(f"prediction reference {ref!r} must look like [predictions:]INSTRUMENT[@VERSION], e.g. predictions:celltype@1", where=ref)
    name, v = m.groups()
    return name, None if v in (None, "latest") else int(v)


def list_prediction_versions(lake: Lake, instrument: str | None = None) -> list[PredictionVersion]:
    """Every published prediction version (optionally of one instrument name)."""
    root = predictions_root(lake)
    out: list[PredictionVersion] = []
    if not root.is_dir():
        return out
    for nd in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        if instrument and nd.name != instrument:
            continue
        for vd in sorted(nd.iterdir()):
            rec = vd / RECORD_NAME
            if _VERSION_DIR.match(vd.name) and rec.is_file():
                out.append(PredictionVersion.from_record(json.loads(rec.read_text())))
    return out


def get_prediction_version(lake: Lake, ref: str) -> PredictionVersion:
    """The record of ``[predictions:]INSTRUMENT[@VERSION]`` (latest when no version is given)."""
    name, version = parse_prediction_ref(ref)
    return pick_version(list_prediction_versions(lake, name), version, ref=ref, what=f"prediction version of instrument {name!r}", hint="aivc instruments predictions")


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
    with lake.write_lock(wait=wait):
        existing = list_prediction_versions(lake, instrument)
        version = existing[-1].version + 1 if existing else 1
        record = make_record(version)
        if before_rename is not None:
            before_rename(staging, record)
        write_json_atomic(staging / RECORD_NAME, record.to_record())
        lake.publish_staging(staging, version_dir(lake, record.instrument, version), fault="before_prediction_publish", fault_exit=23)
    return record


