"""cell-multimodal-vae on real cells: it trains, a missing modality is masked (never zero-filled),
an RNA-only cell embeds as the product of the prior and its RNA expert, and the record carries
each measurement's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aivc.training.errors import ModelError
from aivc.training.multimodal import (
    CellMultimodalVaeConfig,
    MeasurementInput,
    MultimodalArrays,
    align_features,
    embed_arrays,
    features_of,
    fit_arrays,
    init_stats,
    model_init,
    record_fields,
)
from aivc.training.multimodal_nets import MultimodalVAE, product_of_experts, protein_mixture_log_likelihood
from tests.training.data import cite_data, multiome_data

SMALL = {"model": {"latent_dim": 8, "hidden_dim": 64}, "optim": {"epochs": 30, "batch_size": 64}}


@pytest.fixture(scope="module")
def cite() -> cite_data.CiteData:
    return cite_data.load("pbmc10k").top_genes(500)


@pytest.fixture(scope="module")
def cite_arrays(cite: cite_data.CiteData) -> MultimodalArrays:
    """200 real PBMC, 500 genes; the first 150 with their 14 proteins, the last 50 RNA only."""
    present = np.arange(len(cite.rna)) < 150
    return MultimodalArrays(counts={"RNA": cite.rna, "ADT": cite.adt}, present={"ADT": present}, batch=np.zeros(len(cite.rna), np.int64))


@pytest.fixture(scope="module")
def fitted(cite_arrays: MultimodalArrays):  # noqa: ANN201
    torch.set_num_threads(1)
    return fit_arrays(cite_arrays, CellMultimodalVaeConfig(**SMALL))


def _eval_loss(model: MultimodalVAE, arrays: MultimodalArrays) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(arrays.rows(np.arange(arrays.n_cells)))
    return {"loss": float(out.loss), **{m: float(v) for m, v in out.by_modality.items()}}


def test_trains_on_real_cite_cells_and_every_modality_loss_falls(cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    untrained = MultimodalVAE(**fitted.init)
    before, after = _eval_loss(untrained, cite_arrays), _eval_loss(fitted.model, cite_arrays)
    h = fitted.history
    assert len(h) == 30 and h[-1]["train_loss"] < 0.8 * h[0]["train_loss"]
    for key in ("loss", "RNA", "ADT"):
        assert after[key] < before[key], (key, before, after)
    assert after["ADT"] < 0.8 * before["ADT"]  # the protein mixture is learned, not just the RNA


def test_rna_only_cell_is_the_product_of_prior_and_rna_expert(cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    model = fitted.model
    rows = cite_arrays.rows(np.arange(150, 200))  # RNA-only cells
    assert not bool(rows["present_ADT"].any())
    z = model.embed(rows)
    mu, logvar, present = model.experts_of(rows)["RNA"]
    prec = torch.exp(-logvar)
    torch.testing.assert_close(z, mu * prec / (1.0 + prec))  # N(0, I) x N(mu, sigma^2)
    # without any protein input at all: the same URs
    no_adt = {k: v for k, v in rows.items() if not k.endswith("_ADT")}
    torch.testing.assert_close(model.embed(no_adt), z)
    # whatever the absent protein row holds, it is never read
    junk = dict(rows, x_ADT=torch.full_like(rows["x_ADT"], 500.0))
    torch.testing.assert_close(model.embed(junk), z)
    # masking is not zero-filling: an all-zero protein vector that is *present* moves the UR
    zero = dict(rows, x_ADT=torch.zeros_like(rows["x_ADT"]), present_ADT=torch.ones(50, dtype=torch.bool))
    assert float((model.embed(zero) - z).abs().max()) > 0.1


def test_a_cell_with_proteins_embeds_from_both_and_alone_from_rna(cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    model = fitted.model
    rows = cite_arrays.rows(np.arange(0, 40))
    joint, rna = model.embed(rows), model.embed(rows, use=("RNA",))
    assert float((joint - rna).abs().mean()) > 1e-3
    ex = model.experts_of(rows)
    m, _ = product_of_experts([ex["RNA"][0], ex["ADT"][0]], [ex["RNA"][1], ex["ADT"][1]], [torch.ones(40), torch.ones(40)])
    torch.testing.assert_close(joint, m)
    # a cell's UR does not depend on the other cells of its batch
    one = cite_arrays.rows(np.array([7]))
    torch.testing.assert_close(model.embed(one)[0], joint[7], atol=1e-5, rtol=1e-5)
    # the RNA-only URs of every cell, in order, through the array helper
    all_rna = embed_arrays(model, cite_arrays, use=("RNA",))
    np.testing.assert_allclose(all_rna[:40], rna.numpy(), atol=1e-5)


def test_rna_only_posterior_predicts_real_proteins_better_than_their_mean(cite: cite_data.CiteData, cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    held = np.arange(150, 200)  # never had proteins in training
    pred = np.log1p(fitted.model.predict(cite_arrays.rows(held), "ADT", use=("RNA",)).numpy())
    truth = np.log1p(cite.adt[held])
    r = [np.corrcoef(pred[:, j], truth[:, j])[0, 1] for j in range(truth.shape[1])]
    lineage = [list(cite.proteins).index(p) for p in ("CD3", "CD4", "CD14", "CD19")]
    assert np.mean([r[j] for j in lineage]) > 0.6, dict(zip(cite.proteins, np.round(r, 3), strict=True))


def test_protein_panel_mask_hides_unmeasured_proteins(cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    model = fitted.model
    rows = cite_arrays.rows(np.arange(20))
    mask = torch.ones_like(rows["mask_ADT"])
    mask[:, 5:] = False  # a panel of the first 5 proteins
    a = dict(rows, mask_ADT=mask)
    b = dict(a, x_ADT=torch.where(mask, rows["x_ADT"], torch.full_like(rows["x_ADT"], 999.0)))
    torch.testing.assert_close(model.embed(a), model.embed(b))
    model.eval()
    torch.testing.assert_close(model(a).by_modality["ADT"], model(b).by_modality["ADT"])
    assert float((model.embed(a) - model.embed(rows)).abs().max()) > 1e-4  # the mask is read


def test_modality_dropout_keeps_one_present_modality_and_never_adds_one() -> None:
    torch.manual_seed(0)
    m = MultimodalVAE({"RNA": 3, "ADT": 2}, 1, modality_dropout=0.99)
    m.train()
    present = torch.tensor([[True, True], [True, False], [False, True]] * 100)
    kept = m._dropout(present)
    assert bool((kept.sum(dim=1) == 1).all())  # nearly everything dropped, one always stays
    assert not bool((kept & ~present).any())
    m.eval()
    assert torch.equal(m._dropout(present), present)


def test_protein_mixture_likelihood_matches_torch_distributions() -> None:
    x = torch.tensor([0.0, 3.0, 40.0, 200.0])
    bg, fg, theta = torch.tensor([2.0, 2.0, 5.0, 5.0]), torch.tensor([30.0, 8.0, 50.0, 180.0]), torch.tensor([4.0, 1.0, 10.0, 2.0])
    logit = torch.tensor([0.5, -1.0, 0.0, 2.0])

    def nb(mu: torch.Tensor) -> torch.Tensor:
        return torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(x)

    pi = torch.sigmoid(logit)
    ref = torch.log(pi * nb(bg).exp() + (1 - pi) * nb(fg).exp())
    torch.testing.assert_close(protein_mixture_log_likelihood(x, bg, fg, logit, theta), ref, atol=1e-4, rtol=1e-4)


def test_product_of_experts_closed_form() -> None:
    mu, lv = torch.tensor([[2.0], [2.0]]), torch.log(torch.tensor([[0.5], [0.5]]))
    m, v = product_of_experts([mu], [lv], [torch.tensor([True, False])])
    torch.testing.assert_close(m, torch.tensor([[2.0 * 2.0 / 3.0], [0.0]]))  # precisions 1 + 2; absent: the prior
    torch.testing.assert_close(v.exp(), torch.tensor([[1.0 / 3.0], [1.0]]))


def test_rna_and_atac_on_real_multiome_cells() -> None:
    torch.set_num_threads(1)
    d = multiome_data.load()
    n = 400
    present = np.arange(n) < 300
    arr = MultimodalArrays(counts={"RNA": d.rna[:n], "ATAC": d.atac[:n]}, present={"ATAC": present}, batch=np.zeros(n, np.int64))
    cfg = CellMultimodalVaeConfig(measurements=(MeasurementInput(name="ATAC"),), **SMALL)
    fit = fit_arrays(arr, cfg)
    torch.manual_seed(0)
    before, after = _eval_loss(MultimodalVAE(**fit.init), arr), _eval_loss(fit.model, arr)
    assert after["RNA"] < before["RNA"] and after["ATAC"] < before["ATAC"]
    # an ATAC-only cell embeds from its peaks alone (RNA absent: the RNA expert never sees it)
    atac_only = arr.without("RNA", np.arange(10))
    rows = atac_only.rows(np.arange(10))
    z = fit.model.embed(rows)
    mu, lv, _ = fit.model.experts_of(rows)["ATAC"]
    torch.testing.assert_close(z, mu * torch.exp(-lv) / (1.0 + torch.exp(-lv)))
    # held-out cells' open peaks, from RNA alone, rank above their closed peaks better than peak frequency does
    held = np.arange(300, n)
    p = fit.model.predict(arr.rows(held), "ATAC", use=("RNA",)).numpy()
    y = d.atac[held] > 0
    freq = np.broadcast_to((d.atac[:300] > 0).mean(0), p.shape)
    assert _auc(p, y) > _auc(freq, y)


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    s, t = score.ravel(), y.ravel()
    r = rankdata(s)
    n1 = int(t.sum())
    return float((r[t].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(t) - n1)))


def test_config_init_and_record_carry_each_measurements_features(cite_arrays: MultimodalArrays) -> None:
    cfg = CellMultimodalVaeConfig(measurements=(MeasurementInput(name="ATAC"), MeasurementInput(name="ADT")))
    assert cfg.measurement_names == ("RNA", "ADT", "ATAC")
    with pytest.raises(ValueError, match="twice"):
        CellMultimodalVaeConfig(measurements=(MeasurementInput(name="ADT"), MeasurementInput(name="ADT")))
    with pytest.raises(ModelError, match="no ATAC features"):
        model_init(cfg, {"RNA": 500, "ADT": 14}, 1)
    init = model_init(CellMultimodalVaeConfig(), cite_arrays.n_features, 1, init_stats(cite_arrays))
    assert init["n_features"] == {"RNA": 500, "ADT": 14} and len(init["init_stats"]["ADT"]) == 14
    m = MultimodalVAE(**init)  # the init is what a record stores: it rebuilds the module
    assert m.modalities == ("RNA", "ADT") and m.latent_dim == CellMultimodalVaeConfig().model.latent_dim
    fields = record_fields({"RNA": ["ENSG1", "ENSG2"], "ADT": ["CD3", "CD4"], "ATAC": ["chr1:1-10"]}, ["ds1", "ds2"])
    assert features_of(fields["gene_ids"], fields["encodings"]) == {"RNA": ("ENSG1", "ENSG2"), "ADT": ("CD3", "CD4"), "ATAC": ("chr1:1-10",)}
    assert align_features(("CD3", "CD4", "CD8a"), ["CD8a", "CD3"], "ADT").tolist() == [1, -1, 0]
    with pytest.raises(ModelError, match="1 of the model's 3 ADT features"):
        align_features(("CD3", "CD4", "CD8a"), ["CD3"], "ADT")


def test_the_ray_train_epoch_and_the_embed_job_drive_it_unchanged(cite_arrays: MultimodalArrays, fitted) -> None:  # noqa: ANN001
    from aivc.embeddings.model_job import embed_inputs
    from aivc.training.train_loop import _run_epoch

    torch.manual_seed(0)
    model = MultimodalVAE(**fitted.init)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [cite_arrays.rows(np.arange(i, i + 50)) for i in range(0, 200, 50)]
    sums = _run_epoch(model, batches, optimizer=opt)
    assert sums[3] == 200 and all(np.isfinite(sums))
    # the embed job's RNA-only inputs (x, mask, batch, library): the RNA-only URs
    rows = cite_arrays.rows(np.arange(200))
    inputs = {k: rows[k] for k in ("x", "mask", "batch", "library")}
    np.testing.assert_allclose(embed_inputs(fitted.model, inputs, 64), embed_arrays(fitted.model, cite_arrays, use=("RNA",)), atol=1e-5)
