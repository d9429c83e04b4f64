"""`hegl explain`: class probabilities, decisions and attention overlays for any X-ray file.

The image is preprocessed exactly as in training (:func:`hegl_cli.data.images.preprocess_array`),
and the model is rebuilt from the checkpoint alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hegl_cli.data.images import collect_image_files, load_image, preprocess_array, square_and_resize
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError
from hegl_cli.fs.atomic import atomic_write_json
from hegl_cli.models.inference import predict_images
from hegl_cli.plots import draw_heatmap, plt, upsample

DISPLAY_SIZE = 512


@dataclass
class Explanation:
    image: Path
    out_dir: Path
    probs: dict[str, float]
    decisions: dict[str, bool]


@dataclass
class ExplainResult:
    """What ``explain`` did: one :class:`Explanation` per readable image, one line per failure."""

    explained: list[Explanation]
    failed: list[str]


def output_names(files: list[Path]) -> list[str]:
    """A distinct output folder name per file: the stem, then stem_suffix, then a counter."""
    stems = [f.stem for f in files]
    names = [f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix.lstrip('.').lower()}" for f in files]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def select_classes(all_classes: list[str], wanted: list[str] | None) -> list[int]:
    if not wanted:
        return list(range(len(all_classes)))
    lookup = {name.lower(): i for i, name in enumerate(all_classes)}
    out = []
    for name in wanted:
        if name.lower() not in lookup:
            raise UserError(f"class '{name}' is not in the model (classes: {', '.join(all_classes)})")
        out.append(lookup[name.lower()])
    return out


def explain_image(loaded: LoadedRun, path: Path, class_idx: list[int], out_dir: Path) -> Explanation:
    """Predict one image and write overlays, a grid, predictions.json and the raw maps into ``out_dir``."""
    size, classes, thresholds = loaded.image_size, loaded.classes, loaded.thresholds
    raw = load_image(path, loaded.cfg.data.max_pixels)  # decoded once: model input and display
    pixels, _ = preprocess_array(raw, size)  # uint8, exactly as the cache stores training images
    image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]
    probs_t, maps_t = predict_images(loaded.model, image, loaded.device)
    probs, maps = probs_t[0].numpy(), maps_t[0].numpy()  # (C,), (C, h, w)
    display, _ = square_and_resize(raw, min(DISPLAY_SIZE, max(size, 256)))
    heat = upsample(maps, display.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    for c in class_idx:
        fig, ax = plt.subplots(figsize=(5, 5))
        verdict = "positive" if probs[c] >= thresholds[c] else "negative"
        draw_heatmap(ax, display, heat[c], f"{classes[c]}  p={probs[c]:.2f}  ({verdict}, t={thresholds[c]:.2f})")
        fig.tight_layout()
        fig.savefig(out_dir / f"overlay_{_slug(classes[c])}.png", dpi=100)
        plt.close(fig)
    _grid(display, heat, probs, thresholds, classes, class_idx, out_dir / "grid.png", path.name)
    np.save(out_dir / "attention_patch.npy", maps.astype(np.float32))
    np.save(out_dir / "attention_image.npy", upsample(maps, size).astype(np.float32))
    record = {
        "image": str(path), "model_input_size": size, "grid": list(maps.shape[-2:]),
        "checkpoint": loaded.which, "epoch": loaded.meta.get("epoch"),
        "classes": {classes[c]: {"probability": float(probs[c]), "threshold": float(thresholds[c]),
                                 "positive": bool(probs[c] >= thresholds[c])} for c in class_idx},
    }
    atomic_write_json(out_dir / "predictions.json", record)
    return Explanation(path, out_dir, {classes[c]: float(probs[c]) for c in class_idx},
                       {classes[c]: bool(probs[c] >= thresholds[c]) for c in class_idx})


def _grid(display, heat, probs, thresholds, classes, class_idx, path: Path, title: str) -> None:
    n = len(class_idx) + 1
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(display, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(title, fontsize=9)
    axes[0].axis("off")
    for ax, c in zip(axes[1:], class_idx):
        mark = "+" if probs[c] >= thresholds[c] else "-"
        draw_heatmap(ax, display, heat[c], f"{classes[c]} {probs[c]:.2f} ({mark})")
    for ax in axes[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def explain(inputs: list[Path], run: Path, which: str = "best", classes: list[str] | None = None,
            out: Path | None = None, device: str = "auto", log=lambda *_: None,
            eval_layers: list | None = None) -> ExplainResult:
    """Explain every readable image in ``inputs``; an unreadable one is reported and skipped.

    Output per image in ``out/<name>`` (or the run folder's explain folder), ``<name>`` distinct per
    file; a single file with ``out`` writes into ``out`` itself.
    """
    files, failed = collect_image_files(inputs, recursive=False)
    loaded = load_run(run, which, device=device, eval_layers=eval_layers, command="hegl explain")
    class_idx = select_classes(loaded.classes, classes)
    base = out or RunFolder(run).explain_dir
    single = len(files) == 1 and len(inputs) == 1 and out is not None and not inputs[0].is_dir()
    results = []
    for path, name in zip(files, output_names(files)):
        target = base if single else base / name
        try:
            results.append(explain_image(loaded, path, class_idx, target))
        except UserError as exc:
            failed.append(str(exc))
            log(f"skipped: {exc}")
    return ExplainResult(results, failed)
