"""The hybrid loss L = CE + alpha * HA + beta * DAL, as pure functions plus a criterion.

Shapes: B images, C classes, (h, w) patch grid, (S, S) image pixels.

- ``ce``: binary cross-entropy per (image, class) on one logit per class, NaN labels masked out.
  KAD uses a 2-way softmax per class; a sigmoid on one logit is the same model (the softmax only
  sees the difference of its two logits) with half the head parameters.
- ``ha``: penalized Dice ``1 - D / (1 + k (1 - D))`` between the attention map scaled to [0, 1]
  and the expert mask's soft coverage of each patch, over positive (image, class) pairs that have
  a mask. ``k`` follows Yang et al. (MIDL 2019); the H-EGL paper's exact form is an assumption.
- ``dal``: mean pairwise cosine similarity between an image's class maps, from one batched Gram
  matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hegl_cli.config import LossConfig
from hegl_cli.data.labels import annotated_positives, positive

EPS = 1e-6


def zero_like_graph(t: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays connected to ``t``'s graph (so backward always works)."""
    return t.sum() * 0.0


def masked_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over known labels. logits, labels: (B, C); NaN label = unknown."""
    known = ~torch.isnan(labels)
    if not known.any():
        return zero_like_graph(logits)
    return F.binary_cross_entropy_with_logits(logits[known], labels[known].to(logits.dtype))


def scale_maps(maps: torch.Tensor, how: str = "max") -> torch.Tensor:
    """Scale each map to [0, 1]. maps (..., h, w).

    ``max``: divide by the map's maximum (keeps zero at zero, peak at 1; attention is >= 0).
    ``minmax``: subtract the minimum first (a uniform floor becomes 0).
    """
    flat = maps.flatten(-2)
    if how == "minmax":
        flat = flat - flat.amin(-1, keepdim=True)
    flat = flat / flat.amax(-1, keepdim=True).clamp_min(EPS)
    return flat.view_as(maps)


def mask_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Share of each patch covered by the mask. masks (B, C, S, S) 0/1 -> (B, C, h, w) in [0, 1]."""
    if masks.shape[-2:] == tuple(grid):
        return masks.float()
    return F.adaptive_avg_pool2d(masks.float(), grid)


def soft_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice per map. pred, target (N, h, w) in [0, 1] -> (N,).

    ``D = 2 sum(p t) / (sum(p) + sum(t))``; two empty maps count as a perfect match.
    """
    p, t = pred.flatten(1), target.flatten(1)
    inter = (p * t).sum(1)
    denom = p.sum(1) + t.sum(1)
    return torch.where(denom > EPS, 2 * inter / denom.clamp_min(EPS), torch.ones_like(denom))


def penalized_dice_loss(dice: torch.Tensor, k: float) -> torch.Tensor:
    """``1 - D / (1 + k (1 - D))``; k = 0 is plain Dice loss, larger k punishes misses harder."""
    return 1.0 - dice / (1.0 + k * (1.0 - dice))


def alignment_target(coverage: torch.Tensor, how: str = "coverage") -> torch.Tensor:
    """What a map is aligned with. coverage (..., h, w) in [0, 1] -> same shape in [0, 1].

    ``coverage``: as is; ``peak``: divided by its maximum (the map proportional to the coverage,
    scaled to peak 1 like every map, matches it exactly); ``binary``: 1 where the coverage is at
    least half its maximum, else 0 (a map uniform on those patches matches it exactly).
    """
    if how == "coverage":
        return coverage
    flat = coverage.flatten(-2)
    peak = flat.amax(-1, keepdim=True)
    if how == "peak":
        return (flat / peak.clamp_min(EPS)).view_as(coverage)
    if how == "binary":
        return ((flat >= 0.5 * peak) & (peak > 0)).to(coverage.dtype).view_as(coverage)
    raise ValueError(f"unknown alignment target '{how}'")


def alignment_pairs(labels: torch.Tensor, has_mask: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: positive (image, class) pairs with a non-empty mask."""
    return annotated_positives(labels, has_mask.bool()) & (coverage.flatten(2).sum(-1) > 0)


def alignment_loss(
    maps: torch.Tensor, coverage: torch.Tensor, valid: torch.Tensor, kind: str = "penalized_dice",
    k: float = 1.0, norm: str = "max",
) -> torch.Tensor:
    """Human-AI alignment over valid pairs; 0 (graph-connected) when there are none.

    Args:
        maps: (B, C, h, w) attention maps (each sums to 1).
        coverage: (B, C, h, w) mask coverage in [0, 1].
        valid: (B, C) bool, pairs that count.
        kind: ``penalized_dice`` | ``dice`` | ``l1`` (GRADIA-style) | ``bce`` (HAICS-style).
    """
    if not valid.any():
        return zero_like_graph(maps)
    a = scale_maps(maps, norm)[valid]  # (N, h, w)
    m = coverage[valid].to(a.dtype)
    if kind == "penalized_dice":
        return penalized_dice_loss(soft_dice(a, m), k).mean()
    if kind == "dice":
        return (1.0 - soft_dice(a, m)).mean()
    if kind == "l1":
        return (a - m).abs().mean()
    if kind == "bce":
        return F.binary_cross_entropy(a.clamp(EPS, 1 - EPS), m)
    raise ValueError(f"unknown alignment loss '{kind}'")


def dal_view(maps: torch.Tensor, how: str = "raw") -> torch.Tensor:
    """What DAL compares. maps (B, C, h, w), each summing to 1 -> same shape, >= 0.

    ``raw``: the maps; ``above_uniform``: ``relu(a - 1/(h w))``, so a diffuse floor, shared by all
    classes, adds no similarity and only the peaks must differ; ``sharpened``: ``a^2`` renormalised.
    """
    if how == "raw":
        return maps
    if how == "above_uniform":
        n = maps.shape[-1] * maps.shape[-2]
        return F.relu(maps - 1.0 / n)
    if how == "sharpened":
        sq = maps.square()
        return sq / sq.flatten(-2).sum(-1)[..., None, None].clamp_min(EPS)
    raise ValueError(f"unknown DAL map form '{how}'")


def pairwise_cosine(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, C) cosine similarity between every two class maps of an image."""
    flat = F.normalize(maps.flatten(2), dim=-1, eps=EPS)  # (B, C, N)
    return flat @ flat.transpose(1, 2)


def dal_loss(
    maps: torch.Tensor, labels: torch.Tensor | None = None, pairs: str = "all", max_classes: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Discriminative attention loss: mean cosine similarity over class pairs (i < j) of each image.

    Args:
        maps: (B, C, h, w).
        labels: (B, C), needed for ``pairs="positive"`` (pairs with at least one positive class)
            and ``pairs="both_positive"`` (both classes positive).
        max_classes: when > 0 and C is larger, a random subset of classes is used (one per step).

    Returns 0 (graph-connected) when no pair counts (C = 1, or no positives with ``positive``).
    """
    c = maps.shape[1]
    if max_classes and c > max_classes:
        pick = torch.randperm(c, generator=generator, device="cpu")[:max_classes].to(maps.device)
        maps = maps[:, pick]
        labels = labels[:, pick] if labels is not None else None
        c = max_classes
    if c < 2:
        return zero_like_graph(maps)
    i, j = torch.triu_indices(c, c, offset=1, device=maps.device)
    sims = pairwise_cosine(maps)[:, i, j]  # (B, P)
    if pairs in ("positive", "both_positive"):
        if labels is None:
            raise ValueError(f"dal pairs='{pairs}' needs labels")
        pos = positive(labels)
        weight = ((pos[:, i] | pos[:, j]) if pairs == "positive" else (pos[:, i] & pos[:, j])).to(sims.dtype)
        if weight.sum() == 0:
            return zero_like_graph(maps)
        return (sims * weight).sum() / weight.sum()
    return sims.mean()


def rrr_penalty(images: torch.Tensor, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Right for the Right Reasons (Ross et al. 2017): input gradients outside the expert masks.

    Args:
        images: (B, 1, S, S) with ``requires_grad``, the tensor the logits were computed from.
        logits: (B, C).
        allowed: (B, S, S) union of the image's masks; images with no mask contribute nothing.

    Returns the mean over annotated images of ``sum(((1 - allowed) * d sum_c log sigmoid(z_c) / dx)^2)``.
    """
    has_any = allowed.flatten(1).amax(1) > 0
    if not has_any.any():
        return zero_like_graph(logits)
    log_probs = F.logsigmoid(logits).sum()
    (grad,) = torch.autograd.grad(log_probs, images, create_graph=True)
    outside = (1.0 - allowed.to(grad.dtype)).unsqueeze(1)
    per_image = ((outside * grad) ** 2).flatten(1).sum(1)
    return per_image[has_any].mean()


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float | torch.Tensor]) -> torch.Tensor:
    """``sum(weights[k] * terms[k])`` over the terms that have a weight (the engine's one sum, as in DETR).

    A weight of exactly 0 leaves its term out (a term that is off cannot make the sum NaN)."""
    total = None
    for key, weight in weights.items():
        if key in terms and not (isinstance(weight, (int, float)) and weight == 0):
            part = weight * terms[key]
            total = part if total is None else total + part
    if total is None:
        raise ValueError(f"no weighted term among {sorted(terms)}")
    return total


class HybridCriterion(nn.Module):
    """The loss terms of L = CE + alpha * HA + beta * DAL (+ rrr_weight * RRR), unweighted, and the
    weights in effect, kept apart (DETR's loss dict and ``weight_dict``).

    :meth:`terms` returns ``{"ce", "ha", "dal"}`` (+ ``"rrr"``; + ``"uncertainty"`` under uncertainty
    weighting), each unweighted; :meth:`loss_weights` the weight of each for the current epoch;
    :func:`weighted_total` sums them. Calling the criterion does all three and adds ``"loss"``.

    ``weighting``: ``fixed`` uses alpha/beta as given; ``warmup`` ramps them linearly from 0 over
    ``weighting_warmup_epochs`` (call :meth:`set_epoch`); ``uncertainty`` learns one log-variance
    ``s`` per explanation term (Kendall et al. 2018): the term's weight is ``exp(-s) * w`` and the
    ``"uncertainty"`` term adds ``s``, its parameters trained with the model. A term whose configured
    weight is 0 is still computed (for the log) but on detached maps: it costs no backward pass.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.epoch = 0
        if cfg.weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(2))
        else:
            self.log_vars = None

    @property
    def needs_all_layers(self) -> bool:
        return self.cfg.ha_layers == "all" and self.cfg.alpha > 0

    @property
    def needs_input_grad(self) -> bool:
        return self.cfg.rrr_weight > 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def weights(self) -> tuple[float, float]:
        """Current (alpha, beta) after the warm-up ramps, before any uncertainty weighting."""
        alpha, beta = self.cfg.alpha, self.cfg.beta
        if self.cfg.weighting == "warmup" and self.cfg.weighting_warmup_epochs > 0:
            ramp = min(1.0, self.epoch / self.cfg.weighting_warmup_epochs)
            alpha, beta = alpha * ramp, beta * ramp
        if self.cfg.dal_warmup_epochs > 0:
            beta = beta * min(1.0, self.epoch / self.cfg.dal_warmup_epochs)
        return alpha, beta

    def loss_weights(self) -> dict[str, float | torch.Tensor]:
        """The weight of every term in effect now; tensors (with a gradient) under uncertainty weighting."""
        alpha, beta = self.weights()
        weights: dict[str, float | torch.Tensor] = {"ce": 1.0, "ha": alpha, "dal": beta}
        if self.log_vars is not None:
            s = self.log_vars
            weights["ha"] = torch.exp(-s[0]) * alpha if self.cfg.alpha > 0 else 0.0
            weights["dal"] = torch.exp(-s[1]) * beta if self.cfg.beta > 0 else 0.0
            weights["uncertainty"] = 1.0
        if self.cfg.rrr_weight > 0:
            weights["rrr"] = self.cfg.rrr_weight
        return weights

    def terms(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
        has_mask: torch.Tensor, images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every unweighted term. outputs: model outputs; labels (B, C) with NaN; masks (B, C, S, S);
        has_mask (B, C); images (B, 1, S, S) with ``requires_grad``, needed for RRR only."""
        cfg = self.cfg
        logits, maps = outputs["logits"], outputs["attention"]
        terms = {"ce": masked_bce(logits, labels)}
        coverage = mask_coverage(masks, maps.shape[-2:])
        valid = alignment_pairs(labels, has_mask, coverage)
        target = alignment_target(coverage, cfg.ha_target)
        if cfg.alpha > 0:
            layer_maps = outputs["attention_layers"] if cfg.ha_layers == "all" else maps.unsqueeze(0)
            terms["ha"] = torch.stack([
                alignment_loss(m, target, valid, cfg.ha_type, cfg.dice_k, cfg.ha_norm) for m in layer_maps
            ]).mean()
        else:
            terms["ha"] = alignment_loss(maps.detach(), target, valid, cfg.ha_type, cfg.dice_k, cfg.ha_norm)
        dal_maps = dal_view(maps if cfg.beta > 0 else maps.detach(), cfg.dal_maps)
        terms["dal"] = dal_loss(dal_maps, labels, cfg.dal_pairs, cfg.dal_max_classes)
        if self.log_vars is not None:
            terms["uncertainty"] = (self.log_vars[0] * float(cfg.alpha > 0) + self.log_vars[1] * float(cfg.beta > 0))
        if cfg.rrr_weight > 0:
            if images is None:
                raise ValueError("rrr_weight > 0 needs the input images (with requires_grad)")
            terms["rrr"] = rrr_penalty(images, logits, masks.amax(1))  # allowed: (B, S, S)
        return terms

    def forward(
        self, outputs: dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
        has_mask: torch.Tensor, images: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`terms` plus ``"loss"``, their :func:`weighted_total` under :meth:`loss_weights`."""
        terms = self.terms(outputs, labels, masks, has_mask, images)
        return {**terms, "loss": weighted_total(terms, self.loss_weights())}
