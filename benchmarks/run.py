"""hegl's speed, as ratios measured in one run with interleaved repeats (median of each).

For each configuration (demo: 6-block ViT-Tiny at 128 px, batch 16; paper: ViT-B/16 at 224 px, batch 8;
13 classes), on the device this runs on (CUDA with bf16 autocast, else CPU):
- hegl training step (alpha=beta=1) / a plain timm classifier step on the same encoder, input and batch;
- alpha=beta=1 / alpha=beta=0;
- model FLOP utilisation: the step's FLOP rate / a large matmul's FLOP rate on the same device
  (FLOPs counted by torch.utils.flop_counter), for hegl and for plain timm;
- cached training loader images/s / model training images/s;
- `hegl predict`-style inference (cache -> batches -> probabilities and maps) / the bare model forward;
and DAL vectorised vs a naive loop at C = 13, 50, 100.

Usage: python benchmarks/run.py [--configs demo paper] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hegl_cli.config import load_config
from hegl_cli.engine.device import select_device
from hegl_cli.engine.optim import configure_device, make_optimizer
from hegl_cli.losses import HybridCriterion, dal_loss
from hegl_cli.models.inference import autocast_for, predict_split
from hegl_cli.models.model import build_model

CONFIGS = {
    "demo": {"overrides": [], "batch": 16, "text_dim": 384},
    "paper": {"overrides": ["model.encoder=vit_base_patch16_224", "data.image_size=224"], "batch": 8, "text_dim": 768},
}
CLASSES = [f"class{i}" for i in range(13)]


def precision_on(device: torch.device) -> str:
    """bf16 autocast on CUDA, float32 on the CPU (benchmarks/bench_precision.py compares the two)."""
    return "bf16" if device.type == "cuda" else "fp32"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large square matmul (bf16 on CUDA, float32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else n
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def hegl_step(cfg, batch: int, text_dim: int, device: torch.device, alpha: float, beta: float) -> Callable[[], None]:
    cfg.loss.alpha, cfg.loss.beta = alpha, beta
    model = build_model(CLASSES, cfg.model, cfg.data.image_size, torch.randn(len(CLASSES), text_dim)).to(device)
    criterion = HybridCriterion(cfg.loss)
    opt = make_optimizer(list(model.parameters()), cfg, device)
    s = cfg.data.image_size
    images = torch.rand(batch, 1, s, s, device=device)
    labels = (torch.rand(batch, len(CLASSES), device=device) < 0.3).float()
    masks = torch.zeros(batch, len(CLASSES), s, s, dtype=torch.uint8, device=device)
    masks[:, :, s // 4 : s // 2, s // 4 : s // 2] = 1
    has_mask = torch.ones(batch, len(CLASSES), dtype=torch.bool, device=device)

    def step() -> None:
        with autocast_for(device, precision_on(device)):
            out = model(images)
        terms = criterion({k: v.float() for k, v in out.items()}, labels, masks, has_mask)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()

    return step


def timm_step(cfg, batch: int, device: torch.device) -> Callable[[], None]:
    kwargs = dict(cfg.model.encoder_kwargs)
    model = timm.create_model(cfg.model.encoder, num_classes=len(CLASSES), in_chans=1, img_size=cfg.data.image_size,
                              **kwargs).to(device)
    opt = make_optimizer(list(model.parameters()), cfg, device)
    s = cfg.data.image_size
    images = torch.rand(batch, 1, s, s, device=device)
    labels = (torch.rand(batch, len(CLASSES), device=device) < 0.3).float()

    return lambda: classifier_step(model, opt, images, labels, device, precision_on(device))


def classifier_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    labels: torch.Tensor, device: torch.device, precision: str) -> None:
    """One training step of a plain timm classifier (BCE on its logits): the reference hegl is timed
    against. images (B, in_chans, S, S); labels (B, C) of 0/1."""
    with autocast_for(device, precision):
        logits = model(images)
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def flops_of(step: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def interleaved(steps: dict[str, Callable[[], None]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each step, every repeat taking each step once, in turn (after
    ``warmup`` calls of each)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def loader_and_inference(cfg, batch: int, device: torch.device, model_images_per_s: float) -> dict[str, float]:
    """Cached loader and predict-style inference throughput, next to the model's."""
    from torch.utils.data import DataLoader

    from hegl_cli.apps.prepare import prepare_synthetic
    from hegl_cli.data.benchmark.generator import SyntheticSpec
    from hegl_cli.data.cache import CachedSplit
    from hegl_cli.data.dataset import XrayDataset
    from hegl_cli.data.options import PrepareOptions

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prepare_synthetic(cache, PrepareOptions(image_size=cfg.data.image_size, progress=False),
                          SyntheticSpec(n_train=320, n_test=64, size=cfg.data.image_size))
        split = CachedSplit(cache, "train")
        loader = DataLoader(XrayDataset(split), batch_size=batch, shuffle=True, num_workers=cfg.train.workers)
        t0, seen = time.perf_counter(), 0
        for item in loader:
            seen += len(item["image"])
        loader_rate = seen / (time.perf_counter() - t0)
        model = build_model(split.classes, cfg.model, cfg.data.image_size, torch.randn(len(split.classes), 384))
        model = model.to(device).eval()
        test = CachedSplit(cache, "test")
        images = torch.from_numpy(np.array(test.images)).float().div(255).unsqueeze(1)
        with torch.inference_mode(), autocast_for(device, precision_on(device)):
            model(images[:batch].to(device))
            sync(device)
            t0 = time.perf_counter()
            for start in range(0, len(images), batch):
                model(images[start : start + batch].to(device))
            sync(device)
            forward_rate = len(images) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        predict_split(model, test, device, batch, precision=precision_on(device))
        predict_rate = len(test) / (time.perf_counter() - t0)
    return {"loader_images_per_s": loader_rate, "loader_over_model_train": loader_rate / model_images_per_s,
            "predict_images_per_s": predict_rate, "forward_images_per_s": forward_rate,
            "predict_over_forward": predict_rate / forward_rate}


def naive_dal(maps: torch.Tensor) -> torch.Tensor:
    b, c = maps.shape[:2]
    flat = maps.flatten(2)
    total, count = 0.0, 0
    for n in range(b):
        for i in range(c):
            for j in range(i + 1, c):
                total = total + F.cosine_similarity(flat[n, i], flat[n, j], dim=0)
                count += 1
    return total / count


def dal_speed(device: torch.device) -> dict[str, float]:
    out = {}
    for c in (13, 50, 100):
        maps = torch.rand(8, c, 14, 14, device=device)
        times = interleaved({"vectorised": lambda m=maps: dal_loss(m), "naive": lambda m=maps: naive_dal(m)}, 3, device)
        out[f"dal_naive_over_vectorised_C{c}"] = times["naive"] / times["vectorised"]
    return out


def run_config(name: str, repeats: int, device: torch.device, rate: float, extra: list[str]) -> dict[str, float]:
    spec = CONFIGS[name]
    cfg = load_config(None, ["model.text_encoder=none", *spec["overrides"], *extra])
    batch = spec["batch"]
    steps = {"hegl_a1_b1": hegl_step(cfg, batch, spec["text_dim"], device, 1.0, 1.0),
             "hegl_a0_b0": hegl_step(cfg, batch, spec["text_dim"], device, 0.0, 0.0),
             "timm": timm_step(cfg, batch, device)}
    flops = {k: flops_of(v) for k, v in steps.items()}
    seconds = interleaved(steps, repeats, device)
    mfu = {k: flops[k] / seconds[k] / rate for k in steps}
    result = {
        "batch": batch, "image_size": cfg.data.image_size, "encoder": cfg.model.encoder,
        **{f"seconds_{k}": v for k, v in seconds.items()}, **{f"gflop_{k}": flops[k] / 1e9 for k in steps},
        "hegl_over_timm_step": seconds["hegl_a1_b1"] / seconds["timm"],
        "a1b1_over_a0b0_step": seconds["hegl_a1_b1"] / seconds["hegl_a0_b0"],
        "mfu_hegl": mfu["hegl_a1_b1"], "mfu_timm": mfu["timm"], "mfu_hegl_over_timm": mfu["hegl_a1_b1"] / mfu["timm"],
        "train_images_per_s": batch / seconds["hegl_a1_b1"],
    }
    result.update(loader_and_inference(cfg, batch, device, result["train_images_per_s"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", nargs="+", default=["demo", "paper"], choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config override for every configuration, e.g. model.decoder_width=encoder")
    args = parser.parse_args()
    device = select_device(args.device)
    configure_device(device)
    torch.manual_seed(0)
    rate = matmul_rate(device)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    report = {"device": str(device), "machine": machine, "torch": torch.__version__, "overrides": args.overrides,
              "matmul_tflops": rate / 1e12, "configs": {}}
    print(f"device {device} ({machine}); large matmul {rate / 1e9:.1f} GFLOP/s")
    for name in args.configs:
        r = run_config(name, args.repeats, device, rate, args.overrides)
        report["configs"][name] = r
        print(f"[{name}] {r['encoder']} {r['image_size']} px, batch {r['batch']}: "
              f"step {r['seconds_hegl_a1_b1'] * 1e3:.0f} ms ({r['gflop_hegl_a1_b1']:.1f} GFLOP), "
              f"timm {r['seconds_timm'] * 1e3:.0f} ms ({r['gflop_timm']:.1f} GFLOP)")
        print(f"  hegl step / plain timm step        {r['hegl_over_timm_step']:.3f}")
        print(f"  alpha=beta=1 / alpha=beta=0         {r['a1b1_over_a0b0_step']:.3f}")
        print(f"  FLOP utilisation hegl / timm       {r['mfu_hegl']:.2f} / {r['mfu_timm']:.2f} "
              f"(ratio {r['mfu_hegl_over_timm']:.2f})")
        print(f"  cached loader / model training     {r['loader_over_model_train']:.1f}x "
              f"({r['loader_images_per_s']:.0f} vs {r['train_images_per_s']:.1f} images/s)")
        print(f"  predict-style inference / forward  {r['predict_over_forward']:.2f} "
              f"({r['predict_images_per_s']:.0f} vs {r['forward_images_per_s']:.0f} images/s)")
    report["dal"] = dal_speed(device)
    print("  DAL naive / vectorised: " + ", ".join(f"C={k.split('C')[-1]} {v:.0f}x" for k, v in report["dal"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
