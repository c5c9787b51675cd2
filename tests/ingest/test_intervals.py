"""Chromatin peaks against the assembly: the real multiome peaks pass, each kind of mistake is its own finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aivc.errors import UsageError
from aivc.ingest.intervals import check_peaks, genome, parse_intervals

#: the real multiome subset's peaks, derived into the repo (provenance and rebuild in the file's header)
PEAKS = Path(__file__).parent / "data" / "pbmc10k_multiome_peaks.txt"


def _real_peaks() -> list[str]:
    return [line for line in PEAKS.read_text().splitlines() if line and not line.startswith("#")]


def test_real_multiome_peaks_are_valid_grch38_intervals():
    peaks = _real_peaks()
    assert len(peaks) == 174 and peaks[0] == "chr1:100350982-100353664"
    iv = parse_intervals(peaks)
    assert iv.ok.all() and (iv.end > iv.start).all()
    assert (iv.contig[0], iv.start[0], iv.end[0]) == ("chr1", 100350982, 100353664)
    assert check_peaks(iv, genome("homo_sapiens")) == []


def test_the_assembly_tables():
    g = genome("homo_sapiens")
    assert g.assembly == "GRCh38" and g.lengths["chr1"] == 248_956_422 and g.lengths["chrM"] == 16_569
    assert g.resolve("1") == g.resolve("NC_000001.11") == g.resolve("CM000663.2") == "chr1"
    assert g.resolve("KI270706.1") == "chr1_KI270706v1_random"  # 10x GRCh38 names unplaced scaffolds this way
    m = genome("mus_musculus")
    assert m.assembly == "GRCm39" and m.lengths["chr1"] == 195_154_279 and m.resolve("X") == "chrX"
    with pytest.raises(UsageError, match="no chromosome table for 'danio_rerio'"):
        genome("danio_rerio")


def test_each_kind_of_mistake_is_its_own_finding():
    peaks = ["chr1:100-200", "1-300-400", "chr2:500-500", "chr1:248956000-248956500", "chrQ:1-2", "chr1:100-200", "not-a-peak", "chr2:900-800"]
    findings = check_peaks(parse_intervals(peaks), genome("homo_sapiens"), where="mod['atac'].var.index")
    by = {f.code: f for f in findings}
    assert list(by) == ["PEAK_UNPARSEABLE", "PEAK_CONTIG_UNKNOWN", "PEAK_START_NOT_BEFORE_END", "PEAK_PAST_CHROMOSOME_END", "PEAK_DUPLICATE"]
    assert all(f.severity == "error" and f.where == "mod['atac'].var.index" for f in findings)
    assert by["PEAK_UNPARSEABLE"].message == "1 peak is not an interval (chr:start-end, chr-start-end or three columns): 'not-a-peak' (row 6)"
    assert "'chrQ'" in by["PEAK_CONTIG_UNKNOWN"].message and "(row 4)" in by["PEAK_CONTIG_UNKNOWN"].message
    assert by["PEAK_START_NOT_BEFORE_END"].message.startswith("2 peaks start at or after their end") and "(row 2)" in by["PEAK_START_NOT_BEFORE_END"].message
    assert by["PEAK_PAST_CHROMOSOME_END"].message.startswith("1 peak ends past its contig (chr1 is 248,956,422 bp in GRCh38)") and "(row 3)" in by["PEAK_PAST_CHROMOSOME_END"].message
    assert "'chr1:100-200' (row 5)" in by["PEAK_DUPLICATE"].message  # the first one is not the duplicate
    # an alias of an earlier contig is the same interval
    assert [f.code for f in check_peaks(parse_intervals(["chr1:10-20", "1:10-20"]), genome("homo_sapiens"))] == ["PEAK_DUPLICATE"]


def test_three_columns():
    frame = pd.DataFrame({"chrom": ["chr1", "chrX", "chr1"], "start": [10, 5, "x"], "end": [20, 156_040_896, 30]})
    iv = parse_intervals(frame)
    assert iv.ok.tolist() == [True, True, False] and iv.end.tolist() == [20, 156_040_896, 0]
    codes = [f.code for f in check_peaks(iv, genome("homo_sapiens"))]
    assert codes == ["PEAK_UNPARSEABLE", "PEAK_PAST_CHROMOSOME_END"]  # chrX is 156,040,895 bp
    with pytest.raises(UsageError, match="three"):
        parse_intervals(frame[["chrom", "start"]])
    assert np.array_equal(parse_intervals(["chr1-5-9"]).start, [5])
