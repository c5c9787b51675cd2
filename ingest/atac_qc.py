"""Per-cell ATAC QC and gene activity, computed in the same pass that checks the fragments.

:class:`AtacQcAccumulator` is a :class:`~aivc.ingest.fragments.FragmentObserver`: it receives
the cells' valid fragments block by block from :func:`~aivc.ingest.fragments.check_fragments`
and keeps per-cell sums only (memory: cells x genes touched, never the fragments), so
:func:`compute_atac_qc` reads the file once for the checks and everything below.
Coordinates are 0-based and half-open throughout (a fragment ``[start, end)``, a peak
``[start, end)``); contigs are matched by the assembly's canonical name, so ``1`` and
``chr1`` agree.

Per cell (``AtacQc.qc``, one row per cell, in the order of ``cell_barcodes``):

``n_fragments``
    Valid fragment lines of the cell (a line counts once, whatever its read count).
``n_fragments_in_peaks``, ``frip``
    Fragments overlapping at least one peak (``start < peak_end and peak_start < end``),
    and their fraction of ``n_fragments`` (the 10x / Signac "fraction of fragments in
    peaks"); NaN for a cell without fragments.
``n_tss_insertions``, ``n_flank_insertions``, ``tss_enrichment``
    TSS enrichment with ArchR's windows (Granja et al. 2021). Each fragment is two Tn5
    insertions, at ``start`` and ``end - 1``. ``n_tss_insertions`` counts insertions within
    ``tss_center`` bp of a TSS (default 50: a 101-bp window), ``n_flank_insertions`` those
    ``tss_flank`` bp away on either side (default 1,901-2,000 bp: two 100-bp windows), an
    insertion counting once per TSS window it falls in. Then ``tss_enrichment =
    (n_tss / (2 tss_center + 1)) / (max(n_flank, 1) / (2 flank width))``, with the defaults
    ``(n_tss / 101) / (max(n_flank, 1) / 200)``: the insertion rate per bp at TSSs over that
    in the flanks (1 = no enrichment); the flank is floored at one insertion (aivc's choice)
    so that the ratio stays finite; NaN for a cell without fragments. ``tss_center=1000``
    gives the +-1 kb variant. :attr:`AtacQc.pooled_tss_enrichment` is the same ratio over
    all cells' insertions together.

TSSs come from gene intervals without strand: Cell Ranger ARC's ``var['interval']`` of a
gene spans its annotated TSSs (1 bp for a gene with one TSS: in the real PBMC subset RPS27
is ``chr1:153990761-153990762``), so both of its ends are taken as TSSs (``start`` and
``end - 1``; one site where they coincide). For gene-body intervals this adds each gene's
3' end as a false TSS, which lowers the score.

Gene activity (``AtacQc.gene_activity``, CSR, cells x genes, int64): for each gene the
number of the cell's fragments overlapping its interval extended by ``gene_extend`` bp
(default 2,000) on both sides, strand being unknown (Signac's ``GeneActivity`` extends a
gene body 2 kb upstream only). With Cell Ranger ARC's TSS-span intervals this measures
promoter accessibility; gene-body intervals (from a GTF) give Signac-like scores. It is a
derived measurement, not a raw count.

Example
-------
>>> from aivc.ingest.intervals import genome, parse_intervals
>>> report, qc = compute_atac_qc("fragments.tsv.gz", genome("homo_sapiens"), cells,
...                              peaks=parse_intervals(peaks), genes=parse_intervals(gene_intervals))  # doctest: +SKIP
>>> findings, results = run_atac_expectations(qc.qc)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aivc.errors import Finding, UsageError
from aivc.ingest.fragments import FragmentReport, check_fragments
from aivc.ingest.intervals import Genome, Intervals, genome as _genome

if TYPE_CHECKING:
    import scipy.sparse

__all__ = ["QC_COLUMNS", "AtacQc", "AtacQcAccumulator", "AtacQcParams", "compute_atac_qc", "run_atac_expectations", "tss_sites"]

#: the per-cell columns of ``AtacQc.qc``
QC_COLUMNS = ("n_fragments", "n_fragments_in_peaks", "frip", "n_tss_insertions", "n_flank_insertions", "tss_enrichment")


@dataclass(frozen=True)
class AtacQcParams:
    """Window sizes of the TSS enrichment and the gene-activity regions, in bp."""

    tss_center: int = 50
    tss_flank: tuple[int, int] = (1901, 2000)
    gene_extend: int = 2000

    def __post_init__(self) -> None:
        lo, hi = self.tss_flank
        if self.tss_center < 0 or self.gene_extend < 0 or not 0 < lo <= hi or lo <= self.tss_center:
            raise UsageError(f"ATAC QC windows must satisfy 0 <= tss_center < flank start <= flank end and gene_extend >= 0, got {self}", where="atac_qc")

    @property
    def center_bp(self) -> int:
        return 2 * self.tss_center + 1

    @property
    def flank_bp(self) -> int:
        return 2 * (self.tss_flank[1] - self.tss_flank[0] + 1)


@dataclass(frozen=True)
class AtacQc:
    """Per-cell ATAC QC (``qc``, indexed by cell) and gene activity (``gene_activity``, cells x ``genes``)."""

    qc: pd.DataFrame
    gene_activity: scipy.sparse.csr_matrix
    genes: pd.Index
    params: AtacQcParams = field(default_factory=AtacQcParams)

    @property
    def pooled_tss_enrichment(self) -> float:
        """The TSS enrichment of all cells' insertions together (NaN without genes): steadier
        than the per-cell median when cells have few fragments, or the file covers few regions."""
        if self.qc["tss_enrichment"].isna().all():
            return float("nan")
        p = self.params
        center, flank = int(self.qc["n_tss_insertions"].sum()), int(self.qc["n_flank_insertions"].sum())
        return (center / p.center_bp) / (max(flank, 1) / p.flank_bp)


def _by_contig(iv: Intervals, g: Genome, what: str) -> dict[str, np.ndarray]:
    """Row numbers of the intervals per canonical contig (intervals that did not parse, or whose
    contig the assembly lacks, are refused: check them with ``check_peaks`` first)."""
    canon = [g.resolve(c) if ok else None for c, ok in zip(iv.contig, iv.ok, strict=True)]
    bad = [str(iv.submitted[i]) for i, c in enumerate(canon) if c is None]
    if bad:
        raise UsageError(f"{len(bad)} {what} are not intervals on {g.assembly} contigs (first: {bad[0]!r}); check them with check_peaks first", where=what)
    rows: dict[str, list[int]] = {}
    for i, c in enumerate(canon):
        rows.setdefault(str(c), []).append(i)
    return {c: np.asarray(r, dtype=np.int64) for c, r in rows.items()}


def tss_sites(genes: Intervals, g: Genome) -> dict[str, np.ndarray]:
    """The TSSs of strandless gene intervals: both ends (``start`` and ``end - 1``), per contig, sorted and distinct."""
    out = {}
    for contig, rows in _by_contig(genes, g, "genes").items():
        out[contig] = np.unique(np.concatenate([genes.start[rows], genes.end[rows] - 1]))
    return out


def _merge(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping or touching intervals merged: sorted, disjoint starts and ends."""
    order = np.argsort(start, kind="stable")
    s, e = start[order], np.maximum.accumulate(end[order])
    new = np.concatenate([[True], s[1:] > e[:-1]])
    last = np.concatenate([np.flatnonzero(new)[1:] - 1, [len(s) - 1]])
    return s[new], e[last]


def _covering(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """How many of the half-open windows (``starts``, ``ends`` each sorted) contain each point."""
    return np.searchsorted(starts, points, side="right") - np.searchsorted(ends, points, side="right")


@dataclass
class _Regions:
    """Gene regions of one contig in length classes, for overlap pairs without all-pairs work:
    within a class no region is longer than ``span``, so a fragment ``[s, e)`` can only meet
    those starting in ``(s - span, e)``."""

    classes: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]  # (starts, ends, gene columns, span), by start

    @classmethod
    def of(cls, start: np.ndarray, end: np.ndarray, columns: np.ndarray) -> _Regions:
        length = np.maximum(end - start, 1)
        bucket = np.ceil(np.log2(length)).astype(np.int64)
        classes = []
        for b in np.unique(bucket):
            sel = np.flatnonzero(bucket == b)
            order = sel[np.argsort(start[sel], kind="stable")]
            classes.append((start[order], end[order], columns[order], int(length[order].max())))
        return cls(classes)

    def pairs(self, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fragment row, gene column) of every overlapping pair."""
        rows, cols = [], []
        for rs, re, col, span in self.classes:
            lo = np.searchsorted(rs, s - span, side="right")
            hi = np.searchsorted(rs, e, side="left")
            n = np.maximum(hi - lo, 0)
            total = int(n.sum())
            if total == 0:
                continue
            frag = np.repeat(np.arange(len(s)), n)
            cand = lo[frag] + (np.arange(total) - np.repeat(np.cumsum(n) - n, n))
            hit = re[cand] > s[frag]
            rows.append(frag[hit])
            cols.append(col[cand[hit]])
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(cols)


class AtacQcAccumulator:
    """Per-cell sums of the QC above, fed fragment blocks (a :class:`FragmentObserver`).

    Parameters
    ----------
    n_cells
        Number of cells (``cell`` values are indices below it).
    genome
        The assembly, to match contig names.
    peaks
        The peaks (``parse_intervals``); ``None``: no FRiP.
    genes
        Gene intervals (e.g. the RNA ``var['interval']``); ``None``: no TSS enrichment, no gene activity.
    params
        Window sizes.
    """

    def __init__(self, n_cells: int, genome: Genome, peaks: Intervals | None = None, genes: Intervals | None = None, params: AtacQcParams = AtacQcParams()) -> None:
        self.n_cells, self.params = n_cells, params
        self.n_genes = 0 if genes is None else len(genes)
        self.has_peaks, self.has_genes = peaks is not None, genes is not None
        self.peaks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if peaks is not None:
            for contig, rows in _by_contig(peaks, genome, "peaks").items():
                self.peaks[contig] = _merge(peaks.start[rows], peaks.end[rows])
        self.tss: dict[str, tuple[np.ndarray, ...]] = {}
        self.regions: dict[str, _Regions] = {}
        if genes is not None:
            c, (lo, hi) = params.tss_center, params.tss_flank
            for contig, t in tss_sites(genes, genome).items():
                flank_starts = np.sort(np.concatenate([t - hi, t + lo]))
                self.tss[contig] = (t - c, t + c + 1, flank_starts, flank_starts + (hi - lo + 1))
            for contig, rows in _by_contig(genes, genome, "genes").items():
                self.regions[contig] = _Regions.of(np.maximum(genes.start[rows] - params.gene_extend, 0), genes.end[rows] + params.gene_extend, rows)
        self.n_fragments = np.zeros(n_cells, dtype=np.int64)
        self.in_peaks = np.zeros(n_cells, dtype=np.int64)
        self.center = np.zeros(n_cells, dtype=np.int64)
        self.flank = np.zeros(n_cells, dtype=np.int64)
        self._key = np.int32 if n_cells * max(self.n_genes, 1) < 2**31 else np.int64
        self._keys: list[np.ndarray] = []  # cell * n_genes + gene, one per overlapping fragment
        self._merged = (np.zeros(0, dtype=self._key), np.zeros(0, dtype=np.int64))  # unique keys, counts
        self._pending = 0

    def add(self, contig: str, start: np.ndarray, end: np.ndarray, cell: np.ndarray) -> None:
        """One block of one contig's cell fragments."""
        n = self.n_cells
        self.n_fragments += np.bincount(cell, minlength=n)
        if contig in self.peaks:
            ps, pe = self.peaks[contig]
            i = np.searchsorted(ps, end, side="left") - 1  # the last merged peak starting before the end
            hit = (i >= 0) & (pe[np.maximum(i, 0)] > start)
            self.in_peaks += np.bincount(cell[hit], minlength=n)
        if contig in self.tss:
            cs, ce, fs, fe = self.tss[contig]
            ins, who = np.concatenate([start, end - 1]), np.concatenate([cell, cell])
            self.center += np.bincount(who, weights=_covering(ins, cs, ce), minlength=n).astype(np.int64)
            self.flank += np.bincount(who, weights=_covering(ins, fs, fe), minlength=n).astype(np.int64)
        if contig in self.regions:
            rows, cols = self.regions[contig].pairs(start, end)
            if rows.size:
                self._keys.append((cell[rows] * self.n_genes + cols).astype(self._key))
                self._pending += rows.size
                if self._pending > max(1 << 22, len(self._merged[0])):
                    self._consolidate()

    def _consolidate(self) -> None:
        unique, inverse = np.unique(np.concatenate([self._merged[0], *self._keys]), return_inverse=True)
        counts = np.bincount(inverse[len(self._merged[0]) :], minlength=len(unique))  # the new overlaps
        counts[inverse[: len(self._merged[0])]] += self._merged[1]  # and the earlier ones
        self._merged = (unique, counts.astype(np.int64))
        self._keys, self._pending = [], 0

    def result(self, cell_barcodes: Sequence[str] | pd.Index, gene_names: Sequence[str] | pd.Index | None = None) -> AtacQc:
        """The per-cell table and the gene-activity matrix."""
        import scipy.sparse

        self._consolidate()
        p = self.params
        has = self.n_fragments > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            frip = np.where(has, self.in_peaks / self.n_fragments, np.nan) if self.has_peaks else np.full(self.n_cells, np.nan)
            tss = (self.center / p.center_bp) / (np.maximum(self.flank, 1) / p.flank_bp)
        tss = np.where(has, tss, np.nan) if self.has_genes else np.full(self.n_cells, np.nan)
        qc = pd.DataFrame(
            {"n_fragments": self.n_fragments, "n_fragments_in_peaks": self.in_peaks, "frip": frip, "n_tss_insertions": self.center, "n_flank_insertions": self.flank, "tss_enrichment": tss},
            index=pd.Index(list(cell_barcodes), dtype=object, name=None),
        )
        ng = max(self.n_genes, 1)
        keys, counts = self._merged
        keys = keys.astype(np.int64)
        matrix = scipy.sparse.csr_matrix((counts, (keys // ng, keys % ng)), shape=(self.n_cells, self.n_genes), dtype=np.int64)
        names = pd.Index([str(x) for x in gene_names] if gene_names is not None else [f"gene_{i}" for i in range(self.n_genes)], dtype=object)
        if len(names) != self.n_genes:
            raise UsageError(f"{len(names)} gene names for {self.n_genes} gene intervals", where="gene_names")
        return AtacQc(qc, matrix, names, p)


def compute_atac_qc(
    path: str | os.PathLike[str],
    genome: Genome | str,
    cell_barcodes: Sequence[str] | pd.Index | np.ndarray,
    *,
    peaks: Intervals | None = None,
    genes: Intervals | None = None,
    gene_names: Sequence[str] | pd.Index | None = None,
    params: AtacQcParams = AtacQcParams(),
    where: str | None = None,
    chunk_bytes: int = 1 << 22,
) -> tuple[FragmentReport, AtacQc]:
    """Check a fragments file and compute the cells' ATAC QC and gene activity, in one pass.

    Parameters are those of :func:`~aivc.ingest.fragments.check_fragments` and
    :class:`AtacQcAccumulator`; the QC covers the fragments that passed every check.
    """
    g = _genome(genome) if isinstance(genome, str) else genome
    cells = pd.Index(np.asarray(cell_barcodes, dtype=object).astype(str), dtype=object)
    acc = AtacQcAccumulator(len(cells), g, peaks, genes, params)
    report = check_fragments(path, g, cells, where=where, chunk_bytes=chunk_bytes, observers=[acc])
    return report, acc.result(cells, gene_names)


def run_atac_expectations(
    qc: pd.DataFrame,
    *,
    min_median_frip: float | None = None,
    min_median_tss_enrichment: float | None = None,
    min_median_fragments: int | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[list[Finding], list[dict[str, Any]]]:
    """Run the ``atac_qc`` expectation suite (``schemas/expectations/atac_qc.json``) on ``AtacQc.qc``.

    A column that is all NaN (no peaks given: ``frip``; no genes: ``tss_enrichment``) was not
    computed, so the expectations on it are left out of the findings and marked in the results
    (``observed`` = ``"not computed"``) instead of failing.
    """
    from aivc.ingest.qc import run_expectations

    given = dict(parameters or {})
    for key, value in (("min_median_frip", min_median_frip), ("min_median_tss_enrichment", min_median_tss_enrichment), ("min_median_fragments", min_median_fragments)):
        if value is not None:
            given[key] = value
    findings, results = run_expectations(qc, suites=["atac_qc"], parameters=given)
    absent = {c for c in ("frip", "tss_enrichment") if c in qc.columns and qc[c].isna().all()}
    if absent:
        for r in results:
            if r["column"] in absent:
                r.update(success=None, observed="not computed")
        codes = {r["code"] for r in results if r["column"] in absent}  # the suite gives each column its own codes
        findings = [f for f in findings if f.code not in codes]
    return findings, results
