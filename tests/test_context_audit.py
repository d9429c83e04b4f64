"""The twin-free context audit (hegl_cli.evaluation.context_audit)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class RegionReader(nn.Module):
    """A probe model whose every logit reads the mean intensity of one image region (no training luck)."""

    def __init__(self, rows: slice, cols: slice, classes: int, base: float, grid=(4, 4)):
        super().__init__()
        self.rows, self.cols, self.classes, self.base, self.grid = rows, cols, classes, base, grid

    def forward(self, images, all_layers=False):
        b = images.shape[0]
        region = images[:, 0, self.rows, self.cols].mean((1, 2))  # (B,)
        logits = (40 * (region - self.base)).unsqueeze(1).expand(b, self.classes)
        attention = torch.full((b, self.classes, *self.grid), 1.0 / (self.grid[0] * self.grid[1]))
        return {"logits": logits, "attention": attention}


def test_context_audit_needs_no_twin_and_measures_what_the_decision_reads(tiny_cache):
    """Context reliance and lesion necessity (issue 13's audit) from expert masks alone: a model that reads
    nothing scores exactly 0, a corner reader relies on context but needs no lesion, and the chance
    levels (a random region of the same area) are reported next to them."""
    from hegl_cli.engine.checkpoint import open_split
    from hegl_cli.evaluation.context_audit import context_audit

    test = open_split(tiny_cache, "test", ["Nodule", "Mass", "Effusion", "Consolidation"], 32)
    size = test.image_size
    device = torch.device("cpu")
    base = float(np.mean([test.image(i)[: size // 4, 3 * size // 4 :].mean() for i in range(len(test))]))
    corner = RegionReader(slice(0, size // 4), slice(3 * size // 4, size), 4, base)
    blind = RegionReader(slice(0, 0), slice(0, 0), 4, 0.0)
    blind.forward = lambda images, all_layers=False: {"logits": torch.zeros(len(images), 4),
                                                      "attention": torch.full((len(images), 4, 4, 4), 1 / 16)}
    nothing = context_audit(blind, test, device)
    assert nothing["context_reliance"] == 0.0 and nothing["lesion_necessity"] == 0.0
    audit = context_audit(corner, test, device)
    assert audit["images"] == int(test.has_mask.any(1).sum()) and audit["pairs"] > 0
    assert audit["context_reliance"] > 0.05
    assert abs(audit["lesion_necessity"]) < audit["context_reliance"] / 3
    assert {"context_reliance_chance", "lesion_necessity_chance"} <= set(audit)
