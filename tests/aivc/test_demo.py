"""`aivc demo` end to end on the real PBMC data: what the README's first command runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, ray_session):  # noqa: ANN001
    from aivc.cli import app

    res = CliRunner().invoke(app, ["demo", "--lake", str(tmp_path / "lake"), "--workdir", str(tmp_path / "inputs"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [s["status"] for s in out["submissions"]] == ["committed", "committed", "unchanged"]
    assert sum(d["n_cells"] for d in out["datasets"]) == 700
    # the PCA baseline and the trained model both place B cells next to B cells
    assert out["embeddings"]["version"] == "cell:pca@1" and out["embeddings"]["same_label"] >= 6
    models = out["models"]
    assert models["model"] == "pbmc-vae@1" and models["embedding"] == "cell:pbmc_vae@1"
    assert models["metrics"]["epoch"] == 40 and models["metrics"]["validation_loss"] < models["metrics"]["train_loss"] * 1.2
    assert len(models["neighbors"]) == 10 and models["same_label"] >= 6
    # the demo ends by reannotating the atlas with a decoder trained on part 1's labels
    rea = out["reannotation"]
    assert rea["instrument"] == "celltype@1" and rea["predictions"] == "predictions:celltype@1"
    assert rea["summary"]["n_cells"] == 700 and rea["agreement"]["unlabelled"] == 350
    assert rea["agreement"]["exact"] + rea["agreement"]["ancestor"] + rea["agreement"]["descendant"] >= 0.7 * 350
    assert sum(r["n_cells"] for r in rea["part2"]) == 350
    # and prints the command that serves its lake in the portal
    assert out["serve"]["command"] == f"aivc serve --lake {(tmp_path / 'lake').resolve()}"
    assert Path(rea["report"]).is_file() and Path(rea["report"]).read_text().count("<svg") == 2  # the map and the confusion heatmap
    # then real CITE-seq: protein predicted from RNA on held-out cells, next to a ridge baseline
    mm = out["multimodal"]
    assert [s["status"] for s in mm["submissions"]] == ["committed", "committed"]
    assert [s["measurements"]["ADT"] for s in mm["submissions"]] == [14, 29]
    assert mm["instrument"] == "protein@1" and mm["held_out"]["n_cells"] == 200 and mm["held_out"]["measured_proteins"] == 14
    assert mm["held_out"]["mean_pearson"] > 0.3 and mm["baseline_ridge"]["n_cells"] == 200 and mm["baseline_ridge"]["mean_pearson"] is not None

    sp = out["spatial"]
    assert sp["submission"]["status"] == "committed" and sp["submission"]["spatial"]["n_located"] == 100
    assert sp["model"] == "visium-niche@1" and sp["niche"] == "niche:visium_niche@1" and sp["n_niches"] == 100
    assert sp["graph"]["rule"] == "knn" and sp["mean_neighbours"] == 6.0 and sum(sp["domains"]["sizes"]) == 100
    assert 0.0 < sp["domains"]["coherence_cell"] < 1.0 and 0.0 < sp["domains"]["coherence_niche"] <= 1.0


class _Stop(Exception):
    pass


def test_demo_inputs_go_under_the_lake_not_the_current_folder(tmp_path, monkeypatch):
    """`aivc demo` with the default lake (./lake): its submissions land in <lake>/demo-inputs, the
    current folder gets nothing but the lake, and the lake's recovery leaves the inputs alone."""
    import aivc.ingest.submission
    from aivc.demo import DEMO_INPUTS, run_demo
    from aivc.store.catalog import Catalog
    from aivc.store.lake import Lake
    from aivc.store.recovery import recover

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("AIVC_LAKE", raising=False)
    submitted: list[Path] = []

    def stop(lake, h5, manifest, **kw):  # noqa: ANN001, ANN003, ANN202 - the first submission ends the run
        submitted.append(Path(h5))
        raise _Stop

    monkeypatch.setattr(aivc.ingest.submission, "submit", stop)
    with pytest.raises(_Stop):
        run_demo(None, json_mode=True)
    inputs = cwd / "lake" / DEMO_INPUTS
    assert sorted(p.name for p in cwd.iterdir()) == ["lake"]
    assert sorted(p.name for p in inputs.iterdir()) == ["pbmc68k-part1.h5ad", "pbmc68k-part1.yaml", "pbmc68k-part2.h5ad", "pbmc68k-part2.yaml"]
    assert submitted == [inputs / "pbmc68k-part1.h5ad"]
    lake = Lake.open(cwd / "lake")
    with lake.write_lock():
        assert recover(lake) == []
    assert Catalog(lake).all_versions() == [] and len(list(inputs.iterdir())) == 4
    assert Lake.init(cwd / "lake").root == lake.root  # still a lake, re-opened as one
    # an explicit --workdir is used as given
    with pytest.raises(_Stop):
        run_demo(str(tmp_path / "other-lake"), workdir=str(tmp_path / "mine"), json_mode=True)
    assert submitted[-1] == tmp_path / "mine" / "pbmc68k-part1.h5ad" and not (tmp_path / "other-lake" / DEMO_INPUTS).exists()
