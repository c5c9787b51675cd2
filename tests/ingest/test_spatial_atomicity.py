"""A spatial submission killed at each commit phase leaves the lake as it was: no spots, no
Scene, no locations, images or shapes of the dead version reach a reader, recovery removes
every byte it wrote, and the retry commits."""

from __future__ import annotations

from pathlib import Path

import pytest

from aivc.demo_spatial import VISIUM_EXAMPLE, visium_manifest
from aivc.ingest.submission import FAULT_POINTS, submit
from aivc.store.catalog import Catalog
from aivc.store.lake import Lake
from aivc.store.recovery import recover
from aivc.store.sql import query
from tests.conftest import lake_snapshot
from tests.ingest.test_cite_submit import write_manifest
from tests.store.test_atomicity import _cli, _files_only


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_visium_submit_killed_at_each_commit_phase(tmp_path: Path, point: str) -> None:
    lake = Lake.init(tmp_path / "lake")
    first = submit(lake, VISIUM_EXAMPLE, write_manifest(tmp_path / "a.yaml", visium_manifest("visium-a")), report_dir=tmp_path / "ra")
    assert first.status == "committed"
    before = lake_snapshot(lake.root)
    mf = write_manifest(tmp_path / "b.yaml", visium_manifest("visium-b"))
    proc = _cli("submit", str(VISIUM_EXAMPLE), "--manifest", str(mf), "--lake", str(lake.root), "--json", env={"AIVC_FAULT": point})
    assert proc.returncode == 97, proc.stderr
    # readers see the committed state only: one dataset, its 100 located spots, its images
    assert [v.ref for v in Catalog(lake).all_versions()] == ["visium-a@1"]
    assert query(lake, "SELECT dataset_id, count(*) FROM spatial_cells GROUP BY ALL").rows == [("visium-a", 100)]
    assert query(lake, "SELECT DISTINCT dataset_id FROM spatial_images").rows == [("visium-a",)]
    # recovery removes everything the dead writer left: SOMA fragments, the Scene, staged artifacts
    recover(lake)
    assert _files_only(lake_snapshot(lake.root)) == _files_only(before)
    res = submit(lake, VISIUM_EXAMPLE, mf, report_dir=tmp_path / "rb")
    assert (res.status, res.version) == ("committed", 1)
    assert query(lake, "SELECT dataset_id, count(*) FROM spatial_cells GROUP BY ALL ORDER BY 1").rows == [("visium-a", 100), ("visium-b", 100)]
