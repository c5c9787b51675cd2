"""Shared fixtures: small real-gene synthetic submissions, the real PBMC demo data, lakes
(a local folder or an ``s3://`` lake on a local moto server)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from tests.s3server import MotoServer, free_port, point_environment_at, unique_bucket

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

#: the port of this test run's S3 server (started lazily by ``s3_server``). The AWS variables
#: are set now, at import, before any Ray starts, so that every process the tests start
#: (the CLI, Ray workers) inherits them; they always override the caller's, so that no test
#: can reach real AWS.
S3_PORT = free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
point_environment_at(S3_ENDPOINT)
#: S3 lakes keep their local work folder (staging, cached versions) here, not in ~/.cache
_CACHE = tempfile.TemporaryDirectory(prefix="aivc-test-cache-")
os.environ["AIVC_CACHE_DIR"] = _CACHE.name


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance: the store conformance suite, run on every lake backend (local folder, S3)")


def lake_snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256) and every folder (-> 'dir')."""
    snap: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        snap[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def assert_refused(res: Any, code: str, where: str, message: str, case: str = "") -> None:
    """A rejected submission whose first ``code`` finding is at ``where`` and says ``message``."""
    assert res.status == "rejected", f"{case}: {res.status}"
    hits = [e for e in res.errors if e.code == code]
    assert hits, f"{case}: expected {code}, got {[str(e) for e in res.errors]}"
    assert where in hits[0].where, str(hits[0])
    assert message in hits[0].message, str(hits[0])


def base_manifest(dataset_id: str = "synth-a", **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "dataset_id": dataset_id,
        "title": "Synthetic test dataset",
        "description": "Poisson counts over real human genes",
        "license": "CC-BY-4.0",
        "access": "public",
        "organism": "NCBITaxon:9606",
        "counts": "X",
        "genes": {"id_type": "symbol"},
        "obs": {
            "assay": {"value": "EFO:0009922"},
            "cell_type": {"column": "label", "label_map": {"Bcell": "B cell", "Tcell": "T cell"}},
            "development_stage": {"value": "unknown"},
            "disease": {"value": "PATO:0000461"},
            "self_reported_ethnicity": {"value": "unknown"},
            "sex": {"column": "sex"},
            "tissue": {"value": "UBERON:0000178"},
            "tissue_type": {"value": "tissue"},
            "suspension_type": {"value": "cell"},
            "donor_id": {"column": "donor"},
            "is_primary_data": {"value": True},
        },
    }
    m.update(over)
    return m


@pytest.fixture(scope="session")
def human_genes() -> pd.DataFrame:
    from aivc.store.reference import gene_reference

    ref = gene_reference("homo_sapiens")
    pc = ref[(ref["gene_type"] == "protein_coding") & ~ref["symbol"].duplicated(keep=False)]
    mito = ref[ref["symbol"].str.startswith("MT-") & ~ref["symbol"].duplicated(keep=False)].head(5)
    genes = pd.concat([pc.iloc[:: max(1, len(pc) // 115)].head(115), mito])
    return genes


def make_adata(genes: pd.DataFrame, n_cells: int = 60, seed: int = 0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    means = rng.gamma(0.6, 2.0, size=len(genes))
    counts = rng.poisson(means[None, :] * rng.uniform(0.5, 1.5, size=(n_cells, 1))).astype(np.float32)
    counts[:, 0] += 1  # no empty cells
    obs = pd.DataFrame(
        {
            "label": rng.choice(["Bcell", "Tcell"], size=n_cells),
            "sex": rng.choice(["PATO:0000383", "PATO:0000384"], size=n_cells),
            "donor": rng.choice(["d1", "d2"], size=n_cells),
            "batch": rng.choice(["b1", "b2"], size=n_cells),
        },
        index=[f"cell-{i:04d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=pd.Index(genes["symbol"].to_numpy(), dtype=object))
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.obsm["X_umap"] = rng.normal(size=(n_cells, 2)).astype(np.float32)
    return adata


@pytest.fixture
def write_submission(tmp_path: Path, human_genes: pd.DataFrame) -> Callable[..., tuple[Path, Path]]:
    """Write ``(h5ad, manifest)``; ``mutate(adata)`` and ``manifest`` overrides customise it."""
    counter = iter(range(10_000))

    def _write(
        mutate: Callable[[Any], Any] | None = None,
        manifest: dict[str, Any] | None = None,
        n_cells: int = 60,
        seed: int = 0,
        **over: Any,
    ) -> tuple[Path, Path]:
        i = next(counter)
        adata = make_adata(human_genes, n_cells=n_cells, seed=seed)
        if mutate is not None:
            out = mutate(adata)
            adata = adata if out is None else out
        h5 = tmp_path / f"sub{i}.h5ad"
        mf = tmp_path / f"sub{i}.yaml"
        adata.write_h5ad(h5)
        mf.write_text(yaml.safe_dump(manifest if manifest is not None else base_manifest(**over), sort_keys=False))
        return h5, mf

    return _write


@pytest.fixture
def lake(tmp_path: Path):
    from aivc.store.lake import Lake

    return Lake.init(tmp_path / "lake")


@pytest.fixture(scope="session")
def pbmc_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    from aivc.demo import build_pbmc_submissions

    return build_pbmc_submissions(tmp_path_factory.mktemp("pbmc"))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (2 CPUs, no dashboard, small object store)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def train_lake(tmp_path_factory: pytest.TempPathFactory, human_genes):
    """synth-a (60 cells, 120 genes, donors d1/d2) and synth-b (40 cells, its first 10 genes
    not measured, donors d1/d2), both committed."""
    import yaml
    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("train")
    lake = Lake.init(root / "lake")
    a = make_adata(human_genes, n_cells=60, seed=0)
    b = make_adata(human_genes, n_cells=40, seed=4)[:, 10:].copy()
    for name, adata in (("synth-a", a), ("synth-b", b)):
        h5, mf = root / f"{name}.h5ad", root / f"{name}.yaml"
        adata.write_h5ad(h5)
        mf.write_text(yaml.safe_dump(base_manifest(name), sort_keys=False))
        assert submit(lake, h5, mf).status == "committed"
    return lake


# -- lakes on every backend -------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """This run's S3 server (``moto_server`` subprocess on 127.0.0.1:S3_PORT), started on first use."""
    server = MotoServer(port=S3_PORT).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_lake_uri(s3_server: MotoServer) -> str:
    """``s3://<a fresh bucket>/lake``: a new, empty bucket for every test."""
    return f"s3://{s3_server.create_bucket(unique_bucket())}/lake"


@pytest.fixture(params=["local", "s3"], ids=["local", "s3"])
def lake_uri(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Where a fresh (not yet initialised) lake goes, on each backend in turn: a local folder
    (``<tmp>/lake``) or ``s3://<fresh bucket>/lake``."""
    if request.param == "s3":
        return str(request.getfixturevalue("s3_lake_uri"))
    return str(tmp_path_factory.mktemp("lake") / "lake")
