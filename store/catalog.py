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
from aivc.store.lake import Lake
from aivc.store.records import dump_record, load_record

RECORD_SCHEMA = "aivc.dataset_version"
_RECORD = re.compile(r"^v(\d{6})\.json$")


@dataclass(frozen=True)
class Measured:
    """What one dataset version holds of one measurement."""

    n_features: int
    n_cells: int
    nnz: int
    layers: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "n_cells": self.n_cells, "nnz": self.nnz, "layers": list(self.layers)}

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Measured:
        try:
            return cls(int(d["n_features"]), int(d["n_cells"]), int(d["nnz"]), tuple(d["layers"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LakeError(f"dataset version record has an invalid measurement entry ({exc})") from None


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
    #: per measurement it holds: ``{"RNA": {"n_features", "n_cells", "nnz", "layers"}}``
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: a spatial version's locations and images (:class:`aivc.store.spatial.SpatialRecord`); empty otherwise
    spatial: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.dataset_id}@{self.version}"

    def measured(self) -> dict[str, Measured]:
        """What the version holds per measurement (records older than this field: RNA only)."""
        if not self.measurements:
            return {"RNA": Measured(self.n_genes, self.n_cells, self.nnz, ("counts",))}
        return {name: Measured.from_record(d) for name, d in self.measurements.items()}

    def to_record(self) -> dict[str, Any]:
        return dump_record(self, RECORD_SCHEMA)

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> DatasetVersion:
        return load_record(cls, d, RECORD_SCHEMA, error=LakeError)


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"pbmc"`` -> ("pbmc", None); ``"pbmc@2"`` -> ("pbmc", 2).

    The collections' syntax works too: ``dataset:pbmc@2``, ``pbmc@latest`` (dataset ids
    keep their own rule: they may start with a digit).
    """
    if ref.startswith("dataset:"):
        ref = ref[len("dataset:") :]
    if "@" not in ref:
        return ref, None
    ds, _, v = ref.partition("@")
    if v == "latest":
        return ds, None
    if not v.isdigit():
        raise UsageError(f"version must be a number or 'latest' in {ref!r} (DATASET@VERSION)", where="DATASET")
    return ds, int(v)


class Catalog:
    """Reads and commits dataset version records of one lake (local or S3)."""

    PREFIX = "catalog/datasets"

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.storage = lake.storage

    def _key(self, dataset_id: str, name: str = "") -> str:
        return f"{self.PREFIX}/{dataset_id}/{name}" if name else f"{self.PREFIX}/{dataset_id}"

    def _load(self, key: str) -> DatasetVersion:
        try:
            return DatasetVersion.from_record(json.loads(self.storage.read_bytes(key)))
        except (OSError, json.JSONDecodeError) as exc:
            raise LakeError(f"dataset version record is unreadable ({exc})", where=self.lake.location(key)) from None

    def versions(self, dataset_id: str) -> list[DatasetVersion]:
        if not dataset_id or "/" in dataset_id or dataset_id.startswith("."):
            return []
        _, files = self.storage.children(self._key(dataset_id))
        out = [self._load(self._key(dataset_id, f)) for f in files if _RECORD.match(f)]
        return sorted(out, key=lambda v: v.version)

    def all_versions(self) -> list[DatasetVersion]:
        out: list[DatasetVersion] = []
        for key in self.storage.files(self.PREFIX):
            parts = key.split("/")
            if len(parts) == 2 and not parts[0].startswith(".") and _RECORD.match(parts[1]):
                out.append(self._load(f"{self.PREFIX}/{key}"))
        return sorted(out, key=lambda v: (v.dataset_id, v.version))

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
        """A local folder with the tables of a committed version (on S3 a cached copy);
        readers in this package use :mod:`aivc.store.read` instead."""
        return self.storage.materialize(v.artifacts)

    def next_version(self, dataset_id: str) -> int:
        versions = self.versions(dataset_id)
        return versions[-1].version + 1 if versions else 1

    def commit(self, record: DatasetVersion, staged_artifacts: Path, *, fault: str = "", fault_exit: int = 97) -> None:
        """Publish a version: its artifacts first, then its record, the commit point.

        Locally the artifacts folder is moved into place by one rename and the record
        written by one ``os.replace``; on S3 the artifacts are put as objects and the
        record with a conditional put. ``fault`` names the ``AIVC_FAULT`` value at which
        tests crash between the two.
        """
        rec_key = self._key(record.dataset_id, f"v{record.version:06d}.json")
        if self.storage.exists(rec_key):
            raise LakeError(f"dataset version {record.ref} is already committed; versions are immutable", where=self.lake.location(rec_key))
        if self.storage.exists(record.artifacts):  # leftover of an interrupted commit of this version number
            self.storage.delete_tree(record.artifacts)
        self.storage.publish_tree(staged_artifacts, record.artifacts)
        if fault and os.environ.get("AIVC_FAULT") == fault:
            os._exit(fault_exit)
        try:
            self.storage.write_json(rec_key, record.to_record(), if_absent=True)
        except FileExistsError:
            raise LakeError(f"dataset version {record.ref} was committed by another writer meanwhile; retry", where=self.lake.location(rec_key)) from None

    def remove_orphans(self) -> list[str]:
        """Delete artifact folders that have no commit record (interrupted commits)."""
        removed = []
        datasets, _ = self.storage.children(self.PREFIX)
        for ds in datasets:
            if ds.startswith("."):
                continue
            dirs, files = self.storage.children(self._key(ds))
            for p in dirs:
                if re.match(r"^v\d{6}$", p) and f"{p}.json" not in files:
                    self.storage.delete_tree(self._key(ds, p))
                    removed.append(self._key(ds, p))
        return removed


def embargo_active(v: DatasetVersion, today: dt.date | None = None) -> bool:
    if v.access != "embargoed" or not v.embargo_until:
        return False
    return (today or dt.date.today()) < dt.date.fromisoformat(v.embargo_until)
