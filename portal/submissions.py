"""Portal submissions: uploads spooled to disk, validated and committed by a background worker.

An upload (``POST /api/submissions``) is written under ``<lake root>/.portal/uploads/<id>/``
(for an ``s3://`` lake its local cache folder) and queued. One worker thread per server
process runs each job as its own subprocess, ``python -m aivc.cli submit DATA -m MANIFEST
--lake L --json``: validation never holds the server's event loop or its GIL, and two jobs
(from two server workers, or a CLI submit at the same time) are serialized by the lake's
write lock like any two writers. A job's state is ``status.json`` beside its files, written
atomically (temporary file + rename), so every server worker answers ``GET
/api/submissions/{id}`` alike: ``queued`` → ``running`` → ``committed`` / ``rejected`` /
``failed``, with the ``aivc submit --json`` answer and the validation report.

What is kept: a committed job's data file is deleted (the lake holds the data now); a rejected
or failed job's upload is kept for :data:`KEEP_UPLOAD_S` so that the user can fix the manifest
and resubmit it without uploading again (``reuse``). When a server starts it sweeps the
folder (:meth:`SubmissionQueue.sweep`): uploads cut off before they were queued are removed,
a job queued or running in a server process that no longer exists is marked ``failed``
(nothing was committed: the lake's write is atomic), and old kept uploads are deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aivc.errors import NotFoundError, UsageError

#: Submission ids are 16 lowercase hex digits; anything else is refused before any path is built.
ID_RE = re.compile(r"^[0-9a-f]{16}$")
#: The data file's name: a plain name with a suffix ``aivc submit`` reads from one file.
DATA_SUFFIXES = (".h5ad", ".h5mu", ".h5")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
DONE = ("committed", "rejected", "failed")
#: Longest a job may run before it is stopped (seconds).
JOB_TIMEOUT_S = 6 * 3600
#: How long a rejected or failed job's upload is kept for a resubmission (seconds).
KEEP_UPLOAD_S = 7 * 24 * 3600
#: An upload folder without a status this old was cut off (the server stopped mid-upload).
STALE_UPLOAD_S = 3600


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def new_id() -> str:
    return secrets.token_hex(8)


def check_id(submission_id: str) -> str:
    """``submission_id`` if it is a well-formed id, else NotFoundError (never a path)."""
    if not ID_RE.fullmatch(submission_id or ""):
        raise NotFoundError("no such submission (ids are 16 hex digits, as POST /api/submissions answered)", where="submission_id")
    return submission_id


def data_name(filename: str | None) -> str:
    """The stored name of an uploaded data file: its base name, checked (no paths, known suffix)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if not name or not _NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(f"the data file's name {filename!r} is not a plain file name (letters, digits, . _ -)", where="data")
    if not name.lower().endswith(DATA_SUFFIXES):
        raise UsageError(f"the data file {name!r} must be an .h5ad, .h5mu or 10x .h5 file (folders such as .zarr cannot be uploaded)", where="data")
    return name


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def _die_with_parent() -> Any:
    """A ``preexec_fn`` that has Linux end the job with SIGTERM when its server dies (so a job is
    never left running unwatched: its status could not be written); ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import signal

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_DIE_WITH_PARENT = _die_with_parent()


def _alive(pid: Any) -> bool:
    """Whether a process ``pid`` exists on this machine (a server worker that queued a job)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SubmissionQueue:
    """The uploads folder of one lake and the worker thread that runs its jobs."""

    def __init__(self, lake: Any, *, run_jobs: bool = True) -> None:
        self.lake = lake
        self.root = Path(lake.root) / ".portal" / "uploads"
        self.run_jobs = run_jobs
        self._q: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._stopping = False
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------
    def folder(self, submission_id: str) -> Path:
        return self.root / check_id(submission_id)

    def create(self, user: str) -> tuple[str, Path]:
        """A new, empty job folder (not yet queued): ``(id, folder)``."""
        self.root.mkdir(parents=True, exist_ok=True)
        sid = new_id()
        d = self.root / sid
        d.mkdir()
        return sid, d

    def status(self, submission_id: str, principal: str, owner: bool = False) -> dict[str, Any]:
        """The job's status; NotFoundError for a missing job or another user's (the same message)."""
        path = self.folder(submission_id) / "status.json"
        try:
            st = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            raise NotFoundError(f"no such submission {submission_id!r}", where="submission_id") from None
        if st.get("user") != principal and not owner:
            raise NotFoundError(f"no such submission {submission_id!r}", where="submission_id")
        if st["status"] == "running" and st.get("started_at"):
            st["elapsed_s"] = round(time.time() - float(st.get("started_unix", time.time())), 1)
        return st

    def kept_data(self, submission_id: str, principal: str, owner: bool = False) -> tuple[Path, str]:
        """The kept upload of an earlier job of ``principal``: ``(path, name)``, else a usage error."""
        st = self.status(submission_id, principal, owner=owner)
        path = self.folder(submission_id) / str(st.get("data") or "")
        if st["status"] not in ("rejected", "failed") or not path.is_file():
            raise UsageError(f"submission {submission_id}'s upload is not kept (only a rejected or failed one is, for a while); upload the data file", where="reuse")
        return path, data_name(path.name)

    def link_data(self, submission_id: str, principal: str, folder: Path, owner: bool = False) -> int:
        """Put the kept upload of ``submission_id`` into the new job ``folder`` (a hard link where
        the file system allows, else a copy); returns its size in bytes."""
        import shutil

        src, name = self.kept_data(submission_id, principal, owner=owner)
        try:
            os.link(src, folder / name)
        except OSError:
            shutil.copyfile(src, folder / name)
        return (folder / name).stat().st_size

    def queue_job(self, submission_id: str, user: str, data: str, n_bytes: int, resubmits: str | None = None) -> dict[str, Any]:
        st = {
            "submission_id": submission_id, "status": "queued", "user": user, "data": data, "bytes": n_bytes,
            "queued_at": _now(), "started_at": None, "finished_at": None, "result": None, "report": None, "error": None,
            "pid": os.getpid(), "resubmits": resubmits,
        }  # fmt: skip
        write_json_atomic(self.folder(submission_id) / "status.json", st)
        if self.run_jobs:
            self._ensure_worker()
            self._q.put(submission_id)
        return st

    # -- the worker ----------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="aivc-portal-submissions", daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while not self._stopping:
            sid = self._q.get()
            if sid is None:
                return
            try:
                self._run(sid)
            except Exception as exc:  # noqa: BLE001 - a job's failure must not end the worker
                self._finish(sid, {"status": "failed", "error": f"the submission job failed: {exc}"})

    def _update(self, sid: str, change: dict[str, Any]) -> dict[str, Any]:
        path = self.folder(sid) / "status.json"
        st = json.loads(path.read_text()) | change
        write_json_atomic(path, st)
        return st

    def _finish(self, sid: str, change: dict[str, Any]) -> None:
        st = self._update(sid, change | {"finished_at": _now()})
        if st["status"] == "committed":  # the lake holds the data now
            (self.folder(sid) / str(st["data"])).unlink(missing_ok=True)

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Tidy the uploads folder (see the module docstring); returns what it did, by kind."""
        import shutil

        now = time.time() if now is None else now
        done = {"removed_partial": 0, "marked_failed": 0, "expired_uploads": 0}
        if not self.root.is_dir():
            return done
        for d in self.root.iterdir():
            if not d.is_dir() or not ID_RE.fullmatch(d.name):
                continue
            path = d / "status.json"
            try:
                st = json.loads(path.read_text())
            except FileNotFoundError:
                if now - d.stat().st_mtime > STALE_UPLOAD_S:
                    shutil.rmtree(d, ignore_errors=True)
                    done["removed_partial"] += 1
                continue
            except ValueError:
                continue
            if st.get("status") in ("queued", "running") and not _alive(st.get("pid")):
                why = "the server stopped before this submission finished; nothing was committed (submit it again)"
                write_json_atomic(path, st | {"status": "failed", "error": why, "finished_at": _now()})
                done["marked_failed"] += 1
            elif st.get("status") in ("rejected", "failed"):
                data = d / str(st.get("data") or "")
                if data.is_file() and now - path.stat().st_mtime > KEEP_UPLOAD_S:
                    data.unlink(missing_ok=True)
                    done["expired_uploads"] += 1
        return done

    def _run(self, sid: str) -> None:
        d = self.folder(sid)
        st = self._update(sid, {"status": "running", "started_at": _now(), "started_unix": time.time()})
        cmd = [
            sys.executable, "-m", "aivc.cli", "submit", str(d / st["data"]), "--manifest", str(d / "manifest.yaml"),
            "--lake", str(self.lake.uri), "--report-dir", str(d / "report"), "--json",
        ]  # fmt: skip
        env = dict(os.environ, GX_ANALYTICS_ENABLED="False", RAY_AUTH_MODE="disabled")
        with open(d / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True, env=env, cwd=str(d), preexec_fn=_DIE_WITH_PARENT
            )  # fmt: skip
            self._proc = proc
            self._update(sid, {"job_pid": proc.pid})
            try:
                out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            finally:
                self._proc = None
        try:
            result = json.loads(out[out.index("{") :]) if "{" in out else None  # aivc submit --json: one JSON object
        except ValueError:
            result = None
        if not isinstance(result, dict) or "status" not in result:
            tail = (d / "stderr.txt").read_text(errors="replace").strip().splitlines()
            why = tail[-1] if tail else f"exit code {proc.returncode}"
            if self._stopping:
                why = "the server stopped while the submission ran; nothing was committed (submit it again)"
            self._finish(sid, {"status": "failed", "error": why, "exit_code": proc.returncode})
            return
        if result["status"] == "error":  # aivc's one-line error: a bad manifest or file (rejected), or the lake / aivc failing
            errs = result.get("errors") or [{}]
            server_side = errs[0].get("code") in ("INTERNAL", "LAKE_BUSY", "LAKE_ERROR")
            e = errs[0]
            why = f"{e.get('where')}: {e.get('message')}" if e.get("where") else str(e.get("message"))
            self._finish(sid, {"status": "failed" if server_side else "rejected", "error": why, "result": result})
            return
        report = None
        if result.get("report"):
            try:
                report = json.loads(Path(result["report"]).read_text())
            except (OSError, ValueError):
                report = None
        if report is None and (d / "report").is_dir():
            for p in sorted((d / "report").glob("**/report.json")):
                report = json.loads(p.read_text())
        self._finish(sid, {"status": result["status"], "result": result, "report": report})

    def start(self) -> None:
        """Sweep the folder, then (when jobs run here) start the worker."""
        self.sweep()
        if self.run_jobs:
            self._ensure_worker()

    def stop(self) -> None:
        """Stop the worker; a running job's subprocess is terminated by its pid."""
        self._stopping = True
        self._q.put(None)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
