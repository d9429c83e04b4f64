"""`hegl explain`: class probabilities, decisions and attention overlays for any X-ray file.

The image is preprocessed exactly as in training (:func:`hegl_cli.data.images.preprocess_array`),
and the model is rebuilt from the checkpoint alone. Every file is written through an
:class:`~hegl_cli.fs.outputs.OutputFolder`: names derived from the inputs are made safe, and a
file the user has in ``--out`` is never replaced (``--force`` replaces only what hegl wrote there).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hegl_cli.data.images import collect_image_files, load_image, preprocess_array, square_and_resize
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.outputs import OutputFolder, safe_name, unique_names
from hegl_cli.models.inference import predict_images
from hegl_cli.plots import draw_heatmap, plt, upsample

DISPLAY_SIZE = 512
GRID, PREDICTIONS = "grid.png", "predictions.json"
MAPS_PATCH, MAPS_IMAGE = "attention_patch.npy", "attention_image.npy"


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
    warnings: list[str] = field(default_factory=list)


def output_names(files: list[Path]) -> list[str]:
    """A distinct, safe output folder name per file: the stem, then stem_suffix, then a counter."""
    stems = [safe_name(f.stem, fallback="image") for f in files]
    names = [stem if stems.count(stem) == 1 else safe_name(f"{stem}_{f.suffix.lstrip('.').lower()}", fallback="image")
             for stem, f in zip(stems, files)]
    return unique_names(names)


def overlay_names(classes: list[str]) -> list[str]:
    """``overlay_<class>.png`` per class, distinct and safe whatever the class names are."""
    slugs = unique_names([safe_name(_slug(name), fallback=f"class{c}") for c, name in enumerate(classes)])
    return [f"overlay_{slug}.png" for slug in slugs]


def planned_files(classes: list[str], class_idx: list[int]) -> list[str]:
    overlays = overlay_names(classes)
    return [*(overlays[c] for c in class_idx), GRID, MAPS_PATCH, MAPS_IMAGE, PREDICTIONS]


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


def _save_figure(folder: OutputFolder, relative: str, fig) -> None:
    folder.write(relative, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _save_array(folder: OutputFolder, relative: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    folder.write(relative, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def explain_image(loaded: LoadedRun, path: Path, class_idx: list[int], folder: OutputFolder,
                  prefix: str = "") -> Explanation:
    """Predict one image and write overlays, a grid, predictions.json and the raw maps into
    ``folder/prefix``."""
    size, classes, thresholds = loaded.image_size, loaded.classes, loaded.thresholds
    data = loaded.cfg.data  # read as the run's training images were
    raw = load_image(path, data.max_pixels, data.frames, data.intensity)  # decoded once: model input and display
    pixels, _ = preprocess_array(raw, size)  # uint8, exactly as the cache stores training images
    image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]
    probs_t, maps_t = predict_images(loaded.model, image, loaded.device)
    probs, maps = probs_t[0].numpy(), maps_t[0].numpy()  # (C,), (C, h, w)
    display, _ = square_and_resize(raw, min(DISPLAY_SIZE, max(size, 256)))
    heat = upsample(maps, display.shape[0])
    overlays = overlay_names(classes)
    for c in class_idx:
        fig, ax = plt.subplots(figsize=(5, 5))
        verdict = "positive" if probs[c] >= thresholds[c] else "negative"
        draw_heatmap(ax, display, heat[c], f"{classes[c]}  p={probs[c]:.2f}  ({verdict}, t={thresholds[c]:.2f})")
        fig.tight_layout()
        _save_figure(folder, prefix + overlays[c], fig)
    _save_figure(folder, prefix + GRID, _grid(display, heat, probs, thresholds, classes, class_idx, path.name))
    _save_array(folder, prefix + MAPS_PATCH, maps.astype(np.float32))
    _save_array(folder, prefix + MAPS_IMAGE, upsample(maps, size).astype(np.float32))
    record = {
        "image": str(path), "model_input_size": size, "grid": list(maps.shape[-2:]),
        "checkpoint": loaded.which, "epoch": loaded.meta.get("epoch"),
        "classes": {classes[c]: {"probability": float(probs[c]), "threshold": float(thresholds[c]),
                                 "positive": bool(probs[c] >= thresholds[c])} for c in class_idx},
    }
    folder.write_json(prefix + PREDICTIONS, record)
    return Explanation(path, folder.root / prefix if prefix else folder.root,
                       {classes[c]: float(probs[c]) for c in class_idx},
                       {classes[c]: bool(probs[c] >= thresholds[c]) for c in class_idx})


def _grid(display, heat, probs, thresholds, classes, class_idx, title: str):
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
    return fig


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def explain(inputs: list[Path], run: Path, which: str = "best", classes: list[str] | None = None,
            out: Path | None = None, device: str = "auto", log=lambda *_: None,
            eval_layers: list | None = None, force: bool = False) -> ExplainResult:
    """Explain every readable image in ``inputs``; an unreadable one is reported and skipped, and the
    next one is explained whatever went wrong with it.

    Output per image in ``out/<name>`` (or the run folder's explain folder), ``<name>`` safe and
    distinct per file; a single file with ``out`` writes into ``out`` itself. Every file that would
    be written is checked before the first image is read.
    """
    files, failed = collect_image_files(inputs, recursive=False)
    with load_run(run, which, device=device, eval_layers=eval_layers, command="hegl explain") as loaded:
        class_idx = select_classes(loaded.classes, classes)
        folder = OutputFolder(out, force=force) if out is not None else OutputFolder(RunFolder(run).explain_dir,
                                                                                        owned=True)
        single = len(files) == 1 and len(inputs) == 1 and out is not None and not inputs[0].is_dir()
        prefixes = [""] if single else [f"{name}/" for name in output_names(files)]
        planned = planned_files(loaded.classes, class_idx)
        folder.claim(prefix + name for prefix in prefixes for name in planned)
        results = []
        for path, prefix in zip(files, prefixes):
            try:
                results.append(explain_image(loaded, path, class_idx, folder, prefix))
            except UserError as exc:
                failed.append(str(exc))
                log(f"skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 - one odd file must not end a folder of them
                failed.append(f"cannot explain {path}: {type(exc).__name__}: {first_line(exc)}")
                log(f"skipped: {failed[-1]}")
        warning = loaded.reading_warning()
    return ExplainResult(results, failed, [warning] if warning else [])
