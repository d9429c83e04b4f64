"""The optimiser, the learning-rate schedule, early stopping and the device settings a training step uses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hegl_cli.config import Config


def configure_device(device: torch.device) -> None:
    """TF32 matmuls and convolutions on CUDA (bf16 autocast covers the rest)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True



def make_optimizer(params: list[torch.nn.Parameter], cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters) on CUDA and CPU; its state is float32 like the
    parameters, whatever ``train.precision`` (autocast casts copies, never the parameters)."""
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.train.lr,
                             weight_decay=cfg.train.weight_decay, **fused)



def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Linear warm-up then cosine decay to 0 (or constant), stepped every batch."""
    warmup = cfg.train.warmup_epochs * steps_per_epoch
    total = max(1, cfg.train.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.train.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)



@dataclass
class EarlyStopping:
    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        if not math.isnan(value) and value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience
