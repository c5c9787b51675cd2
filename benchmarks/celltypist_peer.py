"""CellTypist 1.7.1 itself, as bench_annotate.py's peer: run in the CellTypist venv, not the project's.

Usage (bench_annotate.py calls it; the venv is built by ``benchmarks/celltypist-venv.sh``)::

    .celltypist-venv/bin/python benchmarks/celltypist_peer.py JOB.json

``JOB.json``: ``{"tasks": {"SPLIT": {"reference": "ref.h5ad", "queries": {"NAME": "q.h5ad", ...}}, ...},
"label": "label", "out": "result.json", "majority_voting": true}`` (one process for every split:
the first majority-voting call pays numba's compilation once). The reference and the queries hold
log1p(CP10k) expression (what ``celltypist.train``/``annotate`` expect and check), gene symbols
as ``var_names``; the reference has its labels in ``obs[label]``. CellTypist runs with its
defaults: ``celltypist.train(reference, labels=label)`` (all genes, scaled, L2 logistic
regression by lbfgs, C=1) and ``celltypist.annotate(query, model)`` with
``majority_voting=False`` and, when asked, ``True`` (over-clustering by Leiden on the query).
Timed with ``time.perf_counter`` around each call (the AnnData already in memory, imports not
timed). Written to ``out``: for each split, the training seconds and, for each query, the predicted
labels of each mode and the seconds (majority voting on the query named ``query`` only).
"""

from __future__ import annotations

import json
import sys
import time
import warnings


def main() -> int:
    job = json.loads(open(sys.argv[1]).read())
    warnings.simplefilter("ignore")
    import anndata as ad
    import celltypist
    import sklearn

    out: dict = {"celltypist": celltypist.__version__, "scikit_learn": sklearn.__version__, "tasks": {}}
    for split, task in job["tasks"].items():
        ref = ad.read_h5ad(task["reference"])
        t = time.perf_counter()
        model = celltypist.train(ref, labels=job["label"], n_jobs=1)
        res: dict = {"train_s": time.perf_counter() - t, "n_reference": ref.n_obs, "queries": {}}
        for name, path in task["queries"].items():
            q = ad.read_h5ad(path)
            r: dict = {"n_cells": q.n_obs}
            t = time.perf_counter()
            pred = celltypist.annotate(q, model=model, majority_voting=False)
            r["annotate_s"] = time.perf_counter() - t
            r["predicted"] = pred.predicted_labels["predicted_labels"].astype(str).tolist()
            if job.get("majority_voting") and name == "query":
                t = time.perf_counter()
                mv = celltypist.annotate(q, model=model, majority_voting=True)
                r["annotate_majority_voting_s"] = time.perf_counter() - t
                r["majority_voting"] = mv.predicted_labels["majority_voting"].astype(str).tolist()
            res["queries"][name] = r
        out["tasks"][split] = res
    with open(job["out"], "w") as fh:
        json.dump(out, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
