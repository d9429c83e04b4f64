"""`hegl robustness`: metrics under Gaussian noise added to [0, 1] intensities (clipped).

Sigma 0 is always included as the reference. The noise of draw ``d`` on image ``i`` is
``sigma * z`` with ``z`` a standard normal field drawn from ``(seed, d, i)``: the same ``z`` for every
run and every sigma (common random numbers), so runs and sigmas differ only by what they should.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import robustness_files
from hegl_cli.evaluation.alignment import alignment_scores
from hegl_cli.evaluation.classification import summarize
from hegl_cli.fs.outputs import OutputFolder
from hegl_cli.models.inference import predict_split
from hegl_cli.plots import plot_robustness


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
    runs: list[Path], sigmas: list[float] | None, out_dir: Path | None = None, split: str = "test",
    draws: int | None = None, seed: int = 0, checkpoint: str = "best", data: Path | None = None, device: str = "auto",
    progress: bool = True, eval_layers: list | None = None, force: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate every run at every sigma; write the robustness JSON and plot (:func:`robustness_files`)
    into ``out_dir`` (default: the first run's folder). A file in ``out_dir`` that hegl did not write
    is never replaced; ``force`` replaces what hegl wrote there.

    ``sigmas`` / ``draws`` default to each run's ``eval.sigmas`` / ``eval.robustness_draws``.
    """
    folder = OutputFolder(out_dir, force=force) if out_dir is not None else OutputFolder(runs[0], owned=True)
    names = [p.name for p in robustness_files(folder.root)]
    folder.claim(names)
    loaded_runs: list[LoadedRun] = []
    try:
        for run in runs:
            loaded_runs.append(load_run(run, checkpoint, data, device, split, eval_layers, "hegl robustness"))
        records, sigmas, draws = _measure(loaded_runs, sigmas, split, draws, seed, progress)
    finally:
        for loaded in loaded_runs:
            loaded.close()
    folder.write_json(names[0], {"split": split, "seed": seed, "sigmas": sigmas, "draws": draws, "records": records})
    folder.write(names[1], lambda tmp: plot_robustness(records, tmp))
    return records


def _measure(loaded_runs: list[LoadedRun], sigmas: list[float] | None, split: str, draws: int | None, seed: int,
             progress: bool) -> tuple[list[dict[str, Any]], list[float], int]:
    first = loaded_runs[0].cfg.eval
    sigmas = sorted({0.0, *map(float, first.sigmas if sigmas is None else sigmas)})
    draws = first.robustness_draws if draws is None else draws
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(loaded_runs) * len(sigmas), desc="robustness", disable=not progress, leave=False)
    for loaded in loaded_runs:
        run, model, cfg, cached, classes = loaded.folder, loaded.model, loaded.cfg, loaded.split, loaded.classes
        for sigma in sigmas:
            per_draw: dict[str, list] = {"auc": [], "f1": [], "mcc": [], "energy_in_mask": [], "pointing_game": []}
            for draw in range(1 if sigma == 0 else draws):
                preds = predict_split(model, cached, loaded.device, cfg.eval.batch_size, precision=loaded.in_force,
                                      perturb=gaussian_noise(sigma, seed, draw))
                macro = summarize(preds.probs, cached.labels, loaded.thresholds, classes)["macro"]
                att = alignment_scores(preds.attention, cached.labels, cached.has_mask, cached.masks, classes,
                                       cfg.eval.top_share)["overall"]
                for key in ("auc", "f1", "mcc"):
                    per_draw[key].append(macro[key])
                per_draw["energy_in_mask"].append(att["energy_in_mask"])
                per_draw["pointing_game"].append(att["pointing_game"])
            records.append({"run": run.name, "run_path": str(run), "sigma": sigma, "split": split,
                            "precision": loaded.in_force,
                            "draws": len(per_draw["auc"]), **{k: _stats(v) for k, v in per_draw.items()}})
            bar.update()
    bar.close()
    return records, sigmas, draws
