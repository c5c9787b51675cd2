"""Sweep of cell-vae settings against the PCA baseline on the real PBMC cells (issue 15).

Why the default cell-vae ties PCA on label structure, and what does not change it. The cells
are the 700 real PBMC cells submitted to a fresh lake and exported (759 harmonized genes, raw
counts); each setting trains aivc's own ``CellVAE`` module in-process with the trainer's
schedule (Adam, batch 128, KL warm-up over 20 epochs, early stopping on a 10 % validation
split with patience 20, the best epoch's weights, at most 400 epochs) for ``--seeds`` seeds,
then scores the latent means by 15-NN label accuracy (5-fold stratified, 3 fold draws), the
score of ``bench_scvi_peer.py``. The PCA row is ``aivc embed pca``'s recipe (log1p CP10k,
z-scored, clipped at 10, 32 components) on the same matrix. It skips Ray, the lake reader and
checkpointing, so it runs a setting in seconds; ``tests/training/test_cell_vae_defaults.py``
checks the real path.

Usage::

    .venv/bin/python benchmarks/sweep_cell_vae.py [--seeds 3] [--settings '[{"latent": 32}, {"beta": 0.5}]'] [--json]

A setting's keys: ``latent, hidden, layers, dropout, lr, batch, patience, warmup, beta`` (KL
weight after warm-up), ``input_dropout`` (dropout on the encoder's input genes) and
``gene_weight`` (γ: each gene's NB log-likelihood weighted by its mean CP10k^-γ).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SETTINGS = [
    {}, {"latent": 32}, {"latent": 10}, {"hidden": 256}, {"layers": 2}, {"dropout": 0.0}, {"beta": 0.5},
    {"batch": 64}, {"patience": 50}, {"lr": 3e-4}, {"input_dropout": 0.3}, {"gene_weight": 0.25},
]  # fmt: skip


def pbmc_matrix(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The lake's counts (cells x harmonized genes) and submitted cell types of the PBMC cells."""
    import anndata as ad
    import yaml

    from aivc.demo import pbmc_counts, pbmc_manifest
    from aivc.ingest.submission import submit
    from aivc.store.export import export_h5ad
    from aivc.store.lake import Lake

    lake = Lake.init(work / "lake")
    h5, mf = work / "pbmc.h5ad", work / "pbmc.yaml"
    pbmc_counts().write_h5ad(h5)
    mf.write_text(yaml.safe_dump(pbmc_manifest("pbmc-all", labelled=True, title="PBMC, all 700 cells")))
    if submit(lake, h5, mf).status != "committed":
        raise SystemExit("the PBMC submission did not commit")
    export_h5ad(lake, "pbmc-all@1", str(work / "export.h5ad"))
    a = ad.read_h5ad(work / "export.h5ad")
    x = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    return np.asarray(x, dtype=np.float32), a.obs["cell_type_ontology_term_id"].astype(str).to_numpy()


def knn_accuracy(z: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    cv = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=0)
    return float(cross_val_score(KNeighborsClassifier(n_neighbors=15), z, labels, cv=cv).mean())


def pca_ur(x: np.ndarray, n: int = 32) -> np.ndarray:
    from sklearn.decomposition import PCA

    ln = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    z = np.clip((ln - ln.mean(0)) / (ln.std(0) + 1e-8), -10, 10)
    return PCA(n, random_state=0).fit_transform(z)


def train(x: np.ndarray, seed: int, s: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The latent means of a CellVAE trained with setting ``s``; and its best epoch."""
    import torch

    from aivc.training.models.cell_vae import CellVAE, LossOutput, nb_log_likelihood

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_val = int(round(0.1 * len(x)))
    val, tr = idx[:n_val], idx[n_val:]
    xt = torch.from_numpy(x)
    lib, bt = xt.sum(1, keepdim=True), torch.zeros(len(x), dtype=torch.long)
    m = CellVAE(x.shape[1], 1, latent_dim=s.get("latent", 16), hidden_dim=s.get("hidden", 128), n_layers=s.get("layers", 1), dropout=s.get("dropout", 0.1), encoder_input="lognorm")
    weight = None
    if s.get("gene_weight"):
        mean = (x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).mean(0) + 1e-3
        w = mean ** -float(s["gene_weight"])
        weight = torch.from_numpy((w / w.mean()).astype(np.float32))
    p_in = float(s.get("input_dropout", 0.0))

    def loss(rows: torch.Tensor, kl_weight: float) -> LossOutput:
        xb = xt[rows]
        mu_z, logvar = m.encode(torch.nn.functional.dropout(xb, p_in) if (m.training and p_in) else xb, bt[rows])
        z = mu_z + torch.exp(0.5 * logvar) * torch.randn_like(mu_z) if m.training else mu_z
        ll = nb_log_likelihood(xb, m.decode(z, bt[rows], lib[rows]), torch.exp(m.log_theta))
        rec = -(ll if weight is None else ll * weight).sum(-1).mean()
        kl = (0.5 * (mu_z.pow(2) + logvar.exp() - 1.0 - logvar)).sum(-1).mean()
        return LossOutput(loss=rec + kl_weight * kl, reconstruction=rec, kl=kl)

    opt = torch.optim.Adam(m.parameters(), lr=s.get("lr", 1e-3))
    warm, beta, patience, bs = s.get("warmup", 20), s.get("beta", 1.0), s.get("patience", 20), s.get("batch", 128)
    best: tuple[int, float, dict[str, Any]] | None = None
    bad = 0
    for epoch in range(1, 401):
        m.train()
        order = torch.from_numpy(rng.permutation(tr))
        for i in range(0, len(order), bs):
            out = loss(order[i : i + bs], beta * min(1.0, epoch / warm) if warm else beta)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            v = float(loss(torch.from_numpy(val), beta).loss)
        if epoch <= warm:
            continue
        if best is None or v < best[1] - 1e-3 * abs(best[1]):
            best, bad = (epoch, v, {k: t.clone() for k, t in m.state_dict().items()}), 0
        else:
            bad += 1
            if bad >= patience:
                break
    assert best is not None
    m.load_state_dict(best[2])
    return m.embed({"x": xt, "batch": bt, "library": lib}).numpy(), best[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--settings", default=None, help="JSON list of settings (default: the sweep in DEFAULT_SETTINGS)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    settings = json.loads(a.settings) if a.settings else DEFAULT_SETTINGS
    with tempfile.TemporaryDirectory(prefix="aivc-sweep-") as tmp:
        x, labels = pbmc_matrix(Path(tmp))
    pca = knn_accuracy(pca_ur(x), labels)
    rows = []
    print(f"PCA (aivc embed pca's recipe, 32 components): 15-NN accuracy {pca:.4f}", file=sys.stderr, flush=True)
    for s in settings:
        t0 = time.perf_counter()
        accs, epochs = [], []
        for seed in range(a.seeds):
            z, best = train(x, seed, s)
            accs.append(knn_accuracy(z, labels))
            epochs.append(best)
        row = {"setting": s, "mean": float(np.mean(accs)), "sd": float(np.std(accs)), "best_epochs": epochs, "vs_pca": float(np.mean(accs)) / pca, "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{json.dumps(s):<40} {row['mean']:.4f} ± {row['sd']:.4f}  {row['vs_pca']:.3f}x PCA  best epochs {epochs}", file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps({"pca": pca, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
