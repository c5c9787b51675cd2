"""Training configs: packaged defaults, strict YAML, typed --set overrides."""

from __future__ import annotations

import pytest

from aivc.errors import UsageError
from aivc.training.config import CellVaeConfig, apply_overrides, config_changes, default_config_path, load_config


def test_packaged_yaml_is_the_defaults():
    assert default_config_path().is_file()
    cfg = load_config()
    assert cfg == CellVaeConfig()
    assert (cfg.model.latent_dim, cfg.model.hidden_dim, cfg.model.n_layers) == (16, 128, 1)
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed) == (1e-3, 256, 20, 0)
    assert cfg.data.n_top_genes is None and cfg.data.validation.by == "fraction"


def test_overrides_are_typed():
    cfg = apply_overrides(CellVaeConfig(), ["optim.lr=3e-4", "data.validation.by=donor", "data.datasets=[a, b@2]", "data.n_top_genes=500", "seed=3"])
    assert cfg.optim.lr == 3e-4 and cfg.data.validation.by == "donor" and cfg.data.datasets == ("a", "b@2")
    assert cfg.data.n_top_genes == 500 and cfg.seed == 3
    assert config_changes(CellVaeConfig(), cfg) == ["data.datasets", "data.n_top_genes", "data.validation.by", "optim.lr", "seed"]
    assert apply_overrides(cfg, ["data.n_top_genes=null"]).data.n_top_genes is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("model.latnt_dim=3", "unknown key 'model.latnt_dim'"),
        ("modle.latent_dim=3", "unknown key 'modle'"),
        ("optim.lr=fast", "optim.lr: Input should be a valid number"),
        ("optim.epochs=0", "optim.epochs: Input should be greater than or equal to 1"),
        ("data.validation.by=tissue", "data.validation.by: Input should be 'dataset', 'donor', 'fraction' or 'none'"),
        ("lr", "--set expects KEY=VALUE"),
        ("data=1", "unknown key 'data'"),
    ],
)
def test_bad_overrides_are_one_line_usage_errors(item, message):
    with pytest.raises(UsageError) as ei:
        apply_overrides(CellVaeConfig(), [item])
    assert message in ei.value.message and "\n" not in ei.value.message


def test_yaml_file_is_strict(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  latent_dim: 8\n  hiden_dim: 3\n")
    with pytest.raises(UsageError, match="unknown key 'model.hiden_dim'"):
        load_config(f)
    f.write_text("model:\n  latent_dim: 8\noptim:\n  epochs: 3\n")
    cfg = load_config(f)
    assert cfg.model.latent_dim == 8 and cfg.optim.epochs == 3 and cfg.model.hidden_dim == 128
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    f.write_text("schema_version: 2\n")
    with pytest.raises(UsageError, match="schema_version"):
        load_config(f)
