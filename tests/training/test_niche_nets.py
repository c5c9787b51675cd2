"""The niche model: it trains, is deterministic, minibatches exactly, and finds domains cell URs miss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aivc.errors import UsageError
from aivc.training.niche_graph import NicheGraphSpec, build_graph
from aivc.training.niche_nets import NicheGNN, NicheLoss, NicheModelConfig, _ball, _subgraph, embed_niches, fit_niche_model
from benchmarks.tissue_sim import TissueParams, cell_urs, simulate_tissue

FAST = NicheModelConfig(epochs=40, n_states=16, anchors=512, seed=0)


@pytest.fixture(scope="module")
def tissue():  # noqa: ANN201
    """A tiny simulated tissue (2 sections, 4 domains) with PCA cell URs and its Delaunay graph."""
    adata = simulate_tissue(TissueParams(n_cells=2400, n_samples=2, n_domains=4, seed=1))
    x = cell_urs(adata.X, 20)
    graph = build_graph(adata.obsm["spatial"], NicheGraphSpec(), groups=adata.obs["sample"].to_numpy())
    return x, graph, adata.obs["domain"].cat.codes.to_numpy()


@pytest.fixture(scope="module")
def trained(tissue):  # noqa: ANN001, ANN201
    torch.set_num_threads(1)
    x, graph, _ = tissue
    return fit_niche_model(x, graph, FAST)


def _ari(labels: np.ndarray, features: np.ndarray, k: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(labels, KMeans(k, n_init=10, random_state=0).fit_predict(features)))


def test_loss_decreases(trained):  # noqa: ANN001
    _, history = trained
    assert len(history) == FAST.epochs
    first, last = np.mean([h["loss"] for h in history[:3]]), np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.9 * first
    assert history[-1]["contrastive"] < history[0]["contrastive"] and history[-1]["reconstruction"] > 0


def test_niche_urs_find_domains_that_cell_urs_miss(tissue, trained):  # noqa: ANN001
    x, graph, domains = tissue
    model, _ = trained
    z = embed_niches(model, x, graph)
    assert z.shape == (graph.n_nodes, FAST.out_dim) and z.dtype == np.float32
    from scipy import sparse

    mean = sparse.diags(1.0 / np.maximum(graph.degree, 1)) @ graph.to_scipy().astype(bool).astype(float) @ x
    ari_cell, ari_mean, ari_niche = _ari(domains, x, 4), _ari(domains, mean, 4), _ari(domains, z, 4)
    assert ari_niche > ari_cell + 0.2 and ari_niche > ari_mean + 0.1, (ari_cell, ari_mean, ari_niche)


def test_deterministic_given_the_seed(tissue):  # noqa: ANN001
    x, graph, _ = tissue
    cfg = NicheModelConfig(epochs=3, n_states=8, anchors=256, seed=7)
    a = embed_niches(fit_niche_model(x, graph, cfg)[0], x, graph)
    b = embed_niches(fit_niche_model(x, graph, cfg)[0], x, graph)
    c = embed_niches(fit_niche_model(x, graph, NicheModelConfig(epochs=3, n_states=8, anchors=256, seed=8))[0], x, graph)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_ball_subgraph_propagates_exactly(tissue, trained):  # noqa: ANN001
    x, graph, _ = tissue
    model, _ = trained
    nodes, interior = _ball(graph, 5, 600, max(model.hops))
    assert 600 <= nodes.size < graph.n_nodes and 0 < interior.sum() < nodes.size
    indptr, indices = _subgraph(graph, nodes)
    xt = torch.from_numpy(x)
    full = model.embed({"x": xt, "indptr": torch.from_numpy(graph.indptr), "indices": torch.from_numpy(graph.indices)})
    sub = model.embed({"x": xt[nodes], "indptr": torch.from_numpy(indptr), "indices": torch.from_numpy(indices), "degree": torch.from_numpy(graph.degree[nodes])})
    np.testing.assert_allclose(sub[torch.from_numpy(interior)].numpy(), full[nodes[interior]].numpy(), atol=1e-5)


def test_minibatch_training_runs(tissue):  # noqa: ANN001
    x, graph, _ = tissue
    model, history = fit_niche_model(x, graph, NicheModelConfig(epochs=2, n_states=8, anchors=128, batch_nodes=800, seed=0))
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert embed_niches(model, x, graph).shape == (graph.n_nodes, 16)


def test_module_contract():
    m = NicheGNN(6, n_states=4, hops=(1, 3), out_dim=3)
    n = 5
    batch = {
        "x": torch.randn(n, 6),
        "indptr": torch.tensor([0, 1, 3, 5, 7, 8]),
        "indices": torch.tensor([1, 0, 2, 1, 3, 2, 4, 3]),
        "mask": torch.tensor([True, False, True, False, False]),
        "mask2": torch.tensor([False, True, False, False, True]),
        "anchors": torch.tensor([0, 2, 4]),
        "positives": torch.tensor([1, 3, 3]),
    }
    out = m(batch)
    assert isinstance(out, NicheLoss) and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(0.1 * out.reconstruction.item() + out.contrastive.item(), rel=1e-5)
    assert tuple(m.embed(batch).shape) == (n, 3) and m.training
    assert m.init_params["hops"] == [1, 3] and m.init_params["n_features"] == 6
    assert torch.allclose(m.states(batch["x"]).sum(1), torch.ones(n))


def test_bad_inputs_are_usage_errors(tissue, trained):  # noqa: ANN001
    x, graph, _ = tissue
    model, _ = trained
    with pytest.raises(UsageError):
        NicheModelConfig(mask_rate=1.0)
    with pytest.raises(UsageError):
        NicheModelConfig(reconstruction_weight=0.0, contrastive_weight=0.0)
    with pytest.raises(UsageError):
        fit_niche_model(x[:10], graph, FAST)
    with pytest.raises(UsageError):
        embed_niches(model, x[:, :5], graph)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(UsageError):
        embed_niches(model, bad, graph)
