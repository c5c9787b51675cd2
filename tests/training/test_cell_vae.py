"""cell-vae: a pure torch module; finite loss that training lowers, masked genes ignored."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aivc.training.models.cell_vae import CellVAE, LossOutput, nb_log_likelihood


def _batch(n: int = 32, g: int = 20, n_batches: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rates = torch.rand(g, generator=gen) * 5
    x = torch.poisson(rates.expand(n, g), generator=gen)
    return {"x": x, "batch": torch.arange(n) % n_batches, "library": x.sum(1, keepdim=True), "mask": torch.ones(n, g, dtype=torch.bool)}


def test_forward_gives_finite_frozen_loss():
    torch.manual_seed(0)
    m = CellVAE(20, 2, latent_dim=4, hidden_dim=16)
    out = m(_batch())
    assert isinstance(out, LossOutput)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.loss = torch.tensor(0.0)  # type: ignore[misc]
    for t in (out.loss, out.reconstruction, out.kl):
        assert t.ndim == 0 and torch.isfinite(t)
    assert torch.allclose(out.loss, out.reconstruction + out.kl)
    no_kl = m(_batch(), kl_weight=0.0)
    assert torch.allclose(no_kl.loss, no_kl.reconstruction)
    assert m.embed(_batch()).shape == (32, 4)


def test_nb_log_likelihood_matches_torch_distribution():
    x = torch.tensor([0.0, 1.0, 5.0, 12.0])
    mu = torch.tensor([0.5, 2.0, 4.0, 10.0])
    theta = torch.tensor([1.0, 3.0, 0.5, 8.0])
    # torch's NegativeBinomial(total_count=theta, probs=mu / (mu + theta)) has mean mu
    ref = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(x)
    torch.testing.assert_close(nb_log_likelihood(x, mu, theta), ref, atol=1e-4, rtol=1e-4)


def test_loss_decreases_with_training():
    torch.manual_seed(0)
    m = CellVAE(20, 2, latent_dim=4, hidden_dim=32, dropout=0.0)
    batch = _batch(64)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.eval()
    with torch.no_grad():
        before = float(m(batch).loss)
    m.train()
    for _ in range(60):
        out = m(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        after = float(m(batch).loss)
    assert after < 0.9 * before  # Poisson noise bounds how low it can go


def test_masked_genes_do_not_contribute():
    torch.manual_seed(0)
    m = CellVAE(20, 2, latent_dim=4, hidden_dim=16).eval()
    b = _batch()
    mask = torch.ones(32, 20, dtype=torch.bool)
    mask[1::2, :5] = False  # dataset 1 did not measure genes 0-4
    b["mask"] = mask
    b["library"] = (b["x"] * mask).sum(1, keepdim=True)
    base = m(b)
    noisy = dict(b, x=b["x"] + (~mask) * 100.0)  # garbage where unmeasured
    torch.testing.assert_close(m(noisy).loss, base.loss)
    torch.testing.assert_close(m.embed(noisy), m.embed(b))
    # the mask matters: the same cells with every gene measured have another loss
    assert not torch.allclose(m(dict(b, mask=torch.ones_like(mask))).loss, base.loss)
    # gene-wise dispersion of genes unmeasured everywhere gets no gradient
    b2 = dict(b, mask=torch.ones_like(mask))
    b2["mask"][:, :3] = False
    b2["library"] = (b["x"] * b2["mask"]).sum(1, keepdim=True)
    m.zero_grad()
    m(b2).loss.backward()
    assert (m.log_theta.grad[:3] == 0).all() and (m.log_theta.grad[3:] != 0).any()


def test_embed_is_deterministic_even_in_train_mode():
    torch.manual_seed(0)
    m = CellVAE(20, 2, latent_dim=4, hidden_dim=16, dropout=0.5).train()
    b = _batch()
    torch.testing.assert_close(m.embed(b), m.embed(b))
    assert m.training
