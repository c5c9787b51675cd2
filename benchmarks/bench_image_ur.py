"""Image-derived cell URs against simple baselines, on the real stardist nuclei image.

Usage::

    .venv/bin/python benchmarks/bench_image_ur.py [--seeds 0,1,2] [--json]

The 125 segmented nuclei of stardist 0.9.1's ``nuclei2d`` image (``tests/ingest/data/images``)
are submitted as an image dataset into a scratch lake (the table is made up; only the image
and the mask matter here), and ``aivc embed image`` is run with the CLI defaults (48 px
crops + the cell's mask, a 16-dim CNN, 30 epochs, SimCLR) for each seed. Every nucleus is
then described by

``cnn``          the published image URs,
``morphology``   the baseline a user computes first (mask area, eccentricity, major axis,
                 mean and sd of the intensity in the mask: ``image_cells.morphology_features``),
``pixels_pca``   the 16 principal components of the crops' raw pixels (image and mask),

and a 5-fold logistic-regression probe predicts three properties of the nuclei, each split at
its median (chance 0.5): size (mask area), elongation (eccentricity) and brightness (mean
intensity inside the mask). These are measurable from the mask and image directly, so the
morphology baseline computes the answer itself: the question is how much of it a
self-supervised CNN recovers unasked, against a plain pixel PCA. Prints accuracy mean over
seeds per representation and property (baselines do not depend on the seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aivc.embeddings.image_cells import cell_crops, embed_image_cells, morphology_features
    from aivc.ingest.submission import submit
    from aivc.store.features import read_vectors
    from aivc.store.lake import Lake
    from aivc.store.reference import gene_reference
    from tests.ingest.test_cite_submit import write_manifest
    from tests.ingest.test_image_submit import image_manifest, write_image_submission

    ref = gene_reference("homo_sapiens")
    pc = ref[(ref["gene_type"] == "protein_coding") & ~ref["symbol"].duplicated(keep=False)]
    genes = pc.iloc[:: max(1, len(pc) // 115)].head(115)
    work = Path(tempfile.mkdtemp(prefix="bench-image-ur-"))
    lake = Lake.init(work / "lake")
    data = write_image_submission(work / "sub", genes)
    res = submit(lake, data, write_manifest(work / "m.yaml", image_manifest(work / "sub")), report_dir=work / "r")
    if res.status != "committed":
        print(f"submission {res.status}: {[str(e) for e in res.errors][:3]}", file=sys.stderr)
        return 1
    cc = cell_crops(lake, "nuclei-dsb")
    morph = morphology_features(cc.crops)
    targets = {"size": morph[:, 0], "elongation": morph[:, 1], "brightness": morph[:, 3]}
    ys = {k: (v > np.median(v)).astype(int) for k, v in targets.items()}
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    def acc(x: np.ndarray, y: np.ndarray) -> float:
        return float(cross_val_score(probe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())

    pixels = PCA(16, random_state=0).fit_transform(cc.crops.reshape(len(cc.crops), -1))
    out: dict[str, dict[str, list[float]]] = {"morphology": {}, "pixels_pca": {}, "cnn": {}}
    for k, y in ys.items():
        out["morphology"][k] = [acc(morph, y)]
        out["pixels_pca"][k] = [acc(pixels, y)]
        out["cnn"][k] = []
    for s in [int(v) for v in args.seeds.split(",")]:
        v = embed_image_cells(lake, "nuclei-dsb", name=f"image_cnn_s{s}", seed=s)
        t, vec = read_vectors(lake, v)
        order = {o: i for i, o in enumerate(t.column("id").to_pylist())}
        x = vec[[order[o] for o in cc.obs_ids]]
        for k, y in ys.items():
            out["cnn"][k].append(acc(x, y))
    summary = {m: {k: float(np.mean(v)) for k, v in d.items()} for m, d in out.items()}
    if args.json:
        print(json.dumps({"n_cells": int(len(cc.obs_ids)), "accuracy": summary, "per_seed": out["cnn"]}, indent=2))
        return 0
    print(f"{len(cc.obs_ids)} real nuclei (stardist nuclei2d), 5-fold logistic probe, median splits (chance 0.50)\n")
    print(f"{'representation':<14}" + "".join(f"{k:>12}" for k in ys))
    for m, d in summary.items():
        print(f"{m:<14}" + "".join(f"{d[k]:>12.3f}" for k in ys))
    print("\ncnn per seed: " + "; ".join(f"{k} " + ", ".join(f"{a:.3f}" for a in v) for k, v in out["cnn"].items()))
    print("ratios cnn/pixels_pca: " + ", ".join(f"{k} {summary['cnn'][k] / summary['pixels_pca'][k]:.2f}" for k in ys))
    print("ratios cnn/morphology: " + ", ".join(f"{k} {summary['cnn'][k] / summary['morphology'][k]:.2f}" for k in ys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
