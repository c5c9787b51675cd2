"""Chromatin peaks as genomic intervals, checked against the organism's assembly.

Peaks arrive as ``chr1:100-200`` (10x, Cell Ranger ARC), ``chr1-100-200`` (ArchR, Signac)
or three columns (chromosome, start, end). :func:`parse_intervals` reads any of them into
0-based, half-open ``(contig, start, end)``; :func:`check_peaks` checks them against the
assembly's sequence table (:class:`Genome`, ``schemas/genomes/<assembly>.tsv``, built by
``schemas/build_genomes.py`` with provenance), one finding code per kind of mistake, each
naming the offending peaks and where they are:

``PEAK_UNPARSEABLE``      not an interval in any of the three forms
``PEAK_CONTIG_UNKNOWN``   a contig the assembly does not have (``chr1``, ``1`` and the GenBank
                          / RefSeq names of a sequence are all known)
``PEAK_START_NOT_BEFORE_END``  start >= end
``PEAK_PAST_CHROMOSOME_END``   end beyond the contig's length
``PEAK_DUPLICATE``        the same interval more than once

Example
-------
>>> g = genome("homo_sapiens")
>>> p = parse_intervals(["chr1:100-200", "1-300-400", "chrQ:1-2"])
>>> [f.code for f in check_peaks(p, g, where="var.index")]
['PEAK_CONTIG_UNKNOWN']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd

from aivc.errors import Finding, UsageError

__all__ = ["ASSEMBLIES", "Genome", "Intervals", "check_peaks", "genome", "parse_intervals"]

#: the assembly aivc checks each organism's peaks and fragments against
ASSEMBLIES = {"homo_sapiens": "GRCh38", "mus_musculus": "GRCm39"}
_INTERVAL = re.compile(r"^(.+?)[:\-](\d+)-(\d+)$")


@dataclass(frozen=True)
class Genome:
    """One assembly's sequences: canonical names, lengths, and every alias of each."""

    assembly: str
    lengths: dict[str, int]
    canonical: dict[str, str]  # any known name (canonical or alias) -> canonical name

    def resolve(self, contig: str) -> str | None:
        return self.canonical.get(contig)


@cache
def genome(organism_or_assembly: str) -> Genome:
    """The :class:`Genome` of an organism (``homo_sapiens``) or an assembly (``GRCh38``)."""
    assembly = ASSEMBLIES.get(organism_or_assembly, organism_or_assembly)
    path = resources.files("aivc.schemas").joinpath("genomes", f"{assembly}.tsv")
    if not path.is_file():
        known = ", ".join(f"{a} ({o})" for o, a in ASSEMBLIES.items())
        raise UsageError(f"no chromosome table for {organism_or_assembly!r}; aivc knows {known}", where="genome")
    with path.open("r") as fh:
        table = pd.read_csv(fh, sep="\t", dtype={"name": str, "length": np.int64, "role": str, "aliases": str}, keep_default_na=False)
    lengths = dict(zip(table["name"], table["length"].astype(int), strict=True))
    canonical = {n: n for n in table["name"]}
    for name, aliases in zip(table["name"], table["aliases"], strict=True):
        for a in filter(None, aliases.split(",")):
            canonical.setdefault(a, name)
    return Genome(assembly, lengths, canonical)


@dataclass(frozen=True)
class Intervals:
    """Parsed peaks, one row per submitted peak (``ok`` false where it did not parse)."""

    submitted: np.ndarray  # the peak as submitted (str)
    contig: np.ndarray  # str ('' where unparseable)
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    ok: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.submitted)


def parse_intervals(peaks: Sequence[str] | pd.Index | pd.DataFrame) -> Intervals:
    """Peaks as ``chr:start-end`` / ``chr-start-end`` strings, or a frame of three columns
    (chromosome, start, end, in that order)."""
    if isinstance(peaks, pd.DataFrame):
        if peaks.shape[1] != 3:
            raise UsageError(f"peak columns must be three (chromosome, start, end), got {peaks.shape[1]}", where="peaks")
        contig = peaks.iloc[:, 0].astype(str).to_numpy(dtype=object)
        start = pd.to_numeric(peaks.iloc[:, 1], errors="coerce")
        end = pd.to_numeric(peaks.iloc[:, 2], errors="coerce")
        ok = (start.notna() & end.notna() & (start % 1 == 0) & (end % 1 == 0)).to_numpy()
        submitted = np.array([f"{c}:{s}-{e}" for c, s, e in zip(contig, peaks.iloc[:, 1], peaks.iloc[:, 2], strict=True)], dtype=object)
        return Intervals(submitted, np.where(ok, contig, ""), np.where(ok, start.fillna(0), 0).astype(np.int64), np.where(ok, end.fillna(0), 0).astype(np.int64), ok)
    values = [str(p) for p in peaks]
    contig, start, end, ok = [], [], [], []
    for v in values:
        m = _INTERVAL.match(v.strip())
        contig.append(m.group(1) if m else "")
        start.append(int(m.group(2)) if m else 0)
        end.append(int(m.group(3)) if m else 0)
        ok.append(bool(m))
    return Intervals(np.array(values, dtype=object), np.array(contig, dtype=object), np.array(start, dtype=np.int64), np.array(end, dtype=np.int64), np.array(ok, dtype=bool))


def _examples(iv: Intervals, rows: np.ndarray, n: int = 5) -> str:
    shown = ", ".join(f"{iv.submitted[i]!r} (row {int(i)})" for i in rows[:n])
    return shown + (f" and {len(rows) - n} more" if len(rows) > n else "")


def _peaks(n: int, verb: str, plural: str) -> str:
    """``1 peak starts`` / ``2 peaks start``."""
    return f"1 peak {verb}" if n == 1 else f"{n} peaks {plural}"


def check_peaks(iv: Intervals, g: Genome, *, where: str = "peaks") -> list[Finding]:
    """Every problem of the peaks against the assembly, one finding per kind (all errors)."""
    findings: list[Finding] = []
    bad = np.flatnonzero(~iv.ok)
    if bad.size:
        findings.append(Finding("PEAK_UNPARSEABLE", where, f"{_peaks(bad.size, 'is not an interval', 'are not intervals')} (chr:start-end, chr-start-end or three columns): {_examples(iv, bad)}", "error"))
    resolved = np.array([g.resolve(c) if o else None for c, o in zip(iv.contig, iv.ok, strict=True)], dtype=object)
    unknown = np.flatnonzero(iv.ok & np.array([r is None for r in resolved]))
    if unknown.size:
        contigs = sorted({iv.contig[i] for i in unknown})
        findings.append(
            Finding("PEAK_CONTIG_UNKNOWN", where, f"{_peaks(unknown.size, 'is', 'are')} on contigs {g.assembly} does not have ({', '.join(map(repr, contigs[:5]))}{' ...' if len(contigs) > 5 else ''}): {_examples(iv, unknown)}", "error")
        )
    known = iv.ok & np.array([r is not None for r in resolved])
    backwards = np.flatnonzero(known & (iv.start >= iv.end))
    if backwards.size:
        findings.append(Finding("PEAK_START_NOT_BEFORE_END", where, f"{_peaks(backwards.size, 'starts', 'start')} at or after {'its' if backwards.size == 1 else 'their'} end: {_examples(iv, backwards)}", "error"))
    length = np.array([g.lengths[r] if r is not None else 0 for r in resolved], dtype=np.int64)
    past = np.flatnonzero(known & (iv.end > length))
    if past.size:
        i = past[0]
        findings.append(
            Finding("PEAK_PAST_CHROMOSOME_END", where, f"{_peaks(past.size, 'ends', 'end')} past {'its' if past.size == 1 else 'their'} contig ({resolved[i]} is {length[i]:,} bp in {g.assembly}): {_examples(iv, past)}", "error")
        )
    key = pd.Series([f"{r}:{s}-{e}" if k else None for r, s, e, k in zip(resolved, iv.start, iv.end, known, strict=True)])
    dup = np.flatnonzero(key.notna().to_numpy() & key.duplicated(keep="first").to_numpy())
    if dup.size:
        findings.append(Finding("PEAK_DUPLICATE", where, f"{_peaks(dup.size, 'repeats', 'repeat')} an earlier peak: {_examples(iv, dup)}", "error"))
    return findings
