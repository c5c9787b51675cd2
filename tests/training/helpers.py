"""Helpers shared by the training tests."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def tiny_overrides(epochs: int = 2) -> list[str]:
    return [f"optim.epochs={epochs}", "optim.batch_size=32", "model.hidden_dim=16", "model.latent_dim=4", "data.chunk_rows=64"]


def run_dir_of(lake, run_id: str) -> Path:  # noqa: ANN001
    return lake.root / "models" / ".runs" / run_id


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p))
    return kids


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray puts its workers in process groups of their own)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        todo += kids.get(q, [])
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process we started and all its descendants, by pid: stop them first so none
    spawns or is re-parented meanwhile, then kill, then wait until they are gone."""
    stopped: set[int] = set()
    for _ in range(5):
        new = [p for p in descendants(pid) if p not in stopped]
        if not new:
            break
        for p in new:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
            stopped.add(p)
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and _alive(p) for p in stopped):
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
