"""ATAC fragment files: streaming validation, and the cells' fragments rewritten for the lake.

A fragments file (10x Cell Ranger ATAC / ARC ``fragments.tsv.gz``) has one fragment a line,
five tab-separated columns: contig, 0-based start, exclusive end, cell barcode, and the
number of read pairs supporting it. :func:`check_fragments` reads it once, streaming (Arrow's
CSV reader over the gzip stream, ``chunk_bytes`` at a time, in a thread of its own, so memory
does not grow with the file), and checks the CELLxGENE schema 7.x fragments-file rules and
what tabix needs. Each kind of problem is its own :class:`~aivc.errors.Finding` whose
``where`` names the file and the line of the first offender (1-based, header lines included)
and whose message says how many more lines offend:

``FRAGMENTS_NOT_BGZF``              not BGZF (plain gzip, or not compressed): tabix cannot index it
``FRAGMENTS_TRUNCATED``             BGZF without its end-of-file block: it may have been cut short
``FRAGMENTS_UNREADABLE``            the stream cannot be decompressed or decoded from some line on
``FRAGMENTS_COLUMNS``               a line without exactly 5 tab-separated columns (an empty line too)
``FRAGMENTS_COORDINATE_INVALID``    a start or end that is not an integer
``FRAGMENTS_CONTIG_UNKNOWN``        a contig the assembly lacks (its aliases, ``1`` for ``chr1``, are known)
``FRAGMENTS_START_NEGATIVE``        start < 0 (0 is the first base; cellxgene-schema's own check wants > 0)
``FRAGMENTS_START_NOT_BEFORE_END``  start >= end
``FRAGMENTS_PAST_CHROMOSOME_END``   end beyond the contig's length
``FRAGMENTS_COUNT_INVALID``         a read count that is not an integer >= 1
``FRAGMENTS_UNSORTED``              a start below the previous line's on its contig, or a contig back after another
``FRAGMENTS_DUPLICATE``             a line repeating an earlier one exactly (among lines of one contig and start,
                                    which a sorted file keeps together)
``FRAGMENTS_NO_CELL_BARCODES``      no fragment belongs to a cell
``FRAGMENTS_HEADER_LINES``          warning: leading ``#`` lines (Cell Ranger's; CELLxGENE forbids them): skipped
``FRAGMENTS_INDEX_INVALID``         warning: a ``<file>.tbi`` pysam cannot read, or whose contigs differ
``FRAGMENTS_CELLS_WITHOUT_FRAGMENTS``  warning: cells without a valid fragment, the first few named

A missing ``.tbi`` is no finding (a sorted BGZF file can always be indexed, and the lake's
copy, :func:`aivc.ingest.fragments_write.write_cell_fragments`, gets its own), nor are the fragments of barcodes that
are not cells (background droplets, which Cell Ranger keeps): they are counted in the
report and left out of the lake's copy.

Example
-------
>>> from aivc.ingest.intervals import genome
>>> report = check_fragments("fragments.tsv.gz", genome("homo_sapiens"), cells)  # doctest: +SKIP
>>> report.ok, report.n_fragments_cells, report.n_barcodes_not_cells  # doctest: +SKIP
(True, 4783, 9737)
"""

from __future__ import annotations

import gzip
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from aivc.errors import Finding, UsageError, and_more
from aivc.ingest.intervals import Genome, genome as _genome

__all__ = ["COLUMNS", "FragmentObserver", "FragmentReport", "check_fragments", "compression_of"]

#: the five columns of a fragments file, in order
COLUMNS = ("chrom", "start", "end", "barcode", "count")
#: the 28-byte empty block that ends every complete BGZF file (SAM/BAM specification 4.1.2)
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
#: how many cells a FRAGMENTS_CELLS_WITHOUT_FRAGMENTS finding names
N_EXAMPLES = 3
_INT = r"^-?[0-9]{1,18}$"
_ORDER = (
    "FRAGMENTS_NOT_BGZF", "FRAGMENTS_TRUNCATED", "FRAGMENTS_UNREADABLE", "FRAGMENTS_COLUMNS", "FRAGMENTS_COORDINATE_INVALID",
    "FRAGMENTS_CONTIG_UNKNOWN", "FRAGMENTS_START_NEGATIVE", "FRAGMENTS_START_NOT_BEFORE_END", "FRAGMENTS_PAST_CHROMOSOME_END",
    "FRAGMENTS_COUNT_INVALID", "FRAGMENTS_UNSORTED", "FRAGMENTS_DUPLICATE",
)
Compression = Literal["bgzf", "gzip", "none"]


class FragmentObserver(Protocol):
    """Something computed from the cells' valid fragments in the same pass (e.g. ATAC QC).

    ``add`` receives, block after block, the fragments of one contig (the assembly's
    canonical name, e.g. ``chr1`` for a file that says ``1``) that passed every check and
    belong to a cell: their ``start`` and ``end`` (int64) and ``cell``, the index of their
    cell in ``cell_barcodes`` (int64).
    """

    def add(self, contig: str, start: np.ndarray, end: np.ndarray, cell: np.ndarray) -> None: ...


@dataclass(frozen=True)
class FragmentReport:
    """What one pass over a fragments file found.

    Attributes
    ----------
    path, assembly
        The file, and the assembly it was checked against.
    compression
        ``"bgzf"``, ``"gzip"`` (plain) or ``"none"``.
    indexed
        A ``<path>.tbi`` that pysam reads and that lists the file's contigs is present.
    n_header_lines, n_fragments
        Leading ``#`` lines, and fragment lines after them (every data line, valid or not).
    n_fragments_cells, n_fragments_not_cells
        Valid fragments of the cells; fragments (5-column lines) of other barcodes.
    n_barcodes, n_barcodes_not_cells
        Distinct barcodes in the file, and those that are not cells.
    cell_barcodes, cell_fragments
        The cells as given, and the number of valid fragments of each (int64, same order).
    contigs
        The contigs in the order the file has them, as written there.
    findings
        Every problem, in a fixed order of codes (see the module docstring).
    """

    path: str
    assembly: str
    compression: Compression
    indexed: bool
    n_header_lines: int
    n_fragments: int
    n_fragments_cells: int
    n_fragments_not_cells: int
    n_barcodes: int
    n_barcodes_not_cells: int
    cell_barcodes: np.ndarray
    cell_fragments: np.ndarray
    contigs: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """No error (warnings allowed)."""
        return not any(f.severity == "error" for f in self.findings)

    @property
    def n_cells_with_fragments(self) -> int:
        return int(np.count_nonzero(self.cell_fragments))

    def to_dict(self) -> dict[str, Any]:
        """The counts and findings, for a validation report (no per-cell arrays)."""
        keys = ("path", "assembly", "compression", "indexed", "n_header_lines", "n_fragments", "n_fragments_cells", "n_fragments_not_cells", "n_barcodes", "n_barcodes_not_cells")
        out: dict[str, Any] = {"schema_name": "aivc.fragment_report", "schema_version": 1, **{k: getattr(self, k) for k in keys}}
        out.update(n_cells=len(self.cell_barcodes), n_cells_with_fragments=self.n_cells_with_fragments, contigs=list(self.contigs), findings=[f.to_dict() for f in self.findings])
        return out


def compression_of(path: str | os.PathLike[str]) -> Compression:
    """``"bgzf"`` for blocked gzip (the ``BC`` extra field of SAM spec 4.1), ``"gzip"`` or ``"none"``."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:2] != b"\x1f\x8b":
        return "none"
    return "bgzf" if head[2:4] == b"\x08\x04" and head[12:14] == b"BC" else "gzip"


def check_fragments(
    path: str | os.PathLike[str],
    genome: Genome | str,
    cell_barcodes: Sequence[str] | pd.Index | np.ndarray,
    *,
    where: str | None = None,
    chunk_bytes: int = 1 << 22,
    observers: Sequence[FragmentObserver] = (),
) -> FragmentReport:
    """Check a fragments file against the assembly and the cells, in one streaming pass.

    Parameters
    ----------
    path
        The fragments file (BGZF expected; plain gzip and text are read, and reported).
    genome
        The assembly (:func:`aivc.ingest.intervals.genome`) or an organism / assembly name.
    cell_barcodes
        The cells' barcodes as the file writes them (unique).
    where
        How findings name the file (default: its file name).
    chunk_bytes
        Decompressed bytes parsed at a time; memory is a small multiple of it.
    observers
        Further per-fragment computations fed in the same pass (:class:`FragmentObserver`).

    Returns
    -------
    FragmentReport
        Counts, per-cell fragment numbers and findings; it raises only for wrong arguments.
    """
    g = _genome(genome) if isinstance(genome, str) else genome
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no fragments file at {path}", where="fragments")
    cells = cell_index(cell_barcodes)
    name = where or path.name
    compression = compression_of(path)
    scan = _Scan(g, cells, name, list(observers))
    n_header = 0
    try:
        n_header, has_data = header_lines(path, compression)
        for batch, invalid in fragment_batches(path, compression, n_header, chunk_bytes) if has_data else ():
            scan.invalid_rows(invalid)
            scan.add(batch)
    except (OSError, EOFError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        scan.unreadable(n_header, exc)
    findings: list[Finding] = []
    if compression != "bgzf":
        how = "plain gzip" if compression == "gzip" else "not compressed"
        findings.append(Finding("FRAGMENTS_NOT_BGZF", name, f"the file is {how}, not BGZF (blocked gzip), so tabix cannot index it; compress it with bgzip: `zcat -f {path.name} | bgzip > fragments.tsv.gz`"))
    elif not _has_bgzf_eof(path):
        findings.append(Finding("FRAGMENTS_TRUNCATED", name, "the BGZF file lacks its end-of-file block, so it may have been cut short; copy or download it again"))
    if n_header:
        findings.append(Finding("FRAGMENTS_HEADER_LINES", f"{name} lines 1-{n_header}", f"{n_header} header line(s) starting with '#' precede the fragments; CELLxGENE fragments files have none, and the lake's copy leaves them out", "warning"))
    findings.extend(scan.findings(n_header))
    indexed = False
    if compression == "bgzf":
        indexed, bad_index = _check_index(path, scan.contigs, name)
        findings.extend(bad_index)
    order = {c: i for i, c in enumerate(_ORDER)}
    findings.sort(key=lambda f: order.get(f.code, len(order)))
    return scan.report(str(path), compression, indexed, n_header, findings)


def cell_index(cell_barcodes: Sequence[str] | pd.Index | np.ndarray) -> pd.Index:
    cells = pd.Index(np.asarray(cell_barcodes, dtype=object).astype(str), dtype=object)
    if not cells.is_unique:
        dup = cells[cells.duplicated()].unique()[:N_EXAMPLES].tolist()
        raise UsageError(f"cell barcodes must be unique; repeated: {', '.join(map(repr, dup))}", where="cell_barcodes")
    return cells


def header_lines(path: Path, compression: Compression) -> tuple[int, bool]:
    """The number of leading ``#`` lines, and whether any line follows them."""
    n = 0
    with (open(path, "rb") if compression == "none" else gzip.open(path, "rb")) as fh:
        for line in fh:
            if not line.startswith(b"#"):
                return n, True
            n += 1
    return n, False


def _has_bgzf_eof(path: Path) -> bool:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        return size >= len(BGZF_EOF) and fh.seek(size - len(BGZF_EOF)) >= 0 and fh.read() == BGZF_EOF


def fragment_batches(path: Path, compression: Compression, skip: int, chunk_bytes: int) -> Iterator[tuple[Any, list[tuple[int, int, str]]]]:
    """Arrow record batches of the five columns as text (contig and barcode dictionary-encoded),
    each with the lines that did not have five columns: (line number, columns, text)."""
    import pyarrow as pa
    from pyarrow import csv

    invalid: list[tuple[int, int, str]] = []

    def handler(row: Any) -> str:
        invalid.append((int(row.number), int(row.actual_columns), str(row.text)))
        return "skip"

    text = pa.dictionary(pa.int32(), pa.string())
    reader = csv.open_csv(
        pa.input_stream(str(path), compression=None if compression == "none" else "gzip"),
        # use_threads=False: single-threaded parsing is what gives invalid rows their line numbers
        read_options=csv.ReadOptions(column_names=list(COLUMNS), block_size=chunk_bytes, use_threads=False, skip_rows=skip),
        parse_options=csv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=False, invalid_row_handler=handler),
        convert_options=csv.ConvertOptions(column_types={"chrom": text, "start": pa.string(), "end": pa.string(), "barcode": text, "count": pa.string()}, strings_can_be_null=False, quoted_strings_can_be_null=False, null_values=[]),
    )
    # Arrow decompresses and parses in a thread of its own (it releases the GIL) while the caller
    # checks the previous block: two blocks at most wait in the queue, so memory stays flat.
    out: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():  # the caller may stop reading at any time
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for batch in reader:
                item = (batch, invalid[:])
                invalid.clear()
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # handed to the caller's thread, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="aivc-fragments-reader", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


@dataclass
class _Offence:
    """One kind of problem: how many lines, and the first (by data-row ordinal or by line)."""

    count: int = 0
    ordinal: int = -1
    message: str = ""
    line: int = -1  # lines Arrow skipped (not 5 columns) are known by line number
    line_message: str = ""


def _to_int(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Text column -> (int64 values, parsed mask): strict decimal integers only."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False), np.ones(len(column), dtype=bool)
    except (pa.ArrowInvalid, OverflowError):
        ok = pc.match_substring_regex(column, _INT).to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(pa.array(ok), column, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        return values, ok


def _mix(*columns: np.ndarray) -> np.ndarray:
    """A 64-bit key of integer columns: equal rows give equal keys, others rarely collide."""
    key = np.zeros(len(columns[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            key = (key ^ c.astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
            key ^= key >> np.uint64(29)
    return key


class _Block:
    """One Arrow batch, parsed: integer columns, contig and barcode lookups, row texts."""

    def __init__(self, batch: Any, first: int) -> None:
        self.n = batch.num_rows
        self.ordinals = first + np.arange(self.n, dtype=np.int64)
        self.text = [batch.column(i) for i in range(5)]
        chrom, bc = self.text[0], self.text[3]
        self.chrom_values: list[str] = chrom.dictionary.to_pylist()
        self.chrom_idx = chrom.indices.to_numpy(zero_copy_only=False)
        self.bc_values = bc.dictionary.to_numpy(zero_copy_only=False).astype(object)
        self.bc_idx = bc.indices.to_numpy(zero_copy_only=False)
        self.start, self.start_ok = _to_int(self.text[1])
        self.end, self.end_ok = _to_int(self.text[2])
        self.count, self.count_ok = _to_int(self.text[4])
        self.empty = np.zeros(self.n, dtype=bool)
        if "" in self.chrom_values:
            blank = [np.asarray(self.text[i].cast("string")) == "" for i in range(5)]
            self.empty = np.logical_and.reduce(blank)

    def row(self, i: int) -> str:
        return "\t".join(str(t[int(i)].as_py()) for t in self.text)

    def value(self, column: int, i: int) -> str:
        return str(self.text[column][int(i)].as_py())


class _Scan:
    """The state of one pass: counts, per-cell numbers, offences, and what crosses blocks."""

    def __init__(self, g: Genome, cells: pd.Index, name: str, observers: list[FragmentObserver]) -> None:
        self.g, self.cells, self.name, self.observers = g, cells, name, observers
        self.offences: dict[str, _Offence] = {}
        self.cell_fragments = np.zeros(len(cells), dtype=np.int64)
        self.cell_seen = np.zeros(len(cells), dtype=bool)
        self.n_rows = 0  # rows Arrow returned (5 columns)
        self.skipped: list[int] = []  # lines Arrow skipped
        self.n_not_cells = 0
        self.not_cell_hashes: list[np.ndarray] = []
        self.gid: dict[str, int] = {}  # contig as written -> its order of first appearance
        self.unknown: set[str] = set()
        self.prev: tuple[int, int, str] | None = None  # the last parsed row: contig id, start, contig
        self.carry: tuple[np.ndarray, ...] | None = None  # the last run of one contig and start
        self.carry_text: dict[int, str] = {}

    @property
    def contigs(self) -> list[str]:
        return list(self.gid)

    def _note(self, code: str, mask: np.ndarray, ordinals: np.ndarray, message: Any) -> None:
        n = int(np.count_nonzero(mask))
        if not n:
            return
        off = self.offences.setdefault(code, _Offence())
        if off.ordinal < 0:
            i = int(np.argmax(mask))
            off.ordinal, off.message = int(ordinals[i]), message(i)
        off.count += n

    def invalid_rows(self, rows: list[tuple[int, int, str]]) -> None:
        for line, n_columns, text in rows:
            self.skipped.append(line)
            off = self.offences.setdefault("FRAGMENTS_COLUMNS", _Offence())
            if off.line < 0:
                off.line = line
                off.line_message = f"the line has {n_columns} tab-separated column(s), not 5 (contig, start, end, barcode, count): {text[:120]!r}"
            off.count += 1

    def unreadable(self, n_header: int, exc: BaseException) -> None:
        line = n_header + self.n_rows + len(self.skipped) + 1
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        message = f"the file cannot be read from line {line} on ({detail}); check that it is a complete gzip or BGZF file of UTF-8 text"
        self.offences["FRAGMENTS_UNREADABLE"] = _Offence(1, line=line, line_message=message)

    def add(self, batch: Any) -> None:
        """Check one block of rows and feed its valid cell fragments to the observers."""
        if batch.num_rows == 0:
            return
        b = _Block(batch, self.n_rows)
        self.n_rows += b.n
        canon = [self.g.resolve(c) for c in b.chrom_values]
        for c, r in zip(b.chrom_values, canon, strict=True):
            self.gid.setdefault(c, len(self.gid))
            if r is None and c:
                self.unknown.add(c)
        gid = np.array([self.gid[c] for c in b.chrom_values], dtype=np.int64)[b.chrom_idx]
        valid = self._rows(b, canon)
        self._sorted(b, gid, b.start_ok & b.end_ok & ~b.empty)
        cell, hashes = self._barcodes(b)
        parsed = b.start_ok & b.end_ok & b.count_ok & ~b.empty
        every = parsed.all()
        self._duplicates(b, tuple(a if every else a[parsed] for a in (gid, b.start, b.end, hashes, b.count, b.ordinals)))
        mine = valid & (cell >= 0)
        if mine.any():
            self.cell_fragments += np.bincount(cell[mine], minlength=len(self.cells))
            if self.observers:
                self._observe(canon, b.chrom_idx[mine], b.start[mine], b.end[mine], cell[mine].astype(np.int64))

    def _rows(self, b: _Block, canon: list[str | None]) -> np.ndarray:
        """The checks of each line on its own; returns the lines that pass them all."""
        o, empty, start, end, count, g = b.ordinals, b.empty, b.start, b.end, b.count, self.g
        self._note("FRAGMENTS_COLUMNS", empty, o, lambda i: "the line is empty; a fragments file has no blank lines")
        coords = b.start_ok & b.end_ok & ~empty
        self._note("FRAGMENTS_COORDINATE_INVALID", ~(b.start_ok & b.end_ok) & ~empty, o, lambda i: f"{'start' if not b.start_ok[i] else 'end'} {b.value(1 if not b.start_ok[i] else 2, i)!r} is not an integer: {b.row(i)!r}")
        known = np.array([r is not None for r in canon], dtype=bool)[b.chrom_idx]
        length = np.array([g.lengths[r] if r else 0 for r in canon], dtype=np.int64)[b.chrom_idx]
        self._note("FRAGMENTS_CONTIG_UNKNOWN", ~known & ~empty, o, lambda i: f"contig {b.chrom_values[b.chrom_idx[i]]!r} is not in {g.assembly}: {b.row(i)!r}")
        neg = coords & (start < 0)
        self._note("FRAGMENTS_START_NEGATIVE", neg, o, lambda i: f"start {start[i]} is negative; starts are 0-based, the first base of a contig is 0: {b.row(i)!r}")
        backwards = coords & (start >= end)
        self._note("FRAGMENTS_START_NOT_BEFORE_END", backwards, o, lambda i: f"start {start[i]} is not before end {end[i]} (ends are exclusive): {b.row(i)!r}")
        past = coords & known & (end > length)
        self._note("FRAGMENTS_PAST_CHROMOSOME_END", past, o, lambda i: f"end {end[i]:,} is past the end of {canon[b.chrom_idx[i]]} ({length[i]:,} bp in {g.assembly}): {b.row(i)!r}")
        counted = b.count_ok & (count >= 1)
        self._note("FRAGMENTS_COUNT_INVALID", ~empty & ~counted, o, lambda i: f"count {b.value(4, i)!r} is not an integer >= 1 (the read pairs supporting the fragment): {b.row(i)!r}")
        return coords & known & ~neg & ~backwards & ~past & counted

    def _barcodes(self, b: _Block) -> tuple[np.ndarray, np.ndarray]:
        """Each line's cell (index, or -1) and barcode hash; counts the barcodes that are not cells."""
        cell_lut = self.cells.get_indexer(b.bc_values)
        hash_lut = pd.util.hash_array(b.bc_values, categorize=False)
        cell = cell_lut[b.bc_idx]
        used = np.ones(len(cell_lut), dtype=bool)
        if b.empty.any():  # an empty line's '' is no barcode
            used[:] = False
            used[b.bc_idx[~b.empty]] = True
        self.cell_seen[cell_lut[used & (cell_lut >= 0)]] = True
        self._not_cells(hash_lut[used & (cell_lut < 0)])
        self.n_not_cells += int(np.count_nonzero((cell < 0) & ~b.empty))
        return cell, hash_lut[b.bc_idx]

    def _not_cells(self, hashes: np.ndarray) -> None:
        """Remember the (64-bit hashes of) barcodes that are not cells; a block's are distinct."""
        self.not_cell_hashes.append(hashes)
        total = sum(len(h) for h in self.not_cell_hashes)
        if len(self.not_cell_hashes) > 1 and total > 2 * len(self.not_cell_hashes[0]) + (1 << 20):
            self.not_cell_hashes = [np.unique(np.concatenate(self.not_cell_hashes))]

    def _observe(self, canon: list[str | None], idx: np.ndarray, start: np.ndarray, end: np.ndarray, cell: np.ndarray) -> None:
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(idx)) + 1, [len(idx)]])
        for a, z in zip(bounds[:-1], bounds[1:], strict=True):
            for obs in self.observers:
                obs.add(str(canon[idx[a]]), start[a:z], end[a:z], cell[a:z])

    def _sorted(self, b: _Block, gid: np.ndarray, ok: np.ndarray) -> None:
        """Contig ids number contigs in order of first appearance, so the file is sorted
        (contigs together, starts non-decreasing within each) exactly when (id, start) never
        decreases from one line to the next."""
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return
        g, s = gid[rows], b.start[rows]
        first = self.prev or (int(g[0]), int(s[0]), b.chrom_values[b.chrom_idx[rows[0]]])
        pg, ps = np.concatenate([[first[0]], g[:-1]]), np.concatenate([[first[1]], s[:-1]])
        bad = (g < pg) | ((g == pg) & (s < ps))

        def message(i: int) -> str:
            here = b.chrom_values[b.chrom_idx[rows[i]]]
            before = first[2] if i == 0 else b.chrom_values[b.chrom_idx[rows[i - 1]]]
            if here != before:
                return f"contig {here!r} comes back after {before!r}; each contig's fragments must be together, sorted by start (`sort -k1,1 -k2,2n`)"
            return f"start {s[i]} comes after start {ps[i]} on {here}; sort the file by contig, then start (`sort -k1,1 -k2,2n`)"

        self._note("FRAGMENTS_UNSORTED", bad, b.ordinals[rows], message)
        last = rows[-1]
        self.prev = (int(gid[last]), int(b.start[last]), b.chrom_values[b.chrom_idx[last]])

    def _duplicates(self, b: _Block, cols: tuple[np.ndarray, ...]) -> None:
        """Rows of one contig and start are compared; the block's last such run waits for the next."""
        g, s, o = cols[0], cols[1], cols[5]
        n = len(g)
        if n == 0:
            return
        texts, first = self.carry_text, int(b.ordinals[0])
        text = lambda ordinal: texts[int(ordinal)] if ordinal < first else b.row(int(ordinal) - first)  # noqa: E731
        lead = 0
        if self.carry is not None:
            other = np.flatnonzero((g != self.carry[0][-1]) | (s != self.carry[1][-1]))
            lead = int(other[0]) if other.size else n  # rows that continue the carried run
            head = tuple(np.concatenate([c, x[:lead]]) for c, x in zip(self.carry, cols, strict=True))
            if lead == n:
                self.carry, self.carry_text = head, {int(x): text(x) for x in head[5][:64]}
                return
            self._find_duplicates(head, text)
        step = np.flatnonzero((g != g[-1]) | (s != s[-1]))
        cut = max(int(step[-1]) + 1 if step.size else 0, lead)
        self._find_duplicates(tuple(c[lead:cut] for c in cols), text)
        self.carry = tuple(c[cut:] for c in cols)
        # the carried rows' text outlives this block, for a message that names one of them
        self.carry_text = {int(x): text(x) for x in o[cut:][:64]}

    def flush(self) -> None:
        if self.carry is not None:
            texts = self.carry_text
            self._find_duplicates(self.carry, lambda ordinal: texts.get(int(ordinal), ""))
        self.carry = None

    def _find_duplicates(self, cols: tuple[np.ndarray, ...], text: Any) -> None:
        g, s, e, h, c, o = cols
        if len(g) < 2:
            return
        same = (g[1:] == g[:-1]) & (s[1:] == s[:-1])
        if not same.any():
            return
        grouped = np.zeros(len(g), dtype=bool)
        grouped[1:] |= same
        grouped[:-1] |= same
        idx = np.flatnonzero(grouped)
        key = _mix(g[idx], s[idx], e[idx], h[idx], c[idx])
        order = np.argsort(key, kind="stable")
        eq = np.flatnonzero(key[order][1:] == key[order][:-1])
        if eq.size == 0:
            return
        x, y = idx[order[eq]], idx[order[eq + 1]]  # y follows x (a stable sort keeps file order)
        exact = (g[x] == g[y]) & (s[x] == s[y]) & (e[x] == e[y]) & (h[x] == h[y]) & (c[x] == c[y])
        mask = np.zeros(len(g), dtype=bool)
        mask[y[exact]] = True
        self._note("FRAGMENTS_DUPLICATE", mask, o, lambda i: f"the line repeats an earlier line exactly: {text(o[i])!r}")

    def line_of(self, ordinal: int, n_header: int) -> int:
        """The line (1-based) of data row ``ordinal``: the lines Arrow skipped shift it."""
        b = np.sort(np.asarray(self.skipped, dtype=np.int64))
        j = int(np.searchsorted(b - np.arange(len(b)), ordinal + n_header + 1, side="right"))
        return n_header + 1 + ordinal + j

    def findings(self, n_header: int) -> list[Finding]:
        self.flush()
        out: list[Finding] = []
        for code, off in self.offences.items():
            firsts = [(off.line, off.line_message)] if off.line >= 0 else []
            if off.ordinal >= 0:
                firsts.append((self.line_of(off.ordinal, n_header), off.message))
            line, message = min(firsts)
            if code == "FRAGMENTS_CONTIG_UNKNOWN":
                names = sorted(self.unknown)
                message += f"; contigs not in {self.g.assembly}: {', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''}"
            out.append(Finding(code, f"{self.name} line {line}", message + and_more(off.count - 1, "line")))
        found = self.cell_fragments > 0
        if not found.any() and "FRAGMENTS_UNREADABLE" not in self.offences:
            n_data = self.n_rows + len(self.skipped)
            what = "the file has no fragments" if n_data == 0 else f"none of the file's {self.n_barcodes():,} barcodes is one of the {len(self.cells):,} cells (cells: {', '.join(map(repr, self.cells[:N_EXAMPLES]))} ...)"
            out.append(Finding("FRAGMENTS_NO_CELL_BARCODES", self.name, f"{what}; the fourth column must hold the cells' barcodes as the cell table writes them (check the '-1' suffix, or rename them)"))
        elif (~found).any() and "FRAGMENTS_UNREADABLE" not in self.offences:
            missing = self.cells[~found]
            shown = ", ".join(map(repr, missing[:N_EXAMPLES])) + (f" and {len(missing) - N_EXAMPLES:,} more" if len(missing) > N_EXAMPLES else "")
            out.append(Finding("FRAGMENTS_CELLS_WITHOUT_FRAGMENTS", self.name, f"{len(missing):,} of {len(self.cells):,} cells have no valid fragment: {shown}", "warning"))
        return out

    def n_barcodes_not_cells(self) -> int:
        return int(np.unique(np.concatenate(self.not_cell_hashes)).size) if self.not_cell_hashes else 0

    def n_barcodes(self) -> int:
        return self.n_barcodes_not_cells() + int(np.count_nonzero(self.cell_seen))

    def report(self, path: str, compression: Compression, indexed: bool, n_header: int, findings: list[Finding]) -> FragmentReport:
        return FragmentReport(
            path=path, assembly=self.g.assembly, compression=compression, indexed=indexed, n_header_lines=n_header,
            n_fragments=self.n_rows + len(self.skipped), n_fragments_cells=int(self.cell_fragments.sum()), n_fragments_not_cells=self.n_not_cells,
            n_barcodes=self.n_barcodes(), n_barcodes_not_cells=self.n_barcodes_not_cells(), cell_barcodes=self.cells.to_numpy(dtype=object),
            cell_fragments=self.cell_fragments, contigs=tuple(self.gid), findings=tuple(findings),
        )


def _check_index(path: Path, contigs: Sequence[str], name: str) -> tuple[bool, list[Finding]]:
    """Whether ``<path>.tbi`` is a usable tabix index of the file (a warning when it is not)."""
    tbi = Path(f"{path}.tbi")
    if not tbi.is_file():
        return False, []
    import pysam

    try:
        with pysam.TabixFile(str(path), index=str(tbi)) as tabix:
            listed = list(tabix.contigs)
    except (OSError, ValueError) as exc:
        return False, [Finding("FRAGMENTS_INDEX_INVALID", tbi.name, f"the tabix index cannot be read ({exc}); it is ignored, and the lake's copy gets a new one; remake it with `tabix -p bed {path.name}`", "warning")]
    if set(listed) != set(contigs):
        extra = sorted(set(listed) ^ set(contigs))
        return False, [Finding("FRAGMENTS_INDEX_INVALID", tbi.name, f"the tabix index is not this file's: its contigs differ ({', '.join(map(repr, extra[:5]))}); it is ignored, and the lake's copy gets a new one; remake it with `tabix -f -p bed {path.name}`", "warning")]
    return True, []
