"""Image encoder: any timm model by name, returning patch tokens on a known grid.

The layout of ``forward_features`` is found once, by timm's own contract, on a probe image:
- (B, prefix + h*w, D) tokens (ViT, DeiT, ViT with registers): the model's ``num_prefix_tokens``
  (class, distillation, register tokens) are dropped;
- (B, h, w, D) when the model declares ``output_fmt = "NHWC"`` (Swin, MambaOut, ...);
- (B, D, h, w) otherwise (ResNet, ConvNeXt, EfficientNet, ...).
A model whose features have no spatial layout is refused in one line.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

import timm
import torch
from torch import nn

from hegl_cli.errors import UserError, first_line


def _closest_models(name: str) -> str:
    candidates = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.4)
    return f" (closest: {', '.join(candidates)})" if candidates else ""


def create_timm_backbone(
    name: str, image_size: int, in_chans: int, pretrained: bool | str, extra: dict | None = None
) -> nn.Module:
    """Build a headless timm model; ``pretrained`` is False, True (hub) or a local weights file."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}'{_closest_models(name)}")
    check_encoder_kwargs(extra or {})
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans, **(extra or {})}
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false"):
        pretrained = pretrained.lower() == "true"
    if isinstance(pretrained, str):
        path = Path(pretrained)
        if not path.is_file():
            raise UserError(f"pretrained weights file not found: {path}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    else:
        kwargs["pretrained"] = bool(pretrained)
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as exc:  # CNNs take no img_size
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, **kwargs)
    except UserError:
        raise
    except TypeError as exc:  # an encoder_kwargs key this architecture does not take
        raise UserError(f"model.encoder_kwargs {extra or {}} do not fit '{name}' ({first_line(exc, 120)})") from exc
    except Exception as exc:  # noqa: BLE001 - timm, torch and safetensors each raise their own types
        if isinstance(pretrained, str):
            raise UserError(f"cannot load pretrained weights from {pretrained} ({first_line(exc, 160)}); it must be "
                            f"a checkpoint of '{name}' (.safetensors or .pth)") from exc
        if pretrained is True:
            raise UserError(
                f"cannot load pretrained weights for '{name}' ({first_line(exc, 160)}); "
                "offline, pass model.pretrained=path/to/weights.safetensors or model.pretrained=false"
            ) from exc
        raise UserError(f"cannot build timm model '{name}' with {kwargs} ({first_line(exc, 160)})") from exc


def check_encoder_kwargs(extra: dict) -> None:
    """Every ``model.encoder_kwargs`` key has a value: timm drops keys whose value is None without a word,
    and ``{depth:1}`` (no space) is YAML for a key ``depth:1`` with no value. Keys the encoder does not
    take are refused when it is built (timm's TypeError)."""
    for key, value in extra.items():
        if value is None:
            hint = f"; write '{key.split(':')[0]}: {key.split(':', 1)[1]}' with a space" if ":" in str(key) else ""
            raise UserError(f"config key 'model.encoder_kwargs': {key!r} has no value{hint}")


class ImageEncoder(nn.Module):
    """Wrap a timm model so that ``forward`` returns patch tokens on the grid ``self.grid``.

    Input: (B, in_chans, S, S) normalised images. Output: tokens (B, h*w, D), row-major over the grid.
    """

    def __init__(self, name: str, image_size: int, in_chans: int = 1, pretrained: bool | str = False,
                 extra: dict | None = None):
        super().__init__()
        self.backbone = create_timm_backbone(name, image_size, in_chans, pretrained, extra)
        patch = getattr(getattr(self.backbone, "patch_embed", None), "patch_size", None)
        if patch is not None:
            patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
            if image_size % patch:
                raise UserError(f"image size {image_size} is not divisible by the patch size {patch} of '{name}'")
        self.layout, self.num_prefix_tokens, self.grid, self.dim = self._probe(name, image_size, in_chans)

    @torch.no_grad()
    def _probe(self, name: str, image_size: int, in_chans: int) -> tuple[str, int, tuple[int, int], int]:
        """(layout NLC | NHWC | NCHW, prefix tokens, (h, w), D) of ``forward_features`` on a zero image."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            feats = self.backbone.forward_features(torch.zeros(1, in_chans, image_size, image_size))
        except Exception as exc:  # noqa: BLE001 - any architecture may refuse a size in its own way
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise UserError(f"timm model '{name}' cannot run on {image_size} px images ({reason})") from exc
        finally:
            self.backbone.train(was_training)
        if isinstance(feats, (list, tuple)):
            raise UserError(f"timm model '{name}' returns several feature maps; hegl needs one (B, tokens, D) output")
        shape = tuple(feats.shape)
        if len(shape) == 4:
            if str(getattr(self.backbone, "output_fmt", "NCHW")) == "NHWC":
                return "NHWC", 0, (shape[1], shape[2]), shape[3]
            return "NCHW", 0, (shape[2], shape[3]), shape[1]
        if len(shape) == 3:
            prefix = int(getattr(self.backbone, "num_prefix_tokens", 0))
            return "NLC", prefix, self._token_grid(name, shape[1] - prefix), shape[2]
        raise UserError(f"timm model '{name}' gives features of shape {shape}: no spatial tokens to attend to")

    def _token_grid(self, name: str, tokens: int) -> tuple[int, int]:
        grid = getattr(getattr(self.backbone, "patch_embed", None), "grid_size", None)
        if grid is not None and int(grid[0]) * int(grid[1]) == tokens:
            return int(grid[0]), int(grid[1])
        side = math.isqrt(tokens)
        if side * side != tokens or tokens == 0:
            raise UserError(f"timm model '{name}' gives {tokens} tokens that form no square grid")
        return side, side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S) -> tokens (B, h*w, D)."""
        feats = self.backbone.forward_features(images)
        if self.layout == "NCHW":
            return feats.flatten(2).transpose(1, 2)
        if self.layout == "NHWC":
            return feats.flatten(1, 2)
        return feats[:, self.num_prefix_tokens :]
