"""What `hegl export` gives for speed and parity: onnxruntime (CPU) against the PyTorch model on the same
batch with the same number of threads, milliseconds per image, measured in one run with interleaved
repeats, and the largest |ONNX - PyTorch| on the logits, the maps and the probabilities.

The model is the demo configuration's (ViT-Tiny, 6 blocks, 128 px, 4 classes) with random weights
(speed does not depend on training; parity is then measured on random [0, 1] images), or a trained
run with ``--run`` (parity on its test images, as `hegl export` checks it).

Usage: python benchmarks/bench_export.py [--run RUN] [--batch 16] [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from hegl_cli.config import load_config
from hegl_cli.models.model import build_model
from hegl_cli.models.onnx_export import ExportedForward, export_onnx, identity_calibration


def model_and_images(run: str | None, batch: int) -> tuple[ExportedForward, np.ndarray, str, str]:
    """(the forward the graph runs, a batch (B, 1, S, S) float32, what the model is, where the images come from)."""
    if run is None:
        cfg = load_config(None, ["model.text_encoder=none"])
        model = build_model(["Nodule", "Mass", "Effusion", "Consolidation"], cfg.model, cfg.data.image_size).eval()
        images = torch.rand(batch, 1, cfg.data.image_size, cfg.data.image_size, generator=torch.Generator().manual_seed(0))
        what = f"demo model ({cfg.model.encoder}, {cfg.data.image_size} px, 4 classes, random weights)"
        return ExportedForward(model, *identity_calibration(4)), images.numpy(), what, "random [0, 1] noise"
    from pathlib import Path

    from hegl_cli.apps.export import parity_images
    from hegl_cli.engine.checkpoint import load_run

    with load_run(Path(run), device="cpu", command="bench_export") as loaded:
        images, source = parity_images(loaded, batch)
        what = f"run {run} ({loaded.cfg.model.encoder}, {loaded.image_size} px, {len(loaded.classes)} classes)"
        return ExportedForward(loaded.model, *identity_calibration(len(loaded.classes))), images, what, source


def interleaved(calls: dict[str, object], repeats: int) -> dict[str, float]:
    """Median seconds of each call, after one warm-up each, the calls taking turns in every repeat."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a trained run folder (default: the demo model, random weights)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forward, images, what, source = model_and_images(args.run, args.batch)
    t0 = time.perf_counter()
    raw, how = export_onnx(forward, images.shape[-1], "the benchmark's encoder")
    export_seconds = time.perf_counter() - t0
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    batch = torch.from_numpy(images)

    def torch_forward():
        with torch.inference_mode():
            return [t.numpy() for t in forward(batch)]

    def onnx_forward():
        return session.run(["logits", "attention", "probabilities"], {"images": images})

    diffs = [float(np.abs(a - b).max()) for a, b in zip(onnx_forward(), torch_forward())]
    seconds = interleaved({"pytorch": torch_forward, "onnxruntime": onnx_forward}, args.repeats)
    print(f"{what}; {platform.processor() or platform.machine()}, {args.threads} threads; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(f"export: {how['exporter']}, opset {how['opset']}, {export_seconds:.1f} s, {len(raw) / 1e6:.1f} MB")
    print(f"parity on {len(images)} images of {source}: max |ONNX - PyTorch| logits {diffs[0]:.2e}, maps {diffs[1]:.2e}, "
          f"probabilities {diffs[2]:.2e}")
    per_image = {k: v / len(images) * 1000 for k, v in seconds.items()}
    print(f"batch {len(images)}, median of {args.repeats}: PyTorch {per_image['pytorch']:.2f} ms/image, onnxruntime "
          f"{per_image['onnxruntime']:.2f} ms/image (onnxruntime / PyTorch {seconds['onnxruntime'] / seconds['pytorch']:.2f})")


if __name__ == "__main__":
    main()
