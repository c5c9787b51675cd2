"""Reference tables shipped in ``schemas/``: the genes of each supported organism and the
one-to-one orthologs between them."""

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


@lru_cache(maxsize=4)
def previous_symbols(organism_name: str) -> dict[str, tuple[str, ...]]:
    """Outdated symbol -> current reference gene ids (several when the symbol is ambiguous).

    Symbols genes had in earlier Ensembl releases (GRCh37, GRCh38 84/93/100; GRCm38 100) and
    HGNC's previous symbols, restricted to gene ids of :func:`gene_reference` and to symbols
    that are no gene's current symbol. Empty for an organism without a table. Provenance is
    in ``schemas/genes/PREVIOUS_SYMBOLS.md``.
    """
    res = resources.files("aivc.schemas").joinpath("genes", f"{organism_name}.previous_symbols.tsv.gz")
    if not res.is_file():
        return {}
    with res.open("rb") as fh:
        df = pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False, usecols=["symbol", "gene_id"])
    out: dict[str, list[str]] = {}
    for sym, gid in zip(df["symbol"].to_numpy(), df["gene_id"].to_numpy(), strict=True):
        out.setdefault(sym, []).append(gid)
    return {k: tuple(v) for k, v in out.items()}


# the shipped ortholog tables: (organism, organism) -> (file under schemas/orthologs, the two column prefixes)
_ORTHOLOG_TABLES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("homo_sapiens", "mus_musculus"): ("human_mouse.tsv.gz", "human", "mouse"),
}


@lru_cache(maxsize=4)
def _ortholog_table(file_name: str) -> pd.DataFrame:
    res = resources.files("aivc.schemas").joinpath("orthologs", file_name)
    if not res.is_file():
        raise NotFoundError(f"no ortholog table {file_name!r} in this installation", where=str(res))
    with res.open("rb") as fh:
        return pd.read_csv(fh, sep="\t", compression="gzip", dtype=str, keep_default_na=False)


def orthologs(from_organism: str, to_organism: str) -> pd.DataFrame:
    """One-to-one orthologs from ``from_organism`` to ``to_organism``.

    Organisms are named as in ``gene_reference`` (``homo_sapiens``, ``mus_musculus``);
    NCBITaxon ids (``NCBITaxon:9606``, ``NCBITaxon:10090``) are accepted too. Both
    directions of a shipped pair work (human -> mouse and mouse -> human); any other
    pair raises ``NotFoundError``.

    Columns: ``from_gene_id``, ``to_gene_id`` (Ensembl, no version, as in
    ``gene_reference``), ``from_symbol``, ``to_symbol``; a plain RangeIndex, rows sorted
    by ``from_gene_id``. Every gene id occurs at most once in each id column. The table is
    read once and cached; each call returns a fresh copy, so callers may modify it.
    Provenance is in ``schemas/orthologs/PROVENANCE.md``.
    """
    src = ORGANISM_NAMES.get(from_organism, from_organism)
    dst = ORGANISM_NAMES.get(to_organism, to_organism)
    if (src, dst) in _ORTHOLOG_TABLES:
        file_name, a, b = _ORTHOLOG_TABLES[(src, dst)]
    elif (dst, src) in _ORTHOLOG_TABLES:
        file_name, b, a = _ORTHOLOG_TABLES[(dst, src)]
    else:
        known = ", ".join(f"{x} <-> {y}" for x, y in _ORTHOLOG_TABLES)
        raise NotFoundError(
            f"no ortholog table from {from_organism!r} to {to_organism!r}; shipped: {known}",
            where=f"{from_organism}->{to_organism}",
        )
    t = _ortholog_table(file_name)
    df = pd.DataFrame({
        "from_gene_id": t[f"{a}_gene_id"].to_numpy(),
        "to_gene_id": t[f"{b}_gene_id"].to_numpy(),
        "from_symbol": t[f"{a}_symbol"].to_numpy(),
        "to_symbol": t[f"{b}_symbol"].to_numpy(),
    })
    return df.sort_values("from_gene_id", kind="stable", ignore_index=True)
