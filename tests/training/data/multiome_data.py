"""Real 10x Multiome cells (RNA + ATAC) for the multimodal tests: load the derived file, or rebuild it.

``multiome_pbmc10k.npz`` holds the 1,000 cells of ``test_rna_atac.h5mu`` (10x Multiome PBMC
10k, Cell Ranger ARC 1.0.0, GRCh38, CC BY 4.0; subset made by scverse/muon at commit 03c762e,
BSD-3-Clause), file sha256 9f5c1943c1159e9fa494216993f00da26c138ba68d6afe37340774db739da93d:
raw RNA UMI counts of its 45 marker genes and raw ATAC counts of its 174 peaks near them,
stored exactly (CSR, integers), with the gene symbols, peak intervals and barcodes.

Rebuild (from the repository root, where ``../shared/data/pbmc10k-multiome-subset/`` holds the file)::

    .venv/bin/python tests/training/data/multiome_data.py ../shared/data/pbmc10k-multiome-subset/test_rna_atac.h5mu
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PATH = HERE / "multiome_pbmc10k.npz"
SOURCE_SHA256 = "9f5c1943c1159e9fa494216993f00da26c138ba68d6afe37340774db739da93d"


@dataclass(frozen=True)
class MultiomeData:
    barcodes: np.ndarray
    genes: np.ndarray
    rna: np.ndarray  # float32 dense counts, cells x genes
    peaks: np.ndarray  # chrN:start-end
    atac: np.ndarray  # float32 dense counts, cells x peaks


def _dense(z: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    n, m = (int(s) for s in z[f"{key}_shape"])
    out = np.zeros((n, m), dtype=np.float32)
    rows = np.repeat(np.arange(n), np.diff(z[f"{key}_indptr"]))
    out[rows, z[f"{key}_indices"]] = z[f"{key}_data"]
    return out


def load() -> MultiomeData:
    with np.load(PATH, allow_pickle=False) as z:
        return MultiomeData(z["barcodes"], z["genes"], _dense(z, "rna"), z["peaks"], _dense(z, "atac"))


def rebuild(src: Path) -> None:
    import h5py

    raw = src.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != SOURCE_SHA256:
        raise SystemExit(f"{src} has sha256 {sha}, expected {SOURCE_SHA256}")
    out: dict[str, np.ndarray] = {}
    with h5py.File(src, "r") as f:
        for key, mod in (("rna", "rna"), ("atac", "atac")):
            g = f[f"mod/{mod}/X"]
            data = g["data"][:]
            assert np.array_equal(data, np.round(data)) and data.min() >= 0
            out |= {f"{key}_data": data.astype(np.int32), f"{key}_indices": g["indices"][:].astype(np.int32), f"{key}_indptr": g["indptr"][:].astype(np.int64), f"{key}_shape": np.asarray(g.attrs["shape"], dtype=np.int64)}
            var = f[f"mod/{mod}/var"]
            names = var[var.attrs["_index"]][:].astype(str)
            out["genes" if key == "rna" else "peaks"] = names
        obs = f["obs"]
        out["barcodes"] = obs[obs.attrs["_index"]][:].astype(str)
    np.savez_compressed(PATH, source=np.array(f"test_rna_atac.h5mu ({SOURCE_SHA256})"), **out)
    print(f"{PATH.name}: {len(out['barcodes'])} cells, {len(out['genes'])} genes, {len(out['peaks'])} peaks, sha256 {hashlib.sha256(PATH.read_bytes()).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rebuild(Path(sys.argv[1]))
