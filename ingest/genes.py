"""Map submitted gene identifiers (symbols or Ensembl ids) to the organism's reference ids.

Symbols are looked up as written, then in the organism's case convention, then among the
outdated symbols of the reference's genes (earlier Ensembl releases' gene names and HGNC
previous symbols, ``store.reference.previous_symbols``): data processed against an old
annotation (``ATP5B``, ``IGJ``, ``FYB`` in a 10x hg19 matrix) keeps those genes, mapped by
their stable Ensembl id. An outdated symbol is used only when it names exactly one current
gene that no other submitted feature names; every such mapping is reported.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aivc.errors import Finding
from aivc.ingest.findings import Decision
from aivc.store.reference import MITO_PREFIX, gene_reference, previous_symbols

_ENSEMBL = re.compile(r"^(ENS[A-Z]*G\d{11})(\.\d+)?(_PAR_Y)?$")


@dataclass
class GeneMapping:
    """Result of mapping the submitted var to reference genes.

    ``keep_cols`` are positions in the submitted var that are committed, in the order of
    ``gene_ids`` (their reference ids) and ``symbols``.
    """

    keep_cols: np.ndarray
    gene_ids: list[str]
    symbols: list[str]
    mito_cols: np.ndarray
    n_submitted: int
    findings: list[Finding] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    n_unmapped: int = 0
    n_ambiguous: int = 0

    @property
    def mapped_fraction(self) -> float:
        return len(self.gene_ids) / self.n_submitted if self.n_submitted else 0.0


@lru_cache(maxsize=4)
def _symbol_index(organism_name: str) -> dict[str, tuple[str, ...]]:
    """Reference symbol -> gene ids (several for ambiguous symbols), built once per organism."""
    ref = gene_reference(organism_name)
    out: dict[str, list[str]] = {}
    for sym, gid in zip(ref["symbol"].to_numpy(), ref["gene_id"].to_numpy(), strict=True):
        out.setdefault(sym, []).append(gid)
    return {k: tuple(v) for k, v in out.items()}


def _organism_case(symbol: str, organism_name: str) -> str:
    if organism_name == "homo_sapiens":
        return symbol.upper()
    return symbol[:1].upper() + symbol[1:].lower()


def _list(values: list[str], n: int = 10, *, quote: bool = True) -> str:
    shown = ", ".join(repr(v) if quote else v for v in values[:n])
    return shown + (f" and {len(values) - n} more" if len(values) > n else "")


def _drop_previous_conflicts(submitted: pd.Index, resolved: list[str | None], hows: list[str]) -> dict[int, str]:
    """Unmap outdated-symbol hits on a gene that another submitted feature also names.

    A current symbol keeps its gene; two outdated symbols on one gene both lose it (which
    of them holds the gene's counts is unknowable). Returns {position: description} of the
    dropped ones.
    """
    claims: dict[str, list[int]] = {}
    for i, g in enumerate(resolved):
        if g is not None:
            claims.setdefault(g, []).append(i)
    dropped: dict[int, str] = {}
    for g, idx in claims.items():
        previous = [i for i in idx if hows[i] == "previous_symbol"]
        if previous and len(idx) > 1:
            others = [submitted[i] for i in idx if hows[i] != "previous_symbol"]
            for i in previous:
                resolved[i] = None
                dropped[i] = f"{submitted[i]!r} ({g}, also named by {', '.join(repr(o) for o in others) or 'another outdated symbol'})"
    return dropped


def map_genes(
    var: pd.DataFrame,
    *,
    organism_name: str,
    id_type: str,
    column: str | None,
    min_mapped_fraction: float,
    where: str = "var",
) -> GeneMapping:
    """Map submitted identifiers to reference gene ids; report unmapped/ambiguous ones."""
    ref = gene_reference(organism_name)
    if column is None:
        submitted = pd.Index(var.index.astype(str))
        src = f"{where}.index"
    else:
        if column not in var.columns:
            f = Finding("GENES_COLUMN_MISSING", f"{where}[{column!r}]", f"gene id column {column!r} not in {where}; columns are {list(var.columns)[:20]}")
            return GeneMapping(np.array([], dtype=np.int64), [], [], np.array([], dtype=np.int64), len(var), [f])
        submitted = pd.Index(var[column].astype(str))
        src = f"{where}[{column!r}]"
    findings: list[Finding] = []
    dup = submitted[submitted.duplicated()].unique().tolist()
    if dup:
        first = int(np.flatnonzero(submitted.duplicated())[0])
        findings.append(Finding("VAR_DUPLICATE_IDS", f"{src} position {first}", f"{len(dup)} gene identifiers occur more than once: {_list(dup)}; gene ids must be unique"))

    resolved: list[str | None] = []
    hows: list[str] = []
    ambiguous: list[str] = []
    previous_conflicts: dict[int, str] = {}
    if id_type == "ensembl":
        known = set(ref.index)
        looks = submitted.str.match(_ENSEMBL.pattern)
        if len(submitted) and looks.mean() < 0.5:
            findings.append(Finding("GENES_WRONG_ID_TYPE", src, f"manifest says genes.id_type is 'ensembl' but {int((~looks).sum())} of {len(submitted)} ids do not look like Ensembl ids (e.g. {submitted[int(np.argmax(~looks))]!r}); use id_type: symbol"))
        for s in submitted:
            m = _ENSEMBL.match(s)
            gid = m.group(1) if m and not m.group(3) else None
            ok = gid is not None and gid in known
            resolved.append(gid if ok else None)
            hows.append("ensembl_unversioned" if ok and m.group(2) else "ensembl")
    else:
        by_symbol = _symbol_index(organism_name)
        looks = submitted.str.match(_ENSEMBL.pattern)
        if len(submitted) and looks.mean() > 0.5:
            findings.append(Finding("GENES_WRONG_ID_TYPE", src, f"manifest says genes.id_type is 'symbol' but {int(looks.sum())} of {len(submitted)} ids look like Ensembl ids (e.g. {submitted[int(np.argmax(looks))]!r}); use id_type: ensembl"))
        by_previous = previous_symbols(organism_name)
        for s in submitted:
            ids = by_symbol.get(s)
            how = "symbol"
            if ids is None:
                ids = by_symbol.get(_organism_case(s, organism_name))
                how = "symbol_case"
            if ids is None:
                ids = by_previous.get(s) or by_previous.get(_organism_case(s, organism_name))
                how = "previous_symbol"
            if ids is None:
                resolved.append(None)
            elif len(ids) > 1:
                resolved.append(None)
                ambiguous.append(s)
            else:
                resolved.append(ids[0])
            hows.append(how)
        previous_conflicts = _drop_previous_conflicts(submitted, resolved, hows)
        if previous_conflicts:
            findings.append(Finding("GENES_PREVIOUS_SYMBOL_CONFLICT", src, f"{len(previous_conflicts)} outdated symbols name a gene another submitted feature also names and were not committed: {_list(list(previous_conflicts.values()), 5, quote=False)}", "warning"))

    keep = [i for i, g in enumerate(resolved) if g is not None]
    gene_ids = [resolved[i] for i in keep]  # type: ignore[misc]
    seen: dict[str, int] = {}
    twice: list[str] = []
    for i in keep:
        g = resolved[i]
        if g in seen:
            twice.append(f"{submitted[seen[g]]!r} and {submitted[i]!r} -> {g}")
        else:
            seen[g] = i  # type: ignore[index]
    if twice:
        findings.append(Finding("GENES_MAPPED_TWICE", src, f"{len(twice)} reference genes are named by more than one submitted feature: {_list(twice, 5)}; merge or drop the duplicates"))
    unmapped = [submitted[i] for i, g in enumerate(resolved) if g is None and submitted[i] not in ambiguous and i not in previous_conflicts]
    if ambiguous:
        findings.append(Finding("GENES_AMBIGUOUS", src, f"{len(ambiguous)} symbols name several reference genes and were not committed: {_list(ambiguous)}; submit Ensembl ids to disambiguate", "warning"))
    if unmapped:
        findings.append(Finding("GENES_UNMAPPED", src, f"{len(unmapped)} of {len(submitted)} identifiers are not in the {organism_name} reference and were not committed: {_list(unmapped)}", "warning"))
    frac = len(keep) / len(submitted) if len(submitted) else 0.0
    if len(submitted) and frac < min_mapped_fraction:
        findings.append(Finding("GENES_LOW_MAPPED_FRACTION", src, f"only {frac:.1%} of genes map to the {organism_name} reference (minimum {min_mapped_fraction:.0%}, set by qc.min_mapped_fraction); check genes.id_type and the organism"))
    symbols = ref.loc[gene_ids, "symbol"].tolist() if gene_ids else []
    renamed = [f"{submitted[i]!r} -> {symbols[j]}" for j, i in enumerate(keep) if hows[i] == "previous_symbol"]
    if renamed:
        findings.append(Finding("GENES_PREVIOUS_SYMBOL", src, f"{len(renamed)} outdated symbols were mapped to the current gene with the same Ensembl id: {_list(renamed, 8, quote=False)}; the submitted names are kept as submitted_id", "warning"))
    prefix = MITO_PREFIX.get(organism_name, "MT-")
    mito = np.array([keep[j] for j, s in enumerate(symbols) if s.startswith(prefix)], dtype=np.int64)
    decisions = [
        Decision("genes", str(submitted[i]), str(resolved[i]), symbols[j], hows[i])  # type: ignore[arg-type]
        for j, i in enumerate(keep)
        if hows[i] in ("symbol_case", "previous_symbol", "ensembl_unversioned")
    ][:500]
    return GeneMapping(
        keep_cols=np.asarray(keep, dtype=np.int64),
        gene_ids=gene_ids,
        symbols=symbols,
        mito_cols=mito,
        n_submitted=len(submitted),
        findings=findings,
        decisions=decisions,
        n_unmapped=len(unmapped),
        n_ambiguous=len(ambiguous),
    )
