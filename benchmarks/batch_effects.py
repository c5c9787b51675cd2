"""A dataset with known batch effects made from real PBMC profiles, as aivc submissions.

Used by ``bench_urs.py`` to score how well cell URs remove batch effects while keeping
cell types apart. Run it directly to write the files::

    /work/venv/bin/python benchmarks/batch_effects.py --out /work/bench-scratch/batches

or import it (``sys.path.insert(0, "benchmarks")``; ``from batch_effects import make_batches``).

The model
---------
*Cells and labels are real.* The input is the exact raw counts of scanpy's
``pbmc68k_reduced`` (:func:`aivc.demo.pbmc_counts`: 700 cells x 765 genes, 10x, ten labelled
cell types in ``bulk_labels``). Every output cell is one real cell, keeps its barcode and its
label; nothing else about the cell changes except its counts, as below.

*Splitting into batches.* The cells are split into ``K`` batches (default 3), each cell in
exactly one batch:

- ``composition="balanced"`` (default): stratified by cell type. Within every label the
  cells are put in a seeded random order and dealt round-robin to the batches (starting at
  a random batch per label), so each batch has every cell type in the same proportions
  (+-1 cell) and the batch sizes differ by at most the number of labels.
- ``composition="skewed"``: each label's cells are split among the batches with
  proportions drawn from a symmetric Dirichlet (``alpha=1``) per label, so batches differ
  in composition too (as real batches do); a batch can then lack a rare cell type.

*Batch effects.* For batch ``b`` and gene ``g``::

    f[b, g] = exp(sd * z[b, g]),   z[b, g] ~ N(0, 1)          gene-specific multiplicative effect
    a[b, g] = s[b] * f[b, g]                                  s[b]: the batch's library-size scale

``sd`` (``gene_sd``, default 0.5) is the log-scale standard deviation of the gene effects
(``sd = 0.5`` makes a typical gene ~1.65x more or less abundant in one batch than in
another). ``s`` (``library_scales``) defaults to ``exp(linspace(log 0.5, log 1.5, K))``
(0.50, 0.87, 1.50 for ``K = 3``), so batches differ ~3x in sequencing depth.

*Resampling the counts* (``method``), given the real count ``x[i, g]`` of cell ``i`` in batch ``b``:

- ``"poisson"`` (default)::

      y[i, g] ~ Poisson(a[b, g] * x[i, g])

  ``E[y] = a x`` exactly, for any ``a`` (up- or down-scaling); a zero stays zero. It adds
  Poisson noise on top of the measured counts (``Var[y | x] = a x``), like splatter's
  final Poisson step applied to the observed profile.
- ``"thinning"``::

      y[i, g] ~ Binomial(x[i, g], min(1, a[b, g]))

  Binomial thinning: each measured molecule is kept independently with probability ``a``,
  which is exactly what sequencing a library less deeply (or capturing a gene less
  efficiently) does, and keeps ``y <= x``. It cannot scale up, so factors above 1 are
  clipped at 1; use it with ``library_scales`` well below 1 (e.g. ``0.3,0.5,0.8``).

Cells left with no counts at all are dropped (reported; none at the defaults).

*Randomness.* All draws come from ``numpy.random.default_rng(seed)`` streams derived from
``seed`` (batch assignment, gene effects and resampling each have their own stream), so the
output is the same for the same ``seed``, parameters and numpy version.

*Output.* One submission per batch, like :func:`aivc.demo.build_pbmc_submissions`:
``<prefix>-batch<k>.h5ad`` (CSR float32 integer counts; ``obs``: ``bulk_labels`` (the real
label), ``bench_batch``, ``orig_index``; ``var`` index = symbols) and ``<prefix>-batch<k>.yaml``,
a manifest with ``cell_type`` mapped from ``bulk_labels`` through
:data:`aivc.demo.PBMC_LABEL_MAP`, submittable with :func:`aivc.ingest.submission.submit` or
``aivc submit``. ``batches.json`` records the parameters, the per-batch sizes, library
sizes and label counts, and the gene effects' summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

#: Version of the generator; recorded in the manifests and ``batches.json``.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class BatchSpec:
    """Parameters of a batch-effect dataset."""

    n_batches: int = 3
    gene_sd: float = 0.5
    library_scales: tuple[float, ...] | None = None  # None: exp(linspace(log 0.5, log 1.5, K))
    method: Literal["poisson", "thinning"] = "poisson"
    composition: Literal["balanced", "skewed"] = "balanced"
    seed: int = 0
    prefix: str = "pbmc-batches"
    version: int = GENERATOR_VERSION

    def scales(self) -> np.ndarray:
        if self.library_scales is not None:
            if len(self.library_scales) != self.n_batches:
                raise ValueError(f"{len(self.library_scales)} library scales given for {self.n_batches} batches")
            return np.asarray(self.library_scales, dtype=np.float64)
        if self.n_batches == 1:
            return np.ones(1)
        return np.exp(np.linspace(np.log(0.5), np.log(1.5), self.n_batches))

    def check(self) -> None:
        if self.n_batches < 1:
            raise ValueError("n_batches must be >= 1")
        if self.gene_sd < 0:
            raise ValueError("gene_sd must be >= 0")
        if (self.scales() <= 0).any():
            raise ValueError("library scales must be > 0")
        if self.method not in ("poisson", "thinning"):
            raise ValueError(f"unknown method {self.method!r}")
        if self.composition not in ("balanced", "skewed"):
            raise ValueError(f"unknown composition {self.composition!r}")


def assign_batches(labels: np.ndarray, spec: BatchSpec, rng: np.random.Generator) -> np.ndarray:
    """Batch index (0..K-1) per cell, stratified by label (see the module docstring)."""
    k = spec.n_batches
    out = np.empty(len(labels), dtype=np.int64)
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(len(idx))]
        if spec.composition == "balanced":
            start = int(rng.integers(k))
            out[idx] = (start + np.arange(len(idx))) % k
        else:
            p = rng.dirichlet(np.ones(k))
            out[idx] = rng.choice(k, size=len(idx), p=p)
    return out


def gene_effects(n_genes: int, spec: BatchSpec, rng: np.random.Generator) -> np.ndarray:
    """``f[b, g] = exp(sd * z)``, ``z ~ N(0, 1)``: shape (K, n_genes)."""
    return np.exp(spec.gene_sd * rng.standard_normal((spec.n_batches, n_genes)))


def resample(X: Any, factors: np.ndarray, method: str, rng: np.random.Generator) -> Any:
    """Resample the non-zeros of CSR ``X`` (integer counts) with per-gene factors ``a[g]``."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X)
    x = np.rint(X.data).astype(np.int64)
    a = factors[X.indices]
    if method == "poisson":
        y = rng.poisson(a * x)
    else:
        y = rng.binomial(x, np.minimum(a, 1.0))
    out = sp.csr_matrix((y.astype(np.float32), X.indices.copy(), X.indptr.copy()), shape=X.shape)
    out.eliminate_zeros()
    return out


def manifest(dataset_id: str, spec: BatchSpec, k: int) -> dict[str, Any]:
    """The manifest of batch ``k`` (the demo's PBMC manifest, labelled)."""
    from aivc.demo import pbmc_manifest

    m = pbmc_manifest(dataset_id, labelled=True, title=f"PBMC 68k (reduced) with simulated batch effects, batch {k + 1} of {spec.n_batches}")
    m["description"] = (
        "Real PBMC cells (scanpy pbmc68k_reduced, exact raw counts) split into batches with simulated "
        f"gene-specific (log-normal sd {spec.gene_sd}) and library-size batch effects, counts resampled by "
        f"{spec.method} (benchmarks/batch_effects.py v{spec.version}, seed {spec.seed})."
    )
    return m


def make_batches(workdir: str | Path, spec: BatchSpec | None = None, *, log: Any = None) -> tuple[list[tuple[Path, Path]], dict[str, Any]]:
    """Write one submission (h5ad + manifest YAML) per batch into ``workdir``.

    Returns ``([(h5ad, manifest), ...], info)``; ``info`` is what ``batches.json`` holds.
    """
    import anndata as ad
    import pandas as pd
    import yaml

    from aivc.demo import pbmc_counts

    spec = spec or BatchSpec()
    spec.check()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    src = pbmc_counts()
    labels = src.obs["bulk_labels"].astype(str).to_numpy()
    root = np.random.SeedSequence(spec.seed)
    r_assign, r_genes, r_counts = (np.random.default_rng(s) for s in root.spawn(3))
    batch = assign_batches(labels, spec, r_assign)
    f = gene_effects(src.n_vars, spec, r_genes)
    scales = spec.scales()
    files: list[tuple[Path, Path]] = []
    per_batch: list[dict[str, Any]] = []
    for k in range(spec.n_batches):
        idx = np.flatnonzero(batch == k)
        Y = resample(src.X[idx], scales[k] * f[k], spec.method, r_counts)
        tot = np.asarray(Y.sum(axis=1)).ravel()
        keep = tot > 0
        if not keep.all():
            log(f"batch_effects: batch {k + 1}: dropping {int((~keep).sum())} cells left without counts")
        idx, Y, tot = idx[keep], Y[keep], tot[keep]
        obs = pd.DataFrame(
            {"bulk_labels": labels[idx], "bench_batch": f"batch{k + 1}", "orig_index": idx.astype(np.int64)},
            index=pd.Index(src.obs_names[idx].astype(str), dtype=object),
        )
        adata = ad.AnnData(X=Y, obs=obs, var=src.var[[]].copy())
        dataset_id = f"{spec.prefix}-batch{k + 1}"
        h5, mf = out / f"{dataset_id}.h5ad", out / f"{dataset_id}.yaml"
        adata.write_h5ad(h5)
        mf.write_text(yaml.safe_dump(manifest(dataset_id, spec, k), sort_keys=False))
        files.append((h5, mf))
        orig_tot = np.asarray(src.X[idx].sum(axis=1)).ravel()
        per_batch.append(
            {
                "dataset_id": dataset_id,
                "n_cells": int(len(idx)),
                "library_scale": float(scales[k]),
                "median_counts": float(np.median(tot)),
                "median_counts_before": float(np.median(orig_tot)),
                "labels": {str(a): int(b) for a, b in zip(*np.unique(labels[idx], return_counts=True), strict=True)},
            }
        )
    lf = np.log(f)
    info = {
        "spec": asdict(spec) | {"library_scales": scales.tolist()},
        "batches": per_batch,
        "gene_effects": {"log_sd_observed": float(lf.std()), "max_fold_between_batches": float(np.exp((lf.max(0) - lf.min(0)).max()))},
        "files": [[str(h), str(m)] for h, m in files],
    }
    (out / "batches.json").write_text(json.dumps(info, indent=2))
    log(
        f"batch_effects: wrote {spec.n_batches} batches to {out}: "
        + ", ".join(f"{b['dataset_id']} {b['n_cells']} cells, median {b['median_counts']:.0f} counts" for b in per_batch)
    )
    return files, info


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/work/bench-scratch/batches", help="output folder")
    p.add_argument("--batches", type=int, default=3, help="number of batches K")
    p.add_argument("--gene-sd", type=float, default=0.5, help="log-scale sd of the per-batch gene effects")
    p.add_argument("--library-scales", type=_floats, default=None, help="comma-separated per-batch library scales (K values)")
    p.add_argument("--method", choices=["poisson", "thinning"], default="poisson")
    p.add_argument("--composition", choices=["balanced", "skewed"], default="balanced")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="pbmc-batches", help="dataset id prefix")
    a = p.parse_args(argv)
    spec = BatchSpec(
        n_batches=a.batches, gene_sd=a.gene_sd, library_scales=a.library_scales, method=a.method,
        composition=a.composition, seed=a.seed, prefix=a.prefix,
    )
    _, info = make_batches(a.out, spec)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
