"""Peak memory of a benchmarked child and its whole process tree (Linux ``/proc``).

One mechanism for every benchmark that measures a subprocess (``bench_ingest.measure``,
``bench_atlas.measure``): the child runs to completion while this process samples the summed
``Rss`` / ``Pss`` of the child and every descendant (Ray workers, uvicorn workers, ...) every
``interval`` seconds, and ``os.wait4`` gives the child's own ``ru_maxrss`` when it ends.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (all its threads'), or [] once it is gone."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    out.extend(int(x) for x in fh.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def mem_kib(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in KiB from ``smaps_rollup``; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def tree_mem_kib(root: int) -> tuple[int, int, int]:
    """(summed Rss, summed Pss, number of processes) over ``root`` and its descendants."""
    rss = pss = n = 0
    stack, seen = [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        r, p = mem_kib(pid)
        rss, pss, n = rss + r, pss + p, n + 1
        stack.extend(children(pid))
    return rss, pss, n


@dataclass
class Sampled:
    returncode: int
    wall_s: float
    maxrss_kib: int  # wait4 ru_maxrss of the child (its own peak, or a reaped descendant's)
    peak_rss_kib: int  # sampled peak of the tree's summed Rss
    peak_pss_kib: int  # sampled peak of the tree's summed Pss (shared pages counted once)
    max_procs: int
    stdout_path: Path
    stderr_path: Path


def run_sampled(cmd: list[str], *, log_dir: Path, env: dict[str, str], cwd: Path | None = None, interval: float = 0.05) -> Sampled:
    """Run ``cmd`` (stdout/stderr to files in ``log_dir``) and sample its tree until it exits."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        peak_rss = peak_pss = procs = 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                wall = time.perf_counter() - t0
                break
            r, p, n = tree_mem_kib(proc.pid)
            peak_rss, peak_pss, procs = max(peak_rss, r), max(peak_pss, p), max(procs, n)
            time.sleep(interval)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Sampled(proc.returncode, wall, ru.ru_maxrss, peak_rss, peak_pss, procs, out_p, err_p)
