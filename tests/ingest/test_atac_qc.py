"""Per-cell ATAC QC and gene activity on the real multiome subset, against a brute-force reference."""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from aivc.errors import UsageError
from aivc.ingest.atac_qc import AtacQcParams, _Regions, compute_atac_qc, run_atac_expectations, tss_sites
from aivc.ingest.intervals import genome, parse_intervals

#: derived from the real 10x Multiome PBMC subset by data/build_multiome_subset.py
DATA = Path(__file__).parent / "data"
FRAGMENTS = DATA / "multiome_fragments.tsv.gz"
GRCH38 = genome("homo_sapiens")


def _cells() -> list[str]:
    return [line for line in (DATA / "multiome_cells.txt").read_text().splitlines() if line and not line.startswith("#")]


def _features() -> tuple[pd.DataFrame, pd.DataFrame]:
    f = pd.read_csv(DATA / "multiome_features.tsv", sep="\t", comment="#")
    return f[f.kind == "gene"].reset_index(drop=True), f[f.kind == "peak"].reset_index(drop=True)


def _interval(text: str) -> tuple[str, int, int]:
    contig, span = text.split(":")
    a, b = span.split("-")
    return contig, int(a), int(b)


@pytest.fixture(scope="module")
def real():
    cells = _cells()
    genes, peaks = _features()
    report, qc = compute_atac_qc(FRAGMENTS, GRCH38, cells, peaks=parse_intervals(peaks.interval.tolist()), genes=parse_intervals(genes.interval.tolist()), gene_names=genes.name.tolist())
    return cells, genes, peaks, report, qc


def _reference(cells, genes, peaks, p: AtacQcParams | None = None):
    """Every quantity by its definition, one fragment and one feature at a time."""
    p = p or AtacQcParams()
    index = {c: i for i, c in enumerate(cells)}
    peak_list = [_interval(x) for x in peaks.interval]
    gene_list = [_interval(x) for x in genes.interval]
    sites = defaultdict(set)
    for contig, a, b in gene_list:
        sites[contig].update((a, b - 1))
    n, in_peaks, center, flank = (np.zeros(len(cells), dtype=np.int64) for _ in range(4))
    activity: Counter = Counter()
    with gzip.open(FRAGMENTS, "rt") as fh:
        for line in fh:
            contig, s, e, barcode, _ = line.rstrip("\n").split("\t")
            if barcode not in index:
                continue
            i, s, e = index[barcode], int(s), int(e)
            n[i] += 1
            in_peaks[i] += any(c == contig and s < pe and ps < e for c, ps, pe in peak_list)
            for pos in (s, e - 1):
                for t in sites[contig]:
                    d = abs(pos - t)
                    center[i] += d <= p.tss_center
                    flank[i] += p.tss_flank[0] <= d <= p.tss_flank[1]
            for j, (c, gs, ge) in enumerate(gene_list):
                if c == contig and s < ge + p.gene_extend and max(gs - p.gene_extend, 0) < e:
                    activity[i, j] += 1
    return n, in_peaks, center, flank, activity


def test_qc_matches_a_brute_force_reference_on_real_data(real):
    cells, genes, peaks, report, qc = real
    n, in_peaks, center, flank, activity = _reference(cells, genes, peaks)
    t = qc.qc
    assert t.index.tolist() == cells and list(t.columns) == ["n_fragments", "n_fragments_in_peaks", "frip", "n_tss_insertions", "n_flank_insertions", "tss_enrichment"]
    assert t["n_fragments"].tolist() == n.tolist() == report.cell_fragments.tolist()
    assert t["n_fragments_in_peaks"].tolist() == in_peaks.tolist()
    assert t["n_tss_insertions"].tolist() == center.tolist() and t["n_flank_insertions"].tolist() == flank.tolist()
    has = n > 0
    assert np.allclose(t["frip"][has], in_peaks[has] / n[has]) and t["frip"][~has].isna().all()
    expected_tss = (center / 101) / (np.maximum(flank, 1) / 200)
    assert np.allclose(t["tss_enrichment"][has], expected_tss[has]) and t["tss_enrichment"][~has].isna().all()
    dense = np.zeros((len(cells), len(genes)), dtype=np.int64)
    for (i, j), v in activity.items():
        dense[i, j] = v
    assert qc.gene_activity.shape == (1000, 45) and qc.gene_activity.dtype == np.int64
    assert np.array_equal(qc.gene_activity.toarray(), dense)
    assert qc.genes.tolist() == genes.name.tolist()
    # the real values
    assert (int(in_peaks.sum()), int(center.sum()), int(flank.sum())) == (3_841, 812, 180)
    assert t["frip"].median() == 0.85 and (qc.gene_activity.nnz, int(qc.gene_activity.sum())) == (2_318, 3_300)
    per_gene = dict(zip(qc.genes, np.asarray(qc.gene_activity.sum(axis=0)).ravel(), strict=True))
    assert (per_gene["CDC14A"], per_gene["RPS27"], per_gene["FCGR3A"], per_gene["CD79A"]) == (545, 349, 44, 0)  # CD79A: chr19 is not in the subset
    assert qc.pooled_tss_enrichment == pytest.approx((812 / 101) / (180 / 200))  # 8.93: the TSS signal is real


def test_other_windows_and_small_blocks(real):
    cells, genes, peaks, _, whole = real
    p = AtacQcParams(tss_center=1000, tss_flank=(1901, 2000), gene_extend=0)
    n, in_peaks, center, flank, activity = _reference(cells, genes, peaks, p)
    _, qc = compute_atac_qc(FRAGMENTS, "homo_sapiens", cells, peaks=parse_intervals(peaks.interval.tolist()), genes=parse_intervals(genes.interval.tolist()), params=p, chunk_bytes=4096)
    assert qc.qc["n_tss_insertions"].tolist() == center.tolist() and qc.qc["n_flank_insertions"].tolist() == flank.tolist()
    assert int(qc.gene_activity.sum()) == sum(activity.values()) < int(whole.gene_activity.sum())
    assert qc.genes[0] == "gene_0"
    # the default windows in 4 kB blocks: the same numbers as in one block
    _, small = compute_atac_qc(FRAGMENTS, GRCH38, cells, peaks=parse_intervals(peaks.interval.tolist()), genes=parse_intervals(genes.interval.tolist()), chunk_bytes=4096)
    pd.testing.assert_frame_equal(small.qc, whole.qc)
    assert (small.gene_activity != whole.gene_activity).nnz == 0


def test_contig_aliases_match_the_peaks(tmp_path, real):
    cells, genes, peaks, _, whole = real
    ensembl = tmp_path / "ensembl.tsv.gz"
    with gzip.open(FRAGMENTS, "rt") as fin, pysam.BGZFile(str(ensembl), "wb") as fout:
        fout.write("".join(line[3:] for line in fin).encode())  # chr1 -> 1, the peaks keep chr1
    _, qc = compute_atac_qc(ensembl, GRCH38, cells, peaks=parse_intervals(peaks.interval.tolist()), genes=parse_intervals(genes.interval.tolist()), gene_names=genes.name.tolist())
    pd.testing.assert_frame_equal(qc.qc, whole.qc)


def test_without_peaks_or_genes(real):
    cells = real[0]
    report, qc = compute_atac_qc(FRAGMENTS, GRCH38, cells)
    assert qc.qc["frip"].isna().all() and qc.qc["tss_enrichment"].isna().all() and qc.gene_activity.shape == (1000, 0)
    assert qc.qc["n_fragments"].sum() == report.n_fragments_cells == 4_783 and np.isnan(qc.pooled_tss_enrichment)


def test_tss_sites_and_regions():
    iv = parse_intervals(["chr1:100-101", "chr1:500-900", "1:100-300"])
    assert {k: v.tolist() for k, v in tss_sites(iv, GRCH38).items()} == {"chr1": [100, 299, 500, 899]}
    with pytest.raises(UsageError, match="not intervals on GRCh38 contigs"):
        tss_sites(parse_intervals(["chrQ:1-5"]), GRCH38)
    with pytest.raises(UsageError, match="ATAC QC windows"):
        AtacQcParams(tss_center=2000)
    # overlap pairs of regions of very different lengths, against all pairs
    rng = np.random.default_rng(7)
    start = rng.integers(0, 1_000_000, 300)
    end = start + np.concatenate([rng.integers(1, 50, 100), rng.integers(1_000, 5_000, 100), rng.integers(100_000, 400_000, 100)])
    s = rng.integers(0, 1_200_000, 2_000)
    e = s + rng.integers(1, 800, 2_000)
    rows, cols = _Regions.of(start, end, np.arange(300)).pairs(s, e)
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    want = sorted((i, j) for i in range(2_000) for j in range(300) if s[i] < end[j] and start[j] < e[i])
    assert got == want and len(want) > 1_000


def test_the_atac_suite_on_real_qc(real):
    qc = real[4].qc
    findings, results = run_atac_expectations(qc)
    assert [(f.code, f.severity) for f in findings] == [("QC_ATAC_NO_FRAGMENTS", "warning"), ("QC_ATAC_MEDIAN_TSS_LOW", "warning"), ("QC_ATAC_MEDIAN_FRAGMENTS_LOW", "warning")]
    assert findings[0].message.startswith("10.7% of cells (107 of 1000) have n_fragments < 1 (allowed: at most 5%)")
    assert "median of n_fragments is 4 " in findings[2].message
    by = {r["code"]: r for r in results}
    assert by["QC_ATAC_MEDIAN_FRIP_LOW"]["success"] and by["QC_ATAC_MEDIAN_FRIP_LOW"]["observed"] == "0.85"
    assert by["QC_ATAC_FRIP_RANGE"]["success"] and by["QC_ATAC_FRIP_RANGE"]["severity"] == "error"
    # thresholds are parameters; an impossible frip is an error; uncomputed columns are not judged
    findings, _ = run_atac_expectations(qc, min_median_tss_enrichment=0, min_median_fragments=1, min_median_frip=0.9)
    assert [f.code for f in findings] == ["QC_ATAC_NO_FRAGMENTS", "QC_ATAC_MEDIAN_FRIP_LOW"]
    bad = qc.copy()
    bad.loc[bad.index[0], "frip"] = 1.5
    bad["tss_enrichment"] = np.nan
    findings, results = run_atac_expectations(bad, min_median_fragments=1)
    assert [(f.code, f.severity) for f in findings] == [("QC_ATAC_NO_FRAGMENTS", "warning"), ("QC_ATAC_FRIP_RANGE", "error")]
    assert findings[1].where == f"qc column 'frip' rows {qc.index[0]!r}"
    assert [r["observed"] for r in results if r["column"] == "tss_enrichment"] == ["not computed", "not computed"]
