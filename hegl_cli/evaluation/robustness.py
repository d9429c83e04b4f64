"""`hegl robustness`: metrics under Gaussian noise added to [0, 1] intensities (clipped).

Sigma 0 is always included as the reference. Every (run, sigma, draw) uses noise drawn from
``(seed, sigma index, draw, image index)``, so two runs see exactly the same noisy images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hegl_cli.engine.checkpoint import load_model
from hegl_cli.engine.io import atomic_write_json
from hegl_cli.engine.train import select_device
from hegl_cli.evaluation.attention import alignment_report
from hegl_cli.evaluation.evaluate import open_split
from hegl_cli.evaluation.metrics import summarize
from hegl_cli.evaluation.plots import plot_robustness
from hegl_cli.evaluation.predict import predict_split


def gaussian_noise(sigma: float, seed: int, draw: int):
    """A ``perturb(images, indices)`` adding N(0, sigma^2) noise, clipped to [0, 1]; deterministic per image."""

    def perturb(images: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
        if sigma == 0:
            return images
        noise = torch.stack([
            torch.from_numpy(np.random.default_rng([seed, draw, int(i)]).standard_normal(images.shape[1:]).astype(np.float32))
            for i in indices
        ])
        return (images + sigma * noise).clamp(0.0, 1.0)

    return perturb


def _stats(values: list[float | None]) -> dict[str, float] | None:
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    return {"mean": float(np.mean(kept)), "std": float(np.std(kept)), "min": float(np.min(kept)), "max": float(np.max(kept))}


def robustness_runs(
    runs: list[Path], sigmas: list[float], out_dir: Path, split: str = "test", draws: int = 3, seed: int = 0,
    which: str = "best", data: Path | None = None, device: str = "auto", progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate every run at every sigma; write ``robustness.json`` and ``robustness.png`` to ``out_dir``."""
    dev = select_device(device)
    sigmas = sorted({0.0, *map(float, sigmas)})
    records: list[dict[str, Any]] = []
    jobs = [(run, s) for run in runs for s in sigmas]
    bar = tqdm(total=len(jobs), desc="robustness", disable=not progress, leave=False)
    for run in runs:
        model, meta, cfg = load_model(run, which, dev)
        cached = open_split(Path(data or meta.get("data") or cfg.data.path), split, meta["classes"], int(meta["image_size"]))
        thresholds = np.asarray(meta["thresholds"])
        for sigma in sigmas:
            per_draw: dict[str, list] = {"auc": [], "f1": [], "mcc": [], "energy_in_mask": [], "pointing_game": []}
            for draw in range(1 if sigma == 0 else draws):
                preds = predict_split(model, cached, dev, cfg.eval.batch_size, perturb=gaussian_noise(sigma, seed, draw))
                macro = summarize(preds.probs, cached.labels, thresholds, meta["classes"])["macro"]
                att = alignment_report(preds.attention, cached.labels, cached.has_mask, cached.masks, meta["classes"],
                                       cfg.eval.top_share)["overall"]
                for key in ("auc", "f1", "mcc"):
                    per_draw[key].append(macro[key])
                per_draw["energy_in_mask"].append(att["energy_in_mask"])
                per_draw["pointing_game"].append(att["pointing_game"])
            records.append({"run": run.name, "run_path": str(run), "sigma": sigma, "split": split,
                            "draws": len(per_draw["auc"]), **{k: _stats(v) for k, v in per_draw.items()}})
            bar.update()
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "robustness.json", {"split": split, "seed": seed, "sigmas": sigmas, "records": records})
    plot_robustness(records, out_dir / "robustness.png")
    return records
