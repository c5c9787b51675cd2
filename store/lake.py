"""The lake: a folder with a format marker, a write lock and atomic file helpers.

Layout (see DESIGN.md)::

    <lake>/lake.json               format marker (schema_name/schema_version)
    <lake>/soma/<organism>/        one TileDB-SOMA Experiment per organism
    <lake>/catalog/datasets/<id>/  v000001.json commit records + v000001/ artifacts
    <lake>/submissions/<id>/       validation reports of committed submissions
    <lake>/.aivc.lock              the writers' lock (flock)

Every write goes to a temporary name and is published by one ``os.replace`` (files) or
``os.rename`` (folders); the commit record of a dataset version is written last, so a
reader never sees a partial version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aivc.errors import LakeBusyError, LakeError, LakeNotFoundError, UsageError

LAKE_SCHEMA_NAME = "aivc.lake"
LAKE_SCHEMA_VERSION = 1
LOCK_NAME = ".aivc.lock"


def resolve_lake_path(lake: str | os.PathLike[str] | None) -> Path:
    """``--lake``, else ``$AIVC_LAKE``, else ``./lake``."""
    raw = str(lake) if lake is not None else os.environ.get("AIVC_LAKE") or "lake"
    if "://" in raw:
        raise UsageError(
            f"object-store lakes ({raw.split('://')[0]}://) are not supported by this build yet; use a local folder",
            where="--lake",
        )
    return Path(raw).expanduser().absolute()


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` so readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Lake:
    """An aivc lake rooted at a local folder.

    Use :meth:`init` to create one and :meth:`open` to open an existing one.

    Examples
    --------
    >>> import tempfile
    >>> lake = Lake.init(tempfile.mkdtemp() + "/lake")
    >>> lake.info()["schema_name"]
    'aivc.lake'
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    # -- lifecycle -----------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] | None) -> Lake:
        """Create a lake at ``path``; an existing aivc lake is returned unchanged."""
        root = resolve_lake_path(path)
        marker = root / "lake.json"
        if marker.exists():
            lake = cls.open(root)
            return lake
        if root.exists() and any(root.iterdir()):
            raise LakeError(f"folder exists, is not empty and is not an aivc lake: {root}", where=str(root))
        for sub in ("soma", "catalog/datasets", "catalog/.staging", "submissions", "features", "predictions", "models", "images", "molecules"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / LOCK_NAME).touch()
        write_json_atomic(
            marker,
            {
                "schema_name": LAKE_SCHEMA_NAME,
                "schema_version": LAKE_SCHEMA_VERSION,
                "created_at": utcnow(),
                "owner": os.environ.get("USER") or "owner",
            },
        )
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None) -> Lake:
        root = resolve_lake_path(path)
        marker = root / "lake.json"
        if not marker.is_file():
            raise LakeNotFoundError(f"no aivc lake at {root}; create one with `aivc init --lake {root}`", where=str(root))
        try:
            info = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LakeError(f"lake.json is unreadable ({exc})", where=str(marker)) from None
        if info.get("schema_name") != LAKE_SCHEMA_NAME:
            raise LakeError("lake.json does not describe an aivc lake", where=str(marker))
        if int(info.get("schema_version", 0)) > LAKE_SCHEMA_VERSION:
            raise LakeError(
                f"lake format {info['schema_version']} is newer than this aivc understands ({LAKE_SCHEMA_VERSION}); upgrade aivc",
                where=str(marker),
            )
        return cls(root)

    def info(self) -> dict[str, Any]:
        return json.loads((self.root / "lake.json").read_text())

    # -- paths -----------------------------------------------------------------------
    def soma_uri(self, organism_name: str) -> str:
        return str(self.root / "soma" / organism_name)

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def staging_dir(self) -> Path:
        return self.root / "catalog" / ".staging"

    def new_staging(self) -> Path:
        """A fresh folder for a write in progress, marked with its owner process."""
        p = self.staging_dir / uuid.uuid4().hex
        p.mkdir(parents=True)
        self.staging_dir.joinpath(f"{p.name}.owner").write_text(f"{socket.gethostname()} {os.getpid()}")
        return p

    def publish_staging(self, staging: Path, final: Path, *, fault: str = "", fault_exit: int = 17) -> None:
        """Publish a staged folder (from :meth:`new_staging`) as ``final`` by one rename.

        Call under :meth:`write_lock` with the record already inside ``staging``: the rename
        is the commit, readers see the whole version or none. ``fault`` names the
        ``AIVC_FAULT`` value at which tests crash (exit ``fault_exit``) right before it.
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        if fault and os.environ.get("AIVC_FAULT") == fault:
            os._exit(fault_exit)
        os.rename(staging, final)
        _fsync_dir(final.parent)
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
    def write_lock(self, wait: float = 600.0, on_wait: Any = None) -> Iterator[None]:
        """Hold the lake's exclusive write lock; wait up to ``wait`` seconds for it.

        Raises
        ------
        LakeBusyError
            If another process keeps holding it.
        """
        path = self.root / LOCK_NAME
        fh = open(path, "a+")
        deadline = time.monotonic() + wait
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LakeBusyError(
                            f"another aivc process is writing to this lake and held the lock for over {wait:g}s; retry later or raise --wait",
                            where=str(path),
                        ) from None
                    if on_wait is not None and not told:
                        on_wait()
                        told = True
                    time.sleep(0.2)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

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
        for tmp in self.catalog_dir.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(str(tmp.relative_to(self.root)))
        return removed
