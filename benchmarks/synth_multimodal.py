"""Realistic synthetic multimodal submissions (RNA + ADT + ATAC ``.h5mu`` + manifest), streamed to disk.

The multimodal companion of :mod:`synth` (whose RNA model and sampler it reuses): one MuData
file whose three modalities share the same cells, and a manifest in the ``measurements:``
format. Run it directly to write one::

    .venv/bin/python benchmarks/synth_multimodal.py --cells 20000 --out /work/bench-scratch/multimodal/data

or import it (``sys.path.insert(0, "benchmarks")``; ``from synth_multimodal import make_submission``).

The modalities
--------------
``mod/rna`` (measurement ``RNA``)
    Exactly :mod:`synth`'s counts: negative binomial with per-gene means and dispersions
    resampled from real PBMC data, real human genes (``var`` index = symbols,
    ``var["gene_ids"]`` = Ensembl ids), five PBMC cell types with their own programs, four
    donors, ~3,500 UMIs and ~1,500 detected genes per cell. Same ``seed``, same cells, same
    counts as ``synth.py`` would write for the RNA part.
``mod/prot`` (measurement ``ADT``)
    A TotalSeq-B panel of real antibodies of ``schemas/panels/totalseq.tsv``, named as Cell
    Ranger names them (``CD3_TotalSeqB``, ``PD-1_TotalSeqB``, ``IgG1_control_TotalSeqB``):
    by default the 30 markers of :data:`ADT_MARKERS` plus the three mouse isotype controls of
    the 10x PBMC panels (33). Counts are NB: each antibody has an ambient background mean
    (log-normal around 12 counts, sigma 0.6) and, in the cell types that carry its target
    (:data:`ADT_MARKERS`: CD3 on T cells, CD14 on monocytes, CD19/CD20 on B cells, CD56 on NK
    cells, ...), a log-normal fold over it (around 25x); isotype controls stay near 3 counts;
    dispersion ~0.25. Per-cell library sizes are log-normal (sigma 0.5), correlated (rho 0.5)
    with the RNA library size. Mean ~4,700 ADT counts per cell, ~97 % of the entries non-zero, like
    10x PBMC CITE-seq data. ``--proteins`` above 33 adds further human panel markers (background
    only); below, drops markers from the end (the isotypes stay).
``mod/atac`` (measurement ``ATAC``)
    Peaks over GRCh38: ``--peaks`` intervals (default 20,000) on chr1-22 and chrX, in
    proportion to the chromosome lengths of ``schemas/genomes/GRCh38.tsv``, 150-3,000 bp wide
    (log-normal around 600 bp), sorted and non-overlapping, written ``chr1:start-end``
    (0-based half-open, as Cell Ranger ARC) in ``var.index``, ``var["interval"]`` and
    ``var["gene_ids"]``. Counts are sparse NB (overdispersed Poisson): per-peak accessibility
    is log-normal (sigma 0.8), 15 % of the peaks are cell-type specific per type (log-normal
    fold, sigma 1), no peak's mean above :data:`ATAC_MAX_MEAN` (1 count at size factor 1: a
    diploid locus gives a few cuts), dispersion ~0.7, per-cell depth log-normal (sigma 0.6,
    rho 0.5 with RNA). The mean count per matrix entry is ``atac_counts_per_peak`` (0.08:
    ~1,600 counts in 20,000 peaks per cell, what a random 20,000 of the ~100,000 peaks of a
    10x PBMC Multiome run carry), so ~6.8 % of the entries are non-zero: 87 % of them 1, 10 %
    2, the largest ~30.

All three are sampled by :func:`synth.sample_block` from per (cell type, depth level) tables
(:class:`synth._Tables`), inverse-CDF and sparse: one uniform and one comparison per matrix
entry, NB quantiles only for the non-zeros. Nothing of size cells x features is allocated.

The file
--------
Written with h5py in the MuData on-disk format (``encoding-type MuData``), as
``mudata.write_h5mu`` lays it out: the global ``obs`` (``donor``, ``cell_label``; index =
``synth``'s 16-nt barcodes) and ``var`` (every feature of every modality), ``obsmap`` /
``varmap``, ``mod/<name>`` one AnnData group each (``mod-order`` rna, prot, atac) whose ``X``
is a CSR matrix (float32 ``data``, int32 ``indices`` and ``indptr``, as scipy and muon write
them; ``indptr`` int64 past 2^31 non-zeros) grown block by block
(``block_rows`` cells at a time). ``mod/rna/obs`` repeats the two columns (muon files carry
per-modality annotations too); the other modalities' ``obs`` have the index only. Memory is
bounded by the (cell type, level) x feature tables (~100 MB each for 20,000 genes and 20,000
peaks) plus one block: under 1 GB peak whatever ``n_cells``. 20,000 cells (57 M non-zeros, 455 MiB)
take ~20 s on 2 cores, 100,000 (288 M non-zeros, 2.2 GiB) ~3.5 min on a loaded 2-core box.

:func:`make_submission` also writes the manifest (``measurements:`` RNA ``mod:rna`` by symbol,
ADT ``mod:prot`` with ``features: var``, ATAC ``mod:atac`` with ``peaks: {column: interval}``
on GRCh38; the obs fields of ``synth.manifest`` with assay ``EFO:0030059`` 10x multiome, the
kit DOGMA-seq adds antibodies to, and suspension ``nucleus``) and a ``<name>.json`` sidecar
with the spec and per-modality statistics; a file with the same spec is reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import synth

#: Version of this generator; part of the cache key of generated files.
GENERATOR_VERSION = 2

_T, _M, _NK, _B, _DC = "T cell", "CD14-positive monocyte", "natural killer cell", "B cell", "dendritic cell"
#: The default antibodies (panel markers) and the cell types of :data:`synth.CELL_LABELS` that carry their target.
ADT_MARKERS: dict[str, tuple[str, ...]] = {
    "CD3": (_T,), "CD4": (_T, _M), "CD8a": (_T,), "CD11b": (_M, _NK), "CD11c": (_M, _DC), "CD14": (_M,),
    "CD15": (_M,), "CD16": (_NK, _M), "CD19": (_B,), "CD20": (_B,), "CD25": (_T,), "CD27": (_T, _B),
    "CD28": (_T,), "CD34": (), "CD45RA": (_T, _B, _NK), "CD45RO": (_T,), "CD56": (_NK,), "CD62L": (_T, _B),
    "CD69": (), "CD80": (_DC,), "CD86": (_M, _DC), "CD127": (_T,), "CD137": (), "CD197": (_T, _B),
    "CD274": (_M,), "CD278": (_T,), "HLA-DR": (_B, _M, _DC), "PD-1": (_T,), "TIGIT": (_T, _NK), "CD335": (_NK,),
}
#: The isotype controls of the 10x PBMC TotalSeq-B panels, as Cell Ranger names them.
ADT_ISOTYPES: tuple[str, ...] = ("IgG1_control_TotalSeqB", "IgG2a_control_TotalSeqB", "IgG2b_control_TotalSeqB")
#: Chromosomes peaks are placed on.
PEAK_CONTIGS: tuple[str, ...] = tuple(f"chr{i}" for i in range(1, 23)) + ("chrX",)
MODS: tuple[str, ...] = ("rna", "prot", "atac")
#: The largest mean ATAC count of one peak in one cell of size factor 1 (a diploid locus: a few cuts).
ATAC_MAX_MEAN = 1.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class MultimodalSpec:
    """Parameters of a synthetic multimodal dataset (all of them are part of the cache key)."""

    n_cells: int = 20_000
    n_genes: int = 20_000
    n_proteins: int = 33  # including the 3 isotype controls
    n_peaks: int = 20_000
    seed: int = 0
    mean_umis: float = 3500.0
    mean_genes: float = 1500.0
    adt_size_sigma: float = 0.5
    atac_counts_per_peak: float = 0.08
    atac_size_sigma: float = 0.6
    depth_correlation: float = 0.5  # of the log library sizes of ADT and ATAC with RNA's
    block_rows: int = 1000
    version: int = GENERATOR_VERSION

    def rna(self) -> synth.SynthSpec:
        """The RNA part, as :mod:`synth` makes it."""
        return synth.SynthSpec(n_cells=self.n_cells, n_genes=self.n_genes, seed=self.seed, mean_umis=self.mean_umis, mean_genes=self.mean_genes, block_rows=self.block_rows)


@dataclass
class FeatureModel:
    """NB means per feature, dispersions and per cell-type folds: what :class:`synth._Tables` tabulates."""

    means: np.ndarray  # (n_features,) expected counts at size factor 1, fold 1
    phi: np.ndarray  # (n_features,)
    label_fold: np.ndarray  # (n_labels, n_features)
    size_levels: np.ndarray  # (K,) from synth._size_levels
    size_weights: np.ndarray
    sigma: float
    info: dict[str, Any] = field(default_factory=dict)


# -- ADT -------------------------------------------------------------------------------------------
def _panel() -> pd.DataFrame:
    with resources.files("aivc.schemas").joinpath("panels", "totalseq.tsv").open("r", encoding="utf-8") as fh:
        table = pd.read_csv(fh, sep="\t", dtype=str, keep_default_na=False)
    return table[table["organism"] == "homo_sapiens"]


def protein_names(n_proteins: int) -> tuple[list[str], list[str]]:
    """Cell Ranger-style names of ``n_proteins`` antibodies (markers first, the 3 isotypes last) and their markers."""
    if n_proteins < len(ADT_ISOTYPES) + 1:
        raise ValueError(f"--proteins must be at least {len(ADT_ISOTYPES) + 1} (the isotype controls and one marker)")
    panel = _panel()
    known = set(panel["marker"])
    missing = [m for m in ADT_MARKERS if m not in known]
    if missing:
        raise ValueError(f"markers not in schemas/panels/totalseq.tsv: {missing}")
    markers = list(ADT_MARKERS)
    extra = [m for m in panel.loc[panel["is_isotype"] != "true", "marker"] if m not in ADT_MARKERS]
    want = n_proteins - len(ADT_ISOTYPES)
    if want > len(markers) + len(extra):
        raise ValueError(f"the human panel has {len(markers) + len(extra)} markers; asked for {want}")
    markers = (markers + extra)[:want]
    return [f"{m}_TotalSeqB" for m in markers] + list(ADT_ISOTYPES), markers


def protein_model(spec: MultimodalSpec, markers: list[str], rng: np.random.Generator) -> FeatureModel:
    labels = list(synth.CELL_LABELS)
    n_iso = len(ADT_ISOTYPES)
    n = len(markers) + n_iso
    means = np.concatenate([rng.lognormal(np.log(12.0), 0.6, len(markers)), rng.lognormal(np.log(3.0), 0.3, n_iso)])
    fold = np.ones((len(labels), n))
    for j, m in enumerate(markers):
        for lab in ADT_MARKERS.get(m, ()):
            fold[labels.index(lab), j] = rng.lognormal(np.log(25.0), 0.6)
    phi = np.clip(rng.lognormal(np.log(0.25), 0.3, n), 0.02, 2.0)
    levels, weights = synth._size_levels(spec.adt_size_sigma)
    p = np.array(list(synth.CELL_LABELS.values()))
    expected = float((p / p.sum()) @ (fold * means).sum(axis=1))
    return FeatureModel(means, phi, fold, levels, weights, spec.adt_size_sigma, {"expected_counts_per_cell": expected})


# -- ATAC ------------------------------------------------------------------------------------------
def _contig_lengths() -> dict[str, int]:
    with resources.files("aivc.schemas").joinpath("genomes", "GRCh38.tsv").open("r", encoding="utf-8") as fh:
        table = pd.read_csv(fh, sep="\t", dtype={"name": str, "length": np.int64}, keep_default_na=False)
    lengths = dict(zip(table["name"], table["length"].astype(int), strict=True))
    return {c: lengths[c] for c in PEAK_CONTIGS}


def make_peaks(n_peaks: int, rng: np.random.Generator, margin: int = 10_000) -> pd.DataFrame:
    """``n_peaks`` sorted, non-overlapping GRCh38 intervals (chrom, start, end, interval), 0-based half-open."""
    lengths = _contig_lengths()
    L = np.array(list(lengths.values()), dtype=np.float64)
    per = np.floor(n_peaks * L / L.sum()).astype(np.int64)
    per[np.argsort(-(n_peaks * L / L.sum() - per))[: n_peaks - int(per.sum())]] += 1
    parts = []
    for (contig, length), k in zip(lengths.items(), per, strict=True):
        if not k:
            continue
        width = np.clip(rng.lognormal(np.log(600.0), 0.5, k), 150, 3000).astype(np.int64)
        room = length - 2 * margin - int(width.sum()) - int(k)
        if room <= 0:
            raise ValueError(f"{k} peaks do not fit on {contig}")
        pos = np.sort(rng.integers(0, room, size=k))
        start = margin + pos + np.concatenate([[0], np.cumsum(width)[:-1]]) + np.arange(k)  # >= 1 bp between peaks
        end = start + width
        parts.append(pd.DataFrame({"chrom": contig, "start": start, "end": end}))
    peaks = pd.concat(parts, ignore_index=True)
    peaks["interval"] = peaks["chrom"] + ":" + peaks["start"].astype(str) + "-" + peaks["end"].astype(str)
    return peaks


def peak_model(spec: MultimodalSpec, rng: np.random.Generator) -> FeatureModel:
    n_labels = len(synth.CELL_LABELS)
    n = spec.n_peaks
    base = rng.lognormal(0.0, 0.8, n)
    fold = np.ones((n_labels, n))
    for li in range(n_labels):
        sel = rng.choice(n, size=max(1, int(0.15 * n)), replace=False)
        fold[li, sel] = rng.lognormal(0.0, 1.0, len(sel))
    total = spec.atac_counts_per_peak * n
    m = fold * base[None, :]
    for _ in range(20):  # every cell type the same expected depth, no peak above ATAC_MAX_MEAN counts at size factor 1
        m = np.minimum(m * (total / m.sum(axis=1, keepdims=True)), ATAC_MAX_MEAN)
    fold = m / base[None, :]
    phi = np.clip(rng.lognormal(np.log(0.7), 0.3, n), 0.05, 5.0)
    levels, weights = synth._size_levels(spec.atac_size_sigma)
    return FeatureModel(base, phi, fold, levels, weights, spec.atac_size_sigma, {"expected_counts_per_cell": total})


# -- cells -----------------------------------------------------------------------------------------
def correlated_levels(rna_level: np.ndarray, rna_sigma: float, sigma: float, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Size-level codes of another modality whose log library size has correlation ``rho`` with RNA's."""
    lo, hi = -3.5 * rna_sigma, 3.5 * rna_sigma
    z = (lo + (rna_level + 0.5) * (hi - lo) / synth.N_SIZE_LEVELS) / rna_sigma  # the RNA level's center, standardized
    logs = sigma * (rho * z + np.sqrt(1.0 - rho**2) * rng.standard_normal(len(rna_level)))
    lo, hi = -3.5 * sigma, 3.5 * sigma
    return np.clip(((logs - lo) / (hi - lo) * synth.N_SIZE_LEVELS).astype(np.int64), 0, synth.N_SIZE_LEVELS - 1)  # as synth.make_obs


# -- writing ---------------------------------------------------------------------------------------
class _CsrAppender:
    """An AnnData ``csr_matrix`` group whose rows are appended block by block."""

    def __init__(self, group: Any, n_rows: int, n_cols: int, chunk: int = 1 << 18) -> None:
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = np.array([n_rows, n_cols], dtype=np.int64)
        self.group = group
        self.data = group.create_dataset("data", shape=(0,), dtype=np.float32, chunks=(chunk,), maxshape=(None,))
        self.indices = group.create_dataset("indices", shape=(0,), dtype=np.int32, chunks=(chunk,), maxshape=(None,))
        self.indptr = np.zeros(n_rows + 1, dtype=np.int64)
        self.nnz = 0
        self.max = 0.0

    def append(self, start: int, counts: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        self.indptr[start + 1 : start + 1 + len(counts)] = self.nnz + np.cumsum(counts)
        m = data.size
        self.data.resize((self.nnz + m,))
        self.indices.resize((self.nnz + m,))
        self.data[self.nnz : self.nnz + m] = data
        self.indices[self.nnz : self.nnz + m] = indices
        self.nnz += m
        if m:
            self.max = max(self.max, float(data.max()))

    def close(self) -> None:
        # int32 when it fits, as scipy (and so anndata and muon) write it: int32 indices with an
        # int64 indptr make every scipy row slice O(nnz), which tiledbsoma's in-memory ingestion
        # does once per row (quadratic in the cells)
        fits = self.nnz <= np.iinfo(np.int32).max
        self.group.create_dataset("indptr", data=self.indptr.astype(np.int32) if fits else self.indptr)


@dataclass
class _ModStats:
    n_features: int
    totals: np.ndarray
    detected: np.ndarray

    def summary(self, appender: _CsrAppender, n_cells: int) -> dict[str, Any]:
        return {
            "n_features": self.n_features,
            "nnz": int(appender.nnz),
            "density": appender.nnz / max(1, n_cells * self.n_features),
            "total_counts": int(self.totals.sum()),
            "mean_counts": float(self.totals.mean()),
            "median_counts": float(np.median(self.totals)),
            "mean_detected": float(self.detected.mean()),
            "min_counts": float(self.totals.min()),
            "max_count": appender.max,
        }


def _write_anndata_skeleton(group: Any, obs: pd.DataFrame, var: pd.DataFrame) -> None:
    from anndata.io import write_elem

    group.attrs["encoding-type"] = "anndata"
    group.attrs["encoding-version"] = "0.1.0"
    write_elem(group, "obs", obs)
    write_elem(group, "var", var)
    for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
        write_elem(group, key, {})


def write_h5mu(path: str | Path, spec: MultimodalSpec, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Write the synthetic multimodal dataset to ``path`` (streaming); return per-modality statistics."""
    import h5py
    from anndata.io import write_elem

    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rna_spec = spec.rna()
    gene_model = synth.build_gene_model(rna_spec, log)
    rng_rna = np.random.default_rng([spec.seed, 2])  # as synth.write_h5ad: the same cells, then the same RNA draws
    obs, lab, rna_level = synth.make_obs(rna_spec, rng_rna)
    rng = np.random.default_rng([spec.seed, 3])
    names, markers = protein_names(spec.n_proteins)
    adt_model = protein_model(spec, markers, rng)
    peaks = make_peaks(spec.n_peaks, rng)
    atac_model = peak_model(spec, rng)
    rho = spec.depth_correlation
    adt_level = correlated_levels(rna_level, rna_spec.size_sigma, spec.adt_size_sigma, rho, rng)
    atac_level = correlated_levels(rna_level, rna_spec.size_sigma, spec.atac_size_sigma, rho, rng)
    models = {"rna": (synth._Tables(gene_model), rna_level, rng_rna), "prot": (synth._Tables(adt_model), adt_level, rng), "atac": (synth._Tables(atac_model), atac_level, rng)}
    log(f"synth_multimodal: models ready in {time.perf_counter() - t0:.1f}s: {len(gene_model.symbols)} genes, {len(names)} antibodies, {len(peaks)} peaks")

    n = spec.n_cells
    vars_ = {
        "rna": pd.DataFrame({"gene_ids": gene_model.gene_ids, "feature_types": "Gene Expression", "genome": "GRCh38"}, index=pd.Index(gene_model.symbols, dtype=object)),
        "prot": pd.DataFrame({"gene_ids": np.array(names, dtype=object), "feature_types": "Antibody Capture", "genome": ""}, index=pd.Index(names, dtype=object)),
        "atac": pd.DataFrame(
            {"gene_ids": peaks["interval"].to_numpy(dtype=object), "feature_types": "Peaks", "genome": "GRCh38", "interval": peaks["interval"].to_numpy(dtype=object)},
            index=pd.Index(peaks["interval"].to_numpy(dtype=object)),
        ),
    }
    obs_of = {"rna": obs, "prot": pd.DataFrame(index=obs.index), "atac": pd.DataFrame(index=obs.index)}
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    stats = {m: _ModStats(len(vars_[m]), np.zeros(n), np.zeros(n, dtype=np.int64)) for m in MODS}
    with h5py.File(tmp, "w", userblock_size=512) as f:
        import mudata

        f.attrs["encoding-type"] = "MuData"
        f.attrs["encoding-version"] = "0.1.0"
        f.attrs["encoder"] = "aivc-synth_multimodal"
        f.attrs["encoder-version"] = f"{GENERATOR_VERSION} (the layout of mudata {mudata.__version__})"
        f.attrs["axis"] = 0
        write_elem(f, "obs", obs)
        all_names = pd.Index(np.concatenate([vars_[m].index.to_numpy(dtype=object) for m in MODS]), dtype=object)
        write_elem(f, "var", pd.DataFrame(index=all_names))
        for key in ("obsm", "varm", "obsp", "varp", "uns"):
            write_elem(f, key, {})
        write_elem(f, "obsmap", {m: np.arange(1, n + 1, dtype=np.uint32) for m in MODS})
        offsets = np.cumsum([0] + [len(vars_[m]) for m in MODS])
        varmap = {}
        for i, m in enumerate(MODS):
            vm = np.zeros(len(all_names), dtype=np.uint32)
            vm[offsets[i] : offsets[i + 1]] = np.arange(1, len(vars_[m]) + 1, dtype=np.uint32)
            varmap[m] = vm
        write_elem(f, "varmap", varmap)
        mod = f.create_group("mod")
        mod.attrs["mod-order"] = list(MODS)
        appenders = {}
        for m in MODS:
            g = mod.create_group(m)
            _write_anndata_skeleton(g, obs_of[m], vars_[m])
            appenders[m] = _CsrAppender(g.create_group("X"), n, len(vars_[m]))
        last = t0
        for start in range(0, n, spec.block_rows):
            stop = min(n, start + spec.block_rows)
            for m in MODS:
                tables, level, r = models[m]
                cnt, ind, dat = synth.sample_block(r, tables, lab[start:stop], level[start:stop], stats[m].n_features)
                appenders[m].append(start, cnt, ind, dat)
                rows = np.repeat(np.arange(stop - start), cnt)
                stats[m].totals[start:stop] = np.bincount(rows, weights=dat, minlength=stop - start)
                stats[m].detected[start:stop] = cnt
            now = time.perf_counter()
            if now - last > 10 or stop == n:
                rate = stop / (now - t0)
                nnz = ", ".join(f"{m} {appenders[m].nnz:,}" for m in MODS)
                log(f"synth_multimodal: {stop:,}/{n:,} cells (non-zeros: {nnz}), {now - t0:.0f}s elapsed, ~{(n - stop) / rate:.0f}s left")
                last = now
        for a in appenders.values():
            a.close()
    with tmp.open("br+") as fh:  # the header mudata.read_h5mu recognises its files by
        fh.write(f"MuData (format-version=0.1.0;creator=aivc-synth_multimodal;creator-version={GENERATOR_VERSION})".encode().ljust(512, b"\0"))
    tmp.replace(path)
    secs = time.perf_counter() - t0
    out = {
        "n_cells": n,
        "mods": {m: stats[m].summary(appenders[m], n) for m in MODS},
        "nnz": int(sum(a.nnz for a in appenders.values())),
        "file_bytes": path.stat().st_size,
        "seconds": round(secs, 2),
        "expected": {"rna_detected_genes": gene_model.expected_genes, "adt_counts": adt_model.info["expected_counts_per_cell"], "atac_counts": atac_model.info["expected_counts_per_cell"]},
    }
    desc = "; ".join(f"{m} {s['n_features']:,} features, {s['nnz']:,} non-zeros ({100 * s['density']:.1f} %), mean {s['mean_counts']:.0f} counts / {s['mean_detected']:.0f} detected" for m, s in out["mods"].items())
    log(f"synth_multimodal: wrote {path} in {secs:.1f}s: {n:,} cells; {desc}; {out['file_bytes'] / 2**20:.0f} MiB")
    return out


# -- manifest --------------------------------------------------------------------------------------
def manifest(dataset_id: str, spec: MultimodalSpec) -> dict[str, Any]:
    """The ``measurements:`` manifest of the synthetic dataset (obs fields as ``synth.manifest``)."""
    rna = synth.manifest(dataset_id, spec.rna())
    obs = {**rna["obs"], "assay": {"value": "EFO:0030059"}, "suspension_type": {"value": "nucleus"}}
    return {
        "dataset_id": dataset_id,
        "title": f"Synthetic PBMC-like RNA + ADT + ATAC, {spec.n_cells} cells ({spec.n_genes} genes, {spec.n_proteins} antibodies, {spec.n_peaks} peaks)",
        "description": f"Negative-binomial counts of three modalities of the same cells (benchmarks/synth_multimodal.py v{spec.version}, seed {spec.seed}).",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "measurements": {
            "RNA": {"modality": "rna", "source": "mod:rna", "counts": "X", "genes": {"id_type": "symbol"}},
            "ADT": {"modality": "protein", "source": "mod:prot", "features": "var"},
            "ATAC": {"modality": "chromatin", "source": "mod:atac", "counts": "X", "peaks": {"column": "interval"}, "genome": "GRCh38"},
        },
        "obs": obs,
        "qc": rna["qc"],
    }


def make_submission(
    workdir: str | Path,
    spec: MultimodalSpec | None = None,
    *,
    dataset_id: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = _log,
) -> tuple[Path, Path, dict[str, Any]]:
    """Write (or reuse) ``multimodal-<cells>-s<seed>.h5mu`` and its manifest in ``workdir``.

    Returns ``(h5mu, manifest_yaml, info)``; ``info`` holds the spec, the statistics and
    whether the file was reused.
    """
    import yaml

    spec = spec or MultimodalSpec()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    name = f"multimodal-{spec.n_cells}c-{spec.n_genes}g-{spec.n_proteins}p-{spec.n_peaks}k-s{spec.seed}"
    h5, mf, side = work / f"{name}.h5mu", work / f"{name}.yaml", work / f"{name}.json"
    dataset_id = dataset_id or f"synth-multimodal-{spec.n_cells}"
    if not force and h5.exists() and side.exists():
        meta = json.loads(side.read_text())
        if meta.get("spec") == asdict(spec) and meta.get("file_bytes") == h5.stat().st_size:
            mf.write_text(yaml.safe_dump(manifest(dataset_id, spec), sort_keys=False))
            log(f"synth_multimodal: reusing {h5} (generated in {meta['stats']['seconds']}s)")
            return h5, mf, {**meta, "reused": True}
    stats = write_h5mu(h5, spec, log)
    meta = {"spec": asdict(spec), "stats": stats, "file_bytes": h5.stat().st_size}
    side.write_text(json.dumps(meta, indent=2))
    mf.write_text(yaml.safe_dump(manifest(dataset_id, spec), sort_keys=False))
    return h5, mf, {**meta, "reused": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=20_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--proteins", type=int, default=33, help="antibodies, including the 3 isotype controls")
    p.add_argument("--peaks", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atac-counts-per-peak", type=float, default=0.08, help="mean ATAC count per matrix entry")
    p.add_argument("--block-rows", type=int, default=1000)
    p.add_argument("--out", default="/work/bench-scratch/multimodal/data", help="output folder")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching file exists")
    a = p.parse_args(argv)
    spec = MultimodalSpec(
        n_cells=a.cells, n_genes=a.genes, n_proteins=a.proteins, n_peaks=a.peaks, seed=a.seed,
        atac_counts_per_peak=a.atac_counts_per_peak, block_rows=a.block_rows,
    )
    h5, mf, info = make_submission(a.out, spec, force=a.force)
    print(json.dumps({"h5mu": str(h5), "manifest": str(mf), **info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
