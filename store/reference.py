"""Reference tables shipped in ``schemas/``: the genes of each supported organism."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from aivc.errors import NotFoundError

ORGANISM_NAMES: dict[str, str] = {"NCBITaxon:9606": "homo_sapiens", "NCBITaxon:10090": "mus_musculus"}
MITO_PREFIX: dict[str, str] = {"homo_sapiens": "MT-", "mus_musculus": "mt-"}


@lru_cache(maxsize=4)
def gene_reference(organism_name: str) -> pd.DataFrame:
    """The reference genes of ``organism_name`` (``homo_sapiens`` or ``mus_musculus``).

    Columns: ``gene_id`` (Ensembl, no version; the index too), ``symbol``,
    ``gene_version``, ``gene_type``, ``gene_length``. Provenance is in
    ``schemas/genes/PROVENANCE.md``.
    """
    res = resources.files("aivc.schemas").joinpath("genes", f"{organism_name}.tsv.gz")
    if not res.is_file():
        raise NotFoundError(f"no gene reference table for organism {organism_name!r}", where=str(res))
    with res.open("rb") as fh:
        df = pd.read_csv(fh, sep="\t", compression="gzip", dtype={"gene_id": str, "symbol": str, "gene_version": str, "gene_type": str}, keep_default_na=False)
    df.index = pd.Index(df["gene_id"], name="gene_id")
    return df
