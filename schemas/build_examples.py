#!/usr/bin/env python3
"""Rebuild the real CITE-seq example files shipped in ``schemas/examples/``.

The demo and the tests submit real CITE-seq cells; nothing is downloaded at run time, so the
files ship with the package. All come from the scvi-tools 1.4.2 sdist (BSD-3-Clause; the
measurements are 10x Genomics public datasets, CC BY 4.0), checked by sha256 before use:

``cite_pbmc10k.h5ad``, ``cite_pbmc5k.h5ad``
    ``tests/test_data/pbmc_10k_protein_v3.h5ad`` and ``pbmc_5k_protein_v3.h5ad``: 200 real
    PBMC each, every cell kept, raw RNA UMI counts in ``X`` restricted to the genes detected in
    at least :data:`MIN_CELLS` of its cells (a size cut; counts unchanged), TotalSeq-B antibody
    counts unchanged in ``obsm['protein_expression']`` with their names in
    ``uns['protein_names']`` (the layout scvi-tools and Seurat exports use), ``obs`` as there
    (``n_genes``, ``percent_mito``, ``n_counts``). Written with anndata 0.12.
``pbmc10k_protein_v3/``
    ``tests/test_data/10X/pbmc_10k_protein_v3/filtered_feature_bc_matrix.tar.gz`` unpacked
    (``matrix.mtx.gz``, ``features.tsv.gz``, ``barcodes.tsv.gz``, byte for byte; macOS ``._``
    and ``.DS_Store`` files left out): a Cell Ranger 3 matrix folder of 1,024 cells, 100 genes
    and 17 antibodies.

Usage::

    pip download --no-deps --no-binary :all: scvi-tools==1.4.2 -d /tmp/scvi
    python schemas/build_examples.py /tmp/scvi/scvi_tools-1.4.2.tar.gz
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "examples"
SDIST_SHA256 = "c3d2e6e4cd7d41fccdaeead63c72a4d9a1681bb51f2ace107461217a182eb6e2"
ROOT = "scvi_tools-1.4.2/tests/test_data/"
MEMBERS = {
    "cite_pbmc10k.h5ad": ("pbmc_10k_protein_v3.h5ad", "512fe360bd1cc79821f67959cc47e19b92bb7edbbb9351da5d1e9d70b35102a2"),
    "cite_pbmc5k.h5ad": ("pbmc_5k_protein_v3.h5ad", "83f2c7d175600acf458d839920ce52448beeab66557a76d8b0312c91102a3326"),
    "pbmc10k_protein_v3": ("10X/pbmc_10k_protein_v3/filtered_feature_bc_matrix.tar.gz", "d80d6ecfa0ab751dfc9510b911f60045d3cf3397f20a435debd937956e449e00"),
}
MIN_CELLS = 20


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main(sdist: str) -> int:
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    raw = Path(sdist).read_bytes()
    if _sha(raw) != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {_sha(raw)}, expected {SDIST_SHA256}")
    HERE.mkdir(exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for out, (member, sha) in MEMBERS.items():
            b = tar.extractfile(ROOT + member).read()  # type: ignore[union-attr]
            if _sha(b) != sha:
                raise SystemExit(f"{member}: sha256 {_sha(b)}, expected {sha}")
            if out.endswith(".h5ad"):
                tmp = HERE / f".{out}.src"
                tmp.write_bytes(b)
                a = ad.read_h5ad(tmp)
                tmp.unlink()
                X = sp.csr_matrix(a.X)
                keep = np.flatnonzero(np.asarray((X > 0).sum(axis=0)).ravel() >= MIN_CELLS)
                small = ad.AnnData(X=X[:, keep].astype(np.float32), obs=a.obs.copy(), var=a.var.iloc[keep][[]].copy())
                small.obsm["protein_expression"] = np.asarray(a.obsm["protein_expression"], dtype=np.int64)
                small.uns["protein_names"] = np.asarray([str(n) for n in a.uns["protein_names"]], dtype=object)
                small.write_h5ad(HERE / out, compression="gzip")
                print(f"{out}: {small.n_obs} cells x {small.n_vars} genes, {small.obsm['protein_expression'].shape[1]} proteins, sha256 {_sha((HERE / out).read_bytes())}")
            else:
                folder = HERE / out
                folder.mkdir(exist_ok=True)
                with tarfile.open(fileobj=io.BytesIO(b)) as inner:
                    for m in inner.getmembers():
                        name = m.name.rsplit("/", 1)[-1]
                        if m.isfile() and name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"):
                            (folder / name).write_bytes(inner.extractfile(m).read())  # type: ignore[union-attr]
                            print(f"{out}/{name}: sha256 {_sha((folder / name).read_bytes())}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
