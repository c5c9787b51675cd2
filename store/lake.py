"""The lake: a format marker, a writers' lock and atomic publishing, on a local folder or S3.

Layout (see DESIGN.md and the README), the same under a folder or ``s3://bucket/prefix``::

    <lake>/lake.json               format marker (schema_name/schema_version, lake_id)
    <lake>/soma/<organism>/        one TileDB-SOMA Experiment per organism
    <lake>/catalog/datasets/<id>/  v000001.json commit records + v000001/ artifacts
    <lake>/submissions/<id>/       validation reports of committed submissions
    <lake>/features|models|instruments|predictions/…   published collections
    <lake>/.aivc.lock              the writers' lock (flock locally, a lease object on S3)

Bytes go through :mod:`aivc.store.storage`. Locally every write goes to a temporary name
and is published by one ``os.replace`` / ``os.rename``; on S3 a version's objects are put
first and its record, written with a conditional put, is the commit point. Either way a
reader never sees a partial version. ``Lake.root`` is always a local folder: the lake
itself, or for an S3 lake its local work folder (staging, run scratch, cached copies of
committed versions) under ``$AIVC_CACHE_DIR`` (default ``~/.cache/aivc``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aivc.errors import LakeError, LakeNotFoundError
from aivc.store.storage import LOCK_NAME, LocalStorage, S3Storage, Storage, open_storage, write_atomic

LAKE_SCHEMA_NAME = "aivc.lake"
LAKE_SCHEMA_VERSION = 1
MARKER = "lake.json"

__all__ = ["LOCK_NAME", "Lake", "resolve_lake", "utcnow", "write_json_atomic"]


def resolve_lake(lake: str | os.PathLike[str] | None) -> Storage:
    """``--lake``, else ``$AIVC_LAKE``, else ``./lake``: a local folder or ``s3://BUCKET/PREFIX``."""
    raw = str(lake) if lake is not None else os.environ.get("AIVC_LAKE") or "lake"
    return open_storage(raw)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to the local ``path`` so readers see the old file or the whole new one."""
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def _cache_dir(storage: S3Storage, info: dict[str, Any]) -> Path:
    base = Path(os.environ.get("AIVC_CACHE_DIR") or Path.home() / ".cache" / "aivc").expanduser().absolute()
    ident = info.get("lake_id") or hashlib.sha256(f"{storage.uri} {info.get('created_at')}".encode()).hexdigest()[:16]
    return base / "lakes" / f"{storage.bucket}-{ident}"


class Lake:
    """An aivc lake in a local folder or under ``s3://bucket/prefix``.

    Use :meth:`init` to create one and :meth:`open` to open an existing one. ``uri`` is
    where it lives; ``storage`` reads and publishes its bytes; ``root`` is its local
    folder (for S3 the local work folder, see the module docstring).

    Examples
    --------
    >>> import tempfile
    >>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
    >>> lake.info()["schema_name"]
    'aivc.lake'
    """

    def __init__(self, root: Path | Storage, info: dict[str, Any] | None = None) -> None:
        self.storage: Storage = LocalStorage(Path(root)) if isinstance(root, str | os.PathLike) else root
        if isinstance(self.storage, LocalStorage):
            self.root = self.storage.root
        else:
            assert isinstance(self.storage, S3Storage)
            self.storage.cache = self.root = _cache_dir(self.storage, info or self.storage.read_json(MARKER))
        self._info = info

    @property
    def uri(self) -> str:
        """Where the lake lives: a local path or ``s3://bucket/prefix`` (what ``--lake`` takes)."""
        return self.storage.uri

    @property
    def is_local(self) -> bool:
        return self.storage.is_local

    # -- lifecycle -----------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None) -> Lake:
        """Create a lake at ``path``; an existing aivc lake is returned unchanged."""
        st = resolve_lake(path)
        if st.exists(MARKER):
            return cls.open(st.uri)
        dirs, files = st.children("")
        if dirs or files:
            what = "folder" if st.is_local else "S3 prefix"
            raise LakeError(f"{what} exists, is not empty and is not an aivc lake: {st.uri}", where=st.uri)
        info = {
            "schema_name": LAKE_SCHEMA_NAME,
            "schema_version": LAKE_SCHEMA_VERSION,
            "created_at": utcnow(),
            "lake_id": uuid.uuid4().hex,
            "owner": os.environ.get("USER") or "owner",
        }
        if isinstance(st, LocalStorage):
            for sub in ("soma", "catalog/datasets", "catalog/.staging", "submissions", "features", "predictions", "models", "images", "molecules"):
                (st.root / sub).mkdir(parents=True, exist_ok=True)
            (st.root / LOCK_NAME).touch()
        try:
            st.write_json(MARKER, info, if_absent=True)
        except FileExistsError:  # another process created it meanwhile
            return cls.open(st.uri)
        return cls(st, info)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None) -> Lake:
        st = resolve_lake(path)
        where = st.full(MARKER)
        try:
            raw = st.read_bytes(MARKER)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise LakeNotFoundError(f"no aivc lake at {st.uri}; create one with `aivc init --lake {st.uri}`", where=st.uri) from None
        except OSError as exc:
            raise LakeError(f"lake.json is unreadable ({exc})", where=where) from None
        try:
            info = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LakeError(f"lake.json is unreadable ({exc})", where=where) from None
        if not isinstance(info, dict) or info.get("schema_name") != LAKE_SCHEMA_NAME:
            raise LakeError("lake.json does not describe an aivc lake", where=where)
        if int(info.get("schema_version", 0)) > LAKE_SCHEMA_VERSION:
            raise LakeError(
                f"lake format {info['schema_version']} is newer than this aivc understands ({LAKE_SCHEMA_VERSION}); upgrade aivc",
                where=where,
            )
        return cls(st, info)

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.storage.read_json(MARKER)
        return dict(self._info)

    # -- locations -------------------------------------------------------------------
    def soma_uri(self, organism_name: str) -> str:
        """The TileDB-SOMA experiment of an organism (a path, or an ``s3://`` URI)."""
        return self.storage.full(f"soma/{organism_name}")

    def location(self, key: str) -> str:
        """How messages name ``key`` of this lake (a local path or an ``s3://`` URI)."""
        return self.storage.full(key)

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def staging_dir(self) -> Path:
        return self.root / "catalog" / ".staging"

    # -- staged writes ---------------------------------------------------------------
    def new_staging(self) -> Path:
        """A fresh local folder for a write in progress, marked with its owner process."""
        p = self.staging_dir / uuid.uuid4().hex
        p.mkdir(parents=True)
        self.staging_dir.joinpath(f"{p.name}.owner").write_text(f"{socket.gethostname()} {os.getpid()}")
        return p

    def publish_staging(self, staging: Path, final: str, *, record: str | None = None, fault: str = "", fault_exit: int = 17) -> None:
        """Publish a staged folder (from :meth:`new_staging`) as the lake key ``final``.

        Call under :meth:`write_lock` with the record (the file ``record``) already inside
        ``staging``: locally one rename is the commit; on S3 the other files are put first
        and the record last, with a conditional put. Readers see the whole version or none.
        ``fault`` names the ``AIVC_FAULT`` value at which tests crash (exit ``fault_exit``)
        right before the commit point.
        """

        def crash() -> None:
            if fault and os.environ.get("AIVC_FAULT") == fault:
                os._exit(fault_exit)

        try:
            self.storage.publish_tree(staging, final, record=record, fault=crash)
        except FileExistsError:
            raise LakeError(f"{final} was committed by another writer meanwhile; retry", where=self.location(final)) from None
        staging.with_name(f"{staging.name}.owner").unlink(missing_ok=True)

    def discard_staging(self, staging: Path) -> None:
        """Remove a staged folder that will not be published (and its owner mark)."""
        shutil.rmtree(staging, ignore_errors=True)
        staging.with_name(f"{staging.name}.owner").unlink(missing_ok=True)

    def _owner_alive(self, folder: Path) -> bool:
        marker = folder.with_name(f"{folder.name}.owner")
        try:
            host, pid = marker.read_text().split()
        except (OSError, ValueError):
            return False
        if host != socket.gethostname():
            return True  # cannot tell: leave another machine's write alone
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    # -- writers' lock ---------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self, wait: float = 600.0, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the lake's exclusive write lock; wait up to ``wait`` seconds for it.

        Raises
        ------
        LakeBusyError
            If another process keeps holding it.
        """
        with self.storage.lock(wait=wait, on_wait=on_wait):
            yield

    def clear_staging(self) -> list[str]:
        """Remove leftovers of interrupted writes (called under the write lock)."""
        removed: list[str] = []
        if self.staging_dir.exists():
            for p in self.staging_dir.iterdir():
                if p.is_dir():
                    if self._owner_alive(p):
                        continue  # a write in progress in another live process
                    shutil.rmtree(p, ignore_errors=True)
                    p.with_name(f"{p.name}.owner").unlink(missing_ok=True)
                    removed.append(str(p.relative_to(self.root)))
                elif p.suffix == ".owner" and not p.with_suffix("").exists():
                    p.unlink(missing_ok=True)
        if self.catalog_dir.is_dir():
            for tmp in self.catalog_dir.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed.append(str(tmp.relative_to(self.root)))
        return removed
