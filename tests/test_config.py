"""Config precedence and every config error, through the CLI."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from hegl_cli.cli.app import app
from hegl_cli.config import load_config

runner = CliRunner()


def show(*args: str):
    return runner.invoke(app, ["config", "show", *args])


def test_help_lists_the_six_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("prepare", "train", "evaluate", "robustness", "explain", "ablation"):
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("hegl ")


def test_unknown_key_names_it_and_suggests_the_closest():
    result = show("--set", "train.lrr=1")
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1
    assert "lrr" in lines[0] and "'train.lr'" in lines[0]
    assert "Traceback" not in result.output


def test_wrong_type_names_key_type_and_value():
    result = show("--set", "train.lr=abc")
    assert result.exit_code == 2
    assert "train.lr" in result.output and "float" in result.output and "abc" in result.output


def test_unknown_section_and_bad_choice():
    assert show("--set", "trian.lr=1").exit_code == 2
    result = show("--set", "loss.ha_layers=some")
    assert result.exit_code == 2 and "last, all" in result.output


def test_precedence_default_file_set_flag(tmp_path):
    assert load_config().train.lr == 3e-4
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"train": {"lr": 0.01, "epochs": 7}, "loss": {"alpha": 0.5}}))
    cfg = load_config(cfg_file)
    assert (cfg.train.lr, cfg.train.epochs, cfg.loss.alpha) == (0.01, 7, 0.5)
    cfg = load_config(cfg_file, ["train.lr=0.02", "loss.alpha=0.25"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.loss.alpha) == (0.02, 7, 0.25)
    cfg = load_config(cfg_file, ["loss.alpha=0.25"], {"loss.alpha": 2.0, "loss.beta": None})
    assert cfg.loss.alpha == 2.0 and cfg.loss.beta == 1.0  # None flags do not override


def test_config_show_resolves_file_and_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  epochs: 3\n")
    result = show("--config", str(cfg_file), "--set", "loss.beta=0")
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["train"]["epochs"] == 3 and shown["loss"]["beta"] == 0.0


def test_config_file_errors(tmp_path):
    assert "not found" in show("--config", str(tmp_path / "missing.yaml")).output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    result = show("--config", str(bad))
    assert result.exit_code == 2 and "not valid YAML" in result.output
    control = tmp_path / "control.yaml"
    control.write_text("train:\n  epochs: 2\x07\n")  # YAML's reader refuses it before parsing: it was exit 1
    result = show("--config", str(control))
    assert result.exit_code == 2 and f"{control}: not valid YAML" in result.output, result.output
    result = show("--set", "train.epochs=\x01")
    assert result.exit_code == 2 and "train.epochs" in result.output, result.output
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  epoch: 3\n")
    result = show("--config", str(unknown))
    assert result.exit_code == 2 and "train.epochs" in result.output


def test_packaged_paper_config():
    cfg = load_config("paper.yaml")
    assert cfg.model.encoder == "vit_base_patch16_224" and cfg.model.text_encoder == "xmcmic/Med-KEBERT"
    assert cfg.train.lr == 1e-5 and cfg.train.batch_size == 32 and cfg.train.epochs == 1000
    assert cfg.loss.alpha == cfg.loss.beta == 1.0
    assert (cfg.loss.dal_pairs, cfg.loss.dal_maps) == ("all", "raw")  # the published DAL, whatever the default
    assert load_config(None).loss.dal_maps != "raw" or load_config(None).loss.dal_pairs != "all"


def test_packaged_robust_config_is_the_default_plus_the_recipe():
    robust, default = load_config("robust.yaml"), load_config(None)
    assert robust.loss.ha_layers == "all" and robust.data.augment == "background_swap"
    assert robust.train.select_on == "val_swapped"
    assert robust.model == default.model and robust.loss.dal_maps == default.loss.dal_maps
    assert robust.train.epochs == default.train.epochs


def test_set_keeps_string_values_and_parses_lists():
    cfg = load_config(None, ["data.path=2024", "eval.sigmas=[0.05, 0.1]", "model.pretrained=weights.safetensors"])
    assert cfg.data.path == "2024" and cfg.eval.sigmas == [0.05, 0.1]
    assert cfg.model.pretrained == "weights.safetensors"
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True


def test_malformed_set():
    result = show("--set", "train.lr")
    assert result.exit_code == 2 and "section.key=value" in result.output


@pytest.mark.parametrize("override,message", [
    ("loss.alpha=-1", "'loss.alpha' must be >= 0"),
    ("loss.alpha=nan", "'loss.alpha' must be a finite number"),
    ("loss.beta=.inf", "'loss.beta' must be a finite number"),
    ("train.epochs=0", "'train.epochs' must be >= 1"),
    ("train.batch_size=0", "'train.batch_size' must be >= 1"),
    ("train.lr=-1", "'train.lr' must be > 0"),
    ("train.lr=0", "'train.lr' must be > 0"),
    ("data.image_size=100000", "'data.image_size' must be <= 2048"),
    ("data.val_fraction=1", "'data.val_fraction' must be < 1"),
    ("model.dropout=1.5", "'model.dropout' must be < 1"),
    ("eval.sigmas=[0.1, -0.2]", "'eval.sigmas' must be >= 0"),
    ("eval.sigmas=0.1", "expects a list of float"),
    ("eval.top_share=0", "'eval.top_share' must be > 0"),
    ("model.decoder_heads=3", "'model.decoder_heads' (3) must divide model.decoder_dim (256)"),
    ("loss.dal_max_classes=1", "at least 2"),
    ("train.device=tpu", "must be one of auto, cpu, cuda, mps"),
])
def test_ranges_are_validated_for_every_key(override, message):
    result = show("--set", override)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_every_choice_comes_from_the_type():
    """A Literal field rejects what it does not list, whatever the key (no side table to forget)."""
    import typing

    from hegl_cli.config import Config, _field_types, _sections

    literal_keys = [f"{s}.{k}" for s, cls in _sections().items() for k, tp in _field_types(cls).items()
                    if typing.get_origin(tp) is typing.Literal]
    assert len(literal_keys) >= 12
    for key in literal_keys:
        result = show("--set", f"{key}=not-a-choice")
        assert result.exit_code == 2 and "must be one of" in result.output, key
    assert Config().eval.threshold_metric == "mcc"


def test_encoder_options_follow_their_encoder(tmp_path):
    """default.yaml's ViT depth must not reach a CNN, nor paper.yaml's ViT-B/16."""
    assert load_config().model.encoder_kwargs == {"depth": 6}
    assert load_config(None, ["model.encoder=resnet18"]).model.encoder_kwargs == {}
    assert load_config("paper.yaml").model.encoder_kwargs == {}
    both = load_config(None, ["model.encoder=resnet18", "model.encoder_kwargs={drop_rate: 0.1}"])
    assert both.model.encoder_kwargs == {"drop_rate": 0.1}
    same = load_config(None, ["model.encoder=vit_tiny_patch16_224"])
    assert same.model.encoder_kwargs == {"depth": 6}


def test_a_seed_beyond_what_numpy_and_torch_take_is_refused_when_set():
    """`--set train.seed=99999999999999999999999` overflowed inside training (exit 1)."""
    for key in ("train.seed", "data.seed"):
        result = show("--set", f"{key}=99999999999999999999999")
        assert result.exit_code == 2 and f"config key '{key}' must be <" in result.output, result.output
    assert show("--set", f"train.seed={2**32 - 1}").exit_code == 0
