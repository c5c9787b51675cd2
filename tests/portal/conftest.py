"""Portal fixtures: one real PBMC lake with a public and a consortium dataset, cell URs,
a cell-type decoder and its predictions; users alice (consortium) and carol (no groups),
with API tokens when ``aivc.store.tokens`` is available.

``portal_lake`` is built once per session and must not be changed by tests (copy it with
``fresh_lake`` for tests that submit).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PUBLIC_DS = "pbmc68k-part1"
CONSORTIUM_DS = "pbmc68k-part2"


@dataclass
class PortalLake:
    root: Path
    embedding_ref: str
    prediction_ref: str
    #: user -> secret token (empty when store.tokens is missing)
    tokens: dict[str, str] = field(default_factory=dict)
    #: obs_id of one cell of each dataset
    public_cell: str = ""
    consortium_cell: str = ""


def build_portal_lake(root: Path, pbmc_files: list[tuple[Path, Path]]) -> PortalLake:
    """part 1 public and labelled, part 2 consortium and labelled; PCA URs over both, a
    decoder trained on part 1, predictions of both; users alice (consortium), carol."""
    import yaml

    from aivc.demo import pbmc_manifest
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit
    from aivc.instruments.annotate import annotate
    from aivc.instruments.celltype import train_celltype
    from aivc.instruments.celltype_model import CellTypeConfig
    from aivc.store.access import add_user
    from aivc.store.lake import Lake
    from aivc.store.sql import query

    lake = Lake.init(root / "lake")
    (h1, m1), (h2, _) = pbmc_files
    m2 = root / "part2-consortium.yaml"
    man = pbmc_manifest(CONSORTIUM_DS, labelled=True, title="PBMC 68k (reduced), part 2, consortium")
    man["access"] = "consortium"
    m2.write_text(yaml.safe_dump(man, sort_keys=False))
    for h, m in ((h1, m1), (h2, m2)):
        res = submit(lake, h, m, report_dir=root / "reports")
        assert res.status == "committed", res.errors
    emb = embed_pca(lake, params=PcaParams(n_components=16, n_top_genes=500))
    train_celltype(lake, emb.ref, datasets=[PUBLIC_DS], config=CellTypeConfig(min_cells_per_class=10, hidden=0, weight_decay=0.01))
    pv = annotate(lake, "celltype@1", all_datasets=True, engine="local", report=False)
    add_user(lake, "alice", ["consortium"])
    add_user(lake, "carol", [])
    cell = {ds: query(lake, f"SELECT min(obs_id) FROM cells WHERE dataset_id = '{ds}'").rows[0][0] for ds in (PUBLIC_DS, CONSORTIUM_DS)}
    out = PortalLake(lake.root, emb.ref, pv.ref, public_cell=cell[PUBLIC_DS], consortium_cell=cell[CONSORTIUM_DS])
    try:
        from aivc.store.tokens import create_token
    except ImportError:  # store/tokens.py not written yet
        return out
    for user in ("alice", "carol"):
        out.tokens[user], _ = create_token(lake, user)
    return out


@pytest.fixture(scope="session")
def portal_lake(tmp_path_factory: pytest.TempPathFactory, pbmc_files) -> PortalLake:  # noqa: ANN001
    return build_portal_lake(tmp_path_factory.mktemp("portal"), pbmc_files)


@pytest.fixture
def fresh_lake(portal_lake: PortalLake, tmp_path: Path) -> Path:
    """A private copy of the portal lake (tests that submit or revoke change their copy only)."""
    dst = tmp_path / "lake"
    shutil.copytree(portal_lake.root, dst, symlinks=True, ignore=shutil.ignore_patterns(".portal"))
    return dst
