"""Model registry: numbered immutable versions, atomic publish, typed errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from aivc.errors import NotFoundError, UsageError
from aivc.training.registry import get_model, list_models, load_model, parse_model_ref, register_model, version_dir
from aivc.store.lineage import Lineage


def _register(lake, name="tiny-vae", **over):
    kw = dict(
        model_type="cell-vae",
        state_dict={},
        init={"n_genes": 3, "n_batches": 1, "latent_dim": 2, "hidden_dim": 4, "n_layers": 1, "dropout": 0.0},
        config={"seed": 0},
        gene_ids=["ENSG00000141510", "ENSG00000012048", "ENSG00000139618"],
        encodings={"batch": ["ds"]},
        metrics={"train_loss": 1.5},
        lineage=Lineage(datasets=("ds@1",), lake_state={"homo_sapiens": 123}),
    )
    kw.update(over)
    return register_model(lake, name, **kw)


def test_versions_numbered_and_loadable(lake):
    from aivc.training.models.cell_vae import CellVAE

    torch.manual_seed(0)
    m = CellVAE(3, 1, latent_dim=2, hidden_dim=4, dropout=0.0)
    r1 = _register(lake, state_dict=m.state_dict())
    r2 = _register(lake, state_dict=m.state_dict(), metrics={"train_loss": 1.0})
    assert [r.ref for r in list_models(lake)] == ["tiny-vae@1", "tiny-vae@2"]
    assert get_model(lake, "tiny-vae").ref == "tiny-vae@2" and get_model(lake, "tiny-vae@1") == r1
    assert r2.gene_ids == ("ENSG00000141510", "ENSG00000012048", "ENSG00000139618")
    module, rec = load_model(lake, "tiny-vae@1")
    for k, v in m.state_dict().items():
        torch.testing.assert_close(module.state_dict()[k], v)
    assert rec.lineage.lake_state == {"homo_sapiens": 123}
    with pytest.raises(NotFoundError, match="has no version 7"):
        get_model(lake, "tiny-vae@7")
    with pytest.raises(NotFoundError, match="no model 'other'"):
        get_model(lake, "other")
    with pytest.raises(UsageError, match="NAME\\[@VERSION\\]"):
        parse_model_ref("Bad Name")


def test_crash_before_publish_leaves_nothing(lake, tmp_path):
    script = tmp_path / "r.py"
    script.write_text(
        "import sys\n"
        "from aivc.store.lake import Lake\n"
        "from aivc.training.registry import register_model\n"
        "register_model(Lake.open(sys.argv[1]), 'crash-vae', model_type='cell-vae', state_dict={}, init={}, config={},\n"
        "    gene_ids=['g'], encodings={}, metrics={})\n"
    )
    env = {**os.environ, "AIVC_FAULT": "before_model_publish"}
    proc = subprocess.run([sys.executable, str(script), str(lake.root)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()
    assert list_models(lake) == [] and not version_dir(lake, "crash-vae", 1).exists()
    with lake.write_lock():
        removed = lake.clear_staging()  # what `aivc recover` does: the dead writer's folder goes
    assert len(removed) == 1
    assert _register(lake, "crash-vae").ref == "crash-vae@1"
