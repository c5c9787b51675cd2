"""Load test of the portal (``aivc serve``): concurrent readers while a submission runs.

Bounded and loopback only. It builds a lake from the real PBMC demo files (two datasets,
PCA URs), starts ``aivc serve --port 0`` as a subprocess, and then for ``--seconds``:

- ``--readers`` threads loop over ``GET /api/datasets``, ``POST /api/sql`` (a GROUP BY over the
  cells view), ``GET /api/neighbors`` and the pages: the datasets list, one dataset, the SQL
  page running the same query, the embedding map's data (its UMAP is computed once, before the
  readers start, and that first call is reported apart) and the models page;
- at the same time one user uploads a submission (``POST /api/submissions``) and polls it until
  it is committed.

It prints p50 / p99 latency and the number of errors per route, with PASS/FAIL against the
targets: no errors at all, the submission committed, and the readers' p99 while it ran within
``--p99-target-ms``. Latencies are of this machine under that load, not a claim about
any other machine; the server is stopped by its pid.

Usage::

    python benchmarks/bench_portal.py --readers 8 --seconds 30 [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

SQL = "SELECT dataset_id, cell_type, count(*) AS n FROM cells GROUP BY ALL ORDER BY n DESC"


def build_lake(work: Path) -> tuple[Path, list[tuple[Path, Path]], str, str, str]:
    from aivc.demo import build_pbmc_submissions
    from aivc.embeddings.pca import embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.access import add_user
    from aivc.store.lake import Lake
    from aivc.store.sql import query
    from aivc.store.tokens import create_token

    lake = Lake.init(work / "lake")
    files = build_pbmc_submissions(work / "inputs")
    for h5, mf in files[:2]:
        assert submit(lake, h5, mf, report_dir=work / "reports").status == "committed"
    emb = embed_pca(lake)
    add_user(lake, "bench", ["consortium"])
    token, _ = create_token(lake, "bench")
    cell = query(lake, "SELECT min(obs_id) FROM cells").rows[0][0]
    return lake.root, files, token, emb.ref, f"/api/neighbors/{emb.ref}/{cell}?k=10"


def start(lake: Path, workers: int) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False", RAY_AUTH_MODE="disabled")
    cmd = [sys.executable, "-m", "aivc.cli", "serve", "--lake", str(lake), "--port", "0", "--workers", str(workers), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    url = json.loads(proc.stdout.readline())["url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=5).read()
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("aivc serve did not answer within 60 s")


def _request(url: str, token: str, body: bytes | None = None, ctype: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    if ctype:
        headers["Content-Type"] = ctype
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _multipart(files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    parts = []
    for field, (name, data) in files.items():
        parts.append(f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def run(a: argparse.Namespace) -> dict[str, Any]:
    work = Path(a.workdir or tempfile.mkdtemp(prefix="aivc-bench-portal-"))
    lake, files, token, emb_ref, nbr = build_lake(work)
    proc, url = start(lake, a.workers)
    t_map = time.perf_counter()
    map_status = _request(f"{url}/embeddings/{emb_ref}/map.json?color=cell_type", token)  # the UMAP, computed once and cached
    t_map = time.perf_counter() - t_map
    routes: dict[str, tuple[str, bytes | None, str | None]] = {
        "GET /api/datasets": (url + "/api/datasets", None, None),
        "POST /api/sql": (url + "/api/sql", json.dumps({"query": SQL}).encode(), "application/json"),
        "GET /api/neighbors": (url + nbr, None, None),
    }
    ds = json.loads(urllib.request.urlopen(url + "/api/datasets", timeout=60).read())[0]["id"]
    routes |= {
        "GET /datasets (page)": (url + "/datasets", None, None),
        "GET /datasets/{id} (page)": (f"{url}/datasets/{ds}", None, None),
        "POST /sql (page)": (url + "/sql", urllib.parse.urlencode({"query": SQL}).encode(), "application/x-www-form-urlencoded"),
        "GET /embeddings/{ref}/map.json": (f"{url}/embeddings/{emb_ref}/map.json?color=cell_type", None, None),
        "GET /models (page)": (url + "/models", None, None),
    }
    lat: dict[str, list[tuple[float, float, int]]] = {k: [] for k in routes}  # (start, seconds, status)
    stop = threading.Event()
    sub: dict[str, Any] = {}

    def reader(i: int) -> None:
        names = list(routes)
        j = i
        while not stop.is_set():
            name = names[j % len(names)]
            j += 1
            u, body, ctype = routes[name]
            t0 = time.perf_counter()
            status = _request(u, token, body, ctype)
            lat[name].append((t0, time.perf_counter() - t0, status))

    def submitter() -> None:
        import yaml

        from aivc.demo import pbmc_manifest

        h5 = files[0][0]
        man = yaml.safe_dump(pbmc_manifest("bench-portal", labelled=True, title="portal load test")).encode()
        body, ctype = _multipart({"data": (h5.name, h5.read_bytes()), "manifest": ("m.yaml", man)})
        sub["t0"] = time.perf_counter()
        req = urllib.request.Request(url + "/api/submissions", data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": ctype}, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            sid = json.loads(r.read())["submission_id"]
        while True:
            with urllib.request.urlopen(urllib.request.Request(f"{url}/api/submissions/{sid}", headers={"Authorization": f"Bearer {token}"}), timeout=60) as r:
                st = json.loads(r.read())
            if st["status"] in ("committed", "rejected", "failed"):
                sub.update(status=st["status"], t1=time.perf_counter())
                return
            time.sleep(0.5)

    try:
        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(a.readers)]
        for t in threads:
            t.start()
        time.sleep(min(2.0, a.seconds / 4))
        s = threading.Thread(target=submitter, daemon=True)
        s.start()
        time.sleep(a.seconds)
        s.join(timeout=300)
        stop.set()
        for t in threads:
            t.join(timeout=130)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    t0, t1 = sub.get("t0", 0.0), sub.get("t1", float("inf"))
    out: dict[str, Any] = {"readers": a.readers, "workers": a.workers, "seconds": a.seconds, "submission": sub.get("status", "not finished"), "submission_s": round(t1 - t0, 1) if "t1" in sub else None,
           "first_map_s": round(t_map, 1), "first_map_status": map_status, "routes": {}}  # fmt: skip
    during_all = []
    for name, rows in lat.items():
        ms = [d * 1000 for _, d, _ in rows]
        during = [d * 1000 for s0, d, _ in rows if t0 <= s0 <= t1]
        during_all += during
        errors = sum(1 for *_, st in rows if st != 200)
        out["routes"][name] = {
            "n": len(ms), "errors": errors, "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(_pct(ms, 99), 1) if ms else None, "p99_ms_during_submission": round(_pct(during, 99), 1) if during else None,
        }  # fmt: skip
    n_err = sum(r["errors"] for r in out["routes"].values())
    p99 = _pct(during_all, 99) if during_all else float("nan")
    out["targets"] = {
        "no errors": {"value": n_err, "pass": n_err == 0},
        "submission committed": {"value": out["submission"], "pass": out["submission"] == "committed"},
        f"readers' p99 during the submission <= {a.p99_target_ms} ms": {"value": round(p99, 1), "pass": p99 <= a.p99_target_ms},
    }
    return out


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30.0, help="how long the readers run (bounded)")
    p.add_argument("--workers", type=int, default=2, help="aivc serve --workers")
    p.add_argument("--p99-target-ms", type=float, default=2000.0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if not 1 <= a.readers <= 64 or not 1 <= a.seconds <= 600:
        p.error("--readers must be 1-64 and --seconds 1-600 (a bounded load test)")
    out = run(a)
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"aivc serve --workers {a.workers}; {a.readers} readers for {a.seconds:.0f} s; submission: {out['submission']} in {out['submission_s']} s")
        print(f"first map.json (computes and caches the UMAP): {out['first_map_s']} s, HTTP {out['first_map_status']}")
        print(f"{'route':<32} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99 during submit':>18}")
        for name, r in out["routes"].items():
            print(f"{name:<32} {r['n']:>8} {r['errors']:>6} {r['p50_ms'] or float('nan'):>8.1f} {r['p99_ms'] or float('nan'):>8.1f} {r['p99_ms_during_submission'] or float('nan'):>18.1f}")
        for name, t in out["targets"].items():
            print(f"{name}: {t['value']}   {'PASS' if t['pass'] else 'FAIL'}")
    return 0 if all(t["pass"] for t in out["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
