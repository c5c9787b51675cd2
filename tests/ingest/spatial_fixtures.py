"""Spatial submissions the tests build from the real Visium sample (schemas/examples)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from aivc.demo_spatial import VISIUM_EXAMPLE

POSITIONS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def read_matrix(path: Path) -> tuple[sp.csr_matrix, list[str], dict[str, np.ndarray]]:
    """A Cell Ranger .h5 as (barcodes x features CSR, barcodes, feature datasets)."""
    with h5py.File(path, "r") as f:
        g = f["matrix"]
        n_feat, n_bc = (int(s) for s in g["shape"][:])
        m = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_feat, n_bc))
        feats = {k: g["features"][k][:] for k in g["features"] if k != "_all_tag_keys"}
        return m.T.tocsr(), [b.decode() for b in g["barcodes"][:]], feats


def write_matrix(path: Path, x: sp.csr_matrix, barcodes: list[str], feats: dict[str, np.ndarray]) -> None:
    """Write a Cell Ranger 3+ feature-barcode matrix .h5 (features x barcodes, CSC)."""
    m = sp.csc_matrix(x.T.tocsc())
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([b"custom"])
        g = f.create_group("matrix")
        g["barcodes"] = np.array([b.encode() for b in barcodes])
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices.astype(np.int64), m.indptr.astype(np.int64)
        g["shape"] = np.array(m.shape, dtype=np.int32)
        fg = g.create_group("features")
        for k, v in feats.items():
            fg[k] = v
        fg["_all_tag_keys"] = np.array([b"genome"])


def copy_sample(dest: Path) -> Path:
    """A writable copy of the Visium sample folder."""
    shutil.copytree(VISIUM_EXAMPLE, dest)
    return dest


def positions(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "spatial" / "tissue_positions_list.csv", header=None, names=POSITIONS, dtype={"barcode": str})


def write_positions(folder: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(folder / "spatial" / "tissue_positions_list.csv", header=False, index=False)


def whole_slide(dest: Path, seed: int = 0) -> Path:
    """The sample as a whole slide: all 4,992 spots of the capture area in the matrix, the
    100 real spots with their real counts, the other in-tissue spots with Poisson counts at
    four times the real genes' mean (at least one count each), the spots outside the tissue mostly empty
    (sparse ambient counts), as in Space Ranger's raw matrix (made up: no real whole slide ships offline)."""
    folder = copy_sample(dest)
    x, barcodes, feats = read_matrix(folder / "filtered_feature_bc_matrix.h5")
    pos = positions(folder)
    rest = [b for b in pos["barcode"] if b not in set(barcodes)]
    rng = np.random.default_rng(seed)
    mean = np.asarray(x.mean(axis=0)).ravel()
    fake = rng.poisson(4 * np.maximum(mean, 0.05), size=(len(rest), x.shape[1]))  # dense enough that no two spots are identical (CELLxGENE refuses duplicate rows)
    inside = pos.set_index("barcode").loc[rest, "in_tissue"].to_numpy() == 1
    fake[inside & (fake.sum(axis=1) == 0), 0] = 1
    fake[~inside] = rng.poisson(0.05 * np.maximum(mean, 0.05), size=(int((~inside).sum()), x.shape[1]))  # ambient RNA: most empty
    fake = sp.csr_matrix(fake)
    write_matrix(folder / "filtered_feature_bc_matrix.h5", sp.vstack([x, fake]).tocsr(), barcodes + rest, feats)
    return folder
