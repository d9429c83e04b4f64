"""The training engine behind `hegl train`: one function, :func:`train`, callable in-process.

Exact resume: ``state.pt`` (written atomically at the end of every epoch) holds the model,
optimizer, scheduler, loss weights, RNG states, epoch and early-stopping state; the data order is
drawn from ``(seed, epoch)``. A run killed at any point and resumed ends with the same weights as
the same run left alone (CPU, ``train.deterministic``).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from hegl_cli.config import Config
from hegl_cli.data.cache import CachedSplit
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.engine import distributed as D
from hegl_cli.engine.checkpoint import save_checkpoint
from hegl_cli.engine.io import atomic_write, atomic_write_text
from hegl_cli.engine.runs import mark_latest, new_run_dir
from hegl_cli.errors import TrainingDiverged, UserError
from hegl_cli.evaluation.metrics import choose_thresholds, macro_auc, summarize
from hegl_cli.evaluation.predict import autocast_for, predict_split
from hegl_cli.losses import HybridCriterion, is_finite_terms
from hegl_cli.models.model import HEGLModel, build_model

STATE = "state.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    run: Path
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    seconds: float
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    is_main: bool = True  # False on DDP ranks other than 0


def select_device(requested: str) -> torch.device:
    """cuda > mps > cpu for ``auto``; a clear error when a forced device is missing."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device=mps but MPS is not available")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """Shuffled order drawn from ``(seed, epoch)``; with DDP each rank takes every world-th index
    (padded by wrapping so that all ranks run the same number of steps)."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world, self.epoch = n, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = math.ceil(self.n / self.world) * self.world
        order += order[: total - self.n]
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._order())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)


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


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _load_splits(cfg: Config) -> tuple[CachedSplit, CachedSplit]:
    data = Path(cfg.data.path)
    train_split = CachedSplit(data, "train")
    val_name = "val" if "val" in train_split.manifest["splits"] else "test"
    val_split = CachedSplit(data, val_name)
    if train_split.image_size != cfg.data.image_size:
        raise UserError(f"{data} was prepared at {train_split.image_size} px but data.image_size is "
                        f"{cfg.data.image_size}; re-run `hegl prepare --image-size {cfg.data.image_size}` "
                        f"or set data.image_size={train_split.image_size}")
    if len(train_split) == 0:
        raise UserError(f"{data}: the train split is empty")
    return train_split, val_split


class Trainer:
    """Holds everything one run needs; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: Config, run: Path, resume: bool, progress: bool, log=print):
        self.cfg, self.run, self.progress, self.log = cfg, run, progress, log
        self.device = select_device(cfg.train.device)
        self.dist = D.init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.train.seed)
        self.train_split, self.val_split = _load_splits(cfg)
        self.classes = self.train_split.classes
        self.model: HEGLModel = build_model(self.classes, cfg.model, cfg.data.image_size).to(self.device)
        self.criterion = HybridCriterion(cfg.loss).to(self.device)
        if self.criterion.needs_input_grad:
            self.model.set_fused_attention(False)  # double backward has no fused CPU kernel
        self.dataset = XrayDataset(self.train_split, cfg.data.augment, seed=cfg.train.seed)
        self.sampler = EpochSampler(len(self.dataset), cfg.train.seed, self.dist.rank, self.dist.world_size)
        self.loader = DataLoader(self.dataset, batch_size=cfg.train.batch_size, sampler=self.sampler,
                                 num_workers=cfg.train.workers, drop_last=len(self.dataset) > cfg.train.batch_size,
                                 persistent_workers=False)
        params = list(self.model.parameters()) + list(self.criterion.parameters())
        self.optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.train.lr,
                                           weight_decay=cfg.train.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg, max(1, len(self.loader)))
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.stopper = EarlyStopping(cfg.train.patience)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.thresholds = np.full(len(self.classes), 0.5)
        if resume:
            self._resume()

    # -- state -----------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "model": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(), "stopper": vars(self.stopper).copy(), "history": self.history,
                "thresholds": self.thresholds}

    def _resume(self) -> None:
        path = self.run / STATE
        if not path.is_file():
            raise UserError(f"nothing to resume in {self.run} (no {STATE}); start it without --resume")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.stopper = EarlyStopping(**state["stopper"])
        self.history = list(state["history"])
        self.thresholds = np.asarray(state["thresholds"])
        self.start_epoch = int(state["epoch"]) + 1
        if self.dist.is_main:  # metrics.jsonl may hold a line from an epoch that never finished
            atomic_write_text(self.run / METRICS, "".join(json.dumps(h) + "\n" for h in self.history))
        self.log(f"resuming {self.run} at epoch {self.start_epoch + 1}")

    # -- one epoch -------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.net.train()
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.criterion.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not (self.progress and self.dist.is_main), unit="batch")
        for step, batch in enumerate(bar):
            terms = self._step(batch, epoch, step)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
        bar.close()
        return {k: v / max(1, n_batches) for k, v in sums.items()}

    def _step(self, batch: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
        images = batch["image"].to(self.device)
        if self.criterion.needs_input_grad:
            images.requires_grad_(True)
        labels = batch["labels"].to(self.device)
        masks, has_mask = batch["masks"].to(self.device), batch["has_mask"].to(self.device)
        with autocast_for(self.device, self.cfg.train.amp):
            outputs = self.net(images, all_layers=self.criterion.needs_all_layers)
        outputs = {k: v.float() for k, v in outputs.items()}
        terms = self.criterion(outputs, labels, masks, has_mask, images if self.criterion.needs_input_grad else None)
        bad = is_finite_terms(terms)
        if bad is not None:
            raise TrainingDiverged(
                f"non-finite '{bad}' loss at epoch {epoch + 1}, step {step + 1}: training stopped; the last "
                f"good checkpoint is kept in {self.run} (try a lower train.lr)")
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        D.all_reduce_grads(list(self.criterion.parameters()), self.dist)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    def _validate(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation probabilities and labels, gathered from every rank, in split order."""
        shard = np.arange(self.dist.rank, len(self.val_split), self.dist.world_size)
        preds = predict_split(self.model, self.val_split, self.device, self.cfg.eval.batch_size, shard,
                              amp=self.cfg.train.amp)
        parts = D.gather_objects((preds.index, preds.probs), self.dist)
        index = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts])
        order = np.argsort(index)
        return probs[order], self.val_split.labels[index[order]]

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        start, seen = time.perf_counter(), 0
        stopped_early = False
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            if self.stopper.should_stop:
                stopped_early = True
                break
            t0 = time.perf_counter()
            train_terms = self._train_epoch(epoch)
            seen += len(self.sampler) * self.dist.world_size
            probs, labels = self._validate()
            val_auc = macro_auc(probs, labels)
            thresholds = choose_thresholds(probs, labels, self.cfg.eval.threshold_metric)
            summary = summarize(probs, labels, thresholds, self.classes)["macro"]
            improved = self.stopper.update(val_auc, epoch)
            if improved:
                self.thresholds = thresholds
            record = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in train_terms.items()},
                      "val_auc": val_auc, "val_f1": summary["f1"], "val_mcc": summary["mcc"],
                      "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                      "best": improved}
            self.history.append(record)
            if self.dist.is_main:
                self._write_epoch(epoch, record, improved, val_auc)
            D.barrier(self.dist)
            self.log(_epoch_line(record, self.cfg.train.epochs))
        else:
            stopped_early = self.stopper.should_stop and epoch + 1 < self.cfg.train.epochs
        seconds = time.perf_counter() - start
        if self.dist.is_main:
            self._plot()
        return TrainResult(self.run, self.stopper.best_epoch + 1, self.stopper.best, len(self.history), seconds,
                           seen / seconds if seconds > 0 else 0.0, self.history, stopped_early,
                           self.dist.is_main)

    def _write_epoch(self, epoch: int, record: dict[str, Any], improved: bool, val_auc: float) -> None:
        extra = {"epoch": epoch + 1, "val_auc": val_auc, "thresholds": self.thresholds.tolist(),
                 "threshold_metric": self.cfg.eval.threshold_metric, "data": str(self.cfg.data.path)}
        save_checkpoint(self.run, "last", self.model, self.cfg, extra)
        if improved:
            save_checkpoint(self.run, "best", self.model, self.cfg, extra)
        atomic_write(self.run / STATE, lambda tmp: torch.save(self._state(epoch), tmp))
        with open(self.run / METRICS, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        _tensorboard(self.run, record)

    def _plot(self) -> None:
        from hegl_cli.evaluation.plots import plot_training_curves

        if self.history:
            plot_training_curves(self.history, self.run / "curves.png")

    def close(self) -> None:
        D.shutdown(self.dist)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    terms = " ".join(f"{k[6:]}={record[k]:.3f}" for k in ("train_loss", "train_ce", "train_ha", "train_dal", "train_rrr")
                     if k in record)
    f1 = record["val_f1"] if record["val_f1"] is not None else float("nan")
    mcc = record["val_mcc"] if record["val_mcc"] is not None else float("nan")
    star = " *" if record["best"] else ""
    return (f"epoch {record['epoch']:>3}/{epochs}  {terms}  val AUC={record['val_auc']:.3f} F1={f1:.3f} "
            f"MCC={mcc:.3f}  {record['seconds']:.1f}s{star}")


def _tensorboard(run: Path, record: dict[str, Any]) -> None:
    """TensorBoard scalars when tensorboard is installed (silently skipped otherwise)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return
    with SummaryWriter(str(run / "tensorboard")) as writer:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                writer.add_scalar(key, value, record["epoch"])


def train(cfg: Config, name: str | None = None, resume: bool = False, force: bool = False,
          runs_dir: Path = Path("runs"), progress: bool = True, log=print) -> TrainResult:
    """Train one run into ``runs_dir/<name>`` and return its summary.

    A new run refuses an existing, non-empty folder unless ``force`` (which empties it); ``resume``
    continues the run found there from its last finished epoch.
    """
    rank = int(os.environ.get("RANK", "0"))
    if resume:
        if name is None:
            raise UserError("--resume needs --name of the run to continue")
        run = Path(runs_dir) / name
        if not run.is_dir():
            raise UserError(f"nothing to resume: run folder {run} not found")
    else:
        run = Path(runs_dir) / (name or time.strftime("%Y%m%d-%H%M%S"))
        if force and run.exists() and rank == 0:
            shutil.rmtree(run)
        if rank == 0:
            run = new_run_dir(run.name, Path(runs_dir))
    try:
        trainer = Trainer(cfg, run, resume, progress, log=log if rank == 0 else (lambda *_: None))
    except BaseException:
        if rank == 0 and not resume and run.is_dir() and not any(run.iterdir()):
            run.rmdir()  # leave no empty run folder behind a run that never started
        raise
    try:
        if trainer.dist.is_main:
            cfg.dump(run / "config.yaml")
            mark_latest(run)
        return trainer.fit()
    finally:
        trainer.close()
