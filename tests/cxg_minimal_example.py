"""Smallest AnnData that passes ``cellxgene-schema validate`` (cellxgene-schema 7.1.2, schema 7.1.0).

Reference fixture for aivc's CELLxGENE exporter: raw integer counts only (no normalized matrix),
human, 50 cells x 200 genes taken from ``schemas/genes/homo_sapiens.tsv.gz`` (the gene table
extracted from the validator's own wheel by ``schemas/build_gene_tables.py``).

Usage (project venv; the validator lives in its own venv, see ``.ci/cxg-venv.sh``)::

    python tests/cxg_minimal_example.py /tmp/minimal.h5ad
    .cxg-venv/bin/cellxgene-schema validate /tmp/minimal.h5ad

or, to write and validate in one go (needs ``.cxg-venv``)::

    python tests/cxg_minimal_example.py /tmp/minimal.h5ad --validate

Rules this fixture encodes (all enforced by cellxgene-schema 7.1.2):

* X: scipy CSR, dtype float32, non-negative integer values, every cell >= 1 non-zero,
  no two cells with identical count rows. With no ``raw``, X itself is the raw matrix.
* var: index = unversioned Ensembl ids of the dataset organism, unique;
  ``feature_is_filtered`` bool, all False when there is no ``raw``.
* obs: the 11 required columns; ``tissue_type``/``suspension_type``/``donor_id`` categorical
  (str categories), ``is_primary_data`` bool, ontology columns strings (categorical here).
* uns: ``organism_ontology_term_id`` (moved from obs to uns in schema 7) and ``title``.
* obsm: at least one ``X_<suffix>`` float array of shape (n_obs, >=2).
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO_ROOT = Path(__file__).resolve().parents[1]
HUMAN_GENES = REPO_ROOT / "schemas" / "genes" / "homo_sapiens.tsv.gz"
CXG_BIN = REPO_ROOT / ".cxg-venv" / "bin" / "cellxgene-schema"

N_CELLS = 50
N_GENES = 200

OBS_TERMS = {
    "assay_ontology_term_id": "EFO:0009901",  # 10x 3' v1 (descendant of EFO:0010183 and of EFO:0030080)
    "cell_type_ontology_term_id": "CL:0000236",  # B cell
    # HsapDv:0000087 is obsolete in HsapDv v2025-01-23 (schema 7.1) and is rejected; use its
    # replacement HsapDv:0000258 "adult stage".
    "development_stage_ontology_term_id": "HsapDv:0000258",
    "disease_ontology_term_id": "PATO:0000461",  # normal
    "self_reported_ethnicity_ontology_term_id": "unknown",
    "sex_ontology_term_id": "unknown",
    "tissue_ontology_term_id": "UBERON:0000178",  # blood
    "tissue_type": "tissue",
    "suspension_type": "cell",
    "donor_id": "d1",
}


def load_human_genes(path: Path = HUMAN_GENES) -> pd.DataFrame:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)


def build_minimal_valid_anndata(n_cells: int = N_CELLS, n_genes: int = N_GENES, seed: int = 0) -> ad.AnnData:
    """Return a small AnnData accepted by ``cellxgene-schema validate`` (7.1.2)."""
    genes = load_human_genes()
    genes = genes[genes["gene_type"] == "protein_coding"].sort_values("gene_id").head(n_genes)
    if len(genes) < n_genes:
        raise ValueError(f"gene table has only {len(genes)} protein-coding genes")

    rng = np.random.default_rng(seed)
    # Poisson counts at ~30% density; force one non-zero per cell and make rows unique
    # (the validator rejects all-zero rows and duplicated raw count rows).
    dense = rng.poisson(1.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.3)
    dense[np.arange(n_cells), np.arange(n_cells) % n_genes] += np.arange(1, n_cells + 1)
    assert len({row.tobytes() for row in dense}) == n_cells
    X = sp.csr_matrix(dense.astype(np.float32))
    X.sort_indices()

    obs_index = pd.Index([f"cell_{i:04d}" for i in range(n_cells)], name=None)
    obs = pd.DataFrame(index=obs_index)
    for col, value in OBS_TERMS.items():
        obs[col] = pd.Categorical([value] * n_cells)
    obs["is_primary_data"] = np.ones(n_cells, dtype=bool)

    var = pd.DataFrame(index=pd.Index(genes["gene_id"].to_numpy(dtype=object), name=None))
    var["feature_is_filtered"] = np.zeros(n_genes, dtype=bool)  # no raw -> must be all False

    obsm = {
        "X_pca": rng.normal(size=(n_cells, 10)).astype(np.float32),
        "X_umap": rng.normal(size=(n_cells, 2)).astype(np.float32),
    }
    uns = {
        "title": "aivc minimal CELLxGENE-valid example",
        "organism_ontology_term_id": "NCBITaxon:9606",
        "default_embedding": "X_umap",
        "batch_condition": np.array(["donor_id"], dtype=object),
    }
    return ad.AnnData(X=X, obs=obs, var=var, obsm=obsm, uns=uns)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="where to write the .h5ad")
    p.add_argument("--validate", action="store_true", help=f"run {CXG_BIN} validate on it")
    a = p.parse_args(argv)
    adata = build_minimal_valid_anndata()
    adata.write_h5ad(a.out)
    print(f"wrote {a.out} ({adata.n_obs} x {adata.n_vars})")
    if a.validate:
        return subprocess.run([str(CXG_BIN), "validate", str(a.out)]).returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
