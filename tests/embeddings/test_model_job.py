"""`aivc embed MODEL@VERSION`: a Ray Data job whose published vectors equal the model applied
directly, with explicit handling of genes the data did not measure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from aivc.errors import UsageError
from aivc.store.features import list_versions, read_vectors
from aivc.store import soma_io
from aivc.store.catalog import Catalog
from aivc.training.models.cell_vae import CellVAE
from aivc.training.registry import load_model, register_model
from aivc.store.lineage import Lineage


def _lake_genes(lake, dataset_ids):  # noqa: ANN001, ANN202
    cat = Catalog(lake)
    out = {}
    for d in dataset_ids:
        v = cat.get(d)
        out[d] = pd.read_parquet(cat.artifacts_path(v) / "genes.parquet", columns=["gene_id", "soma_joinid"])
    return out


def _register_vae(lake, gene_ids, batches, name="tiny-vae", seed=0):  # noqa: ANN001, ANN202
    torch.manual_seed(seed)
    init = {"n_genes": len(gene_ids), "n_batches": len(batches), "latent_dim": 4, "hidden_dim": 16, "n_layers": 1, "dropout": 0.1}
    m = CellVAE(**init)
    # a real (random) encoder: make the batch covariate matter so the test sees it
    return register_model(
        lake, name, model_type="cell-vae", state_dict=m.state_dict(), init=init, config={}, gene_ids=list(gene_ids),
        encodings={"batch": list(batches)}, metrics={}, lineage=Lineage(organism="homo_sapiens", datasets=tuple(f"{b}@1" for b in batches)),
    )


def _direct(lake, rec, dataset_id):  # noqa: ANN001, ANN202
    """The model applied by hand: counts of the model's genes (0 and masked when unmeasured),
    the dataset's own batch code or the training-batch average."""
    module, _ = load_model(lake, rec.ref)
    cat = Catalog(lake)
    v = cat.get(dataset_id)
    cells = pd.read_parquet(cat.artifacts_path(v) / "cells.parquet", columns=["obs_id", "soma_joinid"]).sort_values("soma_joinid")
    genes = _lake_genes(lake, [dataset_id])[dataset_id].set_index("gene_id")["soma_joinid"]
    cols = [g for g in rec.gene_ids if g in genes.index]
    X = soma_io.read_rows(lake.soma_uri("homo_sapiens"), cat.high_water("homo_sapiens"), cells["soma_joinid"].to_numpy(), genes[cols].to_numpy()).toarray()
    x = np.zeros((len(cells), len(rec.gene_ids)), np.float32)
    pos = [rec.gene_ids.index(g) for g in cols]
    x[:, pos] = X
    mask = np.zeros_like(x, dtype=bool)
    mask[:, pos] = True
    b = rec.encodings["batch"].index(dataset_id) if dataset_id in rec.encodings["batch"] else -1
    batch = {"x": torch.from_numpy(x), "mask": torch.from_numpy(mask), "batch": torch.full((len(x),), b, dtype=torch.long)}
    return cells["obs_id"].to_numpy(), module.embed(batch).numpy()


def _published(lake, ref, dataset_id):  # noqa: ANN001, ANN202
    tbl, vec = read_vectors(lake, ref, datasets={dataset_id})
    return dict(zip(tbl.column("id").to_pylist(), vec, strict=True))


@pytest.mark.parametrize("engine", ["ray", "local"])
def test_published_vectors_equal_model_applied_directly(train_lake, ray_session, engine):  # noqa: ANN001
    from aivc.embeddings.model_job import embed_model

    genes = _lake_genes(train_lake, ["synth-a", "synth-b"])
    union = sorted(set(genes["synth-a"]["gene_id"]) | set(genes["synth-b"]["gene_id"]))
    rec = _register_vae(train_lake, union, ["synth-a", "synth-b"], name=f"embed-direct-{engine}")
    # chunks of 17 cells: one chunk holds cells of both datasets
    if engine == "ray":
        v = embed_model(train_lake, rec.ref, chunk_rows=17, batch_size=8, actors=2)
        assert v.metrics["engine"] == "ray" and v.metrics["actors"] == 2 and v.metrics["engine_reason"] == "auto: --actors 2 asks for a Ray actor pool"
    else:
        v = embed_model(train_lake, rec.ref, chunk_rows=17, batch_size=8)
        assert v.metrics["engine"] == "local" and v.metrics["actors"] == 0 and v.metrics["engine_reason"] == "auto: 100 cells < 1000000"

    assert v.ref == f"cell:embed_direct_{engine}@1" and v.n_rows == 100 and v.dim == 4
    assert v.source["kind"] == "model" and v.lineage.model == rec.ref
    assert v.lineage.datasets == ("synth-a@1", "synth-b@1")
    # synth-b did not measure 10 of the union genes: masked, recorded
    assert v.lineage.extra["gene_overlap"]["synth-b"]["masked"] == 10
    assert v.lineage.extra["gene_overlap"]["synth-a"]["masked"] == 0
    assert v.lineage.extra["batch_encoding"] == {"synth-a": "own", "synth-b": "own"}
    for ds in ("synth-a", "synth-b"):
        ids, direct = _direct(train_lake, rec, ds)
        pub = _published(train_lake, v.ref, ds)
        assert sorted(pub) == sorted(ids)
        got = np.stack([pub[i] for i in ids])
        np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5)
    # the two datasets really are embedded differently (batch covariate and data)
    assert not np.allclose(np.stack(list(_published(train_lake, v.ref, "synth-a").values())).mean(0), np.stack(list(_published(train_lake, v.ref, "synth-b").values())).mean(0))


def test_engines_give_identical_vectors_and_ray_address_means_ray(train_lake, ray_session):  # noqa: ANN001
    from aivc.embeddings.model_job import choose_engine, embed_model

    genes = _lake_genes(train_lake, ["synth-a"])["synth-a"]["gene_id"].tolist()
    rec = _register_vae(train_lake, genes, ["synth-a"], name="engine-vae")
    vr = embed_model(train_lake, rec.ref, chunk_rows=16, engine="ray", name="eng_ray")
    vl = embed_model(train_lake, rec.ref, chunk_rows=16, engine="local", name="eng_local")
    assert (vr.metrics["engine"], vl.metrics["engine"]) == ("ray", "local")
    tr, xr = read_vectors(train_lake, vr)
    tl, xl = read_vectors(train_lake, vl)
    assert tr.column("id").to_pylist() == tl.column("id").to_pylist() and len(xr) == 100
    np.testing.assert_array_equal(xr, xl)
    assert choose_engine("auto", 10, ray_address="127.0.0.1:6379") == ("ray", "auto: --ray-address 127.0.0.1:6379 names a Ray cluster")
    assert choose_engine("auto", 2_000_000)[0] == "ray" and choose_engine("auto", 999_999)[0] == "local"
    before = list_versions(train_lake)
    with pytest.raises(UsageError, match="cannot use --ray-address"):
        embed_model(train_lake, rec.ref, engine="local", ray_address="127.0.0.1:6379")
    with pytest.raises(UsageError, match="engine must be one of auto, ray, local"):
        embed_model(train_lake, rec.ref, engine="gpu")
    assert list_versions(train_lake) == before


def test_unseen_dataset_gets_average_batch_and_masked_genes(lake, write_submission, ray_session):  # noqa: ANN001
    from aivc.ingest.submission import submit
    from aivc.embeddings.model_job import embed_model

    assert submit(lake, *write_submission(dataset_id="train-a")).status == "committed"
    genes = _lake_genes(lake, ["train-a"])["train-a"]["gene_id"].tolist()
    rec = _register_vae(lake, genes, ["train-a"], name="avg-vae")
    # a new dataset that lacks 30 of the model's 120 genes (75% overlap)
    h5, mf = write_submission(mutate=lambda a: a[:, 30:].copy(), dataset_id="new-b", seed=3)
    assert submit(lake, h5, mf).status == "committed"

    v = embed_model(lake, rec.ref, datasets=["new-b"])
    assert v.lineage.extra["batch_encoding"] == {"new-b": "average"}
    assert v.lineage.extra["gene_overlap"]["new-b"]["masked"] == 30
    ids, direct = _direct(lake, rec, "new-b")
    pub = _published(lake, v.ref, "new-b")
    np.testing.assert_allclose(np.stack([pub[i] for i in ids]), direct, rtol=1e-5, atol=1e-5)


def test_too_few_overlapping_genes_is_a_clear_error_and_publishes_nothing(lake, write_submission, ray_session):  # noqa: ANN001
    from aivc.ingest.submission import submit
    from aivc.embeddings.model_job import embed_model

    assert submit(lake, *write_submission(dataset_id="train-a")).status == "committed"
    genes = _lake_genes(lake, ["train-a"])["train-a"]["gene_id"].tolist()
    rec = _register_vae(lake, genes, ["train-a"], name="strict-vae")
    h5, mf = write_submission(mutate=lambda a: a[:, 100:].copy(), dataset_id="tiny-c", seed=5)  # 20 of 120 genes
    assert submit(lake, h5, mf).status == "committed"
    before = list_versions(lake)
    with pytest.raises(UsageError) as ei:
        embed_model(lake, rec.ref, datasets=["tiny-c"])
    assert ei.value.code == "GENE_OVERLAP"
    assert "tiny-c@1 measured 20 of the 120 genes" in str(ei.value) and "17%" in str(ei.value)
    assert list_versions(lake) == before
    # asking for less overlap embeds it, with the 100 missing genes masked
    v = embed_model(lake, rec.ref, datasets=["tiny-c"], min_gene_overlap=0.1)
    assert v.lineage.extra["gene_overlap"]["tiny-c"] == {"genes_used": 20, "genes_model": 120, "fraction": round(20 / 120, 4), "masked": 100}


def test_cli_embed_model_ref_and_errors(train_lake, ray_session):  # noqa: ANN001
    from aivc.cli import app

    genes = _lake_genes(train_lake, ["synth-a"])["synth-a"]["gene_id"].tolist()
    rec = _register_vae(train_lake, genes, ["synth-a"], name="cli-vae")
    runner = CliRunner()
    res = runner.invoke(app, ["embed", rec.ref, "--datasets", "synth-a", "--lake", str(train_lake.root), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "published" and out["ref"] == "cell:cli_vae@1" and out["n_rows"] == 60
    assert out["lineage"]["model"] == rec.ref

    res = runner.invoke(app, ["embed", "no-such-model@3", "--lake", str(train_lake.root)])
    assert res.exit_code == 1 and "no model 'no-such-model'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["embed", rec.ref, "--min-gene-overlap", "0", "--lake", str(train_lake.root)])
    assert res.exit_code == 2 and "--min-gene-overlap must be in (0, 1]" in res.output
    res = runner.invoke(app, ["embed", "model", rec.ref, "--datasets", "nope", "--lake", str(train_lake.root), "--json"])
    assert res.exit_code != 0 and json.loads(res.stdout)["status"] == "error"


def test_where_selects_cells_by_metadata(train_lake, ray_session):  # noqa: ANN001
    from aivc.store.sql import query
    from aivc.embeddings.model_job import embed_model

    genes = _lake_genes(train_lake, ["synth-a"])["synth-a"]["gene_id"].tolist()
    rec = _register_vae(train_lake, genes, ["synth-a"], name="where-vae")
    want = {r[0] for r in query(train_lake, "SELECT obs_id FROM cells WHERE dataset_id = 'synth-a' AND cell_type = 'B cell' AND donor_id = 'd1'").rows}
    assert 0 < len(want) < 60
    v = embed_model(train_lake, rec.ref, datasets=["synth-a"], where="cell_type = 'B cell' AND donor_id = 'd1'", chunk_rows=7)
    assert set(_published(train_lake, v.ref, "synth-a")) == want and v.lineage.extra["where"] == "cell_type = 'B cell' AND donor_id = 'd1'"
    ids, direct = _direct(train_lake, rec, "synth-a")
    pub = _published(train_lake, v.ref, "synth-a")
    sel = [i for i, x in enumerate(ids) if x in want]
    np.testing.assert_allclose(np.stack([pub[ids[i]] for i in sel]), direct[sel], rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="is not a valid condition on cells_all_versions"):
        embed_model(train_lake, rec.ref, datasets=["synth-a"], where="no_such_column = 1")
    with pytest.raises(UsageError, match="selects no cell of synth-a@1"):
        embed_model(train_lake, rec.ref, datasets=["synth-a"], where="n_counts < 0")


def test_gene_token_model_embeds_genes_it_never_saw(lake, write_submission, human_genes, ray_session):  # noqa: ANN001
    """A cell-transformer trained on 100 genes embeds a dataset with 20 more: they have gene
    URs, so they become tokens; the result equals the model applied directly."""
    from aivc.store.features import EmbeddingWriter
    from aivc.ingest.submission import submit
    from aivc.embeddings.model_job import embed_model
    from aivc.training.models.cell_transformer import CellTransformer

    assert submit(lake, *write_submission(mutate=lambda a: a[:, :100].copy(), dataset_id="train-a")).status == "committed"
    assert submit(lake, *write_submission(dataset_id="new-b", seed=7)).status == "committed"  # all 120 genes
    all_genes = _lake_genes(lake, ["new-b"])["new-b"]["gene_id"].tolist()
    trained = _lake_genes(lake, ["train-a"])["train-a"]["gene_id"].tolist()
    rng = np.random.default_rng(0)
    with EmbeddingWriter(lake, "gene", "rand", dim=8, source={"kind": "import"}) as w:
        w.write(all_genes, rng.normal(size=(len(all_genes), 8)).astype(np.float32))
    torch.manual_seed(0)
    init = {"gene_dim": 8, "d_model": 16, "n_heads": 2, "n_layers": 1, "max_tokens": 128, "latent_dim": 4}
    m = CellTransformer(**init)
    rec = register_model(
        lake, "tiny-tf", model_type="cell-transformer", state_dict=m.state_dict(), init=init, config={}, gene_ids=trained,
        encodings={"batch": ["train-a"]}, metrics={}, lineage=Lineage(organism="homo_sapiens", gene_ur="gene:rand@1"),
    )
    module, _ = load_model(lake, rec.ref)  # the training gene table comes from lineage.gene_ur
    assert module.gene_table.shape == (100, 8)

    v = embed_model(lake, rec.ref, datasets=["new-b"])
    assert v.lineage.extra["gene_overlap"]["new-b"] == {"genes_used": 120, "genes_measured": 120, "fraction": 1.0}
    assert v.lineage.gene_ur == "gene:rand@1"

    # directly: the same weights over new-b's 120 genes, tokens from their URs
    cat = Catalog(lake)
    dv = cat.get("new-b")
    cells = pd.read_parquet(cat.artifacts_path(dv) / "cells.parquet", columns=["obs_id", "soma_joinid"]).sort_values("soma_joinid")
    genes = _lake_genes(lake, ["new-b"])["new-b"].sort_values("soma_joinid")
    X = soma_io.read_rows(lake.soma_uri("homo_sapiens"), cat.high_water("homo_sapiens"), cells["soma_joinid"].to_numpy(), genes["soma_joinid"].to_numpy()).toarray()
    tbl, vec = read_vectors(lake, "gene:rand@1", ids=genes["gene_id"].tolist())
    row = {g: i for i, g in enumerate(tbl.column("id").to_pylist())}
    module.set_gene_table(torch.from_numpy(vec[[row[g] for g in genes["gene_id"]]]))
    x = torch.from_numpy(X.astype(np.float32))
    direct = module.embed({"x": x, "mask": torch.ones_like(x, dtype=torch.bool), "batch": torch.zeros(len(x), dtype=torch.long)}).numpy()
    pub = _published(lake, v.ref, "new-b")
    got = np.stack([pub[i] for i in cells["obs_id"]])
    np.testing.assert_allclose(got, direct, rtol=1e-4, atol=1e-5)
    # the 20 new genes matter: restricted to the 100 trained genes the URs differ
    old = module.embed({"x": x, "mask": torch.from_numpy(np.isin(genes["gene_id"].to_numpy(), trained))[None, :].expand_as(x), "batch": torch.zeros(len(x), dtype=torch.long)}).numpy()
    assert np.abs(old - got).max() > 1e-3


def test_model_applies_to_another_species_through_orthologs(lake, write_submission, human_genes, ray_session):  # noqa: ANN001
    """A human model embeds mouse data: each mouse gene stands for its one-to-one human
    ortholog. The same counts submitted as human (ortholog genes only) embed identically."""
    from aivc.ingest.submission import submit
    from aivc.store.reference import orthologs
    from aivc.embeddings.model_job import embed_model
    from tests.conftest import base_manifest

    h2m = orthologs("homo_sapiens", "mus_musculus").set_index("from_symbol")["to_symbol"]
    keep = [s for s in human_genes["symbol"] if s in h2m.index]
    assert 60 < len(keep) < len(human_genes)  # some test genes have no one-to-one ortholog
    assert submit(lake, *write_submission(dataset_id="train-h")).status == "committed"
    rec = _register_vae(lake, _lake_genes(lake, ["train-h"])["train-h"]["gene_id"].tolist(), ["train-h"], name="human-vae")

    def as_mouse(a):  # noqa: ANN001, ANN202
        a = a[:, keep].copy()
        a.var_names = [h2m[s] for s in keep]
        return a

    mouse = base_manifest("mouse-m", organism="NCBITaxon:10090")
    mouse["obs"]["development_stage"] = {"value": "MmusDv:0000110"}
    mouse["obs"]["self_reported_ethnicity"] = {"value": "na"}
    assert submit(lake, *write_submission(mutate=as_mouse, manifest=mouse, seed=9)).status == "committed"
    assert submit(lake, *write_submission(mutate=lambda a: a[:, keep].copy(), dataset_id="human-same", seed=9)).status == "committed"

    vm = embed_model(lake, rec.ref, datasets=["mouse-m"])
    vh = embed_model(lake, rec.ref, datasets=["human-same"], name="human_same")
    assert vm.lineage.extra["orthologs"]["from"] == "mus_musculus" and vm.lineage.extra["orthologs"]["to"] == "homo_sapiens"
    assert vm.lineage.extra["gene_overlap"]["mouse-m"]["genes_used"] == len(keep) == vh.lineage.extra["gene_overlap"]["human-same"]["genes_used"]
    pm = {k.split(":", 1)[1]: x for k, x in _published(lake, vm.ref, "mouse-m").items()}
    ph = {k.split(":", 1)[1]: x for k, x in _published(lake, vh.ref, "human-same").items()}
    assert sorted(pm) == sorted(ph) and len(pm) == 60
    np.testing.assert_allclose(np.stack([pm[k] for k in sorted(pm)]), np.stack([ph[k] for k in sorted(pm)]), rtol=1e-5, atol=1e-5)
