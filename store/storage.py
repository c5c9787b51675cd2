"""Where a lake's bytes live: a local folder or an S3 prefix, behind one small interface.

Everything the lake publishes is addressed by a *key* relative to the lake root
(``catalog/datasets/pbmc/v000001.json``). :class:`LocalStorage` maps keys to files and
publishes by ``os.replace`` / ``os.rename``. :class:`S3Storage` maps them to objects under
``s3://bucket/prefix/`` and, having no rename, publishes the way Delta Lake and Iceberg do:
a version's immutable objects first, then one small record object, written with a
conditional put (``If-None-Match: *``), is the commit point. Writers are serialized by a
lease object (``.aivc.lock``, created with ``If-None-Match``, renewed and stolen with
``If-Match``), so two writers never interleave and a killed writer's lease expires.

S3 settings come from the standard variables: ``AWS_ENDPOINT_URL`` (MinIO, a local
server; unset for AWS), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN`` and ``AWS_REGION`` (see :class:`S3Config`). Committed versions are
immutable, so :meth:`S3Storage.materialize` (a version folder) and
:meth:`S3Storage.local_file` (one file) keep local copies for readers that need files (model
weights, an HNSW index, the feature tables SQL reads), keyed by the lake's id.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aivc.errors import LakeBusyError, LakeError, UsageError

__all__ = ["LocalStorage", "S3Config", "S3Storage", "Storage", "open_storage", "write_atomic"]

LOCK_NAME = ".aivc.lock"
COMPLETE = ".aivc-complete"


def _dumps(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class S3Config:
    """S3 connection settings from the standard AWS environment variables."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Config:
        e = os.environ if env is None else env
        return cls(
            endpoint=e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None,
            region=e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1",
            access_key=e.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=e.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=e.get("AWS_SESSION_TOKEN") or None,
        )

    @property
    def _endpoint_parts(self) -> tuple[str, str] | None:
        if not self.endpoint:
            return None
        u = urlparse(self.endpoint if "://" in self.endpoint else f"https://{self.endpoint}")
        return u.scheme or "https", u.netloc

    def tiledb_config(self) -> dict[str, str]:
        """TileDB VFS settings (TileDB does not read ``AWS_ENDPOINT_URL`` itself)."""
        cfg = {"vfs.s3.region": self.region}
        parts = self._endpoint_parts
        if parts:
            cfg.update({"vfs.s3.scheme": parts[0], "vfs.s3.endpoint_override": parts[1], "vfs.s3.use_virtual_addressing": "false"})
        if self.access_key and self.secret_key:
            cfg.update({"vfs.s3.aws_access_key_id": self.access_key, "vfs.s3.aws_secret_access_key": self.secret_key})
            if self.session_token:
                cfg["vfs.s3.aws_session_token"] = self.session_token
        return cfg

    def arrow_fs(self):  # noqa: ANN201 - pyarrow.fs.S3FileSystem
        import pyarrow.fs as pafs

        kw: dict[str, Any] = {"region": self.region}
        parts = self._endpoint_parts
        if parts:
            kw.update(scheme=parts[0], endpoint_override=parts[1])
        if self.access_key and self.secret_key:
            kw.update(access_key=self.access_key, secret_key=self.secret_key, session_token=self.session_token)
        return pafs.S3FileSystem(**kw)

    def client(self):  # noqa: ANN201 - botocore client
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=16, s3={"addressing_style": "path"} if self.endpoint else {}),
        )


class Storage:
    """The operations the lake needs from where it lives (keys are ``/``-separated)."""

    uri: str
    is_local: bool

    # reading
    def read_bytes(self, key: str) -> bytes:  # FileNotFoundError when absent
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        """(sub-folder names, file names) directly under ``prefix``."""
        raise NotImplementedError

    def files(self, prefix: str) -> list[str]:
        """Every file under ``prefix``, as keys relative to it, sorted."""
        raise NotImplementedError

    def arrow(self, key: str):  # noqa: ANN201 - (pyarrow FileSystem, path)
        raise NotImplementedError

    def materialize(self, prefix: str) -> Path:
        """A local folder with the files of the committed, immutable folder ``prefix``."""
        raise NotImplementedError

    def local_file(self, key: str) -> Path:
        """A local path of the committed, immutable file ``key`` (on S3 a cached copy)."""
        raise NotImplementedError

    # writing
    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write atomically (readers see the old object or the new one); with ``if_absent``
        fail with :class:`FileExistsError` when ``key`` exists (the commit point)."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def delete_tree(self, prefix: str) -> None:
        raise NotImplementedError

    def publish_tree(self, staged: Path, prefix: str, *, record: str | None = None, fault: Callable[[], None] | None = None) -> None:
        """Publish the local folder ``staged`` as ``prefix``; ``record`` (a file in it) goes last
        and is the commit point; ``fault()`` runs right before it."""
        raise NotImplementedError

    @contextlib.contextmanager
    def lock(self, wait: float = 600.0, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        raise NotImplementedError
        yield

    # helpers
    def full(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, data: Any, *, if_absent: bool = False) -> None:
        self.write_bytes(key, _dumps(data), if_absent=if_absent)

    def read_parquet(self, key: str, columns: list[str] | None = None):  # noqa: ANN201 - pyarrow.Table
        import pyarrow.parquet as pq

        fs, path = self.arrow(key)
        return pq.read_table(path, columns=columns, filesystem=fs)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, *, if_absent: bool = False) -> None:
    """Write a local file so readers see the old one or the whole new one (a temporary name,
    then ``os.replace``); with ``if_absent`` fail with :class:`FileExistsError` if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if if_absent:
            os.link(tmp, path)  # atomic create-if-absent (FileExistsError otherwise)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class LocalStorage(Storage):
    """A lake in a local folder: ``os.replace`` for files, one ``os.rename`` per folder."""

    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        dirs, files = [], []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for e in os.scandir(self.path(prefix)):
                (dirs if e.is_dir() else files).append(e.name)
        return sorted(dirs), sorted(files)

    def files(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())

    def arrow(self, key: str):  # noqa: ANN201
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(self.path(key))

    def materialize(self, prefix: str) -> Path:
        return self.path(prefix)

    def local_file(self, key: str) -> Path:
        return self.path(key)

    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        write_atomic(self.path(key), data, if_absent=if_absent)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def publish_tree(self, staged: Path, prefix: str, *, record: str | None = None, fault: Callable[[], None] | None = None) -> None:
        final = self.path(prefix)
        final.parent.mkdir(parents=True, exist_ok=True)
        if fault is not None:
            fault()
        os.rename(staged, final)  # with the record inside: the rename is the commit
        _fsync_dir(final.parent)

    @contextlib.contextmanager
    def lock(self, wait: float = 600.0, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        import fcntl

        path = self.path(LOCK_NAME)
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


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3Storage(Storage):
    """A lake under ``s3://bucket/prefix`` (AWS, MinIO or any S3-compatible store)."""

    is_local = False
    lease_s = 60.0

    def __init__(self, uri: str, config: S3Config | None = None) -> None:
        u = urlparse(uri)
        if u.scheme != "s3" or not u.netloc:
            raise UsageError(f"an object-store lake must look like s3://BUCKET/PREFIX, not {uri!r}", where="--lake")
        self.bucket, self.prefix = u.netloc, u.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.config = config or S3Config.from_env()
        self._client: Any = None
        self._fs: Any = None
        self.cache: Path | None = None

    # -- plumbing ----------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.config.client()
        return self._client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as exc:
            code = _code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(self.full(kw.get("Key", "")[len(self.prefix) + 1 :] if self.prefix else kw.get("Key", ""))) from None
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise FileExistsError(kw.get("Key", "")) from None
            if code == "NoSuchBucket":
                raise LakeError(f"S3 bucket {self.bucket!r} does not exist; create it first", where=self.uri) from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise LakeError(f"S3 refused access ({code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", where=self.uri) from None
            if code:
                raise LakeError(f"S3 error {code}: {exc}", where=self.uri) from None
            import botocore.exceptions as bex

            if isinstance(exc, bex.EndpointConnectionError | bex.ConnectionError | bex.NoCredentialsError):
                raise LakeError(f"cannot reach S3 ({type(exc).__name__}: {exc}); check AWS_ENDPOINT_URL and the credentials", where=self.uri) from None
            raise

    # -- reading -----------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        return self._call(self.client.get_object, Key=self._key(key))["Body"].read()

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call(self.client.head_object, Key=self._key(key))
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        if self._head(key) is not None:
            return True
        dirs, files = self.children(key)
        return bool(dirs or files)

    def _list(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        kw: dict[str, Any] = {"Prefix": self._key(prefix).rstrip("/") + "/" if (prefix or self.prefix) else ""}
        if delimiter:
            kw["Delimiter"] = delimiter
        token = None
        while True:
            page = self._call(self.client.list_objects_v2, **kw, **({"ContinuationToken": token} if token else {}))
            yield page
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def children(self, prefix: str) -> tuple[list[str], list[str]]:
        dirs, files = [], []
        for page in self._list(prefix, "/"):
            dirs += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
            files += [o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", [])]
        return sorted(dirs), sorted(files)

    def files(self, prefix: str) -> list[str]:
        base = self._key(prefix).rstrip("/") + "/" if (prefix or self.prefix) else ""
        return sorted(o["Key"][len(base) :] for page in self._list(prefix, None) for o in page.get("Contents", []))

    def arrow(self, key: str):  # noqa: ANN201
        if self._fs is None:
            self._fs = self.config.arrow_fs()
        return self._fs, f"{self.bucket}/{self._key(key)}"

    def materialize(self, prefix: str) -> Path:
        if self.cache is None:
            raise LakeError("this lake has no local cache folder", where=self.uri)
        final = self.cache / prefix
        if (final / COMPLETE).is_file():
            return final
        tmp = self.cache / ".downloads" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        names = self.files(prefix)

        def get(name: str) -> None:
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, self._key(f"{prefix}/{name}"), str(dest))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(get, names))
        (tmp / COMPLETE).touch()
        self._install(tmp, final)
        return final

    def local_file(self, key: str) -> Path:
        if self.cache is None:
            raise LakeError("this lake has no local cache folder", where=self.uri)
        final = self.cache / ".files" / key
        if not final.is_file():
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.client.download_file(self.bucket, self._key(key), str(tmp))
            except Exception as exc:
                tmp.unlink(missing_ok=True)
                if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(self.full(key)) from None
                raise
            os.replace(tmp, final)
        return final

    def _install(self, folder: Path, final: Path) -> None:
        """Move a complete local copy into the cache (a concurrent reader may have won)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not (final / COMPLETE).is_file():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(folder, final)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)

    # -- writing -----------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        kw: dict[str, Any] = {"Key": self._key(key), "Body": data}
        if if_absent:
            kw["IfNoneMatch"] = "*"
        try:
            self._call(self.client.put_object, **kw)
        except LakeError as exc:
            if not (if_absent and "NotImplemented" in exc.message):
                raise
            # a store without conditional puts: the writers' lease is the only guard
            if self._head(key) is not None:
                raise FileExistsError(key) from None
            self._call(self.client.put_object, Key=self._key(key), Body=data)

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Key=self._key(key))

    def delete_tree(self, prefix: str) -> None:
        keys = [self._key(f"{prefix}/{k}") for k in self.files(prefix)]
        for i in range(0, len(keys), 1000):
            self._call(self.client.delete_objects, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True})

    def upload(self, path: Path, key: str) -> None:
        from boto3.s3.transfer import TransferConfig

        cfg = TransferConfig(multipart_threshold=64 * 1024**2, multipart_chunksize=64 * 1024**2, max_concurrency=4)
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=cfg)
        except Exception as exc:  # boto3 wraps client errors in S3UploadFailedError
            raise LakeError(f"S3 upload of {key} failed ({exc})", where=self.uri) from None

    def publish_tree(self, staged: Path, prefix: str, *, record: str | None = None, fault: Callable[[], None] | None = None) -> None:
        names = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
        body = [n for n in names if n != record]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: self.upload(staged / n, f"{prefix}/{n}"), body))
        if fault is not None:
            fault()
        if record is not None:
            self.write_bytes(f"{prefix}/{record}", (staged / record).read_bytes(), if_absent=True)
        if self.cache is not None and record is not None:  # the committed version is also a complete local copy
            (staged / COMPLETE).touch()
            self._install(staged, self.cache / prefix)
        else:
            shutil.rmtree(staged, ignore_errors=True)

    # -- the writers' lease ------------------------------------------------------------
    def _lease_body(self, token: str) -> bytes:
        return _dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token, "expires": time.time() + self.lease_s})

    def _stale(self, body: bytes) -> bool:
        try:
            d = json.loads(body)
        except json.JSONDecodeError:
            return True
        if float(d.get("expires", 0)) < time.time():
            return True
        if d.get("host") == socket.gethostname():
            try:
                os.kill(int(d.get("pid", 0)), 0)
            except ProcessLookupError:
                return True  # its writer on this machine is gone (kill -9)
            except (PermissionError, ValueError):
                return False
        return False

    def _try_acquire(self, token: str) -> str | None:
        """The lease's ETag when acquired (created, or taken over from a stale holder)."""
        key = self._key(LOCK_NAME)
        try:
            return self._call(self.client.put_object, Key=key, Body=self._lease_body(token), IfNoneMatch="*")["ETag"]
        except FileExistsError:
            pass
        try:
            cur = self._call(self.client.get_object, Key=key)
        except FileNotFoundError:
            return None  # released meanwhile: try again
        if not self._stale(cur["Body"].read()):
            return None
        try:  # take over only the stale lease we read (another taker wins or loses as a whole)
            return self._call(self.client.put_object, Key=key, Body=self._lease_body(token), IfMatch=cur["ETag"])["ETag"]
        except FileExistsError:
            return None

    @contextlib.contextmanager
    def lock(self, wait: float = 600.0, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait
        told = False
        while (etag := self._try_acquire(token)) is None:
            if time.monotonic() >= deadline:
                raise LakeBusyError(
                    f"another aivc process is writing to this lake and held its lease for over {wait:g}s; retry later or raise --wait",
                    where=self.full(LOCK_NAME),
                )
            if on_wait is not None and not told:
                on_wait()
                told = True
            time.sleep(0.25)
        state = {"etag": etag}
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 4):
                with contextlib.suppress(Exception):
                    state["etag"] = self.client.put_object(
                        Bucket=self.bucket, Key=self._key(LOCK_NAME), Body=self._lease_body(token), IfMatch=state["etag"]
                    )["ETag"]

        t = threading.Thread(target=renew, name="aivc-lease", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(timeout=5)
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=self._key(LOCK_NAME), IfMatch=state["etag"])


def open_storage(location: str | os.PathLike[str]) -> Storage:
    """The storage of ``location``: ``s3://…`` or a local folder (absolute path)."""
    raw = str(location)
    if raw.startswith("s3://"):
        return S3Storage(raw)
    if "://" in raw:
        raise UsageError(f"lakes can live in a local folder or on s3://, not {raw.split('://')[0]}://", where="--lake")
    return LocalStorage(Path(raw).expanduser().absolute())
