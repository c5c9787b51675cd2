"""The storage layer on both backends: atomic create-if-absent (the commit point), listings,
publishing a staged folder, the writers' lock (flock / S3 lease) and one-line S3 errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aivc.errors import LakeBusyError, LakeError
from aivc.store.lake import Lake
from aivc.store.storage import LOCK_NAME, S3Storage, open_storage

pytestmark = pytest.mark.conformance


def test_create_if_absent_lists_and_trees(lake_uri: str, tmp_path: Path) -> None:
    st = Lake.init(lake_uri).storage
    st.write_json("a/v000001.json", {"n": 1}, if_absent=True)
    with pytest.raises(FileExistsError):
        st.write_json("a/v000001.json", {"n": 2}, if_absent=True)
    assert st.read_json("a/v000001.json") == {"n": 1}  # the loser changed nothing
    st.write_json("a/v000001.json", {"n": 3})  # a plain write replaces
    assert st.read_json("a/v000001.json") == {"n": 3}

    staged = tmp_path / "staged"
    (staged / "part").mkdir(parents=True)
    (staged / "part" / "x.bin").write_bytes(b"x" * 10)
    (staged / "record.json").write_text("{}")
    st.publish_tree(staged, "a/v000002", record="record.json")
    assert st.children("a") == (["v000002"], ["v000001.json"])
    assert st.files("a/v000002") == ["part/x.bin", "record.json"]
    assert st.exists("a/v000002") and not st.exists("a/v000003")
    assert (st.materialize("a/v000002") / "part" / "x.bin").read_bytes() == b"x" * 10
    one = st.local_file("a/v000002/part/x.bin")
    assert one.read_bytes() == b"x" * 10 and st.local_file("a/v000002/part/x.bin") == one  # fetched once
    with pytest.raises(FileNotFoundError):
        st.local_file("a/v000002/none.bin").read_bytes()
    st.delete_tree("a/v000002")
    assert st.files("a/v000002") == [] and not st.exists("a/v000002/record.json")
    with pytest.raises(FileNotFoundError):
        st.read_bytes("a/missing.json")


def test_the_writers_lock_excludes_and_times_out(lake_uri: str) -> None:
    lake = Lake.init(lake_uri)
    order: list[str] = []
    with lake.write_lock():
        other = Lake.open(lake_uri)  # a second writer: its own lock file handle, or its own S3 lease
        waited: list[bool] = []

        def second() -> None:
            with other.write_lock(wait=30, on_wait=lambda: waited.append(True)):
                order.append("second")

        with pytest.raises(LakeBusyError, match="another aivc process is writing to this lake"):
            with other.write_lock(wait=0.5):
                pass
        t = threading.Thread(target=second)
        t.start()
        time.sleep(1.0)
        order.append("first")
    t.join(timeout=30)
    assert order == ["first", "second"] and waited == [True]


def test_a_dead_writers_lease_is_taken_over(s3_lake_uri: str) -> None:
    lake = Lake.init(s3_lake_uri)
    st = lake.storage
    assert isinstance(st, S3Storage)
    # a lease left by a writer killed on this machine (its pid is gone), far from expiring
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    import socket

    st.write_json(LOCK_NAME, {"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x", "expires": time.time() + 3600})
    t0 = time.monotonic()
    with lake.write_lock(wait=10):
        held = json.loads(st.read_bytes(LOCK_NAME))
        assert held["pid"] == os.getpid()
    assert time.monotonic() - t0 < 5
    assert not st.exists(LOCK_NAME)  # released
    # a live holder's lease (this process, another token) is respected until it expires
    st.write_json(LOCK_NAME, {"host": "another-host", "pid": 1, "token": "y", "expires": time.time() + 3600})
    with pytest.raises(LakeBusyError):
        with lake.write_lock(wait=0.5):
            pass
    st.write_json(LOCK_NAME, {"host": "another-host", "pid": 1, "token": "y", "expires": time.time() - 1})
    with lake.write_lock(wait=5):
        assert json.loads(st.read_bytes(LOCK_NAME))["pid"] == os.getpid()


def test_s3_errors_are_one_line(s3_server) -> None:  # noqa: ANN001
    with pytest.raises(LakeError, match="S3 bucket 'aivc-no-such-bucket' does not exist; create it first"):
        Lake.init("s3://aivc-no-such-bucket/lake")
    with pytest.raises(Exception, match="must look like s3://BUCKET/PREFIX"):
        open_storage("s3:///lake")
    with pytest.raises(Exception, match="not gs://"):
        open_storage("gs://b/lake")
    bucket = s3_server.create_bucket()
    with pytest.raises(LakeError, match="no aivc lake at s3://"):
        Lake.open(f"s3://{bucket}/lake")
    s3_server.client().put_object(Bucket=bucket, Key="other/file.txt", Body=b"x")
    with pytest.raises(LakeError, match="is not empty and is not an aivc lake"):
        Lake.init(f"s3://{bucket}/other")
