"""CITE-seq antibodies (ADT) harmonized to their target genes, and per-cell protein QC.

Datasets name their antibody-derived tags as Cell Ranger or the lab wrote them
(``CD3_TotalSeqB``, ``CD8a``, ``PD-1``, ``IgG1_control_TotalSeqB``). :func:`harmonize_panel`
gives each submitted name a canonical ``feature_id`` (the same antibody from two datasets gets
the same one) and the Ensembl id of the gene encoding its target, through the organism's
panel (:class:`Panel`, ``schemas/panels/totalseq.tsv``, built by ``schemas/build_panels.py``
with provenance). A name is resolved, first hit wins,

1. in the panel, by marker or alias, compared by :func:`name_key`: lower-case without
   punctuation (``HLA.DR``, ``hla_dr`` and ``HLA-DR`` are one name), except between digits
   (``CD3.1`` is not ``CD31``, mouse ``CD45.1`` not ``CD45.2``), Greek letters as Latin
   (``CD3ε`` is ``CD3e``); after taking off what is not the antibody's name: a TotalSeq suffix or prefix
   (``_TotalSeqB``, ``-TotalSeqC``, ``.TotalSeq-A``: it gives ``panel``), a BioLegend barcode
   id (``_A0034``), ``ADT_`` / ``_ADT``, ``anti-human``; failing that without a trailing
   ``.1`` (a de-duplicating suffix) or a parenthesis (``CD279 (PD-1)``);
2. as an isotype control: a name made of an immunoglobulin subclass and words such as
   ``control``, ``isotype``, ``kappa`` and a host (``Mouse_IgG1_kappa_isotype``) is the
   panel's control of that host and subclass; in a human panel a name without a host is the
   mouse control (the 10x PBMC panels' ``IgG1_control``);
3. among the organism's gene symbols (as written, then in the organism's case), then its
   outdated symbols (``store.reference.previous_symbols``), used only when they name one gene.

``feature_id`` is the panel's marker (``CD3``, ``CD8a``, ``PD-1``, ``Mouse IgG1``); for a
name found among the genes, the gene's current symbol (or the panel marker whose name that
symbol is: ``PVRL2`` -> NECTIN2 -> ``CD112``); otherwise the name without its TotalSeq and ADT
parts, as written. One finding code per kind of problem, each naming the antibodies and
their positions (``uns['protein_names'][3] 'FOO_TotalSeqB'``):

``PROTEIN_NAME_EMPTY``         (error) an empty name
``PROTEIN_NAME_DUPLICATE``     (error) the same submitted name more than once
``PROTEIN_FEATURE_COLLISION``  (error) different names resolving to one feature_id
                               (``CD8a_TotalSeqB`` and ``CD8``)
``PROTEIN_TARGET_UNKNOWN``     (warning) no target found; the antibody is kept, unmapped
``PROTEIN_PANEL_NONE``         (warning) aivc has no panel for the organism

``PROTEIN_ISOTYPE`` is no finding: isotype controls are kept, flagged ``is_isotype``, and
reported as decisions (``Decision.field == "protein_isotype"``); every other resolved
antibody is a decision of field ``"proteins"``.

:class:`ProteinQc` accumulates per-cell protein QC (``n_protein_counts``,
``n_proteins_detected``, ``isotype_counts``, ``pct_isotype``) over streamed count chunks; the
Great Expectations suite ``schemas/expectations/protein_qc.json`` checks that table
(``run_expectations(qc, suites=PROTEIN_SUITES)``).

Example
-------
>>> m = harmonize_panel(["CD3_TotalSeqB", "CD8a", "PD-1_TotalSeqB", "IgG1_control_TotalSeqB"], "homo_sapiens", "var.index")
>>> [(f.feature_id, f.target_symbol, f.is_isotype) for f in m.features]
[('CD3', 'CD3E', False), ('CD8a', 'CD8A', False), ('PD-1', 'PDCD1', False), ('Mouse IgG1', '', True)]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np
import pandas as pd

from aivc.errors import Finding, NotFoundError
from aivc.ingest.findings import Decision
from aivc.store.reference import ORGANISM_NAMES, gene_reference, previous_symbols

__all__ = [
    "PROTEIN_QC_COLUMNS",
    "PROTEIN_SUITES",
    "Panel",
    "PanelEntry",
    "PanelMapping",
    "ProteinFeature",
    "ProteinQc",
    "harmonize_panel",
    "name_key",
    "panel",
    "protein_qc",
]

#: the suites of the ADT per-cell table (``run_expectations(qc, suites=PROTEIN_SUITES)``)
PROTEIN_SUITES: tuple[str, ...] = ("protein_qc",)
#: the columns :class:`ProteinQc` computes, in order
PROTEIN_QC_COLUMNS: tuple[str, ...] = ("n_protein_counts", "n_proteins_detected", "isotype_counts", "pct_isotype")

ResolvedBy = Literal["marker", "alias", "isotype", "symbol", "symbol_case", "previous_symbol", "unknown", "empty"]
TotalSeq = Literal["TotalSeq-A", "TotalSeq-B", "TotalSeq-C", ""]

_GREEK = str.maketrans({"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "κ": "k", "λ": "l"})
_SEP = r"[\s._\-]"
_TOTALSEQ = re.compile(rf"(?:^|{_SEP}+)total{_SEP}?seq(?:{_SEP}?([abc]))?(?={_SEP}|$)", re.IGNORECASE)
_BARCODE = re.compile(rf"{_SEP}+([abc])\d{{4}}$", re.IGNORECASE)
_ADT = re.compile(rf"^(?:adt|anti{_SEP}*(?:human|mouse|hu|ms)?){_SEP}+|{_SEP}+adt$", re.IGNORECASE)
_COPY = re.compile(r"\.\d+$")
_PAREN = re.compile(r"\s*\(.*\)\s*$")
_IG = re.compile(r"^ig([gmae])(\d?)([a-c]?)$")
_IG_SPACED = re.compile(r"\big\s?([gmae])(?:\s?(\d[a-c]?))?\b")
_ISOTYPE_WORDS = {"isotype", "iso", "control", "ctrl", "ctl", "kappa", "k"}
_HOSTS = {"mouse": "Mouse", "ms": "Mouse", "rat": "Rat", "hamster": "Armenian Hamster", "armenian": "Armenian Hamster", "ah": "Armenian Hamster", "human": "Human", "hu": "Human"}
#: the host of an isotype control named without one, per organism (None: ambiguous)
_DEFAULT_HOST = {"homo_sapiens": "Mouse"}


def name_key(name: str) -> str:
    """How names are compared: lower case, Greek letters in Latin, no punctuation or spaces,
    except that punctuation between two digits stays (as ``.``: ``CD3.1`` is not ``CD31``).

    >>> name_key("HLA-DR"), name_key("hla.dr"), name_key("CD3ε"), name_key("CD45.1"), name_key("CD16/32")
    ('hladr', 'hladr', 'cd3e', 'cd45.1', 'cd16.32')
    """
    words = re.sub(r"[^0-9a-z]+", " ", unicodedata.normalize("NFKC", name).translate(_GREEK).lower()).strip()
    return re.sub(r"(?<=\d) (?=\d)", ".", words).replace(" ", "")


@dataclass(frozen=True)
class PanelEntry:
    """One antibody of a panel (a row of ``schemas/panels/totalseq.tsv``)."""

    marker: str
    target_symbol: str
    target_gene_id: str
    aliases: tuple[str, ...]
    is_isotype: bool
    note: str


@dataclass(frozen=True)
class Panel:
    """An organism's antibodies, looked up by :func:`name_key` of any marker or alias."""

    organism_name: str
    entries: tuple[PanelEntry, ...]
    by_key: dict[str, tuple[int, bool]] = field(repr=False)  # name_key -> (entry position, is the marker itself)

    def lookup(self, name: str) -> tuple[PanelEntry, bool] | None:
        """The entry a name denotes and whether the name is its marker (else an alias)."""
        hit = self.by_key.get(name_key(name))
        return None if hit is None else (self.entries[hit[0]], hit[1])

    def __len__(self) -> int:
        return len(self.entries)


@cache
def _panel_table() -> pd.DataFrame:
    path = resources.files("aivc.schemas").joinpath("panels", "totalseq.tsv")
    with path.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)


def panel(organism_name: str) -> Panel | None:
    """The antibody :class:`Panel` of an organism (``homo_sapiens``, ``NCBITaxon:9606``); None if aivc has none."""
    return _panel(ORGANISM_NAMES.get(organism_name, organism_name))


@cache
def _panel(organism_name: str) -> Panel | None:
    rows = _panel_table()
    rows = rows[rows["organism"] == organism_name]
    if rows.empty:
        return None
    entries, by_key = [], {}
    for i, r in enumerate(rows.itertuples(index=False)):
        aliases = tuple(a for a in r.aliases.split("|") if a)
        entries.append(PanelEntry(r.marker, r.target_symbol, r.target_gene_id, aliases, r.is_isotype == "true", r.note))
        by_key[name_key(r.marker)] = (i, True)
        for a in aliases:
            by_key.setdefault(name_key(a), (i, False))
    return Panel(organism_name, tuple(entries), by_key)


@dataclass(frozen=True)
class ProteinFeature:
    """One submitted antibody, harmonized."""

    position: int
    submitted_name: str  # exactly as submitted
    feature_id: str  # canonical, '' for an empty name
    target_gene_id: str  # Ensembl, '' when unknown or an isotype control
    target_symbol: str
    is_isotype: bool
    panel: TotalSeq  # from the name's TotalSeq suffix or barcode id
    resolved_by: ResolvedBy


@dataclass(frozen=True)
class PanelMapping:
    """The submitted antibodies harmonized, in submitted order, with findings and decisions."""

    organism_name: str
    features: tuple[ProteinFeature, ...]
    findings: tuple[Finding, ...]
    decisions: tuple[Decision, ...]

    @property
    def feature_ids(self) -> list[str]:
        return [f.feature_id for f in self.features]

    @property
    def isotype_mask(self) -> np.ndarray:
        return np.array([f.is_isotype for f in self.features], dtype=bool)

    @property
    def valid(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_frame(self) -> pd.DataFrame:
        """One row per antibody (the ADT var table), indexed by position."""
        cols = ("submitted_name", "feature_id", "target_gene_id", "target_symbol", "is_isotype", "panel", "resolved_by")
        return pd.DataFrame({c: [getattr(f, c) for f in self.features] for c in cols})


def _strip(name: str) -> tuple[str, TotalSeq]:
    """The antibody's own name, and the TotalSeq chemistry its suffix or barcode id names."""
    letter = ""
    m = _TOTALSEQ.search(name)
    if m:
        letter = (m.group(1) or "").upper()
        name = (name[: m.start()] + name[m.end():]).strip(" ._-")
    m = _BARCODE.search(name)
    if m:
        letter = letter or m.group(1).upper()
        name = name[: m.start()]
    name = _ADT.sub("", name).strip()
    return name, (f"TotalSeq-{letter}" if letter else "")  # type: ignore[return-value]


def _candidates(stem: str) -> list[str]:
    out = [stem]
    for pattern in (_COPY, _PAREN):
        shorter = pattern.sub("", stem).strip()
        if shorter and shorter not in out:
            out.append(shorter)
    return out


def _isotype(stem: str, organism_name: str) -> str | None:
    """``Mouse IgG1`` for ``Mouse_IgG1_kappa_isotype``, ``IgG1`` when the host is unknown, None for no control.

    A control is one immunoglobulin class plus isotype words and at most one host; a bare
    class without a subclass, host or isotype word (``IgM``, ``IgG``) is an anti-Ig marker.
    """
    text = unicodedata.normalize("NFKC", stem).translate(_GREEK).lower()
    text = _IG_SPACED.sub(lambda m: f"ig{m.group(1)}{m.group(2) or ''}", re.sub(r"[^a-z0-9]+", " ", text))  # "IgG 1" -> "igg1"
    tokens = text.split()
    igs = [m for t in tokens if (m := _IG.match(t))]
    rest = [t for t in tokens if not _IG.match(t)]
    hosts = {_HOSTS[t] for t in rest if t in _HOSTS}
    if len(igs) != 1 or len(hosts) > 1 or any(t not in _ISOTYPE_WORDS and t not in _HOSTS and t not in ("lambda", "l") for t in rest):
        return None
    ig = igs[0]
    if not (ig.group(2) or hosts or any(t in _ISOTYPE_WORDS for t in rest)):
        return None
    host = next(iter(hosts)) if hosts else _DEFAULT_HOST.get(organism_name)
    subclass = f"Ig{ig.group(1).upper()}{ig.group(2)}{ig.group(3)}"
    return " ".join(filter(None, [host, subclass, "lambda" if ("lambda" in rest or "l" in rest) else ""]))


@cache
def _symbols(organism_name: str) -> dict[str, tuple[str, ...]] | None:
    try:
        ref = gene_reference(organism_name)
    except NotFoundError:
        return None
    out: dict[str, list[str]] = {}
    for sym, gid in zip(ref["symbol"].to_numpy(), ref["gene_id"].to_numpy(), strict=True):
        out.setdefault(sym, []).append(gid)
    return {k: tuple(v) for k, v in out.items()}


def _case(symbol: str, organism_name: str) -> str:
    return symbol.upper() if organism_name == "homo_sapiens" else symbol[:1].upper() + symbol[1:].lower()


def _resolve(name: str, organism_name: str, pnl: Panel | None) -> tuple[str, str, str, bool, TotalSeq, ResolvedBy]:
    """(feature_id, gene id, symbol, is_isotype, panel, resolved_by) of one submitted name."""
    stem, chem = _strip(name)
    if not stem:
        return "", "", "", False, chem, "empty"
    candidates = _candidates(stem)
    if pnl is not None:
        for c in candidates:
            hit = pnl.lookup(c)
            if hit is not None:
                e, is_marker = hit
                return e.marker, e.target_gene_id, e.target_symbol, e.is_isotype, chem, "marker" if is_marker else "alias"
    for c in candidates:
        iso = _isotype(c, organism_name)
        if iso is not None:
            hit = pnl.lookup(iso) if pnl is not None else None
            return (hit[0].marker if hit else iso), "", "", True, chem, "isotype"
    symbols = _symbols(organism_name)
    if symbols is not None:
        by_previous = previous_symbols(organism_name)
        ref = gene_reference(organism_name)
        for c in candidates:
            tries = (
                ("symbol", symbols.get(c)),
                ("symbol_case", symbols.get(_case(c, organism_name))),
                ("symbol_case", symbols.get(_case(c.replace(".", "-"), organism_name))),
                ("previous_symbol", by_previous.get(c) or by_previous.get(_case(c, organism_name))),
            )
            for how, ids in tries:
                if ids is not None and len(ids) == 1:
                    sym = str(ref.at[ids[0], "symbol"])
                    # a gene that names a panel marker is that marker (PVRL2 -> NECTIN2 -> CD112)
                    hit = pnl.lookup(sym) if pnl is not None else None
                    fid = hit[0].marker if hit is not None and hit[0].target_gene_id == ids[0] else sym
                    return fid, ids[0], sym, False, chem, how  # type: ignore[return-value]
    return stem, "", "", False, chem, "unknown"


def _at(where: str, positions: Sequence[int], names: Sequence[str], n: int = 3) -> str:
    """``uns['protein_names'][3] 'FOO'`` (and the next ones, ``and 2 more``)."""
    shown = ", ".join(f"{where}[{i}] {names[i]!r}" for i in positions[:n])
    return shown + (f" and {len(positions) - n} more" if len(positions) > n else "")


def _listed(items: Sequence[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


_HOW: dict[str, str] = {"marker": "label", "alias": "synonym", "isotype": "synonym", "symbol": "symbol", "symbol_case": "symbol_case", "previous_symbol": "previous_symbol"}


def harmonize_panel(names: Sequence[str], organism_name: str, where: str = "proteins") -> PanelMapping:
    """Map submitted antibody names to canonical feature ids and target genes.

    Parameters
    ----------
    names
        The antibodies as submitted, in matrix column order (``uns['protein_names']``,
        ``mod['prot'].var.index``, the Antibody Capture rows of ``features.tsv``).
    organism_name
        ``homo_sapiens``, ``mus_musculus`` (or their NCBITaxon ids): whose panel and genes.
    where
        Where the names are, for the findings (``uns['protein_names']``).

    Returns
    -------
    PanelMapping
        One :class:`ProteinFeature` per submitted name, in order, nothing dropped; findings
        as listed in the module docstring; decisions for every resolved antibody.
    """
    organism_name = ORGANISM_NAMES.get(organism_name, organism_name)
    pnl = panel(organism_name)
    findings: list[Finding] = []
    if pnl is None:
        then = "antibody targets were looked up among its gene symbols only" if _symbols(organism_name) is not None else "nor a gene reference, so no antibody gets a target gene"
        findings.append(Finding("PROTEIN_PANEL_NONE", where, f"aivc has no antibody panel for {organism_name!r} (it has homo_sapiens and mus_musculus); {then}", "warning"))
    submitted = ["" if n is None or (isinstance(n, float) and n != n) else str(n) for n in names]
    features = [ProteinFeature(i, s, *_resolve(s, organism_name, pnl)) for i, s in enumerate(submitted)]
    findings.extend(_check(features, submitted, organism_name, where))
    decisions = [
        Decision("protein_isotype" if f.is_isotype else "proteins", f.submitted_name, f.target_gene_id, f"{f.feature_id}: isotype control" if f.is_isotype else f"{f.feature_id} -> {f.target_symbol}", _HOW[f.resolved_by])  # type: ignore[arg-type]
        for f in features
        if f.resolved_by in _HOW
    ]
    return PanelMapping(organism_name, tuple(features), tuple(findings), tuple(decisions))


def _check(features: list[ProteinFeature], submitted: list[str], organism_name: str, where: str) -> list[Finding]:
    findings: list[Finding] = []
    empty = [f.position for f in features if f.resolved_by == "empty"]
    if empty:
        findings.append(Finding("PROTEIN_NAME_EMPTY", _at(where, empty, submitted), f"{len(empty)} antibod{'y has' if len(empty) == 1 else 'ies have'} no name (empty, blank or only a TotalSeq/ADT suffix); name every antibody by its target"))
    first: dict[str, int] = {}
    repeated = []
    for f in features:
        if f.submitted_name in first and f.resolved_by != "empty":
            repeated.append(f.position)
        first.setdefault(f.submitted_name, f.position)
    if repeated:
        pairs = [f"{submitted[i]!r} at {first[submitted[i]]} and {i}" for i in repeated]
        findings.append(Finding("PROTEIN_NAME_DUPLICATE", _at(where, repeated, submitted), f"{len(repeated)} antibody name{'s occur' if len(repeated) > 1 else ' occurs'} more than once: {_listed(pairs)}; antibody names must be unique"))
    by_id: dict[str, list[int]] = {}
    for f in features:
        if f.feature_id and first[f.submitted_name] == f.position:
            by_id.setdefault(f.feature_id, []).append(f.position)
    collided = {fid: pos for fid, pos in by_id.items() if len(pos) > 1}
    if collided:
        positions = sorted(p for pos in collided.values() for p in pos)
        text = [" and ".join(f"{submitted[p]!r}" for p in pos) + f" -> {fid}" for fid, pos in collided.items()]
        findings.append(Finding("PROTEIN_FEATURE_COLLISION", _at(where, positions, submitted), f"{len(collided)} antibod{'y is' if len(collided) == 1 else 'ies are'} named by more than one submitted name: {_listed(text, 5)}; keep one column per antibody"))
    unknown = [f.position for f in features if f.resolved_by == "unknown"]
    if unknown:
        stems = [f"{submitted[i]!r}" for i in unknown]
        findings.append(Finding("PROTEIN_TARGET_UNKNOWN", _at(where, unknown, submitted), f"{len(unknown)} of {len(features)} antibodies name no known marker and no gene of {organism_name}: {_listed(stems)}; they are kept without a target gene (name them by CD designation or the target's gene symbol to map them)", "warning"))
    return findings


class ProteinQc:
    """Per-cell protein QC accumulated over streamed count chunks (rows: cells, columns: antibodies).

    Parameters
    ----------
    isotype_mask
        One bool per antibody column, true for isotype controls
        (:attr:`PanelMapping.isotype_mask`).

    Example
    -------
    >>> import scipy.sparse as sp
    >>> qc = ProteinQc([False, False, True])
    >>> qc.add(sp.csr_matrix([[10, 0, 2], [0, 0, 0]]))
    >>> qc.frame().to_dict("list")
    {'n_protein_counts': [12, 0], 'n_proteins_detected': [2, 0], 'isotype_counts': [2, 0], 'pct_isotype': [16.666666666666668, nan]}
    """

    def __init__(self, isotype_mask: Sequence[bool] | np.ndarray) -> None:
        self.isotype_mask = np.asarray(isotype_mask, dtype=bool)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, chunk: object) -> None:
        """Add the next cells: a SciPy sparse matrix (CSR best) or a dense array."""
        import scipy.sparse as sp

        if sp.issparse(chunk):
            x = sp.csr_matrix(chunk)  # type: ignore[arg-type]
            if x.shape[1] != self.isotype_mask.size:
                raise ValueError(f"a chunk has {x.shape[1]} antibody columns, the panel {self.isotype_mask.size}")
            rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
            counts = np.bincount(rows, weights=x.data, minlength=x.shape[0])
            detected = np.bincount(rows, weights=(x.data != 0), minlength=x.shape[0]).astype(np.int64)
            iso = np.bincount(rows, weights=np.where(self.isotype_mask[x.indices], x.data, 0), minlength=x.shape[0])
        else:
            a = np.asarray(chunk)
            if a.ndim != 2 or a.shape[1] != self.isotype_mask.size:
                raise ValueError(f"a chunk has shape {a.shape}; expected (cells, {self.isotype_mask.size})")
            counts, detected, iso = a.sum(axis=1), (a != 0).sum(axis=1).astype(np.int64), a[:, self.isotype_mask].sum(axis=1)
        self._parts.append((np.asarray(counts), detected, np.asarray(iso)))

    def frame(self, index: Sequence[str] | pd.Index | None = None) -> pd.DataFrame:
        """The per-cell table (columns :data:`PROTEIN_QC_COLUMNS`); ``pct_isotype`` is NaN for a cell with no counts."""
        cat = [np.concatenate([p[k] for p in self._parts]) if self._parts else np.zeros(0) for k in range(3)]
        counts, detected, iso = cat
        if counts.size and np.all(np.mod(counts, 1) == 0) and np.all(np.mod(iso, 1) == 0):
            counts, iso = counts.astype(np.int64), iso.astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(counts > 0, 100.0 * iso / np.where(counts > 0, counts, 1), np.nan)
        out = pd.DataFrame({"n_protein_counts": counts, "n_proteins_detected": detected.astype(np.int64), "isotype_counts": iso, "pct_isotype": pct})
        if index is not None:
            out.index = pd.Index(index)
        return out


def protein_qc(chunks: Iterable[object], isotype_mask: Sequence[bool] | np.ndarray, index: Sequence[str] | pd.Index | None = None) -> pd.DataFrame:
    """Per-cell protein QC of a stream of count chunks (see :class:`ProteinQc`)."""
    qc = ProteinQc(isotype_mask)
    for chunk in chunks:
        qc.add(chunk)
    return qc.frame(index)
