"""Any timm family as the image encoder: tokens equal timm's own NCHW intermediates, in grid order."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from typer.testing import CliRunner

from hegl_cli.cli.app import app
from hegl_cli.config import load_config
from hegl_cli.errors import UserError
from hegl_cli.models.encoder import ImageEncoder
from hegl_cli.models.model import build_model

SWIN_TINY = {"depths": [1, 1, 1, 1], "embed_dim": 24, "num_heads": [1, 1, 1, 1]}
FAMILIES = [
    pytest.param("vit_tiny_patch16_224", {"depth": 1}, 1, id="vit-cls"),
    pytest.param("vit_tiny_patch16_224", {"depth": 1, "class_token": False, "global_pool": "avg"}, 0, id="vit-no-cls"),
    pytest.param("vit_tiny_patch16_224", {"depth": 1, "reg_tokens": 4}, 5, id="vit-registers"),
    pytest.param("deit_tiny_distilled_patch16_224", {"depth": 1}, 2, id="deit-distilled"),
    pytest.param("swin_tiny_patch4_window7_224", SWIN_TINY, 0, id="swin-nhwc"),
    pytest.param("convnext_atto", {}, 0, id="convnext"),
    pytest.param("resnet18", {}, 0, id="resnet"),
]


def _timm_last_map(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's own (B, D, h, w) last feature map, final norm applied where the model has one."""
    kwargs = {"norm": True} if "norm" in inspect.signature(backbone.forward_intermediates).parameters else {}
    return backbone.forward_intermediates(x, indices=1, output_fmt="NCHW", intermediates_only=True, **kwargs)[-1]


@pytest.mark.parametrize("name,kwargs,prefix", FAMILIES)
def test_tokens_follow_timm_contract(name, kwargs, prefix):
    encoder = ImageEncoder(name, 64, in_chans=1, extra=kwargs).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        tokens = encoder(x)
        reference = _timm_last_map(encoder.backbone, x)  # (B, D, h, w)
    h, w = encoder.grid
    assert reference.shape[-2:] == (h, w) and encoder.num_prefix_tokens == prefix
    assert tokens.shape == (2, h * w, encoder.dim)
    torch.testing.assert_close(tokens, reference.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_efficientnet_tokens_are_its_feature_map():
    encoder = ImageEncoder("efficientnet_b0", 64, in_chans=1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        feats = encoder.backbone.forward_features(x)  # (B, 1280, 2, 2) incl. conv_head
        tokens = encoder(x)
    assert encoder.grid == (2, 2) and encoder.dim == feats.shape[1]
    torch.testing.assert_close(tokens, feats.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("encoder,kwargs", [("swin_tiny_patch4_window7_224", SWIN_TINY), ("resnet18", {})])
def test_channels_last_and_cnn_backbones_train_end_to_end(encoder, kwargs):
    """Swin crashed 0.1.0 ("mat1 and mat2 shapes cannot be multiplied"); every parameter gets a gradient."""
    cfg = load_config(None, ["model.text_encoder=none", f"model.encoder={encoder}",
                             f"model.encoder_kwargs={yaml.safe_dump(kwargs, default_flow_style=True).strip()}",
                             "model.decoder_dim=32", "model.decoder_heads=2",
                             "model.decoder_ffn=64", "model.decoder_layers=1"])
    model = build_model(["a", "b", "c"], cfg.model, image_size=64)
    out = model(torch.rand(2, 1, 64, 64))
    assert out["logits"].shape == (2, 3) and out["attention"].shape == (2, 3, *model.grid)
    torch.testing.assert_close(out["attention"].flatten(2).sum(-1), torch.ones(2, 3))
    out["logits"].sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unfit_encoder_options_and_features_get_one_line():
    with pytest.raises(UserError, match="encoder_kwargs .* do not fit 'resnet18'"):
        ImageEncoder("resnet18", 64, extra={"depth": 6})
    with pytest.raises(UserError, match="cannot run on 30 px|not divisible"):
        ImageEncoder("vit_tiny_patch16_224", 30, extra={"depth": 1})


runner = CliRunner()


def test_a_cnn_trains_with_the_default_config(tiny_cache, tmp_path):
    """default.yaml's ViT depth must not break `--set model.encoder=resnet18` (0.1.0 crashed)."""
    args = ["train", "--name", "cnn", "--runs-dir", str(tmp_path)]
    for item in [f"data.path={tiny_cache}", "data.image_size=32", "model.text_encoder=none", "model.encoder=resnet18",
                 "train.epochs=1", "train.device=cpu", "model.decoder_dim=32", "model.decoder_ffn=64"]:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
