"""Timed training window of the real engine: images/s and FLOP utilisation against the device's peak.

Builds the Trainer of `hegl train` (same loader, model, loss, optimizer, the config's train.precision
(gpu.sh sets bf16 on CUDA), TF32, fused AdamW, pinned memory), warms up, then trains for
``--seconds`` and reports images/s, FLOPs per image (torch.utils.flop_counter) and the achieved FLOP
rate as a share of the nominal bf16 dense peak and of a large bf16 matmul measured on the same device.

Usage: python benchmarks/gpu_train.py --data CACHE [--config paper.yaml] [--seconds 120] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from run import matmul_rate, sync  # benchmarks/run.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from hegl_cli.config import load_config
from hegl_cli.engine.train import Trainer

# Nominal dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
NOMINAL_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="paper.yaml")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--warmup", type=int, default=5, help="optimizer steps before timing")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.config, [f"data.path={args.data}", "model.pretrained=false", *args.overrides])
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(cfg, Path(run), resume=False, progress=False, log=lambda *_: None)
        device = trainer.device
        trainer.net.train()
        batches = iter(trainer.loader)

        def next_batch():
            nonlocal batches
            try:
                return next(batches)
            except StopIteration:
                batches = iter(trainer.loader)
                return next(batches)

        counter = FlopCounterMode(display=False)
        with counter:
            trainer._forward_backward(next_batch(), 0, 0)
        trainer._optimizer_step()
        flops_per_image = counter.get_total_flops() / cfg.train.batch_size
        for step in range(args.warmup):
            trainer._forward_backward(next_batch(), 0, step)
            trainer._optimizer_step()
        sync(device)
        t0, images, steps = time.perf_counter(), 0, 0
        while time.perf_counter() - t0 < args.seconds:
            batch = next_batch()
            trainer._forward_backward(batch, 0, steps)
            trainer._optimizer_step()
            images += len(batch["image"])
            steps += 1
        sync(device)
        seconds = time.perf_counter() - t0
        trainer.close()
    rate = images / seconds
    achieved = rate * flops_per_image
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in NOMINAL_BF16_PEAK.items() if k in name), None)
    measured = matmul_rate(device)
    result = {"device": name, "encoder": cfg.model.encoder, "image_size": cfg.data.image_size,
              "batch_size": cfg.train.batch_size, "steps": steps, "seconds": seconds, "images_per_s": rate,
              "gflop_per_image": flops_per_image / 1e9, "achieved_tflops": achieved / 1e12,
              "matmul_tflops": measured / 1e12, "utilisation_vs_matmul": achieved / measured,
              "utilisation_vs_nominal_bf16_peak": achieved / peak if peak else None, "compile": cfg.train.compile}
    print(f"{name}: {cfg.model.encoder} at {cfg.data.image_size} px, batch {cfg.train.batch_size}: "
          f"{rate:.1f} training images/s over {steps} steps ({seconds:.0f} s)")
    print(f"  {flops_per_image / 1e9:.1f} GFLOP per image -> {achieved / 1e12:.2f} TFLOP/s = "
          f"{achieved / measured:.2f} of a large matmul ({measured / 1e12:.1f} TFLOP/s)"
          + (f", {achieved / peak:.2f} of the nominal bf16 peak ({peak / 1e12:.0f} TFLOP/s)" if peak else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
