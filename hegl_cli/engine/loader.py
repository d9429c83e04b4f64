"""The training data loader: batches in a seeded order (one rank's share under DDP), and sources drawn
in chosen shares when several caches train as one (``data.source_weights``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from hegl_cli.data.dataset import XrayDataset
from hegl_cli.errors import UserError


class WeightedEpochSampler(torch.utils.data.Sampler):
    """``len(weights)`` indices per epoch drawn with replacement by ``weights``, from ``(seed, epoch)``."""

    def __init__(self, weights: np.ndarray, seed: int):
        self.weights, self.seed, self.epoch = torch.as_tensor(weights, dtype=torch.double), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist())



def source_sampling_weights(split, shares: list[float]) -> np.ndarray | None:
    """Per-row weights giving each source ``shares[k]`` of the draws (None: plain shuffling)."""
    sources = getattr(split, "source", None)
    if not shares:
        return None
    if sources is None or len(shares) != len(split.source_names):
        count = 1 if sources is None else len(split.source_names)
        if count == 1:
            raise UserError("config key 'data.source_weights' weighs the caches of a data.path list; data.path names "
                            "one cache: leave data.source_weights unset")
        raise UserError(f"config key 'data.source_weights' has {len(shares)} value(s) but data.path lists {count} "
                        "caches: give one weight per cache")
    if sum(shares) <= 0:
        raise UserError("config key 'data.source_weights' must have a positive value")
    counts = np.bincount(sources, minlength=len(shares)).astype(float)
    return np.asarray(shares, dtype=float)[sources] / counts[sources]



def make_loader(dataset: XrayDataset, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                workers: int = 0, pin_memory: bool = False, weights: np.ndarray | None = None
                ) -> tuple[DataLoader, DistributedSampler | WeightedEpochSampler]:
    """A loader over this rank's share of a shuffled order drawn from ``(seed, epoch)``.

    The partition is torch's ``DistributedSampler`` (every rank gets ``ceil(n / world)`` indices,
    padded by wrapping); the last short batch is dropped only when the rank's share holds at least
    one full batch, so no rank ever trains zero steps. ``weights`` (several sources, one process):
    rows drawn with replacement in proportion to them.
    """
    if weights is not None:
        if world > 1:
            raise UserError("data.source_weights runs in one process; under torchrun leave it [] (sources in "
                            "proportion to their size)")
        sampler: DistributedSampler | WeightedEpochSampler = WeightedEpochSampler(weights, seed)
    else:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        drop_last=len(sampler) >= batch_size, persistent_workers=workers > 0,
                        pin_memory=pin_memory, prefetch_factor=4 if workers > 0 else None)
    return loader, sampler
