"""Explanation methods for a trained model, side by side: one map per (image, class).

Every method returns the same thing, :class:`Maps`: non-negative maps at patch resolution
(B, K, h, w), each summing to 1 (a map with no positive mass becomes uniform: no evidence
anywhere), and at image resolution (B, K, S, S), each summing to 1 too. K indexes the classes asked
for. Methods native to the patch grid (the attention family, rollout, Grad-CAM on the tokens) are
spread evenly over each patch's pixels for the image map; methods native to pixels (integrated
gradients, saliency, occlusion) give each patch the mass of its pixels.

- ``attention``: the last decoder layer's cross-attention of the class query, mean over heads (the
  map H-EGL trains);
- ``attention-heads``: the same layer, the patch-wise maximum over heads (what any head looks at);
- ``attention-layers``: cross-attention averaged over every decoder layer (and heads);
- ``rollout``: the last layer's cross-attention carried back through the encoder's self-attention
  by attention rollout (Abnar & Zuidema, 2020: product of 0.5 A + 0.5 I over blocks, heads
  averaged); ViT-style encoders only;
- ``gradcam``: Grad-CAM (pytorch-grad-cam) on the tokens the class queries read (the memory
  projection's output), reshaped to the grid; its channel weights are mean gradients over the
  tokens, which a transformer's tokens do not honour well (README, "Explanation methods": it misses
  the probe's evidence on some seeds);
- ``hirescam``: HiResCAM (pytorch-grad-cam) at the same tokens: gradient times activation per
  token, summed over channels (no averaging over tokens);
- ``ig``: integrated gradients (captum) of the class logit from a blurred copy of the image,
  positive part (evidence for the class);
- ``saliency``: |d logit / d pixel| (captum);
- ``occlusion``: the logit's drop when a patch is replaced by the blurred image (captum's
  Occlusion, one patch per window), positive part.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hegl_cli.errors import UserError
from hegl_cli.models.perturb import baseline

IG_STEPS = 32
PIXEL_NATIVE = frozenset({"ig", "saliency"})  # methods whose own maps are per pixel (the others, per patch)


@dataclass
class Maps:
    patch: torch.Tensor  # (B, K, h, w), each map sums to 1
    image: torch.Tensor  # (B, K, S, S), each map sums to 1


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> the non-negative part of each map over its total; a map with none becomes uniform."""
    positive = maps.float().clamp_min(0)
    total = positive.flatten(-2).sum(-1)[..., None, None]
    uniform = torch.full_like(positive, 1.0 / (positive.shape[-1] * positive.shape[-2]))
    return torch.where(total > 0, positive / torch.where(total > 0, total, 1), uniform)


def patch_to_image(patch: torch.Tensor, size: int) -> torch.Tensor:
    """(B, K, h, w) mass per patch -> (B, K, S, S), each patch's mass spread evenly over its pixels."""
    image = F.interpolate(patch, size=(size, size), mode="nearest")
    return normalise(image)


def image_to_patch(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, K, S, S) -> (B, K, h, w): each patch's share of the non-negative mass."""
    return normalise(F.adaptive_avg_pool2d(normalise(image), grid))


def from_patch(patch: torch.Tensor, size: int) -> Maps:
    patch = normalise(patch)
    return Maps(patch, patch_to_image(patch, size))


def from_image(image: torch.Tensor, grid: tuple[int, int]) -> Maps:
    image = normalise(image)
    return Maps(image_to_patch(image, grid), image)


class Logits(nn.Module):
    """The model as the libraries want it: images (B, 1, S, S) -> logits (B, C)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


def _blurred(images: torch.Tensor) -> torch.Tensor:
    return baseline(images, "blur")


# ---- the attention family -----------------------------------------------------------------------

def _inner(model: nn.Module):
    return getattr(model, "model", model)  # a ClassSubset wraps the model


def _head_weights(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's cross-attention per head, (B, H, C_model, N), from one forward pass."""
    layers = [layer.cross_attn for layer in _inner(model).decoder.layers]
    for attn in layers:
        attn.record_heads = True
    try:
        _inner(model)(images)
        return [attn.head_weights for attn in layers]
    finally:
        for attn in layers:
            attn.record_heads, attn.head_weights = False, None


def _class_rows(model: nn.Module, weights: torch.Tensor) -> torch.Tensor:
    """Select the rows of the model's classes a ClassSubset answers for: (B, H, C_model, N) -> (B, H, C, N)."""
    indices = getattr(model, "indices", None)
    return weights if indices is None else weights[:, :, indices]


@torch.no_grad()
def attention_heads_all(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder layer's cross-attention per head for the model's classes: [(B, H, C, N)] per layer."""
    return [_class_rows(model, w) for w in _head_weights(model, images)]


def _grid(model: nn.Module) -> tuple[int, int]:
    return tuple(model.grid)


@torch.no_grad()
def attention(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    out = model(images)["attention"][:, classes]
    return from_patch(out.float(), images.shape[-1])


@torch.no_grad()
def attention_heads(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    h, w = _grid(model)
    last = attention_heads_all(model, images)[-1]  # (B, H, C, N)
    peak = last.amax(1)[:, classes]  # (B, K, N)
    return from_patch(peak.reshape(len(images), len(classes), h, w), images.shape[-1])


@torch.no_grad()
def attention_layers(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    h, w = _grid(model)
    layers = torch.stack([a.mean(1) for a in attention_heads_all(model, images)]).mean(0)  # (B, C, N)
    return from_patch(layers[:, classes].reshape(len(images), len(classes), h, w), images.shape[-1])


@contextmanager
def _encoder_attention(model: nn.Module):
    """Capture every encoder self-attention softmax (B, H, T, T) in order, with fused kernels off."""
    backbone = _inner(model).encoder.backbone
    blocks = [m for m in backbone.modules() if hasattr(m, "qkv") and hasattr(m, "attn_drop") and hasattr(m, "fused_attn")]
    if not blocks:
        raise UserError("--method rollout needs a ViT-style encoder (timm attention blocks); this model has none")
    captured: list[torch.Tensor] = []
    fused = [b.fused_attn for b in blocks]
    handles = [b.attn_drop.register_forward_hook(lambda m, i, o: captured.append(i[0].detach())) for b in blocks]
    for b in blocks:
        b.fused_attn = False
    try:
        yield captured
    finally:
        for b, f in zip(blocks, fused):
            b.fused_attn = f
        for h in handles:
            h.remove()


@torch.no_grad()
def rollout(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    """Cross-attention (B, C, N) times the encoder's rollout restricted to patch tokens (B, N, N)."""
    h, w = _grid(model)
    with _encoder_attention(model) as encoder_attention:
        cross = model(images)["attention"].flatten(2)[:, classes]  # (B, K, N)
    tokens = encoder_attention[0].shape[-1]
    prefix = tokens - h * w
    eye = torch.eye(tokens, device=cross.device)
    joint = eye.expand(len(images), tokens, tokens).clone()
    for attn in encoder_attention:
        a = 0.5 * attn.float().mean(1) + 0.5 * eye
        a = a / a.sum(-1, keepdim=True)
        joint = a @ joint
    patch_to_patch = joint[:, prefix:, prefix:]  # (B, N, N): how much each output token draws on each input patch
    maps = cross.float() @ patch_to_patch
    return from_patch(maps.reshape(len(images), len(classes), h, w), images.shape[-1])


# ---- gradient and perturbation methods (pytorch-grad-cam, captum) ---------------------------------

def _cam(model: nn.Module, images: torch.Tensor, classes: list[int], kind: str) -> Maps:
    """A pytorch-grad-cam method on the tokens the class queries read (the memory projection's output,
    (B, N, D), reshaped to (B, D, h, w)), kept at the token grid."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    h, w = _grid(model)
    base = {"gradcam": pytorch_grad_cam.GradCAM, "hirescam": pytorch_grad_cam.HiResCAM}[kind]

    class AtTokenGrid(base):  # type: ignore[misc, valid-type]
        def get_target_width_height(self, input_tensor):  # the cam stays at the token grid
            return w, h

    def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).permute(0, 3, 1, 2)

    layer = _inner(model).memory_proj
    cams = []
    with _gradients_on(model), AtTokenGrid(Logits(model), [layer], reshape_transform=tokens_to_grid) as cam:
        for c in classes:
            grid = cam(images, targets=[ClassifierOutputTarget(c) for _ in range(len(images))])  # (B, h, w)
            cams.append(torch.from_numpy(grid).float())
    return from_patch(torch.stack(cams, 1), images.shape[-1])


def gradcam(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    """Grad-CAM (Selvaraju et al., 2017): channels weighted by their mean gradient over the tokens."""
    return _cam(model, images, classes, "gradcam")


def hirescam(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    """HiResCAM (Draelos & Carin, 2020): gradient times activation per token, summed over channels."""
    return _cam(model, images, classes, "hirescam")


@contextmanager
def _gradients_on(model: nn.Module):
    """Gradients through the model's parameters (the libraries need them) without changing its mode."""
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
        model.zero_grad(set_to_none=True)


def _per_class(images: torch.Tensor, classes: list[int], attribute: Callable[[torch.Tensor, int], torch.Tensor]
               ) -> torch.Tensor:
    """(B, K, S, S) from ``attribute(images, class) -> (B, 1, S, S)``."""
    return torch.stack([attribute(images, c)[:, 0].detach().float() for c in classes], 1)


def integrated_gradients(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(Logits(model))
    baseline = _blurred(images)
    with _gradients_on(model):
        maps = _per_class(images, classes, lambda x, c: ig.attribute(x, baselines=baseline, target=c, n_steps=IG_STEPS,
                                                                       internal_batch_size=64))
    return from_image(maps, _grid(model))


def saliency(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    from captum.attr import Saliency

    method = Saliency(Logits(model))
    with _gradients_on(model):
        maps = _per_class(images, classes, lambda x, c: method.attribute(x.clone().requires_grad_(True), target=c,
                                                                           abs=True))
    return from_image(maps, _grid(model))


def occlusion(model: nn.Module, images: torch.Tensor, classes: list[int]) -> Maps:
    from captum.attr import Occlusion

    h, w = _grid(model)
    patch = images.shape[-1] // h
    method = Occlusion(Logits(model))
    baseline = _blurred(images)
    with torch.no_grad():
        maps = _per_class(images, classes, lambda x, c: method.attribute(
            x, sliding_window_shapes=(1, patch, patch), strides=(1, patch, patch), baselines=baseline, target=c,
            perturbations_per_eval=h * w))
    return from_image(maps, (h, w))


Explainer = Callable[[nn.Module, torch.Tensor, list[int]], Maps]
METHODS: dict[str, Explainer] = {
    "attention": attention, "attention-heads": attention_heads, "attention-layers": attention_layers,
    "rollout": rollout, "gradcam": gradcam, "hirescam": hirescam, "ig": integrated_gradients, "saliency": saliency, "occlusion": occlusion,
}


def parse_methods(text: str | list[str] | None, option: str = "--method") -> list[str]:
    """``"gradcam,rollout"`` (or a list, or ``all``, alone or with others) -> method names in order,
    each once; one line naming ``option`` and the first name that is not a method (an empty one too)."""
    if text is None:
        return ["attention"]
    items = [t.strip() for part in ([text] if isinstance(text, str) else text) for t in str(part).split(",")]
    listing = f"methods are {', '.join(METHODS)} (or all)"
    if not any(items):
        raise UserError(f"{option} {text!r} names no method: {listing}")
    if "" in items:
        raise UserError(f"{option} {text!r} has an empty name between commas: {listing}")
    unknown = [m for m in items if m not in METHODS and m != "all"]
    if unknown:
        raise UserError(f"{option} {unknown[0]!r} is not a method: {listing}")
    return list(METHODS) if "all" in items else list(dict.fromkeys(items))


def explain_batch(model: nn.Module, images: torch.Tensor, classes: list[int], method: str) -> Maps:
    """Maps of ``method`` for images (B, 1, S, S) in [0, 1] and the model's classes ``classes``, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        maps = METHODS[method](model, images.to(device), list(classes))
    finally:
        model.train(was_training)
    return Maps(maps.patch.detach().float().cpu(), maps.image.detach().float().cpu())
