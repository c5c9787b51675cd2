"""The catalog of dataset versions.

A dataset version is committed by writing one JSON record,
``catalog/datasets/<dataset_id>/v<NNNNNN>.json``, after its artifacts folder
(``v<NNNNNN>/``: cells and genes Parquet, submitter embeddings, manifest) and its SOMA
fragments are in place. The record names the SOMA timestamp that makes its cells
visible, so the lake's readable state is exactly the set of records.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aivc.errors import LakeError, NotFoundError, UsageError
from aivc.store.lake import Lake, _fsync_dir, write_json_atomic
from aivc.store.records import dump_record, load_record

RECORD_SCHEMA = "aivc.dataset_version"
_RECORD = re.compile(r"^v(\d{6})\.json$")


@dataclass(frozen=True)
class DatasetVersion:
    """One committed, immutable version of a dataset."""

    dataset_id: str
    version: int
    title: str
    description: str
    license: str
    access: str
    embargo_until: str | None
    organism: str
    organism_name: str
    n_cells: int
    n_genes: int
    nnz: int
    content_hash: str
    submission_id: str
    committed_at: str
    soma_timestamp: int
    soma_high_water: int
    obs_joinid_min: int
    obs_joinid_max: int
    artifacts: str  # folder relative to the lake root
    obsm_keys: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.dataset_id}@{self.version}"

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, RECORD_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> DatasetVersion:
        return load_record(cls, d, RECORD_SCHEMA, error=LakeError)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"pbmc"`` -> ("pbmc", None); ``"pbmc@2"`` -> ("pbmc", 2)."""
    if "@" not in ref:
        return ref, None
    ds, _, v = ref.partition("@")
    if not v.isdigit():
        raise UsageError(f"version must be a number in {ref!r} (DATASET@VERSION)", where="DATASET")
    return ds, int(v)


class Catalog:
    """Reads and commits dataset version records of one lake."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.root = lake.catalog_dir / "datasets"

    def _dir(self, dataset_id: str) -> Path:
        return self.root / dataset_id

    def versions(self, dataset_id: str) -> list[DatasetVersion]:
        d = self._dir(dataset_id)
        if not d.is_dir():
            return []
        out = []
        for p in sorted(d.iterdir()):
            if _RECORD.match(p.name):
                out.append(DatasetVersion.from_record(json.loads(p.read_text())))
        return sorted(out, key=lambda v: v.version)

    def all_versions(self) -> list[DatasetVersion]:
        if not self.root.is_dir():
            return []
        out: list[DatasetVersion] = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                out.extend(self.versions(d.name))
        return out

    def current(self) -> list[DatasetVersion]:
        """The newest version of each dataset."""
        latest: dict[str, DatasetVersion] = {}
        for v in self.all_versions():
            if v.dataset_id not in latest or v.version > latest[v.dataset_id].version:
                latest[v.dataset_id] = v
        return [latest[k] for k in sorted(latest)]

    def get(self, ref: str) -> DatasetVersion:
        dataset_id, version = parse_ref(ref)
        versions = self.versions(dataset_id)
        if not versions:
            raise NotFoundError(f"no dataset {dataset_id!r} in this lake; `aivc datasets` lists them", where=ref)
        if version is None:
            return versions[-1]
        for v in versions:
            if v.version == version:
                return v
        have = ", ".join(str(v.version) for v in versions)
        raise NotFoundError(f"dataset {dataset_id!r} has no version {version} (versions: {have})", where=ref)

    def high_water(self, organism_name: str) -> int | None:
        """SOMA timestamp (ms) at which all committed data of an organism is visible."""
        hw = [v.soma_high_water for v in self.all_versions() if v.organism_name == organism_name]
        return max(hw) if hw else None

    def artifacts_path(self, v: DatasetVersion) -> Path:
        return self.lake.root / v.artifacts

    def next_version(self, dataset_id: str) -> int:
        versions = self.versions(dataset_id)
        return versions[-1].version + 1 if versions else 1

    def commit(self, record: DatasetVersion, staged_artifacts: Path) -> None:
        """Publish a version: move its artifacts into place, then write its record.

        The record write (one ``os.replace``) is the commit point.
        """
        d = self._dir(record.dataset_id)
        d.mkdir(parents=True, exist_ok=True)
        if (d / f"v{record.version:06d}.json").exists():
            raise LakeError(f"dataset version {record.ref} is already committed; versions are immutable", where=str(d))
        final = self.lake.root / record.artifacts
        if final.exists():  # leftover of an interrupted commit of this version number
            import shutil

            shutil.rmtree(final)
        os.rename(staged_artifacts, final)
        _fsync_dir(d)
        write_json_atomic(d / f"v{record.version:06d}.json", record.to_record())

    def remove_orphans(self) -> list[str]:
        """Delete artifact folders that have no commit record (interrupted commits)."""
        import shutil

        removed = []
        if not self.root.is_dir():
            return removed
        for d in self.root.iterdir():
            if not d.is_dir() or d.name.startswith("."):
                continue
            for p in d.iterdir():
                if p.is_dir() and re.match(r"^v\d{6}$", p.name) and not (d / f"{p.name}.json").exists():
                    shutil.rmtree(p)
                    removed.append(str(p.relative_to(self.lake.root)))
        return removed


def embargo_active(v: DatasetVersion, today: dt.date | None = None) -> bool:
    if v.access != "embargoed" or not v.embargo_until:
        return False
    return (today or dt.date.today()) < dt.date.fromisoformat(v.embargo_until)
