"""Issue 10: the run is the source of truth and selection never sees test. Each test here failed on 0.1.0."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from torch import nn
from typer.testing import CliRunner

from conftest import TINY_OVERRIDES
from hegl_cli.cli.app import app

runner = CliRunner()


def tiny_args(cache: Path, *extra: str) -> list[str]:
    args = []
    for item in TINY_OVERRIDES + [f"data.path={cache}", *extra]:
        args += ["--set", item]
    return args


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_training_without_val_split_is_refused(tmp_path):
    """0.1.0 silently validated on test: early stopping, best checkpoint and thresholds chosen on test."""
    cache = tmp_path / "noval"
    prep = runner.invoke(app, ["-q", "prepare", "--out", str(cache), "--image-size", "32", "--workers", "1",
                               "--set", "data.val_fraction=0", "--set", "data.synthetic_train=24",
                               "--set", "data.synthetic_test=8", "--set", "data.synthetic_source_size=64"])
    assert prep.exit_code == 0, prep.output
    assert "val" not in json.loads((cache / "manifest.json").read_text())["splits"]
    result = runner.invoke(app, ["train", "--runs-dir", str(tmp_path / "runs"), *tiny_args(cache)])
    one_error_line(result, "has no 'val' split")
    assert "data.val_fraction" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _val_thresholds(run: Path, which: str) -> np.ndarray:
    from hegl_cli.engine.predict import predict_split
    from hegl_cli.engine.runs import load_run
    from hegl_cli.metrics import choose_thresholds

    loaded = load_run(run, which, split="val", device="cpu")
    preds = predict_split(loaded.model, loaded.split, loaded.device, 64)
    return choose_thresholds(preds.probs, loaded.split.labels, loaded.meta["threshold_metric"])


def test_last_checkpoint_carries_its_own_thresholds(tiny_cache, tmp_path):
    """0.1.0 wrote the best epoch's thresholds into last.json."""
    from hegl_cli.config import load_config
    from hegl_cli.engine.train import train

    cfg = load_config(None, TINY_OVERRIDES + [f"data.path={tiny_cache}", "train.epochs=4", "train.lr=3e-3"])
    run = train(cfg, name="t", runs_dir=tmp_path, progress=False, log=lambda *_: None).run
    best, last = (json.loads((run / f"{w}.json").read_text()) for w in ("best", "last"))
    assert last["epoch"] == 4
    np.testing.assert_allclose(last["thresholds"], _val_thresholds(run, "last"))
    np.testing.assert_allclose(best["thresholds"], _val_thresholds(run, "best"))
    assert last["thresholds_chosen_on"] == "val"


def _train(tmp_path: Path, cache: Path, *args: str):
    return runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), *args])


def test_resume_keeps_the_run_config_and_refuses_conflicts(tiny_cache, tmp_path):
    """0.1.0 re-resolved the config from today's command line: resuming without --alpha 0 switched to 1."""
    first = _train(tmp_path, tiny_cache, "--alpha", "0", *tiny_args(tiny_cache, "train.epochs=1"))
    assert first.exit_code == 0, first.output
    run = tmp_path / "runs" / "r"
    # Resume with only a safe change: the run's alpha 0 stays, the change is recorded.
    resumed = runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--resume",
                                  "--epochs", "2"])
    assert resumed.exit_code == 0, resumed.output
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["loss"]["alpha"] == 0.0 and stored["train"]["epochs"] == 2
    assert json.loads((run / "last.json").read_text())["config"]["loss"]["alpha"] == 0.0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changed"] == {"train.epochs": [1, 2]}
    # A change of what is trained is refused, naming the key; nothing is rewritten.
    before = (run / "config.yaml").read_bytes()
    for args, key in ((["--alpha", "1"], "loss.alpha"), (["--set", "model.decoder_dim=64"], "model.decoder_dim"),
                      (["--set", "data.augment=background_swap"], "data.augment")):
        result = runner.invoke(app, ["train", "--name", "r", "--runs-dir", str(tmp_path / "runs"), "--resume",
                                     "--epochs", "3", *args])
        one_error_line(result, key)
    assert (run / "config.yaml").read_bytes() == before


def test_every_rank_trains_at_least_one_step():
    """0.1.0 decided drop_last from the whole dataset: n=40, 4 ranks, batch 16 gave 0 batches per rank."""
    from hegl_cli.engine.train import make_loader

    class Indices(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return i

    seen = []
    for rank in range(4):
        loader, sampler = make_loader(Indices(), batch_size=16, seed=3, rank=rank, world=4)
        sampler.set_epoch(2)
        batches = [b.tolist() for b in loader]
        assert len(batches) >= 1 and len(loader) == len(batches)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(40))  # a partition: every image once per epoch
    big, _ = make_loader(Indices(), batch_size=16, seed=3)
    assert len(big) == 2  # 40 on one rank: two full batches, the short last one dropped


def test_sampler_order_depends_on_seed_and_epoch_only():
    from hegl_cli.engine.train import make_loader

    def order(seed: int, epoch: int) -> list[int]:
        loader, sampler = make_loader(list(range(30)), batch_size=30, seed=seed)
        sampler.set_epoch(epoch)
        return [int(i) for b in loader for i in b]

    assert order(0, 1) == order(0, 1) and order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)


def test_pydicom_requirement_has_the_pixels_module():
    """The code imports pydicom.pixels (pydicom 3); 0.1.0 allowed pydicom>=2.4."""
    req = next(Requirement(r) for r in metadata.requires("hegl") if r.startswith("pydicom"))
    assert Version("2.4.4") not in req.specifier and Version("3.0.0") in req.specifier


def test_explain_gives_same_named_files_their_own_folders(trained_run, tmp_path):
    """0.1.0 wrote a/x.png and b/x.png (and x.jpg) into one output folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for folder, suffix in (("a", ".png"), ("b", ".png"), ("a", ".jpg")):
        (tmp_path / folder).mkdir(exist_ok=True)
        path = tmp_path / folder / f"x{suffix}"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(path)
        paths.append(path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", *map(str, paths), "--run", str(trained_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = {json.loads(p.read_text())["image"] for p in out.glob("*/predictions.json")}
    assert written == {str(p) for p in paths}
    record = json.loads(next(out.glob("*/predictions.json")).read_text())
    assert record["checkpoint"] == "best" and isinstance(record["epoch"], int)


def test_robustness_noise_is_common_across_sigmas():
    """The docstring's promise: one standard normal field per (seed, draw, image), scaled by sigma."""
    from hegl_cli.evaluation.robustness import gaussian_noise

    images = torch.full((3, 1, 16, 16), 0.5)
    small = gaussian_noise(0.01, seed=4, draw=1)(images, np.array([0, 5, 9])) - 0.5
    large = gaussian_noise(0.02, seed=4, draw=1)(images, np.array([0, 5, 9])) - 0.5
    torch.testing.assert_close(large, 2 * small, rtol=1e-4, atol=1e-6)
    other = gaussian_noise(0.01, seed=4, draw=2)(images, np.array([0, 5, 9])) - 0.5
    assert not torch.allclose(other, small)


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
    from hegl_cli.config import load_config
    from hegl_cli.engine.predict import predict_split
    from hegl_cli.engine.runs import open_split
    from hegl_cli.evaluation.evaluate import faithfulness_section

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


def test_context_audit_needs_no_twin_and_measures_what_the_decision_reads(tiny_cache):
    """Context reliance and lesion necessity (issue 13's audit) from expert masks alone: a model that reads
    nothing scores exactly 0, a corner reader relies on context but needs no lesion, and the chance
    levels (a random region of the same area) are reported next to them."""
    from hegl_cli.engine.runs import open_split
    from hegl_cli.evaluation.faithfulness import context_audit

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


def test_evaluate_reports_the_context_audit(trained_run):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--set", "eval.faithfulness_images=2"])
    assert result.exit_code == 0, result.output
    report = json.loads((trained_run / "eval" / "test.json").read_text())
    audit = report["faithfulness"]["context_audit"]
    assert 0 <= audit["context_reliance"] <= 1 and -1 <= audit["lesion_necessity"] <= 1
    assert "context reliance" in result.output and "lesion necessity" in result.output
