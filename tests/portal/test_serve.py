"""``aivc serve`` as a user starts it: a subprocess on 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from tests.portal.conftest import CONSORTIUM_DS, PUBLIC_DS


def start_server(lake: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``aivc serve --port 0 --json`` on ``lake``; returns the process and its URL once it answers."""
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen(
        [sys.executable, "-m", "aivc.cli", "serve", "--lake", str(lake), "--port", "0", "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"aivc serve printed nothing: {proc.stderr.read()[-2000:]}")
    info = json.loads(line)
    assert info["status"] == "listening" and info["pid"] == proc.pid and info["url"].startswith("http://127.0.0.1:")
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(info["url"] + "/healthz", timeout=5) as r:
                assert json.loads(r.read())["status"] == "ok"
                return proc, info["url"]
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"aivc serve did not answer: {proc.stderr.read()[-2000:]}") from None
            time.sleep(0.3)


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _get(url: str, token: str | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_answers_on_loopback_with_two_workers_and_stops_by_pid(portal_lake) -> None:  # noqa: ANN001
    proc, url = start_server(portal_lake.root, "--workers", "2")
    try:
        status, rows = _get(url + "/api/datasets")
        assert status == 200 and [r["id"] for r in rows] == [PUBLIC_DS]
        status, rows = _get(url + "/api/datasets", portal_lake.tokens.get("alice"))
        assert status == 200 and sorted(r["id"] for r in rows) == sorted([PUBLIC_DS, CONSORTIUM_DS])
        assert _get(url + "/api/datasets", "aivc_bad_token")[0] == 401
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # --workers 2: two uvicorn worker processes (and multiprocessing's helper)
    finally:
        stop_server(proc)
    assert proc.returncode is not None
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "uvicorn workers left running"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_serve_refuses_bad_options_in_one_line(tmp_path) -> None:  # noqa: ANN001
    from aivc.cli import app

    res = CliRunner().invoke(app, ["serve", "--lake", str(tmp_path / "nolake"), "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["errors"][0]["code"] == "LAKE_NOT_FOUND"
    res = CliRunner().invoke(app, ["serve", "--lake", str(tmp_path), "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output and "Traceback" not in res.output


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state  # a zombie has ended; only its exit status is left


def test_a_killed_server_takes_its_running_job_with_it_and_the_next_one_says_so(fresh_lake, pbmc_files) -> None:  # noqa: ANN001
    import httpx
    import yaml

    from aivc.demo import pbmc_manifest
    from aivc.store.lake import Lake
    from aivc.store.tokens import create_token

    token, _ = create_token(Lake.open(fresh_lake), "alice")
    auth = {"Authorization": f"Bearer {token}"}
    (h1, _), _ = pbmc_files
    proc, url = start_server(fresh_lake)
    try:
        man = yaml.safe_dump(pbmc_manifest("killed-mid-job", labelled=True, title="killed"))
        r = httpx.post(url + "/api/submissions", headers=auth, data={"manifest_text": man}, files={"data": ("p.h5ad", h1.read_bytes())}, timeout=60)
        assert r.status_code == 202, r.text
        sid = r.json()["submission_id"]
        deadline = time.monotonic() + 60
        while (st := httpx.get(f"{url}/api/submissions/{sid}", headers=auth).json()).get("job_pid") is None:
            assert time.monotonic() < deadline and st["status"] in ("queued", "running"), st
            time.sleep(0.05)
        job = st["job_pid"]
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown handler runs
        proc.wait()
        deadline = time.monotonic() + 20
        while not _gone(job):
            assert time.monotonic() < deadline, "the job outlived its server"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, url = start_server(fresh_lake)
    try:
        st = httpx.get(f"{url}/api/submissions/{sid}", headers=auth).json()
        assert st["status"] == "failed" and "nothing was committed" in st["error"], st
        ids = [d["id"] for d in httpx.get(url + "/api/datasets", headers=auth).json()]
        assert "killed-mid-job" not in ids and PUBLIC_DS in ids
    finally:
        stop_server(proc)
