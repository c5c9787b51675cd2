"""cell-transformer: a pure torch module over gene-UR tokens; trains, embeds deterministically,
ignores unmeasured genes, and its weights do not depend on the gene set."""

from __future__ import annotations

import pytest
import torch

from aivc.training.models import model_class
from aivc.training.models.cell_transformer import CellTransformer
from aivc.training.models.cell_vae import LossOutput

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 1, "latent_dim": 4, "max_tokens": 16, "n_bins": 16}


@pytest.fixture(autouse=True)
def _one_thread():  # noqa: ANN202 - the machine is shared: one intra-op thread is fastest here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _problem(n: int = 64, g: int = 24, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gene URs and a batch of two cell programs: each program expresses half of the genes
    highly; the URs of a program's genes share a direction (as co-expression URs would)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(g, 8, generator=gen)
    table[: g // 2, 0] += 2.0
    table[g // 2 :, 1] += 2.0
    table = torch.nn.functional.normalize(table, dim=1)
    program = torch.arange(n) % 2
    rates = torch.full((n, g), 0.3)
    rates[program == 0, : g // 2] = 8.0
    rates[program == 1, g // 2 :] = 8.0
    x = torch.poisson(rates, generator=gen)
    x[:, 0] += 1
    return table, {"x": x, "batch": torch.zeros(n, dtype=torch.long), "library": x.sum(1, keepdim=True), "mask": torch.ones(n, g, dtype=torch.bool)}


def _model(seed: int = 0, **kw) -> CellTransformer:  # noqa: ANN003
    torch.manual_seed(seed)
    return CellTransformer(gene_dim=8, **(SMALL | kw))


def _eval_loss(m: CellTransformer, batch: dict[str, torch.Tensor]) -> float:
    m.eval()
    torch.manual_seed(123)  # the same masked tokens every time
    with torch.no_grad():
        return float(m(batch).loss)


def _fit(m: CellTransformer, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    m.train()
    losses = []
    for _ in range(steps):
        out = m(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def test_registered_model_type_and_gene_tokens():
    assert model_class("cell-transformer") is CellTransformer and CellTransformer.gene_tokens is True


def test_loss_is_finite_and_training_lowers_it():
    table, batch = _problem()
    m = _model(dropout=0.0)
    m.set_gene_table(table)
    out = m(batch, kl_weight=0.5)
    assert isinstance(out, LossOutput)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and float(out.loss.detach()) > 0
    assert float(out.kl) == 0.0 and torch.equal(out.loss, out.reconstruction)
    genes, values, valid = m._tokens(batch, sample=False)
    mean_predictor = 2 * float(values[valid].var())  # both heads predicting one value for all
    before = _eval_loss(m, batch)
    losses = _fit(m, batch, 80)
    after = _eval_loss(m, batch)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert after < 0.5 * before and after < 0.8 * mean_predictor, (before, after, mean_predictor)


def test_embed_is_deterministic_and_independent_of_other_cells():
    table, batch = _problem()
    m = _model()
    m.set_gene_table(table)
    m.train()
    z1, z2 = m.embed(batch), m.embed(batch)
    assert z1.shape == (64, 4) and torch.equal(z1, z2)
    assert m.training  # embed restores the mode it found
    one = {k: v[5:6] for k, v in batch.items()}
    torch.testing.assert_close(m.embed(one)[0], z1[5], atol=1e-5, rtol=1e-5)
    # two cell programs give different URs
    assert float((z1[0] - z1[1]).norm()) > 1e-3


def test_unmeasured_genes_never_influence_the_embedding():
    table, batch = _problem()
    m = _model()
    m.set_gene_table(table)
    mask = batch["mask"].clone()
    mask[:, 3:9] = False
    mask[::2, 15] = False
    base = m.embed(batch | {"mask": mask})
    x = batch["x"].clone()
    x[~mask] = torch.randint(0, 500, (int((~mask).sum()),), generator=torch.Generator().manual_seed(1)).float()
    table2 = table.clone()
    table2[3:9] = torch.randn(6, 8)
    m.set_gene_table(table2)
    assert torch.equal(m.embed(batch | {"x": x, "mask": mask}), base)
    # the measured genes do matter
    x2 = batch["x"].clone()
    x2[:, 10] += 50
    assert not torch.allclose(m.embed(batch | {"x": x2, "mask": mask}), base)
    # and so does the loss: it only ever reads measured genes
    m.set_gene_table(table)
    torch.manual_seed(7)
    l1 = float(m(batch | {"mask": mask}).loss.detach())
    torch.manual_seed(7)
    l2 = float(m(batch | {"x": x, "mask": mask}).loss.detach())
    assert l1 == l2


def test_same_weights_embed_a_larger_gene_set():
    table, batch = _problem()
    m = _model()
    m.set_gene_table(table)
    base = m.embed(batch)
    # seven new genes, none expressed: the very same URs
    new_table = torch.cat([table, torch.randn(7, 8)])
    wide = {"x": torch.cat([batch["x"], torch.zeros(64, 7)], 1), "mask": torch.ones(64, 31, dtype=torch.bool)}
    m.set_gene_table(new_table)
    assert torch.equal(m.embed(wide), base)
    # expressed new genes are read through their URs
    wide["x"][:, 24:] = 20.0
    z = m.embed(wide)
    assert z.shape == (64, 4) and torch.isfinite(z).all() and not torch.allclose(z, base)
    with pytest.raises(ValueError, match="batch has 24 genes but the gene table has 31"):
        m.embed(batch)


def test_state_dict_does_not_depend_on_the_gene_set():
    a, b = _model(seed=0), _model(seed=1)
    a.set_gene_table(torch.randn(24, 8))
    b.set_gene_table(torch.randn(1000, 8))
    sa, sb = a.state_dict(), b.state_dict()
    assert "gene_table" not in sa and list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    # weights move between gene sets; the gene table stays the receiver's
    b.load_state_dict(sa)
    assert b.gene_table.shape == (1000, 8)
    fresh = CellTransformer(gene_dim=8, **SMALL)
    fresh.load_state_dict(sa)
    table, batch = _problem()
    a.set_gene_table(table)
    fresh.set_gene_table(table)
    assert torch.equal(a.embed(batch), fresh.embed(batch))


def test_seeds_make_training_reproducible():
    table, batch = _problem()
    runs = []
    for seed in (3, 3, 4):
        m = _model(seed=seed)
        m.set_gene_table(table)
        torch.manual_seed(seed)
        runs.append((_fit(m, batch, 3), m.state_dict()))
    (l1, w1), (l2, w2), (l3, w3) = runs
    assert l1 == l2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert l1 != l3 and not torch.equal(w1["to_latent.weight"], w3["to_latent.weight"])


def test_tokens_sample_by_expression_in_training_and_take_the_top_at_eval():
    m = _model(max_tokens=1)
    m.set_gene_table(torch.randn(4, 8))
    batch = {"x": torch.tensor([[90.0, 10.0, 0.0, 500.0]]).repeat(4000, 1), "mask": torch.tensor([[True, True, True, False]]).repeat(4000, 1)}
    torch.manual_seed(0)
    genes, values, valid = m._tokens(batch, sample=True)
    assert genes.shape == (4000, 1) and valid.all()
    share = float((genes == 0).float().mean())
    assert abs(share - 0.9) < 0.02 and set(genes.unique().tolist()) == {0, 1}  # never unexpressed 2, never unmeasured 3
    top, _, _ = m._tokens(batch, sample=False)
    assert (top == 0).all()
    torch.testing.assert_close(values[genes == 0], torch.full_like(values[genes == 0], torch.log1p(torch.tensor(0.9e4)).item()))


def test_misuse_is_reported():
    m = _model()
    _, batch = _problem()
    with pytest.raises(RuntimeError, match="set_gene_table"):
        m.embed(batch)
    with pytest.raises(ValueError, match=r"shape \(n_genes, 8\)"):
        m.set_gene_table(torch.randn(24, 9))
    with pytest.raises(ValueError, match="multiple of n_heads"):
        CellTransformer(gene_dim=8, d_model=10, n_heads=4)
