"""ATAC fragment files: the real multiome subset passes with its counts, each mistake is its own finding at its line."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pysam
import pytest

from aivc.errors import UsageError
from aivc.ingest.fragments import BGZF_EOF, check_fragments, compression_of
from aivc.ingest.fragments_write import write_cell_fragments
from aivc.ingest.intervals import genome

#: derived from the real 10x Multiome PBMC subset by data/build_multiome_subset.py (provenance there and in multiome_PROVENANCE.md)
DATA = Path(__file__).parent / "data"
FRAGMENTS = DATA / "multiome_fragments.tsv.gz"
GRCH38 = genome("homo_sapiens")
#: first line of each contig in the derived file (1-based)
FIRST_LINE = {"chr1": 1, "chr6": 18302, "chr7": 29052, "chr9": 36007, "chr12": 45422, "chr17": 47148, "chr20": 50637}
N_LINES = 52_540


def real_cells() -> list[str]:
    return [line for line in (DATA / "multiome_cells.txt").read_text().splitlines() if line and not line.startswith("#")]


def real_lines() -> list[str]:
    with gzip.open(FRAGMENTS, "rt") as fh:
        return fh.read().splitlines()


def write_bgzf(path: Path, lines: list[str], *, eof: bool = True) -> Path:
    with pysam.BGZFile(str(path), "wb") as fh:
        fh.write(("\n".join(lines) + "\n").encode() if lines else b"")
    if not eof:
        data = path.read_bytes()
        assert data.endswith(BGZF_EOF)
        path.write_bytes(data[: -len(BGZF_EOF)])
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_real_subset_passes_with_its_counts():
    cells = real_cells()
    before = _sha256(FRAGMENTS)
    report = check_fragments(FRAGMENTS, GRCH38, cells)
    assert _sha256(FRAGMENTS) == before  # read, never written
    # an independent count over the text
    rows = [line.split("\t") for line in real_lines()]
    cell_set = set(cells)
    per_cell = Counter(r[3] for r in rows if r[3] in cell_set)
    not_cells = [r[3] for r in rows if r[3] not in cell_set]
    assert (len(rows), sum(per_cell.values()), len(not_cells), len(set(not_cells)), len(per_cell)) == (52_540, 4_783, 47_757, 9_737, 893)
    assert report.ok and report.compression == "bgzf" and report.indexed and report.assembly == "GRCh38"
    assert (report.n_fragments, report.n_fragments_cells, report.n_fragments_not_cells) == (52_540, 4_783, 47_757)
    assert (report.n_barcodes, report.n_barcodes_not_cells, report.n_cells_with_fragments) == (10_630, 9_737, 893)
    assert report.contigs == tuple(FIRST_LINE) and report.n_header_lines == 0
    assert report.cell_fragments.tolist() == [per_cell.get(c, 0) for c in cells]
    assert report.cell_fragments.max() == 30 and report.cell_barcodes.tolist() == cells
    # the 107 cells without a fragment in these seven contigs are a warning, naming the first three
    (warning,) = report.findings
    assert warning.code == "FRAGMENTS_CELLS_WITHOUT_FRAGMENTS" and warning.severity == "warning"
    missing = [c for c in cells if c not in per_cell]
    assert warning.message == f"107 of 1,000 cells have no valid fragment: {missing[0]!r}, {missing[1]!r}, {missing[2]!r} and 104 more"
    assert report.to_dict()["n_cells_with_fragments"] == 893


def test_small_blocks_give_the_same_report():
    cells = real_cells()
    whole = check_fragments(FRAGMENTS, GRCH38, cells)
    small = check_fragments(FRAGMENTS, "homo_sapiens", cells, chunk_bytes=4096)  # ~90 lines a block
    assert small.to_dict() == whole.to_dict()
    assert np.array_equal(small.cell_fragments, whole.cell_fragments)


Mutation = Callable[[list[str]], list[str]]


def _set(line_no: int, column: int, value: str) -> Mutation:
    def mutate(lines: list[str]) -> list[str]:
        out = lines[:]
        fields = out[line_no - 1].split("\t")
        fields[column] = value
        out[line_no - 1] = "\t".join(fields)
        return out

    return mutate


def _extra_column(lines: list[str]) -> list[str]:
    return lines[:99] + [lines[99] + "\textra"] + lines[100:]


def _missing_column(lines: list[str]) -> list[str]:
    return lines[:199] + [lines[199].rsplit("\t", 1)[0]] + lines[200:]


def _empty_line(lines: list[str]) -> list[str]:
    return lines[:299] + [""] + lines[299:]


def _end_equals_start(lines: list[str]) -> list[str]:
    f = lines[499].split("\t")
    return _set(500, 2, f[1])(lines)


def _unknown_contig(lines: list[str]) -> list[str]:
    return [line.replace("chr20\t", "chrQ\t", 1) if line.startswith("chr20\t") else line for line in lines]


def _duplicate(lines: list[str]) -> list[str]:
    return lines[:800] + [lines[799]] + lines[800:]


def _swap_point(lines: list[str]) -> int:
    """The first line from 900 on whose start is below the next line's (1-based)."""
    starts = [int(line.split("\t")[1]) for line in lines[899:1100]]
    return 900 + next(i for i in range(len(starts) - 1) if starts[i] < starts[i + 1])


def _swap(lines: list[str]) -> list[str]:
    i = _swap_point(lines) - 1
    return lines[:i] + [lines[i + 1], lines[i]] + lines[i + 2 :]


def _contig_back(lines: list[str]) -> list[str]:
    i = FIRST_LINE["chr7"] - 1
    return lines[:i] + lines[i + 1 :] + [lines[i]]


#: (name, mutation, code, line of the first offender, more offending lines)
BAD = [
    ("extra_column", _extra_column, "FRAGMENTS_COLUMNS", 100, 0),
    ("missing_column", _missing_column, "FRAGMENTS_COLUMNS", 200, 0),
    ("empty_line", _empty_line, "FRAGMENTS_COLUMNS", 300, 0),
    ("start_not_integer", _set(400, 1, "100.5"), "FRAGMENTS_COORDINATE_INVALID", 400, 0),
    ("end_not_integer", _set(450, 2, "12e6"), "FRAGMENTS_COORDINATE_INVALID", 450, 0),
    ("start_negative", _set(FIRST_LINE["chr6"], 1, "-1"), "FRAGMENTS_START_NEGATIVE", FIRST_LINE["chr6"], 0),
    ("end_equals_start", _end_equals_start, "FRAGMENTS_START_NOT_BEFORE_END", 500, 0),
    ("past_chromosome_end", _set(FIRST_LINE["chr6"] - 1, 2, "248956423"), "FRAGMENTS_PAST_CHROMOSOME_END", FIRST_LINE["chr6"] - 1, 0),
    ("unknown_contig", _unknown_contig, "FRAGMENTS_CONTIG_UNKNOWN", FIRST_LINE["chr20"], N_LINES - FIRST_LINE["chr20"]),
    ("count_zero", _set(600, 4, "0"), "FRAGMENTS_COUNT_INVALID", 600, 0),
    ("count_float", _set(700, 4, "1.5"), "FRAGMENTS_COUNT_INVALID", 700, 0),
    ("duplicate", _duplicate, "FRAGMENTS_DUPLICATE", 801, 0),
    ("unsorted_start", _swap, "FRAGMENTS_UNSORTED", -1, 0),
    ("contig_comes_back", _contig_back, "FRAGMENTS_UNSORTED", N_LINES, 0),
]


@pytest.mark.parametrize("chunk_bytes", [1 << 23, 4096], ids=["one_block", "small_blocks"])
@pytest.mark.parametrize(("name", "mutate", "code", "line", "more"), BAD, ids=[b[0] for b in BAD])
def test_each_mistake_is_its_own_finding_at_its_line(tmp_path, name, mutate, code, line, more, chunk_bytes):
    lines = real_lines()
    path = write_bgzf(tmp_path / f"{name}.tsv.gz", mutate(lines))
    if line == -1:
        line = _swap_point(lines) + 1
    report = check_fragments(path, GRCH38, real_cells(), chunk_bytes=chunk_bytes)
    errors = [f for f in report.findings if f.severity == "error"]
    assert [f.code for f in errors] == [code], report.findings
    (f,) = errors
    assert f.where == f"{name}.tsv.gz line {line}"
    assert f.message.endswith(f" (and {more} more line{'s' if more > 1 else ''})") if more else "more line" not in f.message
    assert {w.code for w in report.findings if w.severity == "warning"} <= {"FRAGMENTS_CELLS_WITHOUT_FRAGMENTS"}


def test_what_the_messages_say(tmp_path):
    lines = real_lines()
    cells = real_cells()

    def first(mutate: Mutation) -> str:
        report = check_fragments(write_bgzf(tmp_path / "f.tsv.gz", mutate(lines)), GRCH38, cells)
        return next(f.message for f in report.findings if f.severity == "error")

    assert first(_extra_column).startswith("the line has 6 tab-separated column(s), not 5 (contig, start, end, barcode, count): 'chr1\\t")
    assert first(_empty_line) == "the line is empty; a fragments file has no blank lines"
    assert first(_set(FIRST_LINE["chr6"] - 1, 2, "248956423")).startswith("end 248,956,423 is past the end of chr1 (248,956,422 bp in GRCh38)")
    assert first(_unknown_contig).startswith("contig 'chrQ' is not in GRCh38") and "; contigs not in GRCh38: 'chrQ'" in first(_unknown_contig)
    assert first(_duplicate) == f"the line repeats an earlier line exactly: {lines[799]!r}"
    assert first(_contig_back).startswith("contig 'chr7' comes back after 'chr20'")
    assert first(_swap).startswith("start ") and "sort -k1,1 -k2,2n" in first(_swap)


def test_compression_and_truncation(tmp_path):
    lines = real_lines()
    cells = real_cells()
    plain_gzip = tmp_path / "plain.tsv.gz"
    with gzip.open(plain_gzip, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    text = tmp_path / "text.tsv"
    text.write_text("\n".join(lines) + "\n")
    for path, how in ((plain_gzip, "plain gzip"), (text, "not compressed")):
        report = check_fragments(path, GRCH38, cells)
        assert [f.code for f in report.findings if f.severity == "error"] == ["FRAGMENTS_NOT_BGZF"]
        assert report.findings[0].where == path.name and f"the file is {how}, not BGZF" in report.findings[0].message
        assert report.n_fragments_cells == 4_783  # still read through, every other check made
    assert (compression_of(plain_gzip), compression_of(text), compression_of(FRAGMENTS)) == ("gzip", "none", "bgzf")
    cut = write_bgzf(tmp_path / "cut.tsv.gz", lines, eof=False)
    report = check_fragments(cut, GRCH38, cells)
    assert [f.code for f in report.findings if f.severity == "error"] == ["FRAGMENTS_TRUNCATED"] and report.n_fragments == N_LINES
    # bytes damaged inside a block: the stream stops there
    broken = tmp_path / "broken.tsv.gz"
    data = bytearray(FRAGMENTS.read_bytes())
    data[200_000:200_040] = b"\x00" * 40
    broken.write_bytes(bytes(data))
    report = check_fragments(broken, GRCH38, cells, chunk_bytes=4096)
    codes = [f.code for f in report.findings if f.severity == "error"]
    assert codes[0] == "FRAGMENTS_UNREADABLE" and report.findings[0].where.startswith("broken.tsv.gz line ")
    assert 0 < report.n_fragments < N_LINES


def test_barcodes_that_match_no_cell(tmp_path):
    lines = [line.replace("-1\t", "-2\t") for line in real_lines()]
    report = check_fragments(write_bgzf(tmp_path / "suffix.tsv.gz", lines), GRCH38, real_cells())
    assert [f.code for f in report.findings] == ["FRAGMENTS_NO_CELL_BARCODES"]
    assert report.findings[0].message.startswith("none of the file's 10,630 barcodes is one of the 1,000 cells")
    assert (report.n_fragments_cells, report.n_fragments_not_cells, report.n_barcodes_not_cells) == (0, N_LINES, 10_630)
    empty = tmp_path / "empty.tsv.gz"
    write_bgzf(empty, [])
    assert "the file has no fragments" in check_fragments(empty, GRCH38, real_cells()).findings[-1].message


def test_header_lines_are_a_warning_and_shift_line_numbers(tmp_path):
    header = ["# id=pbmc_granulocyte_sorted_10k", "# reference_path=/refdata-cellranger-arc-GRCh38-2020-A"]
    path = write_bgzf(tmp_path / "header.tsv.gz", header + real_lines())
    report = check_fragments(path, GRCH38, real_cells())
    assert report.ok and report.n_header_lines == 2 and report.n_fragments == N_LINES and report.n_fragments_cells == 4_783
    assert [f.code for f in report.findings] == ["FRAGMENTS_HEADER_LINES", "FRAGMENTS_CELLS_WITHOUT_FRAGMENTS"]
    assert report.findings[0].where == "header.tsv.gz lines 1-2" and report.findings[0].severity == "warning"
    bad = write_bgzf(tmp_path / "header_bad.tsv.gz", header + _extra_column(real_lines()))
    assert next(f.where for f in check_fragments(bad, GRCH38, real_cells(), chunk_bytes=4096).findings if f.severity == "error") == "header_bad.tsv.gz line 102"


def test_the_tabix_index(tmp_path):
    cells = real_cells()
    copy = tmp_path / "copy.tsv.gz"
    shutil.copy(FRAGMENTS, copy)
    report = check_fragments(copy, GRCH38, cells)
    assert not report.indexed and report.ok  # no index: none needed to pass, the lake makes its own
    Path(f"{copy}.tbi").write_bytes(b"not an index")
    report = check_fragments(copy, GRCH38, cells)
    assert not report.indexed and report.ok and "FRAGMENTS_INDEX_INVALID" in [f.code for f in report.findings]
    # another file's index: its contigs differ
    no_chr20 = write_bgzf(tmp_path / "no_chr20.tsv.gz", [line for line in real_lines() if not line.startswith("chr20\t")])
    shutil.copy(f"{FRAGMENTS}.tbi", f"{no_chr20}.tbi")
    found = {f.code: f for f in check_fragments(no_chr20, GRCH38, cells).findings}
    assert found["FRAGMENTS_INDEX_INVALID"].severity == "warning" and "'chr20'" in found["FRAGMENTS_INDEX_INVALID"].message


def test_contig_aliases_are_known(tmp_path):
    lines = [line[3:] if line.startswith("chr") else line for line in real_lines()]  # Ensembl names: 1, 6, 7 ...
    report = check_fragments(write_bgzf(tmp_path / "ensembl.tsv.gz", lines), GRCH38, real_cells())
    assert report.ok and report.contigs[:2] == ("1", "6") and report.n_fragments_cells == 4_783


def test_wrong_arguments_raise(tmp_path):
    with pytest.raises(UsageError, match="no fragments file"):
        check_fragments(tmp_path / "nope.tsv.gz", GRCH38, ["A-1"])
    with pytest.raises(UsageError, match="cell barcodes must be unique; repeated: 'A-1'"):
        check_fragments(FRAGMENTS, GRCH38, ["A-1", "A-1"])


def test_write_cell_fragments_keeps_the_cells_renamed_sorted_and_indexed(tmp_path):
    cells = real_cells()
    rename = {c: f"pbmc_{i}" for i, c in enumerate(cells)}
    before = _sha256(FRAGMENTS)
    written = write_cell_fragments(FRAGMENTS, tmp_path / "cells.tsv.gz", cells, rename, chunk_bytes=4096)
    assert _sha256(FRAGMENTS) == before
    assert written.n_fragments == 4_783 and written.n_cells == 1_000 and written.index == tmp_path / "cells.tsv.gz.tbi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.tsv.gz", "cells.tsv.gz.tbi"]  # no temporary left
    # exactly the cells' lines, in order, with the new names
    expected = []
    for line in real_lines():
        f = line.split("\t")
        if f[3] in rename:
            expected.append("\t".join([*f[:3], rename[f[3]], f[4]]))
    with gzip.open(written.path, "rt") as fh:
        assert fh.read().splitlines() == expected
    report = check_fragments(written.path, GRCH38, list(rename.values()))
    assert report.ok and report.indexed and report.n_fragments_not_cells == 0 and report.n_fragments_cells == 4_783
    assert report.cell_fragments.tolist() == check_fragments(FRAGMENTS, GRCH38, cells).cell_fragments.tolist()
    # the index answers region queries (what a genome browser or Signac asks)
    with pysam.TabixFile(str(written.path)) as tabix:
        region = list(tabix.fetch("chr1", 100_340_000, 100_345_000))
    assert region and all(r.split("\t")[3].startswith("pbmc_") for r in region)
    # without rename the barcodes stay
    plain = write_cell_fragments(FRAGMENTS, tmp_path / "same.tsv.gz", cells)
    with gzip.open(plain.path, "rt") as fh:
        assert fh.readline().split("\t")[3] in set(cells)


def test_write_cell_fragments_refuses(tmp_path):
    cells = real_cells()
    with pytest.raises(UsageError, match="same barcode"):
        write_cell_fragments(FRAGMENTS, tmp_path / "x.tsv.gz", cells, {cells[0]: "a", cells[1]: "a"})
    bad = write_bgzf(tmp_path / "bad.tsv.gz", _extra_column(real_lines()))
    with pytest.raises(UsageError, match="line 100 has 6 columns"):
        write_cell_fragments(bad, tmp_path / "x.tsv.gz", cells)
    assert not (tmp_path / "x.tsv.gz").exists() and not list(tmp_path.glob(".x.tsv.gz*"))
