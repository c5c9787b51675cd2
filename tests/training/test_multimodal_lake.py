"""The multimodal cell model on the lake: plan, loader, Ray Train, registration and embedding.

Real CITE-seq cells (``schemas/examples``): ``cite-10k`` is submitted with its antibodies
(RNA + ADT), ``cite-5k`` as a plain RNA manifest, so it is an RNA-only dataset. The model is
trained through ``aivc train cell-multimodal-vae`` (Ray Train) and must embed both, the
RNA-only cells from their RNA expert alone (their ADT masked out of the product, not zeros).
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.store.read import LakeQuery
from aivc.training.config import load_config
from aivc.training.data import TrainingPlan
from aivc.training.multimodal import MultimodalArrays, features_of, init_stats
from aivc.training.multimodal_data import MultimodalCellDataset, build_multimodal_plan, load_measurements, stream_init_stats
from tests.ingest.test_cite_submit import EXAMPLES, cite_manifest, write_manifest

SETS = ["optim.epochs=8", "optim.batch_size=64", "optim.lr=0.003", "model.hidden_dim=32", "model.latent_dim=6", "data.n_top_genes=400", "data.chunk_rows=128", "measurements=[{name: ADT}]"]


@pytest.fixture(scope="module")
def cite_lake(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """cite-10k with ADT (200 cells, 14 proteins) and cite-5k RNA only (200 cells)."""
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("mm")
    lake = Lake.init(root / "lake")
    rna_only = cite_manifest("cite-5k")
    rna_only.pop("measurements")
    for name, h5, m in (("cite-10k", "cite_pbmc10k.h5ad", cite_manifest("cite-10k")), ("cite-5k", "cite_pbmc5k.h5ad", rna_only)):
        res = submit(lake, EXAMPLES / h5, write_manifest(root / f"{name}.yaml", m), report_dir=root / name)
        assert res.status == "committed", [str(e) for e in res.errors]
    return lake


def _source_adt() -> np.ndarray:
    return np.asarray(ad.read_h5ad(EXAMPLES / "cite_pbmc10k.h5ad").obsm["protein_expression"], dtype=np.float32)


def _arrays(lake, plan: TrainingPlan, mm) -> MultimodalArrays:  # noqa: ANN001
    """The plan's cells as in-memory arrays: RNA read whole, ADT from the submitted file."""
    cells = plan.cells
    rna = soma_io.read_rows(plan.soma_uri, plan.high_water, cells["soma_joinid"].to_numpy(), plan.gene_joinids).toarray().astype(np.float32)
    adt = np.zeros((len(cells), mm.measurements[0].n_features), np.float32)
    is10k = (cells["dataset_id"] == "cite-10k").to_numpy()
    adt[is10k] = _source_adt()  # cells in soma_joinid order are the file's rows in order
    return MultimodalArrays(
        counts={"RNA": rna, "ADT": adt}, batch=cells["batch"].to_numpy(np.int64), present={"ADT": is10k},
        feature_masks={"RNA": plan.masks, "ADT": mm.measurements[0].masks},
    )  # fmt: skip


def test_plan_and_loader_match_the_arrays_batches(cite_lake, tmp_path) -> None:  # noqa: ANN001
    cfg = load_config(model_type="cell-multimodal-vae", overrides=SETS)
    mm = build_multimodal_plan(cite_lake, cfg)
    mm.save(tmp_path / "plan")
    plan = TrainingPlan.load(tmp_path / "plan", cite_lake)
    mm = load_measurements(tmp_path / "plan", plan)
    (adt,) = mm.measurements
    q = LakeQuery.open(cite_lake, datasets=["cite-10k"], measurement="ADT")
    assert adt.feature_ids == tuple(q.features().frame["feature_id"]) and adt.n_features == 14
    assert plan.batch_categories == ("cite-10k", "cite-5k") and adt.held.tolist() == [True, False]
    assert adt.masks.sum(axis=1).tolist() == [14, 0] and adt.datasets == ("cite-10k@1",)
    arrays = _arrays(cite_lake, plan, mm)

    # the streamed starting biases are init_stats of the training cells
    train = np.flatnonzero((plan.cells["split"] == "train").to_numpy())
    ref = init_stats(arrays, train)
    assert sorted(mm.init_stats) == ["ADT", "RNA"]
    for k in ref:
        np.testing.assert_allclose(mm.init_stats[k], ref[k], rtol=1e-9)
    assert mm.init_stats == stream_init_stats(plan, mm.measurements, chunk_rows=37)

    # every batch the loader yields is MultimodalArrays.rows of the same cells
    pos_of = {j: i for i, j in enumerate(plan.cells["soma_joinid"])}
    ds = MultimodalCellDataset(plan, "all", measurements=mm.measurements, batch_size=50, shuffle=True, seed=3, chunk_rows=150, shuffle_block=8)
    seen = []
    for b in ds:
        idx = np.array([pos_of[int(j)] for j in b["index"]])
        want = arrays.rows(idx)
        for k in ("x", "mask", "library", "batch", "x_ADT", "mask_ADT", "present_ADT"):
            assert torch.equal(b[k], want[k]), k
        seen.append(idx)
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == list(range(400))
    assert int(arrays.is_present("ADT").sum()) == 200 and float(arrays.counts["ADT"].sum()) == float(_source_adt().sum())

    # n_top proteins: the highest variance of log1p counts over the cells that have them
    top = build_multimodal_plan(cite_lake, load_config(model_type="cell-multimodal-vae", overrides=[*SETS[:-1], "measurements=[{name: ADT, n_top: 4}]"]))
    var = np.log1p(_source_adt().astype(np.float64)).var(axis=0)
    assert top.measurements[0].feature_ids == tuple(np.asarray(adt.feature_ids)[np.sort(np.argsort(-var)[:4])])


def _published(lake, ref: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    from aivc.store.features import read_vectors

    tbl, vec = read_vectors(lake, ref)
    return dict(zip(tbl.column("id").to_pylist(), vec, strict=True))


def _inputs(lake, rec, dataset_id: str) -> tuple[np.ndarray, dict[str, torch.Tensor]]:  # noqa: ANN001
    """The model's inputs of a dataset's cells built by hand: RNA over its genes, its own batch,
    and for cite-10k the submitted protein counts (no ADT keys at all for the RNA-only one)."""
    cat = Catalog(lake)
    v = cat.get(dataset_id)
    cells = LakeQuery.of(lake, [v]).obs()
    genes = LakeQuery.of(lake, [v]).features().frame.set_index("gene_id")["soma_joinid"]
    x = soma_io.read_rows(lake.soma_uri("homo_sapiens"), cat.high_water("homo_sapiens"), cells["soma_joinid"].to_numpy(), genes[list(rec.gene_ids)].to_numpy()).toarray()
    n = len(cells)
    batch = {"x": torch.from_numpy(x.astype(np.float32)), "mask": torch.ones(x.shape, dtype=torch.bool), "batch": torch.full((n,), rec.encodings["batch"].index(dataset_id))}
    if "ADT" in v.measured():
        batch |= {"x_ADT": torch.from_numpy(_source_adt()), "mask_ADT": torch.ones((n, 14), dtype=torch.bool), "present_ADT": torch.ones(n, dtype=torch.bool)}
    return cells["obs_id"].to_numpy(), batch


def test_multimodal_model_trained_through_ray_embeds_an_rna_only_dataset(cite_lake, ray_session, cli_app) -> None:  # noqa: ANN001
    from aivc.embeddings.model_job import embed_model
    from aivc.training.registry import get_model, load_model

    runner = CliRunner()
    args = ["train", "cell-multimodal-vae", "--lake", str(cite_lake.root), "--run-id", "mm", "--json", *[a for s in SETS for a in ("--set", s)]]
    res = runner.invoke(cli_app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "registered" and out["epochs"] == 8
    rec = get_model(cite_lake, out["model"])
    plan = TrainingPlan.load(cite_lake.root / "models" / ".runs" / "mm" / "plan", cite_lake)

    # the record: RNA genes and the ADT panel, the datasets each measurement came from
    feats = features_of(rec.gene_ids, rec.encodings)
    assert rec.model_type == "cell-multimodal-vae" and sorted(feats) == ["ADT", "RNA"]
    assert feats["RNA"] == plan.gene_ids and len(feats["RNA"]) == 400
    assert feats["ADT"] == tuple(LakeQuery.open(cite_lake, datasets=["cite-10k"], measurement="ADT").features().frame["feature_id"])
    assert rec.init["n_features"] == {"RNA": 400, "ADT": 14} and rec.init["n_batches"] == 2
    assert rec.lineage.datasets == ("cite-10k@1", "cite-5k@1")
    assert rec.lineage.extra["measurements"]["ADT"]["datasets"] == ["cite-10k@1"]
    assert rec.lineage.extra["measurements"]["ADT"]["n_cells"] == 200
    losses = [h["train_loss"] for h in rec.history]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0], losses
    assert all(np.isfinite(h["validation_loss"]) for h in rec.history)
    for h in rec.history:  # the reconstruction is the sum of each measurement's
        assert h["train_reconstruction_ADT"] > 0 and h["train_reconstruction"] == pytest.approx(h["train_reconstruction_RNA"] + h["train_reconstruction_ADT"], rel=1e-6)

    v = embed_model(cite_lake, rec.ref, chunk_rows=64, batch_size=32, actors=1)
    assert v.n_rows == 400 and v.dim == 6 and v.lineage.model == rec.ref
    assert v.lineage.extra["measurements"] == {"cite-10k": ["RNA", "ADT"], "cite-5k": ["RNA"]}
    assert v.metrics["measurements"] == v.lineage.extra["measurements"]
    assert v.lineage.extra["feature_overlap"]["ADT"] == {"cite-10k": {"features_used": 14, "features_model": 14, "fraction": 1.0, "masked": 0}}
    pub = _published(cite_lake, v.ref)
    module, _ = load_model(cite_lake, rec.ref)

    ids10, b10 = _inputs(cite_lake, rec, "cite-10k")
    got10 = np.stack([pub[i] for i in ids10])
    with_adt = module.embed(b10).numpy()
    rna_alone10 = module.embed(b10, use=("RNA",)).numpy()
    np.testing.assert_allclose(got10, with_adt, rtol=1e-4, atol=1e-5)
    assert np.abs(with_adt - rna_alone10).max() > 1e-2  # the proteins did change the UR

    ids5, b5 = _inputs(cite_lake, rec, "cite-5k")
    got5 = np.stack([pub[i] for i in ids5])
    assert got5.shape == (200, 6) and np.isfinite(got5).all()
    rna_only = module.embed(b5).numpy()  # no ADT keys: the prior times the RNA expert
    np.testing.assert_allclose(rna_only, module.embed(b5, use=("RNA",)).numpy(), rtol=0, atol=0)
    np.testing.assert_allclose(got5, rna_only, rtol=1e-4, atol=1e-5)
    zeros = b5 | {"x_ADT": torch.zeros(200, 14), "mask_ADT": torch.ones(200, 14, dtype=torch.bool), "present_ADT": torch.ones(200, dtype=torch.bool)}
    assert np.abs(module.embed(zeros).numpy() - got5).max() > 1e-2  # zeros in place of the proteins would not be the same

    # the RNA-only dataset alone
    only = embed_model(cite_lake, rec.ref, datasets=["cite-5k"], name="mm_rna_only", actors=1)
    assert only.n_rows == 200 and only.lineage.extra["measurements"] == {"cite-5k": ["RNA"]}
    alone = _published(cite_lake, only.ref)
    np.testing.assert_allclose(np.stack([alone[i] for i in ids5]), rna_only, rtol=1e-4, atol=1e-5)
    assert pd.Series(list(alone)).isin(ids5).all()
