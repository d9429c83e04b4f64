"""Cost of the explanation terms, measured in one run.

Prints:
  - DAL vectorized (one batched Gram matrix) vs a naive per-image, per-pair loop at C = 13, 50, 100
    (target: at least 50x faster at C = 50);
  - one training step (forward + loss + backward + AdamW) with alpha = beta = 1 vs alpha = beta = 0
    on the demo model (target: ratio at most 1.10).

Usage: python benchmarks/bench_losses.py [--steps 20] [--batch 16]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from hegl_cli.config import LossConfig, load_config
from hegl_cli.losses import HybridCriterion, dal_loss
from hegl_cli.models.model import build_model


def naive_dal(maps: torch.Tensor) -> torch.Tensor:
    total, count = maps.new_zeros(()), 0
    for i in range(maps.shape[0]):
        for j, k in itertools.combinations(range(maps.shape[1]), 2):
            u, v = maps[i, j].flatten(), maps[i, k].flatten()
            total = total + u @ v / (u.norm() * v.norm())
            count += 1
    return total / count


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_dal(batch: int) -> None:
    print("DAL (forward + backward), batch", batch, "maps 8x8")
    for c in (13, 50, 100):
        maps = torch.rand(batch, c, 8, 8, requires_grad=True)
        fast = best_time(lambda m=maps: dal_loss(m).backward(), 10)
        slow = best_time(lambda m=maps: naive_dal(m).backward(), 1 if c > 13 else 3)
        torch.testing.assert_close(dal_loss(maps), naive_dal(maps), rtol=1e-4, atol=1e-6)
        print(f"  C={c:>3}: vectorized {fast * 1e3:8.2f} ms   loop {slow * 1e3:10.1f} ms   speed-up {slow / fast:8.0f}x")


def bench_step(steps: int, batch: int) -> None:
    cfg = load_config(None, ["model.text_encoder=none"])
    classes = ["Nodule", "Mass", "Effusion", "Consolidation"]
    size = cfg.data.image_size
    torch.manual_seed(0)
    images = torch.rand(batch, 1, size, size)
    labels = (torch.rand(batch, len(classes)) < 0.3).float()
    masks = torch.zeros(batch, len(classes), size, size, dtype=torch.uint8)
    masks[..., 40:80, 30:70] = 1
    has_mask = labels > 0

    def make(alpha: float, beta: float):
        torch.manual_seed(0)
        model = build_model(classes, cfg.model, size).train()
        crit = HybridCriterion(LossConfig(alpha=alpha, beta=beta))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            out = model(images)
            loss = crit(out, labels, masks, has_mask)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    ce_step, hegl_step = make(0, 0), make(1, 1)
    ce_step(), hegl_step()
    ce_times, hegl_times = [], []
    for _ in range(steps):  # interleaved, so that machine noise hits both alike
        for fn, acc in ((ce_step, ce_times), (hegl_step, hegl_times)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    ce, hegl = sorted(ce_times)[len(ce_times) // 2], sorted(hegl_times)[len(hegl_times) // 2]
    print(f"train step (demo model, batch {batch}, {size} px, median of {steps}):")
    print(f"  alpha=beta=0: {ce * 1e3:.1f} ms   alpha=beta=1: {hegl * 1e3:.1f} ms   ratio {hegl / ce:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_dal(args.batch)
    bench_step(args.steps, args.batch)


if __name__ == "__main__":
    main()
