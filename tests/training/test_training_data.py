"""Training data: plans (genes, masks, batches, splits) and the streamed batches, against the lake."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from aivc.errors import UsageError
from aivc.store.catalog import Catalog
from aivc.store.export import load_version_anndata
from aivc.training.config import DataConfig, ValidationSplit
from aivc.training.data import CellDataset, TrainingPlan, build_plan, make_loader, rank_order


def _genes(lake, ref):
    v = Catalog(lake).get(ref)
    return pd.read_parquet(Catalog(lake).artifacts_path(v) / "genes.parquet")


def test_plan_genes_batches_and_lake_state(train_lake):
    ga, gb = _genes(train_lake, "synth-a"), _genes(train_lake, "synth-b")
    inter = build_plan(train_lake, DataConfig(genes="intersection"))
    common = ga[ga.gene_id.isin(gb.gene_id)].sort_values("soma_joinid")
    assert list(inter.gene_ids) == common.gene_id.tolist() and inter.n_genes == 110
    assert inter.masks.all() and inter.masks.shape == (2, 110)
    assert inter.batch_categories == ("synth-a", "synth-b") and inter.datasets == ("synth-a@1", "synth-b@1")
    assert inter.high_water == Catalog(train_lake).high_water("homo_sapiens")
    assert inter.lineage().lake_state == {"homo_sapiens": inter.high_water}
    cells = inter.cells
    assert len(cells) == 100 and cells.soma_joinid.is_monotonic_increasing
    assert (cells.batch == (cells.dataset_id == "synth-b").astype(int)).all()

    union = build_plan(train_lake, DataConfig(genes="union"))
    assert list(union.gene_ids) == ga.sort_values("soma_joinid").gene_id.tolist() and union.n_genes == 120
    missing = set(ga.gene_id) - set(gb.gene_id)
    assert len(missing) == 10
    assert union.masks[0].all()
    assert {g for g, m in zip(union.gene_ids, union.masks[1], strict=True) if not m} == missing


def test_batches_equal_the_exported_counts(train_lake):
    plan = build_plan(train_lake, DataConfig(genes="union"))
    ds = CellDataset(plan, "all", batch_size=16, shuffle=False, chunk_rows=40)
    got = {k: torch.cat([b[k] for b in ds]) for k in ("x", "batch", "library", "mask", "index")}
    assert got["x"].dtype == torch.float32 and got["batch"].dtype == torch.int64 and got["mask"].dtype == torch.bool
    assert got["index"].tolist() == plan.cells.soma_joinid.tolist()  # unshuffled: plan order
    assert len(ds) == 7  # 100 cells, chunks of 32 (whole batches), batches of 16
    np.testing.assert_allclose(got["library"][:, 0].numpy(), got["x"].sum(1).numpy())
    pos = {g: i for i, g in enumerate(plan.gene_ids)}
    for ref in ("synth-a@1", "synth-b@1"):
        adata, v = load_version_anndata(train_lake, ref)
        cells = pd.read_parquet(Catalog(train_lake).artifacts_path(v) / "cells.parquet", columns=["barcode", "soma_joinid"])
        rows = pd.Index(got["index"].numpy()).get_indexer(cells.set_index("barcode").loc[adata.obs_names, "soma_joinid"])
        cols = [pos[g] for g in adata.var_names]
        expect = adata.X.toarray()
        np.testing.assert_array_equal(got["x"].numpy()[np.ix_(rows, cols)], expect)
        measured = np.zeros(len(plan.gene_ids), bool)
        measured[cols] = True
        assert (got["mask"].numpy()[rows] == measured).all()
        # an unmeasured gene reads as 0 and is masked
        assert (got["x"].numpy()[np.ix_(rows, np.flatnonzero(~measured))] == 0).all()


def test_rank_partition_covers_every_cell_once(train_lake):
    plan = build_plan(train_lake, DataConfig())
    train_ids = set(plan.split_cells("train").soma_joinid)
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            ds = CellDataset(plan, "train", batch_size=8, seed=5, rank=rank, world_size=world, chunk_rows=16)
            ds.set_epoch(2)
            seen += torch.cat([b["index"] for b in ds]).tolist()
        assert sorted(seen) == sorted(train_ids)  # exactly once each
        # padded (data-parallel training): equal batches per rank, still covering every cell
        padded = [CellDataset(plan, "train", batch_size=8, seed=5, rank=r, world_size=world, pad=True) for r in range(world)]
        lens = {len(list(d)) for d in padded}
        assert len(lens) == 1 and lens == {len(padded[0])}
        assert set().union(*(torch.cat([b["index"] for b in d]).tolist() for d in padded)) == train_ids
    # shuffled per epoch, reproducible from the seed
    a = rank_order(90, epoch=0, seed=1, shuffle=True, rank=0, world_size=1, pad=False)
    assert (a == rank_order(90, epoch=0, seed=1, shuffle=True, rank=0, world_size=1, pad=False)).all()
    assert not (a == rank_order(90, epoch=1, seed=1, shuffle=True, rank=0, world_size=1, pad=False)).all()


def test_dataloader_workers_split_the_rank(train_lake):
    plan = build_plan(train_lake, DataConfig())
    ds = CellDataset(plan, "train", batch_size=8, seed=3, rank=1, world_size=2, chunk_rows=8)
    ds.set_epoch(4)
    alone = sorted(torch.cat([b["index"] for b in ds]).tolist())
    loader = make_loader(ds, num_workers=2)  # spawned: TileDB is not fork-safe
    batches = list(loader)
    assert len(batches) == len(ds)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == alone


@pytest.mark.parametrize("by", ["dataset", "donor", "fraction"])
def test_validation_split_is_deterministic_and_whole(train_lake, by):
    cfg = DataConfig(validation=ValidationSplit(by=by, fraction=0.3))
    p1, p2 = build_plan(train_lake, cfg, seed=7), build_plan(train_lake, cfg, seed=7)
    assert (p1.cells.split == p2.cells.split).all()
    val = p1.cells[p1.cells.split == "validation"]
    assert 0 < len(val) < len(p1.cells)
    if by != "fraction":
        key = p1.cells.dataset_id if by == "dataset" else p1.cells.dataset_id + "/" + p1.cells.donor_id
        held = set(key[p1.cells.split == "validation"])
        assert held == set(p1.validation["holdout"])
        assert not set(key[p1.cells.split == "train"]) & held  # a unit is wholly in one split
    else:
        assert len(val) == 30


def test_explicit_holdout_and_errors(train_lake):
    p = build_plan(train_lake, DataConfig(validation=ValidationSplit(by="dataset", holdout=("synth-b",))))
    assert set(p.cells[p.cells.split == "validation"].dataset_id) == {"synth-b"}
    with pytest.raises(UsageError, match="needs at least 2 datasets"):
        build_plan(train_lake, DataConfig(datasets=("synth-a",), validation=ValidationSplit(by="dataset")))
    with pytest.raises(UsageError, match="'nope' is not in the training data"):
        build_plan(train_lake, DataConfig(validation=ValidationSplit(by="dataset", holdout=("nope",))))
    with pytest.raises(UsageError, match="no datasets of organism 'mus_musculus'"):
        build_plan(train_lake, DataConfig(organism="mus_musculus"))


def test_top_genes_and_plan_round_trip(train_lake, tmp_path):
    p = build_plan(train_lake, DataConfig(genes="union", n_top_genes=20))
    assert p.n_genes == 20 and list(p.gene_joinids) == sorted(p.gene_joinids)
    full = build_plan(train_lake, DataConfig(genes="union"))
    assert set(p.gene_ids) <= set(full.gene_ids)
    p.save(tmp_path / "plan")
    q = TrainingPlan.load(tmp_path / "plan", train_lake)
    assert q.gene_ids == p.gene_ids and (q.masks == p.masks).all() and q.high_water == p.high_water
    pd.testing.assert_frame_equal(q.cells, p.cells)


def test_where_selects_training_cells_by_metadata(train_lake):
    from aivc.errors import UsageError
    from aivc.store.sql import query

    want = {r[0] for r in query(train_lake, "SELECT soma_joinid FROM cells WHERE donor_id = 'd1' AND cell_type = 'T cell'").rows}
    p = build_plan(train_lake, DataConfig(where="donor_id = 'd1' AND cell_type = 'T cell'", validation=ValidationSplit(by="none")))
    assert set(p.cells["soma_joinid"].tolist()) == want and 0 < len(want) < 100
    assert set(p.cells["dataset_id"]) == {"synth-a", "synth-b"}
    with pytest.raises(UsageError, match="data.where 'n_counts < 0' selects no cell"):
        build_plan(train_lake, DataConfig(where="n_counts < 0"))
    with pytest.raises(UsageError, match="is not a valid condition"):
        build_plan(train_lake, DataConfig(where="cell_type = "))


def test_prefetcher_yields_the_same_batches_and_reraises(train_lake):
    import threading

    from aivc.training.data import CellDataset, Prefetcher, make_loader

    plan = build_plan(train_lake, DataConfig())
    ds = CellDataset(plan, "train", batch_size=16, seed=3, chunk_rows=32)
    ds.set_epoch(2)
    plain = list(ds)
    loader = make_loader(ds)
    assert isinstance(loader, Prefetcher) and len(loader) == len(plain)
    fetched = list(loader)
    assert len(fetched) == len(plain) > 2
    for a, b in zip(plain, fetched, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["index"], b["index"])
    # leaving early stops the reader thread
    it = iter(make_loader(ds, prefetch=1))
    next(it)
    it.close()
    assert not any(t.name == "aivc-prefetch" and t.is_alive() for t in threading.enumerate())

    class Broken(CellDataset):
        def __iter__(self):  # noqa: ANN204
            yield from list(super().__iter__())[:1]
            raise OSError("disk gone")

    bad = Broken(plan, "train", batch_size=16, chunk_rows=32)
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for b in make_loader(bad):
            got.append(b)
    assert len(got) == 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_block_shuffle_is_a_partition_of_runs(world):
    n, block = 1000, 64
    orders = [rank_order(n, epoch=4, seed=1, shuffle=True, rank=r, world_size=world, pad=False, block=block) for r in range(world)]
    allpos = np.concatenate(orders)
    assert sorted(allpos.tolist()) == list(range(n))  # every cell exactly once
    full = rank_order(n, epoch=4, seed=1, shuffle=True, rank=0, world_size=1, pad=False, block=block)
    runs = np.split(full, np.flatnonzero(np.diff(full) != 1) + 1)
    assert all(len(r) in (block, n % block) or len(r) % block == 0 for r in runs)  # whole blocks
    assert not np.array_equal(full, np.arange(n))
    assert not np.array_equal(full, rank_order(n, epoch=5, seed=1, shuffle=True, rank=0, world_size=1, pad=False, block=block))


def test_block_shuffled_loader_mixes_each_read(train_lake):
    plan = build_plan(train_lake, DataConfig(validation=ValidationSplit(by="none")))
    ds = CellDataset(plan, "train", batch_size=10, seed=0, chunk_rows=40, shuffle_block=8)
    ds.set_epoch(1)
    seen = np.concatenate([b["index"].numpy() for b in ds])
    assert sorted(seen.tolist()) == sorted(plan.cells["soma_joinid"].tolist())
    again = np.concatenate([b["index"].numpy() for b in ds])
    assert np.array_equal(seen, again)  # deterministic for a seed and epoch
    # within a read the blocks are mixed: consecutive joinids are not kept in runs of 8
    assert (np.diff(seen[10:50]) == 1).mean() < 0.5
