"""Typed lineage: the lineage JSON every record held before it was typed reads back exactly,
the fields other layers use come back typed, and the writers still write the same keys.

``data/lineages_before_typing.json`` holds every distinct lineage object that the records
of a test-suite run wrote before :class:`~aivc.store.lineage.Lineage` existed (embedding
versions of PCA, co-expression, import and model jobs, trained and hand-registered models,
cell-type and perturbation instruments), each with the writer it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from aivc.store.features import EmbeddingVersion
from aivc.store.lineage import Lineage

BEFORE: list[dict[str, Any]] = json.loads((Path(__file__).parent / "data" / "lineages_before_typing.json").read_text())
TYPED = ("datasets", "organism", "lake_state", "model", "gene_ur", "embedding", "dataset")


def _keys_of(writer: str) -> set[frozenset[str]]:
    return {frozenset(r["lineage"]) for r in BEFORE if r["writer"] == writer}


@pytest.mark.parametrize("rec", BEFORE, ids=[f"{r['schema_name'].split('.')[1]}-{r['writer']}-{i}" for i, r in enumerate(BEFORE)])
def test_lineage_written_before_typing_reads_back_exactly(rec: dict[str, Any]) -> None:
    d = rec["lineage"]
    lin = Lineage.from_record(d)
    assert lin.to_record() == d
    assert json.dumps(lin.to_record()) == json.dumps(d, sort_keys=True)  # the same JSON text, key order included
    assert Lineage.from_record(lin.to_record()) == lin
    # every key no field types, and every typed key written empty or in another shape, is in extra as written
    assert {k: v for k, v in d.items() if k not in TYPED} == {k: v for k, v in lin.extra.items() if k not in TYPED}
    assert isinstance(lin.datasets, tuple) and all(isinstance(r, str) for r in lin.datasets)
    assert lin.datasets == tuple(d["datasets"]) if d.get("datasets") else lin.datasets == ()
    assert lin.lake_state == d.get("lake_state", {}) and all(isinstance(v, int) for v in lin.lake_state.values())
    for name in ("organism", "model", "embedding", "dataset"):
        assert getattr(lin, name) == d.get(name)


def test_the_fixture_covers_every_writer() -> None:
    writers = {(r["schema_name"], r["writer"]) for r in BEFORE}
    assert {
        ("aivc.embedding_version", "pca"), ("aivc.embedding_version", "coexpression"), ("aivc.embedding_version", "import"),
        ("aivc.embedding_version", "model_job"), ("aivc.model", "trainer"), ("aivc.instrument", "celltype"), ("aivc.instrument", "perturbation"),
    } <= writers  # fmt: skip


def test_typed_fields_of_real_lineages() -> None:
    job = next(Lineage.from_record(r["lineage"]) for r in BEFORE if r["writer"] == "model_job" and "orthologs" in r["lineage"])
    assert job.model == "human-vae@1" and job.organism == "mus_musculus" and job.datasets and job.datasets[0].endswith("@1")
    assert job.gene_ur is None and job.extra["gene_ur"] is None and job.extra["where"] is None  # recorded as null
    assert job.extra["orthologs"]["from"] == "mus_musculus" and "gene_overlap" in job.extra
    trained = next(Lineage.from_record(r["lineage"]) for r in BEFORE if r["writer"] == "trainer" and "gene_ur" in r["lineage"])
    assert trained.gene_ur == "gene:coexpr_tf@1" and trained.extra["genes_mode"] == "union" and trained.lake_state["homo_sapiens"] > 0
    screen = next(Lineage.from_record(r["lineage"]) for r in BEFORE if r["writer"] == "perturbation")
    assert screen.dataset == "sim-screen@1" and screen.gene_ur is None  # its gene_ur is an object: ref, source, lineage
    assert screen.extra["gene_ur"]["ref"] == "gene:coexpr_sim@1" and Lineage.from_record(screen.extra["gene_ur"]["lineage"]) == Lineage()
    decoder = next(Lineage.from_record(r["lineage"]) for r in BEFORE if r["writer"] == "celltype")
    assert decoder.embedding is not None and decoder.embedding.startswith("cell:") and decoder.dataset_versions()
    assert decoder.dataset_versions() == {r.partition("@")[0]: r for r in decoder.datasets}


def test_empty_values_and_other_shapes_stay_as_written() -> None:
    d = {"datasets": [], "lake_state": {}, "gene_ur": None, "model": {"ref": "m@1"}, "organism": 3, "extra": {"x": 1}, "note": [1, 2]}
    lin = Lineage.from_record(d)
    assert (lin.datasets, lin.lake_state, lin.gene_ur, lin.model, lin.organism) == ((), {}, None, None, None)
    assert lin.extra == d and lin.to_record() == d
    assert Lineage.from_record({"lake_state": {"homo_sapiens": None}}).lake_state == {}
    assert Lineage.from_record({}) == Lineage() and Lineage().to_record() == {}


def test_constructor_checks_its_fields() -> None:
    assert Lineage(datasets=["a@1"]).datasets == ("a@1",)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Lineage.datasets"):
        Lineage(datasets=(1,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Lineage.model"):
        Lineage(model=["m@1"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extra must not hold 'gene_ur'"):
        Lineage(gene_ur="gene:g@1", extra={"gene_ur": "gene:h@1"})
    assert Lineage(extra={"gene_ur": None}).to_record() == {"gene_ur": None}
    with pytest.raises(TypeError, match="JSON object"):
        Lineage.from_record(["a@1"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a Lineage"):
        EmbeddingVersion("cell", "x", 1, 2, 3, "float32", "none", {}, {"datasets": ["a@1"]}, "now")  # type: ignore[arg-type]


def test_records_write_lineage_flat_and_read_it_typed() -> None:
    lin = Lineage(datasets=("a@1",), organism="homo_sapiens", lake_state={"homo_sapiens": 5}, model="m@1", extra={"where": None})
    v = EmbeddingVersion("cell", "x", 1, 2, 3, "float32", "none", {"kind": "test"}, lin, "now", partitions=("dataset=a",))
    rec = v.to_record()
    assert rec["lineage"] == {"datasets": ["a@1"], "lake_state": {"homo_sapiens": 5}, "model": "m@1", "organism": "homo_sapiens", "where": None}
    assert rec["partitions"] == ["dataset=a"]
    back = EmbeddingVersion.from_record(json.loads(json.dumps(rec)))
    assert back == v and isinstance(back.lineage, Lineage) and back.lineage.datasets == ("a@1",)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame) -> Any:
    """A two-dataset lake with a PCA, a co-expression and an imported embedding, made by the real writers."""
    import yaml

    from aivc.embeddings.gene_coexpr import embed_gene_coexpression
    from aivc.embeddings.importer import import_embeddings
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake
    from aivc.store.sql import query
    from tests.conftest import base_manifest, make_adata

    root = tmp_path_factory.mktemp("lineage")
    lake = Lake.init(root / "lake")
    for name, n, seed in (("lin-a", 60, 0), ("lin-b", 40, 4)):
        h5, mf = root / f"{name}.h5ad", root / f"{name}.yaml"
        make_adata(human_genes, n_cells=n, seed=seed).write_h5ad(h5)
        mf.write_text(yaml.safe_dump(base_manifest(name), sort_keys=False))
        assert submit(lake, h5, mf).status == "committed"
    genes = [r[0] for r in query(lake, "SELECT gene_id FROM genes ORDER BY gene_id").rows]
    df = pd.DataFrame(np.random.default_rng(1).normal(size=(len(genes), 4)), columns=[f"d{i}" for i in range(4)])
    df.insert(0, "gene_id", genes)
    df.to_csv(root / "g.csv", index=False)
    versions = {
        "pca": embed_pca(lake, params=PcaParams(n_components=4, n_top_genes=50, chunk_rows=64)),
        "coexpression": embed_gene_coexpression(lake, dim=4, n_top_genes=50),
        "import": import_embeddings(lake, root / "g.csv", entity="gene", name="esm"),
    }
    return lake, versions


@pytest.mark.parametrize("writer", ["pca", "coexpression", "import"])
def test_writers_still_write_the_same_lineage_keys(written: Any, writer: str) -> None:
    from aivc.store.features import version_dir

    lake, versions = written
    v = versions[writer]
    on_disk = json.loads((version_dir(lake, v.entity, v.name, v.version) / "_version.json").read_text())["lineage"]
    assert frozenset(on_disk) in _keys_of(writer)  # the keys the writer wrote before lineage was typed
    assert on_disk == v.lineage.to_record() and Lineage.from_record(on_disk) == v.lineage
    assert v.lineage.datasets == ("lin-a@1", "lin-b@1") and v.lineage.organism in (None, "homo_sapiens")
    if writer != "import":
        assert v.lineage.organism == "homo_sapiens" and set(v.lineage.lake_state) == {"homo_sapiens"}


def test_cli_json_shows_the_lineage_as_written(written: Any) -> None:
    from typer.testing import CliRunner

    from aivc.cli import app
    from aivc.store.features import version_dir

    lake, versions = written
    v = versions["pca"]
    res = CliRunner().invoke(app, ["features", "show", v.ref, "--lake", str(lake.root), "--json"])
    assert res.exit_code == 0, res.output
    on_disk = json.loads((version_dir(lake, v.entity, v.name, v.version) / "_version.json").read_text())["lineage"]
    assert json.loads(res.stdout)["lineage"] == on_disk
