"""A local S3 server for tests and benchmarks: ``moto_server`` in a subprocess on 127.0.0.1.

An in-process moto server (``ThreadedMotoServer``) hangs under TileDB (its curl requests time
out), so the server always runs as a separate process, started from the executable next to
``sys.executable`` and stopped by its pid, never by name.

Examples
--------
>>> with MotoServer() as s3:  # doctest: +SKIP
...     s3.create_bucket("aivc-test")
...     s3.endpoint_url
'http://127.0.0.1:...'
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Self

HOST = "127.0.0.1"
#: the credentials and region every test and benchmark talks to the local server with
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def unique_bucket(prefix: str = "aivc-test") -> str:
    """A fresh, valid S3 bucket name (lower case, 3-63 characters)."""
    name = f"{prefix}-{uuid.uuid4().hex[:16]}"
    check_bucket_name(name)
    return name


def check_bucket_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid S3 bucket name."""
    if not _BUCKET_RE.match(name) or ".." in name:
        raise ValueError(f"invalid S3 bucket name {name!r}: use 3-63 lower-case letters, digits, '-' or '.'")


def s3_env(endpoint_url: str) -> dict[str, str]:
    """The standard AWS environment variables that point a client at ``endpoint_url``."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ENDPOINT_URL_S3": endpoint_url,  # botocore prefers this one when it is set
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def point_environment_at(endpoint_url: str) -> None:
    """Set ``os.environ`` so that nothing in this process or its children reaches real AWS."""
    for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(s3_env(endpoint_url))


class MotoServerError(RuntimeError):
    """The S3 server did not start or did not answer."""


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT`` as a subprocess.

    Parameters
    ----------
    port
        The port to listen on (default: a free one, picked now).
    host
        The address to bind (default 127.0.0.1: nothing outside this machine can reach it).
    """

    def __init__(self, port: int | None = None, host: str = HOST) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._log_fh: Any = None

    # -- addresses and settings ----------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """The AWS environment variables that point at this server."""
        return s3_env(self.endpoint_url)

    def tiledb_config(self) -> dict[str, str]:
        """TileDB VFS settings that point at this server (for ``tiledbsoma.SOMATileDBContext``)."""
        return tiledb_s3_config(self.endpoint_url)

    def client(self, *, connect_timeout: float = 5.0, read_timeout: float = 30.0) -> Any:
        """A boto3 S3 client for this server (path-style addressing, test credentials)."""
        import boto3
        from botocore.config import Config

        cfg = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 1},
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=cfg,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Self:
        """Start the server and wait until it answers ``list_buckets``."""
        if self.running:
            return self
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            raise MotoServerError(f"moto_server not found next to {sys.executable}; install the test extra: pip install -e '.[test]'")
        fd, log = tempfile.mkstemp(prefix=f"moto-{self.port}-", suffix=".log")
        os.close(fd)
        self._log_path = Path(log)
        self._log_fh = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._proc = subprocess.Popen(
            [str(exe), "-H", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=1.0, read_timeout=5.0)
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise MotoServerError(
                    f"moto_server on {self.endpoint_url} exited with status {self._proc.returncode} before answering; "
                    f"its output ends with:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 - not up yet: retry until the deadline
                last = exc
                time.sleep(0.1)
        raise MotoServerError(
            f"moto_server on {self.endpoint_url} did not answer within {timeout:.0f} s "
            f"(last error: {type(last).__name__}: {last}); its output ends with:\n{self.log_tail()}"
        )

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's combined stdout/stderr."""
        if self._log_path is None or not self._log_path.exists():
            return "(no output)"
        text = self._log_path.read_bytes()[-n_chars:].decode("utf-8", errors="replace")
        return text or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server by its pid (SIGTERM, wait, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        elif proc is not None:
            proc.wait()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- buckets -------------------------------------------------------------------------------
    def create_bucket(self, name: str | None = None) -> str:
        """Create bucket ``name`` (default: a fresh unique one) and return its name."""
        name = name or unique_bucket()
        check_bucket_name(name)
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> int:
        """Delete every object of bucket ``name``, then the bucket; return how many objects went."""
        client = self.client()
        n = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            batch = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(batch), 1000):
                client.delete_objects(Bucket=name, Delete={"Objects": batch[i : i + 1000], "Quiet": True})
            n += len(batch)
        client.delete_bucket(Bucket=name)
        return n

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, sorted."""
        client = self.client()
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)


def tiledb_s3_config(endpoint_url: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, region: str = REGION) -> dict[str, str]:
    """TileDB VFS settings for an S3 server at ``endpoint_url`` (``http://HOST:PORT``)."""
    scheme, _, hostport = endpoint_url.partition("://")
    return {
        "vfs.s3.endpoint_override": hostport.rstrip("/"),
        "vfs.s3.scheme": scheme,
        "vfs.s3.use_virtual_addressing": "false",
        "vfs.s3.region": region,
        "vfs.s3.aws_access_key_id": access_key,
        "vfs.s3.aws_secret_access_key": secret_key,
    }
