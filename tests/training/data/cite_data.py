"""Real CITE-seq cells for the multimodal tests: load the derived files, or rebuild them.

``cite_pbmc10k.npz`` and ``cite_pbmc5k.npz`` hold 200 real PBMC each (raw RNA UMI counts and
raw TotalSeq-B antibody counts of the same cells), derived from the scvi-tools 1.4.2 sdist's
``tests/test_data/pbmc_10k_protein_v3.h5ad`` and ``pbmc_5k_protein_v3.h5ad`` (10x Genomics
public datasets, see ``cite_PROVENANCE.md``). RNA keeps the 4,000 most variable of the genes
both files measure (scanpy 1.11 ``highly_variable_genes(flavor="seurat", batch_key=dataset)``
on log1p(CP10k) of all 400 cells, among genes detected in at least 10 of them), stored in
rank order so that the first ``n`` columns are the ``n`` most variable; the antibody panels
(14 and 29) are kept whole. Counts are stored exactly (CSR, integers).

Rebuild (from the repository root)::

    pip download --no-deps --no-binary :all: scvi-tools==1.4.2 -d /tmp/scvi
    .venv/bin/python tests/training/data/cite_data.py /tmp/scvi/scvi_tools-1.4.2.tar.gz

The sdist and both members are checked against the sha256 below before anything is written.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SDIST = "scvi_tools-1.4.2.tar.gz"
SDIST_SHA256 = "c3d2e6e4cd7d41fccdaeead63c72a4d9a1681bb51f2ace107461217a182eb6e2"
MEMBERS = {
    "pbmc10k": ("scvi_tools-1.4.2/tests/test_data/pbmc_10k_protein_v3.h5ad", "512fe360bd1cc79821f67959cc47e19b92bb7edbbb9351da5d1e9d70b35102a2"),
    "pbmc5k": ("scvi_tools-1.4.2/tests/test_data/pbmc_5k_protein_v3.h5ad", "83f2c7d175600acf458d839920ce52448beeab66557a76d8b0312c91102a3326"),
}
N_GENES = 4000
MIN_CELLS = 10


@dataclass(frozen=True)
class CiteData:
    """One derived CITE-seq file: RNA counts (cells x genes) and ADT counts (cells x proteins)."""

    name: str
    barcodes: np.ndarray
    genes: np.ndarray  # most variable first
    rna: np.ndarray  # float32 dense counts
    proteins: np.ndarray  # antibody names without the "_TotalSeqB" suffix
    adt: np.ndarray  # float32 dense counts

    def top_genes(self, n: int) -> CiteData:
        """The same cells with only the ``n`` most variable genes."""
        return CiteData(self.name, self.barcodes, self.genes[:n], self.rna[:, :n], self.proteins, self.adt)


def path(name: str) -> Path:
    return HERE / f"cite_{name}.npz"


def load(name: str) -> CiteData:
    """``load("pbmc10k")`` or ``load("pbmc5k")``: the derived cells, counts as dense float32."""
    with np.load(path(name), allow_pickle=False) as z:
        n, g = int(z["shape"][0]), int(z["shape"][1])
        rna = np.zeros((n, g), dtype=np.float32)
        rows = np.repeat(np.arange(n), np.diff(z["rna_indptr"]))
        rna[rows, z["rna_indices"]] = z["rna_data"]
        return CiteData(name, z["barcodes"], z["genes"], rna, z["proteins"], z["adt"].astype(np.float32))


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def rebuild(sdist: Path) -> None:
    """Derive both files from the scvi-tools 1.4.2 sdist (checked by sha256)."""
    import io

    import anndata as ad
    import pandas as pd
    import scanpy as sc

    raw = sdist.read_bytes()
    if _sha(raw) != SDIST_SHA256:
        raise SystemExit(f"{sdist} has sha256 {_sha(raw)}, expected {SDIST_SHA256} (scvi-tools 1.4.2 sdist)")
    data = {}
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for key, (member, sha) in MEMBERS.items():
            b = tar.extractfile(member).read()  # type: ignore[union-attr]
            if _sha(b) != sha:
                raise SystemExit(f"{member} has sha256 {_sha(b)}, expected {sha}")
            data[key] = ad.read_h5ad(io.BytesIO(b))
    shared = data["pbmc10k"].var_names.intersection(data["pbmc5k"].var_names)
    both = ad.concat([a[:, shared] for a in data.values()], label="dataset", keys=list(data))
    both.obs_names_make_unique()
    both = both[:, np.asarray((both.X > 0).sum(axis=0)).ravel() >= MIN_CELLS].copy()
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    sc.pp.highly_variable_genes(both, flavor="seurat", n_top_genes=N_GENES, batch_key="dataset")
    v = both.var
    ranked = pd.DataFrame({"nb": -v["highly_variable_nbatches"], "disp": -v["dispersions_norm"].fillna(-np.inf), "gene": v.index}).sort_values(["nb", "disp", "gene"])
    genes = ranked["gene"].to_numpy()[:N_GENES].astype(str)
    for key, a in data.items():
        x = np.asarray(a[:, genes].X)
        assert np.array_equal(x, np.round(x)) and x.min() >= 0
        from scipy import sparse

        m = sparse.csr_matrix(x.astype(np.int32))
        adt = np.asarray(a.obsm["protein_expression"]).astype(np.int32)
        np.savez_compressed(
            path(key),
            shape=np.array(m.shape, dtype=np.int64),
            rna_data=m.data.astype(np.int32),
            rna_indices=m.indices.astype(np.int32),
            rna_indptr=m.indptr.astype(np.int64),
            genes=genes,
            barcodes=a.obs_names.to_numpy().astype(str),
            proteins=np.array([p.removesuffix("_TotalSeqB") for p in a.uns["protein_names"]]),
            adt=adt,
            source=np.array(f"{SDIST} ({SDIST_SHA256}) :: {MEMBERS[key][0]} ({MEMBERS[key][1]})"),
        )
        print(f"{path(key).name}: {m.shape[0]} cells x {m.shape[1]} genes ({m.nnz} non-zeros), {adt.shape[1]} proteins, sha256 {_sha(path(key).read_bytes())}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rebuild(Path(sys.argv[1]))
