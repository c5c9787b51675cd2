"""Atlas scale: aivc's whole path over a lake of 10^5-10^6 cells, through the CLI defaults.

    .venv/bin/python benchmarks/bench_atlas.py --cells 100000 --datasets 2              # ~1 h on 2 busy cores
    nohup .venv/bin/python benchmarks/bench_atlas.py --cells 1000000 --datasets 20 --resume > atlas-1m.log 2>&1 &
    .venv/bin/python benchmarks/bench_atlas.py --compare 100000,1000000               # the table + ratios

The lake: ``--datasets`` datasets of ``cells / datasets`` cells x ``--genes`` genes each,
written by ``benchmarks/synth.py`` (negative-binomial counts with PBMC-derived per-gene means and
dispersions, ~3,500 UMIs and ~1,500 detected genes per cell, five cell types; streamed to disk
1,000 cells at a time, never a dataset in memory). All datasets share one gene model
(``--gene-seed 0``: the same genes and cell-type programs); each has its own seed, its own three
donors (``atlas-dNN-donor-1..3``) and its own per-gene batch factors (log-normal, sd 0.3), so
datasets are batches.

Stages, each a fresh ``aivc ... --json`` subprocess with the CLI defaults (``--lake`` only):

=========== ==================================================================================
generate    ``python benchmarks/synth.py ...`` per dataset
submit      ``aivc submit H5AD -m MANIFEST`` per dataset
embed_pca   ``aivc embed pca``
train       ``aivc train cell-vae --set optim.epochs=E`` (``--epochs``, default 2)
embed       ``aivc embed model cell-vae@1``
celltype    ``aivc instruments train celltype --embedding cell:cell_vae@1``
annotate    ``aivc annotate --instrument celltype@1 --all``
queries     ``aivc neighbors`` (exact top-10), and through ``aivc sql``: top-10 by
            ``array_cosine_similarity``, the centroid of every cell type, the 10 cells nearest
            the B-cell centroid
=========== ==================================================================================

Measured per stage: wall time (fork to exit), peak memory of the whole process tree (Ray's
raylet, GCS and workers are children of the CLI process) sampled from ``/proc`` every 0.25 s
-- the summed PSS (proportional set size: shared pages such as Ray's object store counted
once, split between the processes that map them) and, for information, the summed RSS (which
counts every shared page once per process) -- and ``ru_maxrss`` of the child from ``wait4``.
Cells/s is lake cells / wall (per-dataset stages: the sum over datasets).

The memory bound of each stage is stated from the chunk sizes the code uses (see ``BOUNDS``),
never from the lake size, and PASS/FAIL is printed against it. ``--compare`` prints both
scales side by side with the ratio 1M/100k of seconds per cell (flat or falling is the goal)
and of peak memory (bounded by chunks means ~1.0).

State: ``<workdir>/<cells>/state.json`` records each finished stage (and each submitted
dataset); ``--resume`` skips them, so a run killed at any point restarts at the stage it was
in. The scale's folder (inputs, lake, logs) is deleted at the end unless ``--keep``; the
results are kept in ``<workdir>/results-<cells>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from proc_tree import run_sampled  # noqa: E402

GiB = 1024**3
MiB = 1024**2
STAGES = ("generate", "validate", "submit", "stats", "embed_pca", "train", "embed", "celltype", "annotate", "queries")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- memory bounds from the chunk sizes ------------------------------------------------------
def bounds(n_genes: int, cells_per_dataset: int) -> dict[str, tuple[float, str]]:
    """Per stage: (bound in bytes, how it is derived). Nothing in it depends on the lake size.

    ``floor`` is the process itself (interpreter + aivc, anndata, tiledbsoma, torch imports:
    ~0.6 GiB measured in a bare ``aivc list``), ``ray`` the local Ray the jobs start (driver,
    GCS, raylet, 2 workers, 256 MiB object store: ~1.5 GiB). A dense float32 chunk of
    ``rows`` cells is ``rows * n_genes * 4`` bytes; the stages may hold a few copies of one
    (CSR parts, dense, normalized).
    """
    floor, ray = 0.75 * GiB, 1.5 * GiB
    dense = lambda rows: rows * n_genes * 4  # noqa: E731
    per_ds = cells_per_dataset * 200  # obs of one submitted dataset (~200 B/cell), per dataset not lake
    return {
        "generate": (1.0 * GiB, "synth tables 5 x 64 x genes x 16 B + one 1,000-row block + PBMC stats"),
        "validate": (floor + 4 * dense(4096) + per_ds, "floor + 4 dense copies of a 4,096-row chunk + one dataset's obs (aivc validate and lazy_qc of one dataset)"),
        "stats": (floor + 2 * dense(4096), "floor + 2 Dask threads x (Arrow COO + CSR + normalized copies of a 4,096-row chunk, < its dense size at 7 % density)"),
        "submit": (floor + 4 * dense(4096) + per_ds, "floor + 4 dense copies of a 4,096-row chunk + one dataset's obs"),
        "embed_pca": (floor + 4 * dense(4096), "floor + 4 dense copies of a 4,096-row chunk"),
        "train": (floor + ray + 4 * dense(4096), "floor + Ray + 4 dense copies of a 4,096-row read"),
        "embed": (floor + ray + 2 * 4 * dense(1024), "floor + Ray + 2 chunks in flight (2 actors, or the local engine's read-ahead) x 4 copies of a 1,024-cell chunk (embed's chunk at 20k genes)"),
        "celltype": (floor + 256 * MiB, "floor + a bounded sample of URs"),
        "annotate": (floor + 4 * 65536 * 64 * 4, "floor + 4 copies of a 65,536-cell batch of 64-dim URs"),
        "queries": (floor + 256 * MiB, "floor + DuckDB streaming scans"),
    }


# -- measuring one child ---------------------------------------------------------------------
def measure(cmd: list[str], log_dir: Path, interval: float = 0.25) -> dict[str, Any]:
    """Run ``cmd``; wall time, peak tree PSS/RSS, ru_maxrss, parsed JSON stdout."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", GX_ANALYTICS_ENABLED="False", PYTHONWARNINGS="ignore")
    m = run_sampled(cmd, log_dir=log_dir, env=env, interval=interval)
    text = m.stdout_path.read_text(errors="replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        parsed = None
    res = {
        "cmd": " ".join(cmd), "rc": m.returncode, "wall_s": round(m.wall_s, 2), "peak_pss_mib": round(m.peak_pss_kib / 1024, 1),
        "peak_rss_mib": round(m.peak_rss_kib / 1024, 1), "maxrss_mib": round(m.maxrss_kib / 1024, 1), "max_procs": m.max_procs, "json": parsed,
    }  # fmt: skip
    if m.returncode != 0:
        res["stderr_tail"] = m.stderr_path.read_text(errors="replace")[-3000:]
    return res


def _aivc() -> list[str]:
    exe = Path(sys.executable).with_name("aivc")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "aivc.cli"]


# -- the run -----------------------------------------------------------------------------------
class Atlas:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.n_ds = a.datasets
        self.per = a.cells // a.datasets
        self.cells = self.per * self.n_ds
        self.root = Path(a.workdir) / str(a.cells)
        self.inputs, self.lake, self.logs = self.root / "inputs", self.root / "lake", self.root / "logs"
        self.state_p = self.root / "state.json"
        self.state: dict[str, Any] = {"stages": {}, "submitted": {}, "generated": {}}
        if a.resume and self.state_p.exists():
            self.state = json.loads(self.state_p.read_text())
        elif self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        if self.state_p.exists():  # another run of this scale (other stages) may have saved since
            disk = json.loads(self.state_p.read_text())
            for k in ("stages", "submitted", "generated"):
                self.state[k] = disk.get(k, {}) | self.state[k]
        tmp = self.state_p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_p)

    def ds(self, i: int) -> tuple[str, Path, Path]:
        seed = 100 + i
        name = f"synth-{self.per}x{self.a.genes}-s{seed}"
        return f"atlas-{i:02d}", self.inputs / f"{name}.h5ad", self.inputs / f"{name}.yaml"

    def aivc(self, stage: str, *args: str, tag: str | None = None) -> dict[str, Any]:
        r = measure([*_aivc(), *args, "--lake", str(self.lake), "--json"], self.logs / (tag or stage))
        if r["rc"] != 0:
            raise RuntimeError(f"{stage}: exit {r['rc']}: {r.get('stderr_tail', '')[-1500:]}")
        return r

    def per_dataset(self, stage: str, key: str, run_one: Any) -> dict[str, Any]:
        done = self.state[key]
        for i in range(self.n_ds):
            ds_id = self.ds(i)[0]
            if ds_id in done:
                continue
            r = run_one(i)
            if r["rc"] != 0:
                raise RuntimeError(f"{stage} {ds_id}: exit {r['rc']}: {r.get('stderr_tail', '')[-1500:]}")
            r.pop("json", None)
            done[ds_id] = r
            self.save()
            _log(f"{stage} {ds_id}: {r['wall_s']:.0f}s, peak PSS {r['peak_pss_mib']:.0f} MiB ({len(done)}/{self.n_ds})")
        runs = [done[self.ds(i)[0]] for i in range(self.n_ds)]
        return {
            "wall_s": round(sum(r["wall_s"] for r in runs), 2), "peak_pss_mib": max(r["peak_pss_mib"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "maxrss_mib": max(r["maxrss_mib"] for r in runs), "runs": len(runs),
        }  # fmt: skip

    def generate(self) -> dict[str, Any]:
        def one(i: int) -> dict[str, Any]:
            ds_id, _, _ = self.ds(i)
            cmd = [
                sys.executable, str(HERE / "synth.py"), "--cells", str(self.per), "--genes", str(self.a.genes), "--seed", str(100 + i),
                "--gene-seed", "0", "--batch-sigma", "0.3", "--n-donors", "3", "--donor-prefix", f"atlas-d{i:02d}-donor",
                "--dataset-id", ds_id, "--out", str(self.inputs),
            ]  # fmt: skip
            r = measure(cmd, self.logs / f"generate-{ds_id}")
            if r["rc"] == 0 and r["json"]:
                s = r["json"]["stats"]
                r["stats"] = {k: s[k] for k in ("nnz", "mean_umis", "mean_detected_genes", "file_bytes")}
            return r

        out = self.per_dataset("generate", "generated", one)
        st = [self.state["generated"][self.ds(i)[0]].get("stats", {}) for i in range(self.n_ds)]
        out["nnz"] = sum(s.get("nnz", 0) for s in st)
        out["mean_detected_genes"] = round(sum(s.get("mean_detected_genes", 0) for s in st) / max(1, len(st)), 1)
        out["input_gib"] = round(sum(s.get("file_bytes", 0) for s in st) / GiB, 2)
        return out

    def submit(self) -> dict[str, Any]:
        if not (self.lake / "catalog").exists() and not self.state["submitted"]:
            subprocess.run([*_aivc(), "init", "--lake", str(self.lake), "--json"], check=True, capture_output=True)

        def one(i: int) -> dict[str, Any]:
            ds_id, h5, mf = self.ds(i)
            r = measure([*_aivc(), "submit", str(h5), "-m", str(mf), "--report-dir", str(self.root / "reports" / ds_id), "--lake", str(self.lake), "--json"], self.logs / f"submit-{ds_id}")
            if r["rc"] == 0 and (r["json"] or {}).get("status") not in ("committed", "unchanged"):  # unchanged: committed by a killed run
                r["rc"] = 1
                r["stderr_tail"] = json.dumps(r["json"])[-1500:]
            return r

        out = self.per_dataset("submit", "submitted", one)
        out["lake_gib"] = round(_du(self.lake) / GiB, 2)
        return out

    def validate(self) -> dict[str, Any]:
        """``aivc validate`` of one dataset (row-chunk stream) and Dask ``lazy_qc`` of the same file."""
        ds_id, h5, mf = self.ds(0)
        v = measure([*_aivc(), "validate", str(h5), "-m", str(mf), "--report-dir", str(self.root / "reports" / f"validate-{ds_id}"), "--json"], self.logs / "validate")
        if v["rc"] != 0 or (v["json"] or {}).get("status") != "valid":
            raise RuntimeError(f"validate {ds_id}: exit {v['rc']}: {v.get('stderr_tail', '')[-1500:]}")
        code = f"from aivc.ingest.lazy import lazy_qc; q = lazy_qc({str(h5)!r}); import json; print(json.dumps({{'cells': len(q.cells), 'mean_genes': float(q.cells.n_genes.mean()), 'blocks': q.blocks}}))"
        lz = measure([sys.executable, "-c", code], self.logs / "lazy_qc")
        if lz["rc"] != 0:
            raise RuntimeError(f"lazy_qc {ds_id}: {lz.get('stderr_tail', '')[-1500:]}")
        v.pop("json", None)
        _log(f"validate {ds_id}: {v['wall_s']:.0f}s, peak PSS {v['peak_pss_mib']:.0f} MiB; lazy_qc {lz['wall_s']:.0f}s, {lz['peak_pss_mib']:.0f} MiB")
        return v | {"cells": self.per, "lazy_qc": lz}

    def stats(self) -> dict[str, Any]:
        r = self.aivc("stats", "stats", "--top", "5")
        return r | {"n_genes": r["json"]["n_genes"], "chunks": r["json"]["chunks"], "top_gene": r["json"]["genes"][0]}

    def embed_pca(self) -> dict[str, Any]:
        r = self.aivc("embed_pca", "embed", "pca")
        return r | {"ref": r["json"]["ref"]}

    def train(self) -> dict[str, Any]:
        r = self.aivc("train", "train", "cell-vae", "--set", f"optim.epochs={self.a.epochs}")
        return r | {"ref": r["json"]["model"], "metrics": r["json"].get("metrics")}

    def embed(self) -> dict[str, Any]:
        model = self.a.embed_model or self.state["stages"]["train"]["ref"]
        r = self.aivc("embed", "embed", "model", model)
        return r | {"ref": r["json"]["ref"]}

    def celltype(self) -> dict[str, Any]:
        r = self.aivc("celltype", "instruments", "train", "celltype", "--embedding", self.state["stages"]["embed"]["ref"])
        j = r["json"]
        return r | {"ref": j["ref"], "calibration_macro_f1": j.get("calibration_macro_f1"), "n_train": (j.get("metrics") or {}).get("n_train")}

    def annotate(self) -> dict[str, Any]:
        r = self.aivc("annotate", "annotate", "--instrument", self.state["stages"]["celltype"]["ref"], "--all")
        s = r["json"].get("summary") or {}
        return r | {"ref": r["json"]["ref"], "n_rows": r["json"].get("n_rows"), "agree_fraction": s.get("agree_fraction"), "engine": (r["json"].get("job") or {}).get("engine")}

    def queries(self) -> dict[str, Any]:
        ref = self.state["stages"]["embed"]["ref"]  # cell:cell_vae@1
        view = ref.split(":", 1)[1].replace("@", "_v").replace("-", "_")
        view = f"cell_{view}"
        first = self.aivc("queries", "sql", f"SELECT obs_id FROM {view} LIMIT 1", tag="query-first")
        qid = first["json"]["rows"][0]["obs_id"]
        vec = f"(SELECT vector FROM {view} WHERE obs_id = '{qid}')"
        centroid = (
            f"WITH x AS (SELECT c.cell_type, generate_subscripts(e.vector, 1) AS i, unnest(e.vector) AS v FROM {view} e JOIN cells c USING (obs_id)), "
            "m AS (SELECT cell_type, i, avg(v) AS v FROM x GROUP BY ALL) SELECT cell_type, list(v ORDER BY i) AS centroid FROM m GROUP BY cell_type ORDER BY cell_type"
        )
        b_centroid = (
            f"SELECT n.obs_id, n.similarity FROM {view}_nearest((SELECT list(v ORDER BY i) FROM (SELECT i, avg(v) AS v FROM "
            f"(SELECT generate_subscripts(e.vector, 1) AS i, unnest(e.vector) AS v FROM {view} e JOIN cells c USING (obs_id) WHERE c.cell_type = 'B cell') GROUP BY i)), 10) n "
            "ORDER BY n.similarity DESC"
        )
        qs = {
            "neighbors_exact": ["neighbors", ref, qid, "--k", "10"],
            "sql_top10_cosine": ["sql", f"SELECT obs_id, array_cosine_similarity(vector, {vec}) AS s FROM {view} ORDER BY s DESC LIMIT 10"],
            "sql_centroids": ["sql", centroid],
            "sql_nearest_b_centroid": ["sql", b_centroid],
        }
        subs: dict[str, Any] = {}
        for k, args in qs.items():
            r = self.aivc("queries", *args, tag=f"query-{k}")
            rows = (r["json"] or {}).get("rows") or (r["json"] or {}).get("neighbors") or []
            r.pop("json", None)
            subs[k] = r | {"n_rows": len(rows)}
            _log(f"query {k}: {r['wall_s']:.1f}s, peak PSS {r['peak_pss_mib']:.0f} MiB, {len(rows)} rows")
        return {
            "wall_s": round(sum(s["wall_s"] for s in subs.values()), 2), "peak_pss_mib": max(s["peak_pss_mib"] for s in subs.values()),
            "peak_rss_mib": max(s["peak_rss_mib"] for s in subs.values()), "maxrss_mib": max(s["maxrss_mib"] for s in subs.values()), "queries": subs,
        }  # fmt: skip

    def result(self, elapsed: float) -> dict[str, Any]:
        return {"cells": self.cells, "datasets": self.n_ds, "genes": self.a.genes, "epochs": self.a.epochs, "stages": self.state["stages"],
                "bounds": {k: {"bytes": b, "how": h} for k, (b, h) in bounds(self.a.genes, self.per).items()},
                "load_avg": os.getloadavg(), "elapsed_s": round(elapsed, 1)}  # fmt: skip

    def run(self, stages: list[str]) -> dict[str, Any]:
        t0 = time.time()
        out = Path(self.a.workdir) / f"results-{self.a.cells}.json"
        for st in stages:
            if st in self.state["stages"]:
                _log(f"{st}: done before (resume), {self.state['stages'][st]['wall_s']:.0f}s")
                continue
            _log(f"{st}: start ({self.cells:,} cells in {self.n_ds} datasets)")
            r = getattr(self, st)()
            r.pop("json", None)
            self.state["stages"][st] = r
            self.save()
            out.write_text(json.dumps(self.result(time.time() - t0), indent=1))  # partial results after every stage
            _log(f"{st}: {r['wall_s']:.0f}s, peak PSS {r['peak_pss_mib']:.0f} MiB (RSS sum {r['peak_rss_mib']:.0f} MiB)")
        return self.result(time.time() - t0)


def _du(path: Path) -> int:
    total = 0
    for dp, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dp, f)).st_size
            except OSError:
                pass
    return total


# -- printing ----------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> list[str]:
    n = result["cells"]
    lines = [f"{n:,} cells in {result['datasets']} datasets x {result['genes']:,} genes", "| stage | wall | cells/s | us/cell | peak PSS (tree) | RSS sum | bound | memory |", "|---|---|---|---|---|---|---|---|"]
    for st in STAGES:
        r = result["stages"].get(st)
        if not r:
            continue
        b = bounds(result["genes"], result["cells"] // result["datasets"])[st][0] / MiB  # the current code's bounds
        n = r.get("cells", result["cells"])
        ok = "PASS" if r["peak_pss_mib"] <= b else "FAIL"
        lines.append(f"| {st}{' (one dataset)' if 'cells' in r else ''} | {r['wall_s']:.0f} s | {n / r['wall_s']:,.0f} | {1e6 * r['wall_s'] / n:.1f} | {r['peak_pss_mib']:,.0f} MiB | {r['peak_rss_mib']:,.0f} MiB | {b:,.0f} MiB | {ok} |")
    return lines


def compare(small: dict[str, Any], big: dict[str, Any]) -> list[str]:
    ns, nb = small["cells"], big["cells"]
    lines = [f"cost per cell and peak memory, {nb:,} vs {ns:,} cells", "| stage | s/cell ratio | per cell | peak PSS ratio | memory vs lake size |", "|---|---|---|---|---|"]
    for st in STAGES:
        a, b = small["stages"].get(st), big["stages"].get(st)
        if not (a and b):
            continue
        cr = (b["wall_s"] / b.get("cells", nb)) / (a["wall_s"] / a.get("cells", ns))
        mr = b["peak_pss_mib"] / a["peak_pss_mib"]
        lines.append(f"| {st} | {cr:.2f}x | {'PASS (flat/falling)' if cr <= 1.1 else 'FAIL (rising)'} | {mr:.2f}x | {'PASS (bounded)' if mr <= 1.15 else 'FAIL (grows)'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=100_000, help="cells in the lake (split evenly over --datasets)")
    p.add_argument("--datasets", type=int, default=2)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=2, help="cell-vae epochs (--set optim.epochs)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in order")
    p.add_argument("--workdir", default="/work/bench-scratch/atlas")
    p.add_argument("--embed-model", default=None, help="model REF the embed stage applies (default: the train stage's model)")
    p.add_argument("--resume", action="store_true", help="skip the stages (and datasets) a previous run finished")
    p.add_argument("--keep", action="store_true", help="keep the inputs and the lake")
    p.add_argument("--compare", default=None, help="CELLS_A,CELLS_B: print the two saved results side by side and exit")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    wd = Path(a.workdir)
    if a.compare:
        x, y = (json.loads((wd / f"results-{c.strip()}.json").read_text()) for c in a.compare.split(","))
        lines = [*table(x), "", *table(y), "", *compare(x, y)]
        print(json.dumps({"small": x, "big": y}, indent=1) if a.json else "\n".join(lines))
        return 0
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or a.datasets < 1 or a.cells < a.datasets:
        p.error(f"unknown stage(s) {bad}" if bad else "--cells must be >= --datasets >= 1")
    atlas = Atlas(a)
    result = atlas.run(stages)
    wd.mkdir(parents=True, exist_ok=True)
    (wd / f"results-{a.cells}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if a.json else "\n".join(table(result)))
    if not a.keep and all(s in atlas.state["stages"] for s in STAGES):
        shutil.rmtree(atlas.root)
        _log(f"removed {atlas.root} (--keep keeps it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
