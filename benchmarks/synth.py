"""Realistic synthetic raw-count submissions (``.h5ad`` + manifest) of any size, streamed to disk.

Used by the benchmarks to make submissions of 10^5-10^6 cells without ever holding the
matrix in memory. Run it directly to write one::

    /work/venv/bin/python benchmarks/synth.py --cells 100000 --genes 20000 --out /tmp/synth

or import it (``sys.path.insert(0, "benchmarks")``; ``from synth import make_submission``).

The model
---------
Counts are negative binomial (gamma-Poisson), the standard model of UMI counts::

    X[i, g] ~ NB(mean = s_i * f[label_i, g] * m_g, dispersion = phi_g)      Var = mu + phi * mu^2

*Per-gene statistics come from real data.* The real PBMC raw counts shipped with aivc's demo
(:func:`aivc.demo.pbmc_counts`, 700 cells x 765 genes, 10x) are normalized by each cell's
library size; per gene the mean ``mu`` and variance ``v`` give the method-of-moments NB
dispersion ``phi = (v - mu * E[1/s]) / mu^2`` (the Poisson part of the variance of
size-normalized counts is ``mu / s``). ``phi`` is clipped to ``[0.01, 10]``.

*Expansion to N genes.* The (mean, dispersion) pairs are resampled with replacement and jittered
log-normally (sigma 0.6 on the mean, 0.3 on the dispersion). Because those 765 genes are highly
variable ones, their means are then reshaped to a whole transcriptome: ``m_g = c * mean_g ^ a``,
where ``c`` fixes the expected UMIs per cell (default 3,500) and ``a`` (found by bisection) fixes
the expected number of detected genes per cell (default 1,500) -- the numbers of a typical 10x
3' v3 run. The 13 mitochondrial protein-coding genes get a fixed share of the UMIs (default 4 %,
spread over them log-normally) and a low dispersion (0.1).

*Cells.* Library size factors ``s_i`` are log-normal with mean 1 (sigma 0.5), quantized to 64
log-spaced levels (relative spacing ~5 %) so that the zero probability ``P(X = 0)`` can be
tabulated per (level, label, gene). Each cell gets a label (``cell_label``: T cell, CD14-positive
monocyte, B cell, natural killer cell, dendritic cell, with PBMC-like proportions) and a donor
(``donor``: donor-1..donor-4). Each label multiplies a random 5 % of the non-mitochondrial genes
by log-normal fold changes (sigma 1), renormalized so the label keeps the same expected UMIs,
so cell types form clusters. The obs index holds unique 16-nt barcodes with a ``-1`` suffix.

*Genes.* Real human genes from :func:`aivc.store.reference.gene_reference` ``("homo_sapiens")``:
all 13 ``MT-`` protein-coding genes plus a seeded random subset of the protein-coding genes with
unique symbols (lncRNA genes with unique symbols are added if more than ~20,000 genes are
asked for), in reference order. ``var`` index = symbols; ``var["gene_ids"]`` = Ensembl ids.

*Sampling, exactly and sparsely.* Per cell one uniform ``u`` per gene is drawn; the entry is zero
when ``u <= P(X = 0)``, which costs one comparison per matrix entry. The values of the non-zero
entries (~7 % of them) are the NB quantiles of the same ``u``, found by walking the NB
probability recurrence ``P(k+1) = P(k) * (k + r) / (k + 1) * q`` (``r = 1 / phi``,
``q = mu / (mu + r)``) -- inverse-CDF sampling, so every entry is an exact NB draw given its
quantized size factor. Nothing of size cells x genes is ever allocated.

*Writing.* The file is written with h5py in the AnnData on-disk format: ``X`` is a group with
``encoding-type csr_matrix`` / ``encoding-version 0.1.0`` / ``shape`` whose ``data`` (float32),
``indices`` (int32) and ``indptr`` (int64) datasets grow block by block (``block_rows`` cells at a
time); ``obs``, ``var`` and the empty ``obsm``/``varm``/``obsp``/``varp``/``layers``/``uns`` are
written by :func:`anndata.io.write_elem`. Memory is bounded by the (label, size level) x gene
tables (5 x 64 x n_genes x 16 bytes, ~100 MB at 20,000 genes) plus one block's non-zeros,
whatever ``n_cells``: ~0.7 GB peak including imports and the PBMC data. 100,000 x 20,000
(149 M non-zeros, 1.2 GB file) takes ~40 s on 2 cores. ``block_rows`` changes only memory and
progress granularity, not the output.

*Atlases.* Datasets of one atlas share ``gene_seed`` (the same genes, means, dispersions and
cell-type programs) and differ in ``seed`` (their cells) and in ``batch_sigma``: a per-gene
log-normal factor of each dataset (mitochondrial genes excepted, UMIs kept), a batch effect;
``donor_prefix`` names each dataset's own donors. ``benchmarks/bench_atlas.py`` uses them.

Everything is deterministic given ``seed`` (same numpy version). :func:`make_submission` also
writes a matching manifest YAML (symbols as gene ids, ``cell_type`` from ``cell_label`` labels,
``donor_id`` from ``donor``, the other fields constants) and a ``<name>.json`` sidecar with the
parameters and statistics; an existing file with the same parameters is reused, not rewritten.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Version of the generator; part of the cache key of generated files.
GENERATOR_VERSION = 2

CELL_LABELS: dict[str, float] = {
    "T cell": 0.50,
    "CD14-positive monocyte": 0.20,
    "natural killer cell": 0.13,
    "B cell": 0.12,
    "dendritic cell": 0.05,
}
PHI_RANGE = (0.01, 10.0)
MITO_PHI = 0.1
N_SIZE_LEVELS = 64


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic dataset (all of them are part of the cache key)."""

    n_cells: int = 100_000
    n_genes: int = 20_000
    seed: int = 0
    mean_umis: float = 3500.0
    mean_genes: float = 1500.0
    pct_mito: float = 4.0
    size_sigma: float = 0.5
    n_donors: int = 4
    block_rows: int = 1000
    compression: str | None = None  # h5py compression of X ("gzip", "lzf" or None like anndata)
    gene_seed: int | None = None  # seed of the gene model (genes, means, programs); None: ``seed``
    batch_sigma: float = 0.0  # log-normal sd of a per-gene batch factor drawn from ``seed`` (0: none)
    donor_prefix: str = "donor"  # donors are <prefix>-1 .. <prefix>-<n_donors>
    version: int = GENERATOR_VERSION


# -- statistics from real data -----------------------------------------------------------------
def pbmc_gene_stats() -> pd.DataFrame:
    """Per-gene library-size-normalized mean and NB dispersion (method of moments) of real PBMC counts."""
    import scipy.sparse as sp

    from aivc.demo import pbmc_counts

    adata = pbmc_counts()
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    X = X.astype(np.float64)
    totals = X.sum(axis=1)
    s = totals / totals.mean()
    norm = X / s[:, None]
    mu = norm.mean(axis=0)
    var = norm.var(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = (var - mu * np.mean(1.0 / s)) / mu**2
    phi = np.where(np.isfinite(phi), phi, PHI_RANGE[1])
    keep = mu > 0
    return pd.DataFrame(
        {"mean": mu[keep], "phi": np.clip(phi[keep], *PHI_RANGE)},
        index=pd.Index(adata.var_names[keep], name="symbol"),
    )


# -- the gene model ------------------------------------------------------------------------------
@dataclass
class GeneModel:
    symbols: np.ndarray
    gene_ids: np.ndarray
    means: np.ndarray  # expected counts per gene for a cell with size factor 1, label fold 1
    phi: np.ndarray
    mito: np.ndarray  # bool mask
    label_fold: np.ndarray  # (n_labels, n_genes)
    size_levels: np.ndarray  # (K,) size factors
    size_weights: np.ndarray  # (K,) probabilities
    alpha: float
    expected_umis: float
    expected_genes: float
    info: dict[str, Any] = field(default_factory=dict)


def choose_genes(n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """Real human genes: the 13 MT- protein-coding genes + a random subset of unique-symbol genes."""
    from aivc.store.reference import gene_reference

    ref = gene_reference("homo_sapiens")
    unique = ~ref["symbol"].duplicated(keep=False) & (ref["symbol"] != "")
    pc = ref[(ref["gene_type"] == "protein_coding") & unique]
    mito = pc[pc["symbol"].str.startswith("MT-")]
    rest = pc[~pc["symbol"].str.startswith("MT-")]
    n_mito = min(len(mito), n_genes)
    n_rest = n_genes - n_mito
    if n_rest > len(rest):
        lnc = ref[(ref["gene_type"] == "lncRNA") & unique]
        rest = pd.concat([rest, lnc])
    if n_rest > len(rest):
        raise ValueError(f"at most {len(rest) + n_mito} genes with unique symbols are available, asked for {n_genes}")
    pick = np.sort(rng.choice(len(rest), size=n_rest, replace=False))
    genes = pd.concat([mito.iloc[:n_mito], rest.iloc[pick]])
    order = np.argsort(genes["gene_id"].to_numpy(), kind="stable")
    return genes.iloc[order]


def _size_levels(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Quantized log-normal size factors (mean 1): levels and their probabilities."""
    lo, hi = -3.5 * sigma, 3.5 * sigma
    edges = np.linspace(lo, hi, N_SIZE_LEVELS + 1)
    centers = 0.5 * (edges[:-1] + edges[1:])
    from math import erf

    cdf = np.array([0.5 * (1 + erf(e / (sigma * math.sqrt(2)))) for e in edges])
    cdf[0], cdf[-1] = 0.0, 1.0  # the tails go to the extreme levels
    w = np.diff(cdf)
    levels = np.exp(centers)
    levels = levels / float((w * levels).sum())  # mean exactly 1
    return levels, w


def _p_detect(mean: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """P(X > 0) for NB(mean, phi)."""
    return -np.expm1(-np.log1p(phi * mean) / phi)


def build_gene_model(spec: SynthSpec, log: Callable[[str], None] = _log) -> GeneModel:
    rng = np.random.default_rng([spec.seed if spec.gene_seed is None else spec.gene_seed, 1])
    stats = pbmc_gene_stats()
    genes = choose_genes(spec.n_genes, rng)
    symbols = genes["symbol"].to_numpy(dtype=object)
    mito = np.asarray([s.startswith("MT-") for s in symbols])
    n = len(symbols)
    j = rng.integers(0, len(stats), size=n)
    base = stats["mean"].to_numpy()[j] * rng.lognormal(0.0, 0.6, size=n)
    phi = np.clip(stats["phi"].to_numpy()[j] * rng.lognormal(0.0, 0.3, size=n), *PHI_RANGE)
    levels, weights = _size_levels(spec.size_sigma)
    nm = ~mito
    umis_nm = spec.mean_umis * (1 - spec.pct_mito / 100.0)
    umis_mt = spec.mean_umis * spec.pct_mito / 100.0
    mt_means = np.zeros(n)
    if mito.any():
        w = rng.lognormal(0.0, 0.7, size=int(mito.sum()))
        mt_means[mito] = umis_mt * w / w.sum()
    mt_detect = float((weights[:, None] * _p_detect(levels[:, None] * mt_means[mito][None, :], MITO_PHI)).sum()) if mito.any() else 0.0

    logb = np.log(base[nm])

    def means_for(alpha: float) -> np.ndarray:
        m = np.exp(alpha * (logb - logb.max()))
        return m * (umis_nm / m.sum())

    def detected(alpha: float) -> float:
        m = means_for(alpha)
        p = _p_detect(levels[:, None] * m[None, :], phi[nm][None, :])
        return float((weights[:, None] * p).sum()) + mt_detect

    lo, hi = 0.02, 8.0
    target = spec.mean_genes
    if detected(lo) < target:
        alpha = lo
        log(f"synth: cannot reach {target:.0f} detected genes with {n} genes and {spec.mean_umis:.0f} UMIs; using the flattest profile")
    elif detected(hi) > target:
        alpha = hi
    else:
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if detected(mid) > target:
                lo = mid
            else:
                hi = mid
        alpha = 0.5 * (lo + hi)
    means = np.zeros(n)
    means[nm] = means_for(alpha)
    means[mito] = mt_means[mito]
    phi = phi.copy()
    phi[mito] = MITO_PHI
    # cell-type programs: each label scales a random 5 % of the non-MT genes, keeping its UMIs
    n_labels = len(CELL_LABELS)
    fold = np.ones((n_labels, n))
    nm_idx = np.flatnonzero(nm)
    for li in range(n_labels):
        sel = rng.choice(nm_idx, size=max(1, len(nm_idx) // 20), replace=False)
        fold[li, sel] = rng.lognormal(0.0, 1.0, size=len(sel))
        fold[li, nm] *= umis_nm / float((fold[li, nm] * means[nm]).sum())
    exp_genes = detected(alpha)
    log(f"synth: gene model: {n} genes, alpha={alpha:.3f}, expected {spec.mean_umis:.0f} UMIs and {exp_genes:.0f} detected genes per cell")
    return GeneModel(
        symbols=symbols,
        gene_ids=genes["gene_id"].to_numpy(dtype=object),
        means=means,
        phi=phi,
        mito=mito,
        label_fold=fold,
        size_levels=levels,
        size_weights=weights,
        alpha=alpha,
        expected_umis=spec.mean_umis,
        expected_genes=exp_genes,
        info={"pbmc_genes": len(stats), "mean_quantiles": np.quantile(means, [0.01, 0.5, 0.99]).tolist()},
    )


def apply_batch_effect(model: GeneModel, spec: SynthSpec) -> None:
    """Scale every gene's mean by a log-normal factor of this dataset (its batch), keeping the UMIs.

    Datasets that share ``gene_seed`` share genes and cell-type programs; each one's ``seed``
    draws its own factors, so the same cell type differs between datasets as between 10x runs.
    """
    b = np.random.default_rng([spec.seed, 3]).lognormal(0.0, spec.batch_sigma, size=len(model.means))
    b[model.mito] = 1.0
    nm = ~model.mito
    total = float(model.means[nm].sum())
    model.means = model.means * b
    model.means[nm] *= total / float(model.means[nm].sum())


# -- sampling ------------------------------------------------------------------------------------
def _barcodes(n: int) -> np.ndarray:
    """``n`` distinct 16-nt barcodes (a bijection of the row number mod 4^16) with suffix ``-1``."""
    if n > 4**16:
        raise ValueError("too many cells for 16-nt barcodes")
    m32 = np.uint64(0xFFFFFFFF)
    x = np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B9)
    for _ in range(2):  # xor-shift-multiply rounds, each a bijection of 32-bit integers
        x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x45D9F3B)) & m32
    x = x ^ (x >> np.uint64(16))
    digits = np.empty((n, 16), dtype=np.uint8)
    for k in range(16):
        digits[:, 15 - k] = (x >> np.uint64(2 * k)) & np.uint64(3)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
    raw = letters.view("S16").ravel()
    return np.char.add(raw.astype(str), "-1").astype(object)


def make_obs(spec: SynthSpec, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """obs (index barcodes; donor, cell_label), label codes and size-level codes per cell."""
    labels = list(CELL_LABELS)
    p = np.array(list(CELL_LABELS.values()))
    lab = rng.choice(len(labels), size=spec.n_cells, p=p / p.sum())
    donors = [f"{spec.donor_prefix}-{i + 1}" for i in range(spec.n_donors)]
    don = rng.integers(0, spec.n_donors, size=spec.n_cells)
    logs = rng.normal(0.0, spec.size_sigma, size=spec.n_cells)
    lo, hi = -3.5 * spec.size_sigma, 3.5 * spec.size_sigma
    level = np.clip(((logs - lo) / (hi - lo) * N_SIZE_LEVELS).astype(np.int64), 0, N_SIZE_LEVELS - 1)
    obs = pd.DataFrame(
        {
            "donor": pd.Categorical.from_codes(don, categories=donors),
            "cell_label": pd.Categorical.from_codes(lab, categories=labels),
        },
        index=pd.Index(_barcodes(spec.n_cells), dtype=object),
    )
    return obs, lab, level


class _Tables:
    """Per (label, size level) rows: NB means and zero probabilities for every gene."""

    def __init__(self, model: GeneModel) -> None:
        n_labels = model.label_fold.shape[0]
        K = len(model.size_levels)
        mu = (model.label_fold[:, None, :] * model.size_levels[None, :, None]) * model.means[None, None, :]
        self.mu = mu.reshape(n_labels * K, -1)
        self.r = 1.0 / model.phi
        self.p0 = np.exp(-self.r[None, :] * np.log1p(model.phi[None, :] * self.mu))
        self.K = K


def _nb_quantiles(u: np.ndarray, mu: np.ndarray, r: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Smallest k >= 1 with F(k) >= u for NB(mu, r) entries where u > F(0) = p0."""
    out = np.zeros(len(u), dtype=np.float32)
    idx = np.arange(len(u))
    q = mu / (mu + r)
    pmf = p0.copy()
    F = p0.copy()
    k = 0
    while idx.size:
        k += 1
        pmf *= (k - 1 + r) / k * q
        F += pmf
        done = (u <= F) | ((pmf < 1e-14) & (k > mu)) | (k >= 1_000_000)
        if done.any():
            out[idx[done]] = k
            keep = ~done
            idx, u, mu, r, q, pmf, F = idx[keep], u[keep], mu[keep], r[keep], q[keep], pmf[keep], F[keep]
    return out


def sample_block(rng: np.random.Generator, tables: _Tables, lab: np.ndarray, level: np.ndarray, n_genes: int):  # noqa: ANN201
    """CSR parts (indptr counts, indices, data) of the rows with these label/level codes."""
    n = len(lab)
    rows_u: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    keys = lab * tables.K + level
    for i in range(n):
        u = rng.random(n_genes)
        nz = np.flatnonzero(u > tables.p0[keys[i]])
        cols.append(nz.astype(np.int32))
        rows_u.append(u[nz])
        counts[i] = nz.size
    indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int32)
    u_nz = np.concatenate(rows_u) if rows_u else np.zeros(0)
    rkeys = np.repeat(keys, counts)
    data = _nb_quantiles(u_nz, tables.mu[rkeys, indices], tables.r[indices], tables.p0[rkeys, indices])
    return counts, indices, data


# -- writing -------------------------------------------------------------------------------------
def write_h5ad(path: str | Path, spec: SynthSpec, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Write the synthetic dataset to ``path`` (streaming); return its statistics."""
    import h5py
    from anndata.io import write_elem

    t0 = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_gene_model(spec, log)
    if spec.batch_sigma > 0:
        apply_batch_effect(model, spec)
    tables = _Tables(model)
    rng = np.random.default_rng([spec.seed, 2])
    obs, lab, level = make_obs(spec, rng)
    var = pd.DataFrame({"gene_ids": model.gene_ids}, index=pd.Index(model.symbols, dtype=object))
    n, g = spec.n_cells, len(model.symbols)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.unlink(missing_ok=True)
    totals = np.zeros(n)
    detected = np.zeros(n, dtype=np.int64)
    mito_tot = np.zeros(n)
    mito_mask = model.mito
    nnz = 0
    chunk = 1 << 18
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        X = f.create_group("X")
        X.attrs["encoding-type"] = "csr_matrix"
        X.attrs["encoding-version"] = "0.1.0"
        X.attrs["shape"] = np.array([n, g], dtype=np.int64)
        kw: dict[str, Any] = {"chunks": (chunk,), "maxshape": (None,)}
        if spec.compression:
            kw["compression"] = spec.compression
        d_data = X.create_dataset("data", shape=(0,), dtype=np.float32, **kw)
        d_ind = X.create_dataset("indices", shape=(0,), dtype=np.int32, **kw)
        indptr = np.zeros(n + 1, dtype=np.int64)
        last = t0
        for start in range(0, n, spec.block_rows):
            stop = min(n, start + spec.block_rows)
            cnt, ind, dat = sample_block(rng, tables, lab[start:stop], level[start:stop], g)
            indptr[start + 1 : stop + 1] = nnz + np.cumsum(cnt)
            m = dat.size
            d_data.resize((nnz + m,))
            d_ind.resize((nnz + m,))
            d_data[nnz : nnz + m] = dat
            d_ind[nnz : nnz + m] = ind
            nnz += m
            rows = np.repeat(np.arange(stop - start), cnt)
            totals[start:stop] = np.bincount(rows, weights=dat, minlength=stop - start)
            detected[start:stop] = cnt
            mm = mito_mask[ind]
            mito_tot[start:stop] = np.bincount(rows[mm], weights=dat[mm], minlength=stop - start)
            now = time.perf_counter()
            if now - last > 10 or stop == n:
                rate = stop / (now - t0)
                log(f"synth: {stop:,}/{n:,} cells, {nnz:,} non-zeros, {now - t0:.0f}s elapsed, ~{(n - stop) / rate:.0f}s left")
                last = now
        X.create_dataset("indptr", data=indptr)
    tmp.replace(path)
    secs = time.perf_counter() - t0
    pct = np.where(totals > 0, 100 * mito_tot / np.maximum(totals, 1), 0)
    stats = {
        "n_cells": n,
        "n_genes": g,
        "nnz": int(nnz),
        "density": nnz / (n * g),
        "mean_umis": float(totals.mean()),
        "median_umis": float(np.median(totals)),
        "mean_detected_genes": float(detected.mean()),
        "median_detected_genes": float(np.median(detected)),
        "min_umis": float(totals.min()),
        "mean_pct_mito": float(pct.mean()),
        "max_count": float(d_max) if (d_max := _max_count(path)) is not None else None,
        "file_bytes": path.stat().st_size,
        "seconds": round(secs, 2),
        "alpha": model.alpha,
        "expected_detected_genes": model.expected_genes,
    }
    log(
        f"synth: wrote {path} in {secs:.1f}s: {n:,} cells x {g:,} genes, {nnz:,} non-zeros "
        f"({100 * stats['density']:.2f} %), mean {stats['mean_umis']:.0f} UMIs and {stats['mean_detected_genes']:.0f} genes per cell, "
        f"{stats['file_bytes'] / 2**20:.0f} MiB"
    )
    return stats


def _max_count(path: Path) -> float | None:
    import h5py

    with h5py.File(path, "r") as f:
        d = f["X/data"]
        mx = 0.0
        step = 1 << 24
        for s in range(0, d.shape[0], step):
            mx = max(mx, float(d[s : s + step].max()))
        return mx


# -- manifest ------------------------------------------------------------------------------------
def manifest(dataset_id: str, spec: SynthSpec) -> dict[str, Any]:
    """A manifest for the synthetic dataset (the format of aivc's ``pbmc_manifest``)."""
    return {
        "dataset_id": dataset_id,
        "title": f"Synthetic PBMC-like counts, {spec.n_cells} cells x {spec.n_genes} genes",
        "description": (
            "Negative-binomial counts with per-gene means and dispersions resampled from real PBMC data "
            f"(benchmarks/synth.py v{spec.version}, seed {spec.seed})."
        ),
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "symbol"},
        "obs": {
            "assay": {"value": "EFO:0009922"},
            "cell_type": {"column": "cell_label"},
            "development_stage": {"value": "unknown"},
            "disease": {"value": "normal"},
            "self_reported_ethnicity": {"value": "unknown"},
            "sex": {"value": "unknown"},
            "tissue": {"value": "blood"},
            "tissue_type": {"value": "tissue"},
            "suspension_type": {"value": "cell"},
            "donor_id": {"column": "donor"},
            "is_primary_data": {"value": True},
        },
        "qc": {"min_mapped_fraction": 0.9},
    }


def make_submission(
    workdir: str | Path,
    spec: SynthSpec | None = None,
    *,
    dataset_id: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = _log,
) -> tuple[Path, Path, dict[str, Any]]:
    """Write (or reuse) ``synth-<cells>x<genes>-s<seed>.h5ad`` and its manifest in ``workdir``.

    Returns ``(h5ad, manifest_yaml, info)``; ``info`` holds the spec, the data statistics and
    whether the file was reused.
    """
    import yaml

    spec = spec or SynthSpec()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    name = f"synth-{spec.n_cells}x{spec.n_genes}-s{spec.seed}"
    h5 = work / f"{name}.h5ad"
    mf = work / f"{name}.yaml"
    side = work / f"{name}.json"
    dataset_id = dataset_id or f"synth-{spec.n_cells}x{spec.n_genes}"
    if not force and h5.exists() and side.exists():
        meta = json.loads(side.read_text())
        if meta.get("spec") == asdict(spec) and meta.get("file_bytes") == h5.stat().st_size:
            mf.write_text(yaml.safe_dump(manifest(dataset_id, spec), sort_keys=False))
            log(f"synth: reusing {h5} (generated in {meta['stats']['seconds']}s)")
            return h5, mf, {**meta, "reused": True}
    stats = write_h5ad(h5, spec, log)
    meta = {"spec": asdict(spec), "stats": stats, "file_bytes": h5.stat().st_size}
    side.write_text(json.dumps(meta, indent=2))
    mf.write_text(yaml.safe_dump(manifest(dataset_id, spec), sort_keys=False))
    return h5, mf, {**meta, "reused": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=100_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mean-umis", type=float, default=3500.0)
    p.add_argument("--mean-genes", type=float, default=1500.0)
    p.add_argument("--block-rows", type=int, default=1000)
    p.add_argument("--compression", choices=["gzip", "lzf"], default=None)
    p.add_argument("--gene-seed", type=int, default=None, help="seed of the gene model (default --seed); datasets of one atlas share it")
    p.add_argument("--batch-sigma", type=float, default=0.0, help="log-normal sd of this dataset's per-gene batch factors")
    p.add_argument("--n-donors", type=int, default=4)
    p.add_argument("--donor-prefix", default="donor")
    p.add_argument("--dataset-id", default=None, help="dataset_id of the manifest (default synth-<cells>x<genes>)")
    p.add_argument("--out", default="/work/bench-scratch/synth", help="output folder")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching file exists")
    a = p.parse_args(argv)
    spec = SynthSpec(
        n_cells=a.cells, n_genes=a.genes, seed=a.seed, mean_umis=a.mean_umis, mean_genes=a.mean_genes,
        block_rows=a.block_rows, compression=a.compression, gene_seed=a.gene_seed, batch_sigma=a.batch_sigma,
        n_donors=a.n_donors, donor_prefix=a.donor_prefix,
    )
    h5, mf, info = make_submission(a.out, spec, dataset_id=a.dataset_id, force=a.force)
    print(json.dumps({"h5ad": str(h5), "manifest": str(mf), **info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
