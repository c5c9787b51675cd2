"""Fixtures of the training tests: one small two-dataset lake and one Ray per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def train_lake(tmp_path_factory: pytest.TempPathFactory, human_genes):  # noqa: ANN001, ANN201
    """synth-a (60 cells, 120 genes, donors d1/d2) and synth-b (40 cells, its first 10 genes
    not measured, donors d1/d2), both committed."""
    import yaml

    from aivc.ingest.submission import submit
    from aivc.store.lake import Lake
    from tests.conftest import base_manifest, make_adata

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


@pytest.fixture
def cli_app():  # noqa: ANN201
    """A Typer app with the training commands registered (as aivc.cli will)."""
    import typer

    from aivc.cli_training import register

    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app
