"""Fixtures of the instrument tests: the real PBMC data in a small lake, with URs and a decoder.

``pbmc_base`` (built once per session, ~15 s): ``pbmc68k-part1`` (350 cells, labelled)
and ``pbmc68k-part2`` (the other 350, submitted *with* its labels here so that held-out
agreement and coverage can be measured), the PCA cell UR ``cell:pca@1`` (32 dims) over
both, and ``celltype@1`` trained on part 1 only (``min_cells_per_class=10``: its three
rarest types left out, so that tests see cells of types the decoder never saw). Tests that write to a lake take
``plake``: a private copy of it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@dataclass(frozen=True)
class PbmcBase:
    root: Path
    emb: Any
    rec: Any


@pytest.fixture(scope="session")
def pbmc_base(tmp_path_factory: pytest.TempPathFactory, pbmc_files) -> PbmcBase:  # noqa: ANN001
    import yaml

    from aivc.demo import pbmc_manifest
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.store.lake import Lake

    root = tmp_path_factory.mktemp("instruments")
    lake = Lake.init(root / "lake")
    (h1, m1), (h2, _) = pbmc_files
    m2 = root / "part2-labelled.yaml"
    m2.write_text(yaml.safe_dump(pbmc_manifest("pbmc68k-part2", labelled=True, title="PBMC 68k (reduced), part 2, labelled"), sort_keys=False))
    for h, m in ((h1, m1), (h2, m2)):
        res = submit(lake, h, m, report_dir=root / "reports")
        assert res.status == "committed", res.errors
    emb = embed_pca(lake, params=PcaParams(n_components=32, n_top_genes=2000))
    # min 10 cells: part 1's three rarest types are left out, so tests see cells of types the decoder never saw
    rec = train_celltype(lake, emb.ref, datasets=["pbmc68k-part1"], config=CellTypeConfig(min_cells_per_class=10))
    return PbmcBase(lake.root, emb, rec)


@pytest.fixture
def plake(pbmc_base: PbmcBase, tmp_path: Path):  # noqa: ANN201
    """A private copy of the PBMC lake (the base stays untouched)."""
    from aivc.store.lake import Lake

    shutil.copytree(pbmc_base.root, tmp_path / "lake", symlinks=True)
    return Lake.open(tmp_path / "lake")


@pytest.fixture(scope="session")
def cli_app():  # noqa: ANN201
    """The full ``aivc`` Typer app (run in-process with typer.testing.CliRunner)."""
    from aivc.cli import app

    return app
