"""Explanation methods side by side (hegl_cli.models.explainers, hegl_cli.evaluation.methods): on a
probe whose evidence is known every method points there and its deletion curve falls faster than a
random order's; the metric definitions are position-free; the sanity check flags a map that ignores
the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.evaluation.alignment import (
    energy_in_mask,
    pixel_overlap,
    pointing_game,
    spread_to_pixels,
    top_share_overlap,
)
from hegl_cli.evaluation.faithfulness import deletion_insertion
from hegl_cli.evaluation.methods import sanity_check, spearman_similarity
from hegl_cli.models import explainers
from hegl_cli.models.explainers import METHODS, explain_batch, parse_methods

REGIONS = {0: (1, 2), 1: (2, 0)}  # class -> the (row, col) patch that holds its only evidence (8 px patches)
runner = CliRunner()


def probe_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images; class c is positive iff a bright square fills its patch REGIONS[c] (its mask)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.3, 0.5, (n, 1, 32, 32)).astype(np.float32)
    labels = (rng.random((n, 2)) < 0.5).astype(np.float32)
    masks = np.zeros((n, 2, 32, 32), np.uint8)
    for c, (r, q) in REGIONS.items():
        on = labels[:, c] > 0
        images[on, 0, r * 8 + 1 : r * 8 + 7, q * 8 + 1 : q * 8 + 7] = 0.95
        masks[on, c, r * 8 : r * 8 + 8, q * 8 : q * 8 + 8] = 1
    return torch.from_numpy(images), torch.from_numpy(labels), torch.from_numpy(masks)


@pytest.fixture(scope="module")
def probe():
    """A tiny H-EGL model trained (CE + HA) on the probe task: nothing but its regions tells the classes."""
    from hegl_cli.config import load_config
    from hegl_cli.losses import HybridCriterion
    from hegl_cli.models.model import build_model

    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES + ["loss.alpha=1", "loss.beta=0"])
    model = build_model(["left", "right"], cfg.model, 32)
    criterion = HybridCriterion(cfg.loss)
    x, y, m = probe_data(256, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        idx = torch.randint(0, len(x), (32,))
        loss = criterion(model(x[idx]), y[idx], m[idx], torch.ones(32, 2, dtype=torch.bool))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = probe_data(48, 1)
    with torch.no_grad():
        probs = torch.sigmoid(model(test[0])["logits"])
    from sklearn.metrics import roc_auc_score

    assert all(roc_auc_score(test[1][:, c], probs[:, c]) > 0.99 for c in range(2))  # it learned the probe
    return model, test


# Grad-CAM weights each channel by its gradient averaged over the tokens; on this transformer that
# misses the evidence on some images (0.62-0.81 over probe trainings; README, "Explanation methods"),
# still far above a flat map's 1/16. Every other method: 1.
POINTING_AT_LEAST = {name: 1.0 for name in METHODS} | {"gradcam": 0.5}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_points_at_the_probes_evidence_and_deletes_it_first(probe, method):
    model, (x, y, _) = probe
    maps = explain_batch(model, x, [0, 1], method)
    assert maps.patch.shape == (len(x), 2, 4, 4) and maps.image.shape == (len(x), 2, 32, 32)
    assert torch.allclose(maps.patch.sum((-2, -1)), torch.ones(len(x), 2), atol=1e-5)
    assert torch.allclose(maps.image.sum((-2, -1)), torch.ones(len(x), 2), atol=1e-5)
    assert float(maps.patch.min()) >= 0 and float(maps.image.min()) >= 0
    hits, method_area, random_area = [], [], []
    rng = np.random.default_rng(0)
    for c, (r, q) in REGIONS.items():
        for i in (y[:, c] > 0).nonzero().flatten()[:8]:
            hits.append(float(maps.patch[i, c].flatten().argmax() == r * 4 + q))
            curves = deletion_insertion(model, x[i], c, maps.patch[i, c].numpy(), 0, torch.device("cpu"), rng)
            method_area.append(curves["deletion_attention"])
            random_area.append(curves["deletion_random"])
    assert np.mean(hits) >= POINTING_AT_LEAST[method], np.mean(hits)
    assert np.mean(random_area) - np.mean(method_area) > 0.1  # removing the evidence first drops p fastest


def test_the_attention_variants_are_the_models_own_weights(probe):
    model, (x, _, _) = probe
    heads = explainers.attention_heads_all(model, x[:4])
    assert len(heads) == len(model.decoder.layers)
    last = heads[-1].mean(1).reshape(4, 2, 4, 4)  # mean over heads of the recorded softmax
    with torch.no_grad():
        assert torch.allclose(last, model(x[:4])["attention"], atol=1e-6)
    assert model.decoder.layers[-1].cross_attn.head_weights is None  # recording is switched off again


def test_rollout_refuses_an_encoder_without_attention_blocks():
    from hegl_cli.config import load_config
    from hegl_cli.errors import UserError
    from hegl_cli.models.model import build_model

    cfg = load_config(None, TINY_OVERRIDES + ["model.encoder=resnet18", "model.encoder_kwargs={}"])
    model = build_model(["a"], cfg.model, 32).eval()
    with pytest.raises(UserError, match="rollout needs a ViT"):
        explain_batch(model, torch.rand(1, 1, 32, 32), [0], "rollout")
    assert explain_batch(model, torch.rand(1, 1, 32, 32), [0], "hirescam").patch.shape[:2] == (1, 1)  # CNNs: CAMs work


def test_parse_methods():
    assert parse_methods("gradcam, rollout,gradcam") == ["gradcam", "rollout"]
    assert parse_methods("all") == list(METHODS)
    assert parse_methods(None) == ["attention"]
    from hegl_cli.errors import UserError

    with pytest.raises(UserError, match="'lime'"):
        parse_methods("gradcam,lime")
    with pytest.raises(UserError, match="--methods 'foo' is not a method"):
        parse_methods("all,foo", "--methods")  # names the unknown one, not 'all'
    assert parse_methods("gradcam,all") == list(METHODS)
    for empty in ("", " , ", "attention,"):
        with pytest.raises(UserError, match="names no method|empty name"):
            parse_methods(empty)


def test_evaluate_refuses_an_empty_methods_list(trained_run):
    from hegl_cli.cli.app import app

    bad = runner.invoke(app, ["evaluate", str(trained_run), "--methods", "", "--no-faithfulness"])
    assert bad.exit_code == 2 and "--methods '' names no method" in bad.output


# ---- metric definitions ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", [(0, 0), (0, 3), (3, 3), (2, 1)])
def test_a_flat_map_scores_the_same_wherever_the_mask_is(where):
    flat = np.full((1, 4, 4), 1 / 16)
    cov = np.zeros((1, 4, 4))
    cov[0, where[0], where[1]] = 1.0
    assert pointing_game(flat, cov)[0] == pytest.approx(1 / 16)  # the share of tied peaks in the mask
    assert energy_in_mask(flat, cov)[0] == pytest.approx(1 / 16)
    dice, _ = top_share_overlap(flat, cov, 0.25)  # every patch is tied: all are kept, wherever the mask is
    assert dice[0] == pytest.approx(2 / 17)


def test_tied_peaks_share_the_credit():
    maps = np.zeros((1, 2, 2))
    maps[0, 0, 0] = maps[0, 1, 1] = 0.5
    cov = np.zeros((1, 2, 2))
    cov[0, 1, 1] = 1
    assert pointing_game(maps, cov)[0] == pytest.approx(0.5)


def test_energy_is_defined_for_any_map():
    cov = np.zeros((3, 2, 2))
    cov[:, 0, 0] = 1
    maps = np.array([[[-1.0, 2.0], [0.0, 2.0]],  # the negative part is dropped: 0 of 4 inside
                     [[3.0, -1.0], [1.0, 0.0]],  # 3 of 4 inside
                     [[-1.0, -1.0], [-2.0, 0.0]]])  # no positive mass: flat, the chance level
    assert energy_in_mask(maps, cov).tolist() == pytest.approx([0.0, 0.75, 0.25])


def test_pixel_dice_does_not_inflate_a_small_mask():
    """A 4 px box in one 8 px patch: patch Dice of a perfect patch map is 1, pixel Dice tells the truth."""
    mask = np.zeros((1, 32, 32), np.uint8)
    mask[0, 10:12, 18:20] = 1
    patch_map = np.zeros((1, 4, 4))
    patch_map[0, 1, 2] = 1.0
    cov = np.zeros((1, 4, 4))
    cov[0, 1, 2] = 4 / 64
    patch_dice, _ = top_share_overlap(patch_map, cov, 1 / 16)
    pixel_dice, _ = pixel_overlap(spread_to_pixels(patch_map, 32), mask, 1 / 16)
    assert patch_dice[0] == pytest.approx(1.0)
    assert pixel_dice[0] == pytest.approx(2 * 4 / (64 + 4))
    exact = np.zeros((1, 32, 32))
    exact[0, 10:12, 18:20] = 1  # a pixel map on the box itself
    assert pixel_overlap(exact, mask, 4 / 1024)[0][0] == pytest.approx(1.0)


def test_deletion_with_one_patch_per_step_separates_a_perfect_map_from_random_orders():
    """A model that reads one patch's texture: the perfect order removes it first. One patch per step,
    random orders remove it later on average, under every baseline; with two coarse steps they nearly tie."""
    class OnePatch(torch.nn.Module):
        grid = (4, 4)

        def forward(self, images):
            logit = (images[:, :, 8:16, 16:24].flatten(1).std(1) - 0.1) * 40
            return {"logits": logit[:, None], "attention": torch.full((len(images), 1, 4, 4), 1 / 16)}

    image = torch.full((1, 32, 32), 0.4)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    image[0, 8:16, 16:24] = 0.2 + 0.6 * checker  # high frequency: blur, mean and black all remove it
    perfect = np.zeros((4, 4))
    perfect[1, 2] = 1.0

    def mean_gain(steps: int, baseline: str) -> float:
        rng = np.random.default_rng(0)
        runs = [deletion_insertion(OnePatch(), image, 0, perfect, steps, torch.device("cpu"), rng, baseline)
                for _ in range(30)]
        return float(np.mean([r["deletion_random"] - r["deletion_attention"] for r in runs]))

    for baseline in ("blur", "mean", "black"):
        fine, coarse = mean_gain(0, baseline), mean_gain(2, baseline)
        assert fine > 0.35, (baseline, fine)
        assert fine > coarse + 0.1, (baseline, fine, coarse)


# ---- sanity check ---------------------------------------------------------------------------------

def test_sanity_check_flags_a_map_that_ignores_the_weights_and_passes_attention(probe, monkeypatch):
    model, (x, y, _) = probe

    def the_image_itself(model, images, classes):  # a probe "explanation": the input, whatever the model
        return explainers.from_image(images.expand(-1, len(classes), -1, -1).clone(), model.grid)

    monkeypatch.setitem(METHODS, "image", the_image_itself)
    pairs = np.argwhere(y.numpy() > 0)[:12]
    report = sanity_check(model, lambda i: x[i], pairs, ["attention", "image"])
    assert report["methods"]["image"]["flagged"] and report["methods"]["image"]["final_similarity"] > 0.99
    assert not report["methods"]["attention"]["flagged"]
    assert report["methods"]["attention"]["final_similarity"] < 0.5
    stages = [s["stage"] for s in report["methods"]["attention"]["stages"]]
    assert stages[0] == "class heads" and stages[-1] == "patch embedding"
    # the class heads do not feed the attention: randomising them leaves the maps exactly as they were
    assert report["methods"]["attention"]["stages"][0]["similarity"] == pytest.approx(1.0)
    assert torch.equal(model(x[:2])["attention"], model(x[:2])["attention"])  # the trained model is untouched


def test_spearman_similarity():
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert spearman_similarity(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman_similarity(a, -a) == pytest.approx(-1.0)


# ---- the commands ---------------------------------------------------------------------------------

def test_explain_writes_every_method_in_one_layout(trained_run, tmp_path):
    from PIL import Image

    from hegl_cli.cli.app import app

    png = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(png), "--run", str(trained_run), "--out", str(out),
                                 "--method", "gradcam,rollout,ig"])
    assert result.exit_code == 0, result.output
    import json

    record = json.loads((out / "predictions.json").read_text())
    assert list(record["methods"]) == ["gradcam", "rollout", "ig"]
    for entry in record["methods"].values():
        patch, image = np.load(out / entry["patch"]), np.load(out / entry["image"])
        assert patch.shape[0] == image.shape[0] == len(record["classes"])
        assert np.allclose(patch.reshape(len(patch), -1).sum(1), 1, atol=1e-4)
        assert (out / entry["grid"]).is_file() and all((out / f).is_file() for f in entry["overlays"].values())
    assert (out / "methods.png").is_file()
    assert not (out / "attention_patch.npy").exists()  # only what was asked for
    bad = runner.invoke(app, ["explain", str(png), "--run", str(trained_run), "--method", "lime"])
    assert bad.exit_code == 2 and "methods are" in bad.output


def test_evaluate_scores_methods_side_by_side(trained_run):
    from hegl_cli.cli.app import app
    from hegl_cli.engine.run_folder import RunFolder

    result = runner.invoke(app, ["evaluate", str(trained_run), "--methods", "attention,occlusion",
                                 "--set", "eval.method_pairs=6", "--set", "eval.sanity_pairs=3"])
    assert result.exit_code == 0, result.output
    import json

    files = RunFolder(trained_run).eval_files("test")
    report = json.loads(files["report"].read_text())
    section = report["methods"]
    assert section["pairs"] <= 6 and set(section["methods"]) == {"attention", "occlusion"}
    for row in section["methods"].values():
        assert 0 <= row["pointing_game"] <= 1 and 0 <= row["energy_in_mask"] <= 1
        assert row["deletion_gain"] == pytest.approx(row["deletion_random"] - row["deletion_method"])
    assert set(report["sanity"]["methods"]) == {"attention", "occlusion"}
    assert files["methods_table"].read_text().splitlines()[0].startswith("method,pointing_game")
    assert files["methods_figure"].is_file()
    done = runner.invoke(app, ["report", str(trained_run), "--gallery", "1"])
    assert done.exit_code == 0, done.output
    html = RunFolder(trained_run).report.read_text()
    assert "The methods side by side" in html and "occlusion" in html and "similarity after randomisation" in html
