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
    assert Path(rea["report"]).is_file() and "<img" in Path(rea["report"]).read_text()
