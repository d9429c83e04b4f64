"""Loss terms against hand-computed values and naive loops; edge cases; gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from hegl_cli.config import LossConfig
from hegl_cli.losses import (
    HybridCriterion,
    alignment_loss,
    alignment_pairs,
    dal_loss,
    mask_coverage,
    masked_bce,
    penalized_dice_loss,
    scale_maps,
    soft_dice,
)


def naive_dal(maps: torch.Tensor, labels: torch.Tensor | None = None, positive: bool = False) -> float:
    """Per-image, per-pair loop: the definition, written out."""
    total, count = 0.0, 0
    b, c = maps.shape[:2]
    for i in range(b):
        for j, k in itertools.combinations(range(c), 2):
            if positive and not (labels[i, j] > 0.5 or labels[i, k] > 0.5):
                continue
            u, v = maps[i, j].flatten(), maps[i, k].flatten()
            total += float(u @ v / (u.norm() * v.norm()))
            count += 1
    return total / count if count else 0.0


def test_soft_dice_hand_computed():
    pred = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # 2 * (1 + 0.5) / (1.5 + 2) = 3 / 3.5
    assert soft_dice(pred, target).item() == pytest.approx(3 / 3.5)
    assert soft_dice(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)).item() == 1.0


def test_penalized_dice_values():
    d = torch.tensor([1.0, 0.5, 0.0])
    assert penalized_dice_loss(d, 0.0).tolist() == pytest.approx([0.0, 0.5, 1.0])
    # k = 2: 1 - 0.5 / (1 + 2 * 0.5) = 0.75
    assert penalized_dice_loss(d, 2.0).tolist() == pytest.approx([0.0, 0.75, 1.0])


def test_alignment_loss_matches_manual_formula():
    maps = torch.tensor([[[[0.4, 0.1], [0.3, 0.2]]]])  # (1, 1, 2, 2) sums to 1
    cov = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    valid = torch.tensor([[True]])
    a = maps / 0.4  # max scaling
    d = 2 * (a * cov).sum() / (a.sum() + cov.sum())
    expected = 1 - d / (1 + 1.5 * (1 - d))
    got = alignment_loss(maps, cov, valid, "penalized_dice", k=1.5)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert alignment_loss(maps, cov, valid, "dice").item() == pytest.approx(1 - d.item(), rel=1e-6)
    assert alignment_loss(maps, cov, valid, "l1").item() == pytest.approx((a - cov).abs().mean().item(), rel=1e-6)


def test_alignment_without_valid_pairs_is_zero_but_differentiable():
    maps = torch.rand(2, 3, 4, 4, requires_grad=True)
    loss = alignment_loss(maps, torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert maps.grad is not None


def test_alignment_pairs_need_positive_label_and_nonempty_mask():
    labels = torch.tensor([[1.0, 0.0, float("nan"), 1.0]])
    has_mask = torch.tensor([[True, True, True, True]])
    cov = torch.ones(1, 4, 2, 2)
    cov[0, 3] = 0  # empty mask
    assert alignment_pairs(labels, has_mask, cov).tolist() == [[True, False, False, False]]


@pytest.mark.parametrize("c", [2, 3, 13])
def test_dal_vectorized_equals_naive_loop(c):
    torch.manual_seed(c)
    maps = torch.rand(4, c, 5, 5)
    assert dal_loss(maps).item() == pytest.approx(naive_dal(maps), rel=1e-5)
    labels = (torch.rand(4, c) > 0.6).float()
    assert dal_loss(maps, labels, "positive").item() == pytest.approx(naive_dal(maps, labels, True), rel=1e-5, abs=1e-7)


def test_dal_hand_values():
    a = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(2, 2)
    b = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(2, 2)
    c = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(2, 2)
    maps = torch.stack([a, b, c]).unsqueeze(0)
    # pairs: (a,b)=0, (a,c)=1/sqrt2, (b,c)=1/sqrt2
    assert dal_loss(maps).item() == pytest.approx(2 / math.sqrt(2) / 3)


def test_dal_single_class_and_no_positive_pairs():
    maps = torch.rand(3, 1, 4, 4, requires_grad=True)
    assert dal_loss(maps).item() == 0.0
    maps2 = torch.rand(2, 3, 4, 4)
    assert dal_loss(maps2, torch.zeros(2, 3), "positive").item() == 0.0


def test_dal_class_sampling_uses_the_drawn_subset():
    """The sampled DAL is exactly the DAL of the drawn classes (and not the DAL of all of them)."""
    torch.manual_seed(0)
    maps = torch.rand(2, 50, 3, 3)
    maps[:, :25] = maps[:, :1]  # half the classes share one map: subsets differ a lot
    value = dal_loss(maps, max_classes=10, generator=torch.Generator().manual_seed(7))
    pick = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:10]
    assert value.item() == pytest.approx(naive_dal(maps[:, pick]), rel=1e-5)
    assert value.item() != pytest.approx(dal_loss(maps).item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["bce", "l1", "dice"])
def test_other_alignment_losses_match_their_formulas(kind):
    torch.manual_seed(1)
    maps = torch.rand(2, 3, 4, 4)
    maps = maps / maps.sum((-2, -1), keepdim=True)
    coverage = (torch.rand(2, 3, 4, 4) > 0.5).float()
    valid = torch.tensor([[True, False, True], [False, True, False]])
    a = maps / maps.amax((-2, -1), keepdim=True)  # peak-normalised, as ha_norm=max
    got = alignment_loss(maps, coverage, valid, kind=kind).item()
    a, m = a[valid], coverage[valid]
    if kind == "bce":
        p = a.clamp(1e-6, 1 - 1e-6)
        expected = -(m * torch.log(p) + (1 - m) * torch.log(1 - p)).mean()
    elif kind == "l1":
        expected = (a - m).abs().mean()
    else:
        expected = (1 - 2 * (a * m).flatten(1).sum(1) / (a.flatten(1).sum(1) + m.flatten(1).sum(1))).mean()
    assert got == pytest.approx(expected.item(), rel=1e-4)


def test_masked_bce_ignores_nan_and_handles_all_nan():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]], requires_grad=True)
    labels = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    expected = (math.log(2) + math.log(1 + math.e)) / 2
    assert masked_bce(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    all_nan = masked_bce(logits, torch.full((2, 2), float("nan")))
    assert all_nan.item() == 0.0
    all_nan.backward()


def test_scale_maps_and_coverage():
    maps = torch.tensor([[[0.1, 0.3], [0.2, 0.4]]])
    assert scale_maps(maps).max().item() == 1.0
    mm = scale_maps(maps, "minmax")
    assert mm.min().item() == 0.0 and mm.max().item() == 1.0
    masks = torch.zeros(1, 1, 4, 4)
    masks[0, 0, :2, :1] = 1  # half of the top-left 2x2 patch
    cov = mask_coverage(masks, (2, 2))
    assert cov[0, 0].tolist() == [[0.5, 0.0], [0.0, 0.0]]


def _fake_outputs(b=3, c=4, h=4, w=4, layers=2):
    logits = torch.randn(b, c, requires_grad=True)
    raw = torch.randn(layers, b, c, h * w, requires_grad=True)
    att = raw.softmax(-1).view(layers, b, c, h, w)
    return {"logits": logits, "attention": att[-1], "attention_layers": att}, raw


def _three_images() -> tuple[torch.Tensor, torch.Tensor]:
    """labels (3, 4) and masks (3, 4, 8, 8) of three images: two findings, one, none."""
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    masks = torch.zeros(3, 4, 8, 8)
    masks[0, 0, :3, :3] = 1
    masks[0, 3, 4:, 4:] = 1
    masks[1, 1, 1:6, 2:5] = 1
    return labels, masks


@pytest.mark.parametrize("alpha,beta", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_criterion_terms_and_weights(alpha, beta):
    torch.manual_seed(0)
    out, _ = _fake_outputs()
    labels, masks = _three_images()
    crit = HybridCriterion(LossConfig(alpha=alpha, beta=beta))
    terms = crit(out, labels, masks, masks.flatten(2).amax(-1) > 0)
    assert set(terms) == {"loss", "ce", "ha", "dal"}
    expected = terms["ce"] + alpha * terms["ha"] + beta * terms["dal"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_ha_all_layers_reaches_every_layer():
    out, raw = _fake_outputs()
    labels = torch.ones(3, 4)
    masks = torch.zeros(3, 4, 8, 8)
    masks[..., :4, :4] = 1
    crit = HybridCriterion(LossConfig(alpha=1, beta=0, ha_layers="all"))
    crit(out, labels, masks, torch.ones(3, 4, dtype=torch.bool))["loss"].backward()
    assert raw.grad[0].abs().sum() > 0 and raw.grad[1].abs().sum() > 0
    raw.grad = None
    out, raw = _fake_outputs()
    crit = HybridCriterion(LossConfig(alpha=1, beta=0, ha_layers="last"))
    crit(out, labels, masks, torch.ones(3, 4, dtype=torch.bool))["loss"].backward()
    assert raw.grad[0].abs().sum() == 0 and raw.grad[1].abs().sum() > 0


def test_uncertainty_and_warmup_weighting():
    out, _ = _fake_outputs()
    labels = torch.ones(3, 4)
    masks = torch.ones(3, 4, 8, 8)
    crit = HybridCriterion(LossConfig(weighting="uncertainty"))
    terms = crit(out, labels, masks, torch.ones(3, 4, dtype=torch.bool))
    terms["loss"].backward()
    assert crit.log_vars.grad is not None and crit.log_vars.grad.abs().sum() > 0
    warm = HybridCriterion(LossConfig(weighting="warmup", weighting_warmup_epochs=4))
    warm.set_epoch(1)
    assert warm.weights() == (0.25, 0.25)
    warm.set_epoch(10)
    assert warm.weights() == (1.0, 1.0)


def _pooled_coverage(size: int = 16, grid: int = 4) -> torch.Tensor:
    """(1, 1, grid, grid) soft coverage of a disc that covers no patch fully at its edge."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((yy - 7.6) ** 2 + (xx - 8.3) ** 2) <= 2.5**2).float()  # a nodule across four patches
    return mask_coverage(disc[None, None], (grid, grid))


@pytest.mark.parametrize("how,kind", [("binary", "penalized_dice"), ("binary", "l1"), ("peak", "l1")])
def test_alignment_target_is_reachable_by_a_perfect_map(how, kind):
    from hegl_cli.losses import alignment_target

    coverage = _pooled_coverage()
    assert 0 < coverage.max() < 1  # the soft target a peak-scaled map can never equal
    valid = torch.ones(1, 1, dtype=torch.bool)
    best_for_coverage = coverage / coverage.sum()  # attention proportional to the coverage
    assert alignment_loss(best_for_coverage, coverage, valid, kind).item() > 0.01  # the floor
    target = alignment_target(coverage, how)
    perfect = target / target.sum()  # a map (summing to 1) shaped exactly like the target
    assert alignment_loss(perfect, target, valid, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_cannot_reach_a_soft_target_even_scaled_to_peak_one():
    """Soft Dice of a soft target with itself is sum(t^2) / sum(t) < 1: only a binary target is
    reachable under (penalized) Dice; the peak target is reachable under l1."""
    from hegl_cli.losses import alignment_target

    peak = alignment_target(_pooled_coverage(), "peak")
    valid = torch.ones(1, 1, dtype=torch.bool)
    dice_self = (peak**2).sum() / peak.sum()
    assert alignment_loss(peak / peak.sum(), peak, valid, "dice").item() == pytest.approx(1 - dice_self.item(), rel=1e-5)
    assert dice_self < 0.9


def test_alignment_target_hand_values():
    from hegl_cli.losses import alignment_target

    coverage = torch.tensor([[[[0.0, 0.2], [0.1, 0.4]]]])
    torch.testing.assert_close(alignment_target(coverage, "coverage"), coverage)
    torch.testing.assert_close(alignment_target(coverage, "peak"), torch.tensor([[[[0.0, 0.5], [0.25, 1.0]]]]))
    torch.testing.assert_close(alignment_target(coverage, "binary"), torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]]))
    assert alignment_target(torch.zeros(1, 1, 2, 2), "binary").sum() == 0  # no mask, no target


def test_dal_map_forms_hand_values():
    from hegl_cli.losses import dal_view

    uniform = torch.full((1, 2, 2, 2), 0.25)
    assert dal_loss(uniform).item() == pytest.approx(1.0)  # raw: identical diffuse maps are "similar"
    assert dal_loss(dal_view(uniform, "above_uniform")).item() == 0.0  # a shared floor costs nothing
    a = torch.tensor([[[0.4, 0.3], [0.2, 0.1]]])
    b = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    maps = torch.stack([a, b], 1)  # (1, 2, 2, 2)
    above = dal_view(maps, "above_uniform")  # relu(x - 0.25): [0.15, 0.05, 0, 0] and [0, 0, 0.05, 0.15]
    assert dal_loss(above).item() == pytest.approx(0.0, abs=1e-7)
    sharp = dal_view(maps, "sharpened")
    torch.testing.assert_close(sharp[0, 0], (a**2 / (a**2).sum())[0])
    u, v = (a**2).flatten(), (b**2).flatten()
    assert dal_loss(sharp).item() == pytest.approx(float(u @ v / (u.norm() * v.norm())), rel=1e-5)


def test_dal_both_positive_pairs_match_the_loop():
    torch.manual_seed(1)
    maps = torch.rand(4, 5, 3, 3)
    labels = torch.tensor([[1.0, 1, 0, 1, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, float("nan")]])
    total, count = 0.0, 0
    for i in range(4):
        for j, k in itertools.combinations(range(5), 2):
            if labels[i, j] > 0.5 and labels[i, k] > 0.5:
                u, v = maps[i, j].flatten(), maps[i, k].flatten()
                total, count = total + float(u @ v / (u.norm() * v.norm())), count + 1
    assert count == 4
    assert dal_loss(maps, labels, "both_positive").item() == pytest.approx(total / count, rel=1e-5)


def test_dal_warmup_ramps_beta_only():
    crit = HybridCriterion(LossConfig(alpha=1.0, beta=2.0, dal_warmup_epochs=4))
    crit.set_epoch(1)
    assert crit.weights() == (1.0, 0.5)
    crit.set_epoch(9)
    assert crit.weights() == (1.0, 2.0)


def test_criterion_uses_the_configured_target_and_dal_form():
    torch.manual_seed(0)
    out, _ = _fake_outputs()
    labels, masks = _three_images()
    has = masks.flatten(2).amax(-1) > 0
    cfg = LossConfig(ha_target="peak", dal_maps="above_uniform", dal_pairs="positive")
    terms = HybridCriterion(cfg)(out, labels, masks, has)
    from hegl_cli.losses import alignment_target, dal_view

    cov = mask_coverage(masks, (4, 4))
    valid = alignment_pairs(labels, has, cov)
    assert terms["ha"].item() == pytest.approx(alignment_loss(out["attention"], alignment_target(cov, "peak"), valid).item())
    assert terms["dal"].item() == pytest.approx(dal_loss(dal_view(out["attention"], "above_uniform"), labels, "positive").item())
