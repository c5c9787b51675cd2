"""Training configs: packaged defaults, strict YAML, typed --set overrides."""

from __future__ import annotations

import pytest

from aivc.errors import UsageError
from aivc.training.config import CellTransformerConfig, CellVaeConfig, apply_overrides, config_changes, default_config_path, load_config, parse_config


def test_packaged_yaml_is_the_defaults():
    assert default_config_path().is_file()
    cfg = load_config()
    assert cfg == CellVaeConfig()
    assert (cfg.model.latent_dim, cfg.model.hidden_dim, cfg.model.n_layers) == (16, 128, 1)
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed) == (1e-3, 128, "auto", 0)
    assert (cfg.optim.kl_warmup_epochs, cfg.optim.early_stopping_patience, cfg.model.encoder_input) == ("auto", 20, "lognorm")
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
        ("optim.epochs=0", "optim.epochs must be at least 1 or auto, got 0"),
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


def test_cell_transformer_defaults_need_a_gene_ur():
    assert default_config_path("cell-transformer").is_file()
    with pytest.raises(UsageError, match="gene_ur is required") as ei:
        load_config(model_type="cell-transformer")
    assert "\n" not in ei.value.message and "--set gene_ur=" in ei.value.message
    cfg = load_config(model_type="cell-transformer", overrides=["gene_ur=gene:coexpr@1", "model.d_model=32"])
    assert isinstance(cfg, CellTransformerConfig) and cfg == CellTransformerConfig(gene_ur="gene:coexpr@1", model={"d_model": 32})
    assert (cfg.model_type, cfg.name, cfg.gene_ur, cfg.data.genes) == ("cell-transformer", "cell-transformer", "gene:coexpr@1", "union")
    assert (cfg.model.n_heads, cfg.model.max_tokens, cfg.model.mask_fraction, cfg.model.latent_dim) == (4, 128, 0.15, 32)
    # the VAE's packaged defaults are untouched, and picked by default
    assert load_config() == load_config(model_type="cell-vae") == CellVaeConfig()
    assert parse_config(cfg.model_dump(mode="json")) == cfg


def test_cell_transformer_overrides_are_typed_and_strict():
    cfg = apply_overrides(CellTransformerConfig(gene_ur="gene:coexpr"), ["model.n_layers=3", "gene_ur=gene:esm2@2", "optim.lr=1e-4"])
    assert (cfg.model.n_layers, cfg.gene_ur, cfg.optim.lr) == (3, "gene:esm2@2", 1e-4)
    assert config_changes(CellTransformerConfig(gene_ur="gene:coexpr"), cfg) == ["gene_ur", "model.n_layers", "optim.lr"]
    cases = [
        ("gene_ur=cell:pca@1", "gene_ur must be a gene embedding reference gene:NAME[@VERSION]"),
        ("model.d_model=30", "model.d_model (30) must be a multiple of model.n_heads (4)"),
        ("model.hidden_dim=8", "unknown key 'model.hidden_dim'"),  # a cell-vae key
        ("optim.kl_warmup_epochs=2", "unknown key 'optim.kl_warmup_epochs'"),
        ("model.mask_fraction=1.5", "model.mask_fraction: Input should be less than 1"),
    ]
    for item, message in cases:
        with pytest.raises(UsageError) as ei:
            apply_overrides(cfg, [item])
        assert message in ei.value.message and "\n" not in ei.value.message, ei.value.message
    with pytest.raises(UsageError, match=r"unknown key 'gene_urr' in --set gene_urr=x; valid keys: name, seed, data\.organism.*, gene_ur, model\.d_model"):
        apply_overrides(cfg, ["gene_urr=x"])


def test_config_file_and_model_type_must_agree(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("model_type: cell-transformer\ngene_ur: gene:coexpr@3\nmodel:\n  n_layers: 1\n")
    cfg = load_config(f)
    assert isinstance(cfg, CellTransformerConfig) and cfg.gene_ur == "gene:coexpr@3" and cfg.model.n_layers == 1
    assert load_config(f, model_type="cell-transformer") == cfg
    with pytest.raises(UsageError, match="is for model_type 'cell-transformer', not 'cell-vae'"):
        load_config(f, model_type="cell-vae")
    f.write_text("model_type: cell-gnn\n")
    with pytest.raises(UsageError, match="unknown model_type 'cell-gnn'; known: cell-vae, cell-transformer"):
        load_config(f)
    # --set fills sections a user's file leaves out
    f.write_text("model_type: cell-transformer\n")
    cfg = load_config(f, overrides=["gene_ur=gene:g", "data.validation.by=donor"])
    assert cfg.data.validation.by == "donor" and cfg.gene_ur == "gene:g"
