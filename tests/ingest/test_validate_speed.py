"""What makes ``aivc validate`` slow must not come back (issue 11), checked without timing.

Each check runs in a fresh interpreter, because this test process has imported everything
already: the validate path imports no plotting library and nothing it does not run, Great
Expectations only when its suites run, with the cycle collector left as it was found and the
exit-time freeze in place (``aivc.ingest.qc._import_gx``); the report's plots are still drawn.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

#: never needed to validate a submission
NOT_ON_THE_VALIDATE_PATH = ("matplotlib", "scanpy", "tiledbsoma", "torch", "ray", "duckdb", "sklearn")


def run_fresh(code: str, *args: str) -> dict:
    env = dict(os.environ, GX_ANALYTICS_ENABLED="False", RAY_AUTH_MODE="disabled", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


IMPORT_AND_REPORT = r"""
import json, sys
import numpy as np, pandas as pd
import aivc.cli, aivc.ingest.submission, aivc.ingest.qc, aivc.ingest.readers, aivc.ingest.matrix
from aivc.ingest.findings import ValidationReport
from aivc.ingest.report import write_report
after_import = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2].split(","))
report = ValidationReport("s1", "a.h5ad", "m.yaml")
n = np.arange(1, 201, dtype=float) * 10
report.qc = pd.DataFrame({"n_counts": n, "n_genes": n // 3, "pct_mito": n % 7}, index=[f"c{i}" for i in range(200)])
_, html = write_report(report, sys.argv[1])
after_report = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[2].split(","))
import gc
import_gx = getattr(aivc.ingest.qc, "_import_gx", lambda: None)
gc.disable()  # a caller that had the collector off keeps it off
gx = import_gx()
kept_off = not gc.isenabled()
gc.enable()
print(json.dumps({"after_import": after_import, "after_report": after_report, "html": html.read_text(),
                  "gx": getattr(gx, "__name__", None), "kept_off": kept_off, "again": import_gx() is gx}))
"""


@pytest.mark.slow
def test_importing_the_validate_path_and_writing_a_report_loads_no_engine(tmp_path: Path) -> None:
    heavy = ",".join((*NOT_ON_THE_VALIDATE_PATH, "great_expectations", "anndata"))
    res = run_fresh(IMPORT_AND_REPORT, str(tmp_path), heavy)
    assert res["after_import"] == []
    assert res["after_report"] == []  # the plots are drawn without matplotlib
    plots = dict(re.findall(r'<figure data-plot="([^"]+)">(<svg .*?</svg>)', res["html"], re.DOTALL))
    assert list(plots) == ["n_counts", "n_genes", "pct_mito", "scatter"]
    counts = [int(n) for n in re.findall(r'<rect [^>]*data-n="(\d+)"', plots["n_genes"])]
    assert sum(counts) == 200
    assert (res["gx"], res["kept_off"], res["again"]) == ("great_expectations", True, True)


VALIDATE = r"""
import atexit, gc, json, sys
exit_path = sys.argv[4]

def at_exit():  # registered first, so it runs after every handler the run registers
    with open(exit_path, "w") as fh:
        json.dump({"frozen_at_exit": gc.get_freeze_count()}, fh)

atexit.register(at_exit)
from aivc.cli import main
sys.argv = ["aivc", "validate", sys.argv[1], "-m", sys.argv[2], "--report-dir", sys.argv[3], "--json"]
out = sys.stdout
sys.stdout = open("/dev/null", "w")
try:
    main()
except SystemExit as exc:
    code = exc.code
sys.stdout = out
mods = sorted({m.split(".")[0] for m in sys.modules})
print(json.dumps({"exit": code, "modules": mods, "gc_enabled": gc.isenabled(), "frozen_before_exit": gc.get_freeze_count()}))
"""


@pytest.mark.slow
def test_validate_runs_gx_and_loads_only_what_runs(tmp_path: Path, write_submission) -> None:
    h5, mf = write_submission(n_cells=60)
    report_dir, exit_file = tmp_path / "report", tmp_path / "exit.json"
    res = run_fresh(VALIDATE, str(h5), str(mf), str(report_dir), str(exit_file))
    assert res["exit"] == 0
    loaded = set(res["modules"])
    assert {"great_expectations", "anndata", "h5py"} <= loaded  # the real engines ran
    assert loaded.isdisjoint(NOT_ON_THE_VALIDATE_PATH), sorted(loaded & set(NOT_ON_THE_VALIDATE_PATH))
    # the collector was paused for GX's import only, and everything is frozen at exit
    assert res["gc_enabled"] is True and res["frozen_before_exit"] == 0
    assert json.loads(exit_file.read_text())["frozen_at_exit"] > 100_000
    report = json.loads((report_dir / "report.json").read_text())
    assert report["valid"] is True and len(report["expectations"]) > 10
    assert all(e["success"] is not None for e in report["expectations"])  # each one ran
    html = (report_dir / "report.html").read_text()
    assert html.count('<figure data-plot="') == 4
