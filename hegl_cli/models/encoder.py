"""Image encoder: any timm model by name, returning patch tokens on a known grid.

ViTs: ``forward_features`` -> (B, prefix + h*w, D); the prefix (class/register) tokens are dropped.
CNNs: ``forward_features`` -> (B, D, h, w); the last feature map's positions are the tokens.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from hegl_cli.errors import UserError


def _closest_models(name: str) -> str:
    candidates = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.4)
    return f" (closest: {', '.join(candidates)})" if candidates else ""


def create_timm_backbone(
    name: str, image_size: int, in_chans: int, pretrained: bool | str, extra: dict | None = None
) -> nn.Module:
    """Build a headless timm model; ``pretrained`` is False, True (hub) or a local weights file."""
    if name not in timm.list_models() and not timm.is_model(name):
        raise UserError(f"unknown timm model '{name}'{_closest_models(name)}")
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
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained is True:
            raise UserError(
                f"cannot load pretrained weights for '{name}' ({str(exc).splitlines()[0][:160]}); "
                "offline, pass model.pretrained=path/to/weights.safetensors or model.pretrained=false"
            ) from exc
        raise


class ImageEncoder(nn.Module):
    """Wrap a timm model so that ``forward`` returns patch tokens and the grid shape.

    Input: (B, in_chans, S, S) normalised images. Output: tokens (B, h*w, D).
    """

    def __init__(self, name: str, image_size: int, in_chans: int = 1, pretrained: bool | str = False,
                 extra: dict | None = None):
        super().__init__()
        self.backbone = create_timm_backbone(name, image_size, in_chans, pretrained, extra)
        self.is_vit = hasattr(self.backbone, "patch_embed")
        if self.is_vit:
            patch = self.backbone.patch_embed.patch_size
            patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
            if image_size % patch:
                raise UserError(
                    f"image size {image_size} is not divisible by the patch size {patch} of '{name}'"
                )
            self.num_prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 1))
        self.dim = int(self.backbone.num_features)
        self.grid = self._probe_grid(image_size, in_chans)

    @torch.no_grad()
    def _probe_grid(self, image_size: int, in_chans: int) -> tuple[int, int]:
        if self.is_vit:
            grid = self.backbone.patch_embed.grid_size
            return int(grid[0]), int(grid[1])
        was_training = self.backbone.training
        self.backbone.eval()
        feats = self.backbone.forward_features(torch.zeros(1, in_chans, image_size, image_size))
        self.backbone.train(was_training)
        return int(feats.shape[-2]), int(feats.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S) -> tokens (B, h*w, D)."""
        feats = self.backbone.forward_features(images)
        if feats.ndim == 4:  # CNN: (B, D, h, w)
            return feats.flatten(2).transpose(1, 2)
        return feats[:, self.num_prefix_tokens :]  # ViT: drop class/register tokens
