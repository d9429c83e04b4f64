"""`hegl explain`: class probabilities, decisions and explanation overlays for any X-ray file.

``methods`` (:mod:`hegl_cli.models.explainers`) picks the explanations: the class attention by
default, any of Grad-CAM, HiResCAM, rollout, integrated gradients, saliency, occlusion and the
attention variants beside it. Each method's files share one layout: ``overlay_<class>.png``,
``grid.png``, ``attention_patch.npy`` and ``attention_image.npy`` for the attention, and
``overlay_<class>.<method>.png``, ``grid.<method>.png``, ``<method>_patch.npy``, ``<method>_image.npy``
for any other; with two methods or more, ``methods.png`` shows them side by side.

The image is preprocessed exactly as in training (:func:`hegl_cli.data.images.preprocess_array`),
and the model is rebuilt from the checkpoint alone. Every file is written through an
:class:`~hegl_cli.fs.outputs.OutputFolder`: names derived from the inputs are made safe, and a
file the user has in ``--out`` is never replaced (``--force`` replaces only what hegl wrote there).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hegl_cli.data.images import (
    collect_image_files,
    container_of,
    load_image,
    preprocess_array,
    square_and_resize,
)
from hegl_cli.engine.checkpoint import LoadedRun, load_run
from hegl_cli.engine.run_folder import RunFolder
from hegl_cli.errors import UserError, first_line
from hegl_cli.fs.outputs import OutputFolder, safe_name, unique_names
from hegl_cli.models.explainers import PIXEL_NATIVE, explain_batch
from hegl_cli.models.inference import predict_images
from hegl_cli.plots import draw_heatmap, plt, upsample

DISPLAY_SIZE = 512
GRID, PREDICTIONS, SIDE_BY_SIDE = "grid.png", "predictions.json", "methods.png"
MAPS_PATCH, MAPS_IMAGE = "attention_patch.npy", "attention_image.npy"


@dataclass
class Explanation:
    image: Path
    out_dir: Path
    probs: dict[str, float]
    decisions: dict[str, bool]
    seconds: dict[str, float] = field(default_factory=dict)  # per method, for this image


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


def method_files(classes: list[str], class_idx: list[int], method: str) -> dict[str, Any]:
    """The files of one method: {"overlays": {class index: name}, "grid", "patch", "image"}."""
    overlays = overlay_names(classes)
    if method == "attention":
        return {"overlays": {c: overlays[c] for c in class_idx}, "grid": GRID, "patch": MAPS_PATCH, "image": MAPS_IMAGE}
    return {"overlays": {c: overlays[c].replace(".png", f".{method}.png") for c in class_idx},
            "grid": GRID.replace(".png", f".{method}.png"), "patch": f"{method}_patch.npy", "image": f"{method}_image.npy"}


def planned_files(classes: list[str], class_idx: list[int], methods: list[str] = ("attention",)) -> list[str]:
    names = [PREDICTIONS] + ([SIDE_BY_SIDE] if len(methods) > 1 else [])
    for method in methods:
        files = method_files(classes, class_idx, method)
        names += [*files["overlays"].values(), files["grid"], files["patch"], files["image"]]
    return names


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
                  prefix: str = "", methods: list[str] = ("attention",)) -> Explanation:
    """Predict one image and write, per method, overlays, a grid and the raw maps, and
    predictions.json, into ``folder/prefix``."""
    size, classes, thresholds = loaded.image_size, loaded.classes, loaded.thresholds
    data = loaded.cfg.data  # read as the run's training images were
    raw = load_image(path, data.max_pixels, data.frames, data.intensity)  # decoded once: model input and display
    pixels, _ = preprocess_array(raw, size)  # uint8, exactly as the cache stores training images
    image = torch.from_numpy(pixels.astype(np.float32) / 255.0)[None, None]
    probs_t, maps_t = predict_images(loaded.model, image, loaded.device, loaded.in_force)
    probs = probs_t[0].numpy()  # (C,)
    display, _ = square_and_resize(raw, min(DISPLAY_SIZE, max(size, 256)))
    record = {
        "image": str(path), "model_input_size": size, "grid": list(maps_t.shape[-2:]),
        "checkpoint": loaded.checkpoint, "epoch": loaded.meta.get("epoch"), "precision": loaded.in_force,
        "classes": {classes[c]: {"probability": float(probs[c]), "threshold": float(thresholds[c]),
                                 "positive": bool(probs[c] >= thresholds[c])} for c in class_idx},
        "methods": {},
    }
    heats = {}
    for method in methods:
        start = time.perf_counter()
        if method == "attention":  # the map the prediction itself returned
            maps, pixels_map = maps_t[0].numpy(), None
        else:
            full = explain_batch(loaded.model, image, list(range(len(classes))), method)
            maps = full.patch[0].numpy()
            pixels_map = full.image[0].numpy() if method in PIXEL_NATIVE else None
        seconds = time.perf_counter() - start
        heats[method] = _write_method(folder, prefix, method, maps, pixels_map, display, probs, thresholds, classes,
                                      class_idx, path.name, size)
        files = method_files(classes, class_idx, method)
        record["methods"][method] = {"seconds": round(seconds, 4), "patch": files["patch"], "image": files["image"],
                                     "grid": files["grid"], "overlays": {classes[c]: n for c, n in files["overlays"].items()}}
    if len(methods) > 1:
        _save_figure(folder, prefix + SIDE_BY_SIDE, _side_by_side(display, heats, probs, classes, class_idx, path.name))
    folder.write_json(prefix + PREDICTIONS, record)
    return Explanation(path, folder.root / prefix if prefix else folder.root,
                       {classes[c]: float(probs[c]) for c in class_idx},
                       {classes[c]: bool(probs[c] >= thresholds[c]) for c in class_idx},
                       {m: record["methods"][m]["seconds"] for m in methods})


def _write_method(folder: OutputFolder, prefix: str, method: str, maps: np.ndarray, pixel_maps: np.ndarray | None,
                  display: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: list[str],
                  class_idx: list[int], title: str, size: int) -> np.ndarray:
    """One method's overlays, grid and maps (C, h, w) at patch and (C, S, S) at image resolution (its own
    pixel map where the method has one, else the patch map upsampled); returns the display heat."""
    image_maps = pixel_maps if pixel_maps is not None else upsample(maps, size)
    heat = upsample(image_maps, display.shape[0]) if pixel_maps is not None else upsample(maps, display.shape[0])
    files = method_files(classes, class_idx, method)
    label = "" if method == "attention" else f"  [{method}]"
    for c in class_idx:
        fig, ax = plt.subplots(figsize=(5, 5))
        verdict = "positive" if probs[c] >= thresholds[c] else "negative"
        draw_heatmap(ax, display, heat[c], f"{classes[c]}  p={probs[c]:.2f}  ({verdict}, t={thresholds[c]:.2f}){label}")
        fig.tight_layout()
        _save_figure(folder, prefix + files["overlays"][c], fig)
    _save_figure(folder, prefix + files["grid"], _grid(display, heat, probs, thresholds, classes, class_idx,
                                                       title + label))
    _save_array(folder, prefix + files["patch"], maps.astype(np.float32))
    _save_array(folder, prefix + files["image"], image_maps.astype(np.float32))
    return heat


def _side_by_side(display: np.ndarray, heats: dict[str, np.ndarray], probs: np.ndarray, classes: list[str],
                  class_idx: list[int], title: str):
    """Rows: the classes; columns: the methods, each map over the same image."""
    rows, cols = len(class_idx), len(heats)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows), squeeze=False)
    for r, c in enumerate(class_idx):
        for k, (method, heat) in enumerate(heats.items()):
            draw_heatmap(axes[r, k], display, heat[c], f"{classes[c]} {probs[c]:.2f} · {method}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


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


def explain(inputs: list[Path], run: Path, checkpoint: str = "best", classes: list[str] | None = None,
            out: Path | None = None, device: str = "auto", log=lambda *_: None,
            eval_layers: list | None = None, force: bool = False, methods: list[str] | None = None) -> ExplainResult:
    """Explain every readable image in ``inputs``; an unreadable one is reported and skipped, and the
    next one is explained whatever went wrong with it.

    Output per image in ``out/<name>`` (or the run folder's explain folder), ``<name>`` safe and
    distinct per file; a single file with ``out`` writes into ``out`` itself. Every file that would
    be written is checked before the first image is read.
    """
    methods = list(methods or ["attention"])
    files, failed = collect_image_files(inputs, recursive=False)
    with load_run(run, checkpoint, device=device, eval_layers=eval_layers, command="hegl explain") as loaded:
        class_idx = select_classes(loaded.classes, classes)
        folder = OutputFolder(out, force=force) if out is not None else OutputFolder(RunFolder(run).explain_dir,
                                                                                        owned=True)
        single = len(files) == 1 and len(inputs) == 1 and out is not None and not inputs[0].is_dir()
        prefixes = [""] if single else [f"{name}/" for name in output_names(files)]
        planned = planned_files(loaded.classes, class_idx, methods)
        folder.claim(prefix + name for prefix in prefixes for name in planned)
        results = []
        for path, prefix in zip(files, prefixes):
            try:
                results.append(explain_image(loaded, path, class_idx, folder, prefix, methods))
            except UserError as exc:
                failed.append(str(exc))
                log(f"skipped: {exc}")
            except Exception as exc:  # noqa: BLE001 - one odd file must not end a folder of them
                failed.append(f"cannot explain {path}: {type(exc).__name__}: {first_line(exc)}")
                log(f"skipped: {failed[-1]}")
        warning = loaded.reading_warning({container_of(path) for path in files})
    return ExplainResult(results, failed, [warning] if warning else [])
