"""Deletion/insertion curves and twin shortcut reliance (hegl_cli.evaluation.faithfulness)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from conftest import TINY_OVERRIDES


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


class LayoutReader(nn.Module):
    """A probe model that reads only where the brightest pixel of the chest's middle lies: blind to
    the markers (outside that region) and to the scanner cue (a monotone intensity curve)."""

    def __init__(self, rows: slice, cols: slice, classes: int, grid=(4, 4)):
        super().__init__()
        self.rows, self.cols, self.classes, self.grid = rows, cols, classes, grid

    def forward(self, images, all_layers=False):
        b = images.shape[0]
        where = images[:, 0, self.rows, self.cols].flatten(1).argmax(1)  # (B,)
        logits = ((where % 7).float() - 3).unsqueeze(1).expand(b, self.classes)
        attention = torch.full((b, self.classes, *self.grid), 1.0 / (self.grid[0] * self.grid[1]))
        return {"logits": logits, "attention": attention}


def test_shortcut_reliance_measures_what_the_decision_reads(tiny_cache):
    """Reliance is 0 for a model that reads nothing the cues change, and large for one that reads the
    marker corner, whatever the architecture: the property, not one trained network's luck."""
    from hegl_cli.apps.evaluate import faithfulness_section
    from hegl_cli.config import load_config
    from hegl_cli.engine.checkpoint import open_split
    from hegl_cli.models.inference import predict_split

    cfg = load_config(None, TINY_OVERRIDES + ["eval.faithfulness_images=0"])
    test = open_split(tiny_cache, "test", ["Nodule", "Mass", "Effusion", "Consolidation"], 32)
    size = test.image_size
    def reader(rows: slice, cols: slice) -> RegionReader:
        base = float(np.mean([test.image(i)[rows, cols].mean() for i in range(len(test))]))
        return RegionReader(rows, cols, 4, base)

    marker = reader(slice(0, size // 4), slice(3 * size // 4, size))
    blind = LayoutReader(slice(size // 4, 3 * size // 4), slice(size // 4, 3 * size // 4), 4)
    device = torch.device("cpu")
    reports = {}
    for name, model in (("marker", marker), ("blind", blind)):
        preds = predict_split(model, test, device, 64)
        reports[name] = faithfulness_section(model, test, preds, cfg, device, tiny_cache, "test")["shortcut_reliance"]
    assert reports["blind"]["mean"] == 0.0 and reports["blind"]["max"] == 0.0
    assert reports["marker"]["mean"] > 0.2 and min(reports["marker"]["per_class"].values()) > 0.2


class TextureModel(nn.Module):
    """p = sigmoid(k * (std of the top-left quadrant - 0.25)): reads fine texture that a blur removes."""

    grid = (4, 4)

    def forward(self, images, all_layers=False):
        b = images.shape[0]
        s = images.shape[-1]
        logit = 20 * (images[:, 0, : s // 2, : s // 2].flatten(1).std(1) - 0.25)
        attention = torch.zeros(b, 1, 4, 4)
        attention[:, :, :2, :2] = 0.25
        return {"logits": logit.unsqueeze(1), "attention": attention}


def test_deletion_and_insertion_reward_a_map_that_points_at_the_evidence():
    from hegl_cli.evaluation.faithfulness import deletion_insertion, patch_masks

    image = torch.zeros(1, 32, 32)
    image[:, :16, :16] = (torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)) % 2  # checkerboard
    model, device = TextureModel(), torch.device("cpu")
    faithful = np.zeros((4, 4))
    faithful[:2, :2] = 0.25
    wrong = np.full((4, 4), 1 / 12)
    wrong[:2, :2] = 0.0  # the evidence comes last
    rng = np.random.default_rng(0)
    good = deletion_insertion(model, image, 0, faithful, 8, device, rng)
    bad = deletion_insertion(model, image, 0, wrong, 8, device, np.random.default_rng(0))
    assert good["deletion_attention"] < good["deletion_random"] < bad["deletion_attention"]
    assert good["insertion_attention"] > good["insertion_random"] > bad["insertion_attention"]
    masks = patch_masks(np.arange(16), 4, (4, 4), 32)
    assert masks.shape == (5, 1, 32, 32)
    assert [int(m.sum().item()) // 64 for m in masks] == [0, 4, 8, 12, 16]  # 64 pixels per 8x8 patch
