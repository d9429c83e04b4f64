"""The training engine behind `hegl train`: one function, :func:`train`, callable in-process.

Exact resume: the training state (written atomically at the end of every epoch) holds the model,
optimizer, scheduler, loss weights, RNG states, epoch and early-stopping state, as tensors and
plain values only (it loads with ``weights_only=True``: a crafted file cannot run code); the data
order is drawn from ``(seed, epoch)``. A run killed at any point and resumed ends with the same
weights as the same run left alone (CPU, ``train.deterministic``).

The run folder is the record: its config is what was trained. Resuming takes the run's config; a
change is refused unless the key is in :data:`~hegl_cli.engine.resume.RESUME_SAFE_KEYS` (then the config is updated and the
history records the change). The files are :class:`RunFolder`'s. Selection (best checkpoint, early
stopping, thresholds) only ever sees the ``val`` split. The criterion returns unweighted terms and the
weights in effect; every epoch's line in the metrics logs both (``train_<term>``, ``weight_<term>``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hegl_cli.config import Config
from hegl_cli.data.augment import AugmentSpec
from hegl_cli.data.cache import cache_lock
from hegl_cli.data.combined import CombinedSplit, data_paths
from hegl_cli.data.dataset import XrayDataset
from hegl_cli.data.manifest import containers_of, intensity_rule_of, outdated_cache_note, read_manifest
from hegl_cli.engine import distributed as D
from hegl_cli.engine.checkpoint import save_checkpoint
from hegl_cli.engine.device import select_device
from hegl_cli.engine.kernels import kernel_facts, settle_cpu_kernels
from hegl_cli.engine.loader import make_loader, source_sampling_weights
from hegl_cli.engine.optim import EarlyStopping, configure_device, make_optimizer, make_scheduler
from hegl_cli.engine.precision import Precision, resolve_precision
from hegl_cli.engine.resume import (
    check_resume_config,
    check_resume_data,
    data_facts,
    load_state,
    rng_state,
    set_rng_state,
    write_state,
)
from hegl_cli.engine.run_folder import (
    RUNS_DIR,
    RunFolder,
    mark_latest,
    open_new_run,
    remove_if_unused,
    validate_run_name,
)
from hegl_cli.engine.train_data import (
    check_augmentation,
    describe_supervision,
    load_train_val,
    per_source_auc,
    val_context_swap,
)
from hegl_cli.errors import TrainingDiverged, UserError
from hegl_cli.evaluation.classification import binary_cross_entropy, choose_thresholds, macro_auc, summarize
from hegl_cli.fs.atomic import append_line, atomic_write_text, crash_point
from hegl_cli.losses import HybridCriterion
from hegl_cli.models.inference import autocast_for, predict_split
from hegl_cli.models.model import HEGLModel, build_model
from hegl_cli.plots import loss_terms, plot_training_curves


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Holds everything one run needs; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: Config, run: Path, resume: bool, progress: bool, log=print):
        self.cfg, self.run, self.progress, self.log = cfg, run, progress, log
        self.folder = RunFolder(run)
        self.device = select_device(cfg.train.device)
        self.dist = D.init_distributed(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # before any kernel runs: the precision decides whether the CPU kernels stay pinned (kernels.py)
        self.precision: Precision = resolve_precision(cfg.train.precision, self.device)
        settle_cpu_kernels(self.precision.in_force, self.device.type)
        configure_device(self.device)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.train.seed)
        self.train_split, self.val_split = load_train_val(cfg)
        self.classes = self.train_split.classes
        self.val_swap = val_context_swap(self.val_split, cfg)
        self.model: HEGLModel = build_model(self.classes, cfg.model, cfg.data.image_size).to(self.device)
        if cfg.train.channels_last:
            self.model.use_channels_last(True)
        self.criterion = HybridCriterion(cfg.loss).to(self.device)
        if self.criterion.needs_input_grad:
            self.model.set_fused_attention(False)  # double backward has no fused CPU kernel
        self.dataset = XrayDataset(self.train_split, cfg.data.augment, seed=cfg.train.seed,
                                   transform=AugmentSpec(cfg.data.augment_geometry, cfg.data.augment_intensity,
                                                         cfg.data.augment_flip))
        check_augmentation(self.dataset, cfg)
        weights = source_sampling_weights(self.train_split, cfg.data.source_weights)
        self.loader, self.sampler = make_loader(self.dataset, cfg.train.batch_size, cfg.train.seed,
                                                self.dist.rank, self.dist.world_size, cfg.train.workers,
                                                pin_memory=self.device.type == "cuda", weights=weights)
        params = list(self.model.parameters()) + list(self.criterion.parameters())
        self.optimizer = make_optimizer(params, cfg, self.device)
        self.accumulate = cfg.train.accumulate
        self.scheduler = make_scheduler(self.optimizer, cfg, max(1, math.ceil(len(self.loader) / self.accumulate)))
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:
            if self.device.type == "cpu":
                require_cpp_compiler()
            self.net = torch.compile(self.net)
        self.stopper = EarlyStopping(cfg.train.patience)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_thresholds = np.full(len(self.classes), 0.5)  # chosen on val at the best epoch
        self.writer = None  # one TensorBoard writer for the whole run (when tensorboard is installed)
        if resume:
            self._resume()

    # -- state -----------------------------------------------------------------------------
    def _state(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "model": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(), "stopper": vars(self.stopper).copy(), "history": self.history,
                "best_thresholds": self.best_thresholds.tolist()}

    def _resume(self) -> None:
        path = self.folder.state
        if not path.is_file():
            raise UserError(f"nothing to resume in {self.run} (no {path.name}); start it without --resume")
        state = load_state(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(f"{path}: the saved model does not match the run's {self.folder.config.name} "
                            f"({' '.join(str(exc).split())[:160]})") from exc
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.stopper = EarlyStopping(**state["stopper"])
        self.stopper.patience = self.cfg.train.patience  # a resume may change it (RESUME_SAFE_KEYS)
        self.history = list(state["history"])
        self.best_thresholds = np.asarray(state.get("best_thresholds", state.get("thresholds")), dtype=np.float64)
        self.start_epoch = int(state["epoch"]) + 1
        if self.dist.is_main:  # the metrics may hold a line from an epoch that never finished
            atomic_write_text(self.folder.metrics, "".join(json.dumps(h) + "\n" for h in self.history))
        self.log(f"resuming {self.run} at epoch {self.start_epoch + 1}")

    # -- one epoch -------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's share; an optimizer step every ``train.accumulate`` batches."""
        self.net.train()
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.criterion.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_batches = len(self.loader)
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", leave=False,
                   disable=not (self.progress and self.dist.is_main), unit="batch")
        self.optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(bar):
            last_of_group = (step + 1) % self.accumulate == 0 or step + 1 == n_batches
            group = min(self.accumulate, n_batches - (step // self.accumulate) * self.accumulate)
            terms = self._forward_backward(batch, epoch, step, scale=1.0 / group, sync=last_of_group)
            if last_of_group:
                self._optimizer_step()
            crash_point("train:step")
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items() if not k.startswith("weight_")})
        bar.close()
        return {k: v / max(1, n_batches) for k, v in sums.items()}

    def _forward_backward(self, batch: dict[str, torch.Tensor], epoch: int, step: int, scale: float = 1.0,
                          sync: bool = True) -> dict[str, float]:
        """Loss terms of one batch; gradients (times ``scale``) added to ``.grad``. With DDP, gradients
        are all-reduced only when ``sync`` (the last batch of an accumulation group)."""
        blocking = self.device.type != "cuda"
        images = batch["image"].to(self.device, non_blocking=not blocking)
        if self.criterion.needs_input_grad:
            images.requires_grad_(True)
        labels = batch["labels"].to(self.device, non_blocking=not blocking)
        masks = batch["masks"].to(self.device, non_blocking=not blocking)
        has_mask = batch["has_mask"].to(self.device, non_blocking=not blocking)
        no_sync = self.net.no_sync if (self.dist.enabled and not sync and hasattr(self.net, "no_sync")) else None
        with no_sync() if no_sync else contextlib.nullcontext():
            with autocast_for(self.device, self.precision.in_force):
                outputs = self.net(images, all_layers=self.criterion.needs_all_layers)
            # the criterion runs outside autocast, on float32 logits and maps: its Dice, cosines and logs
            # keep float32's range and resolution whatever the forward computed in
            outputs = {k: v.float() for k, v in outputs.items()}
            # unweighted terms + their weighted_total as "loss", under the weights in effect (logged too)
            terms = self.criterion(outputs, labels, masks, has_mask,
                                   images if self.criterion.needs_input_grad else None)
            weights = self.criterion.loss_weights()
            logged = {**terms, **{f"weight_{k}": torch.as_tensor(w, dtype=torch.float32, device=self.device)
                                  for k, w in weights.items() if k != "ce"}}
            values = dict(zip(logged, torch.stack([v.detach().float() for v in logged.values()]).tolist()))  # one sync
            bad = next((k for k, v in values.items() if not math.isfinite(v)), None)
            if bad is not None:
                kept = (f"the last good checkpoint (epoch {self.history[-1]['epoch']}) is kept in {self.run}"
                        if self.history and self.folder.weights("last").is_file()
                        else "no checkpoint was written (it diverged in its first epoch)")
                raise TrainingDiverged(
                    f"non-finite '{bad}' loss at epoch {epoch + 1}, step {step + 1}: training stopped; {kept} "
                    "(try a lower train.lr)")
            (terms["loss"] * scale).backward()
        return values

    def _optimizer_step(self) -> None:
        D.all_reduce_grads(list(self.criterion.parameters()), self.dist)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _validate(self, perturb=None) -> tuple[np.ndarray, np.ndarray]:
        """Validation probabilities and labels, gathered from every rank, in split order.

        ``perturb``: the context swap of :func:`hegl_cli.data.swap.context_swap`, or None.
        """
        shard = np.arange(self.dist.rank, len(self.val_split), self.dist.world_size)
        preds = predict_split(self.model, self.val_split, self.device, self.cfg.eval.batch_size, shard,
                              perturb=perturb, precision=self.precision.in_force)
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
            aucs = {"val_auc_plain": macro_auc(probs, labels), **per_source_auc(self.val_split, probs, labels),
                    "val_loss": binary_cross_entropy(probs, labels)}
            if self.val_swap is not None:
                swapped, _ = self._validate(self.val_swap)
                aucs["val_auc_swapped"] = macro_auc(swapped, labels)
                if self.cfg.train.select_on == "val_swapped":
                    probs = swapped
            val_auc = aucs["val_auc_swapped" if self.cfg.train.select_on == "val_swapped" else "val_auc_plain"]
            thresholds = choose_thresholds(probs, labels, self.cfg.eval.threshold_metric)
            summary = summarize(probs, labels, thresholds, self.classes)["macro"]
            improved = self.stopper.update(val_auc, epoch)
            if improved:
                self.best_thresholds = thresholds
            record = {"epoch": epoch + 1,
                      **{k if k.startswith("weight_") else f"train_{k}": v for k, v in train_terms.items()},
                      "val_auc": val_auc, **aucs, "val_f1": summary["f1"], "val_mcc": summary["mcc"],
                      "lr": self.optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0,
                      "best": improved}
            self.history.append(record)
            if self.dist.is_main:
                self._write_epoch(epoch, record, improved, val_auc, thresholds)
            D.barrier(self.dist)
            self.log(epoch_line(record, self.cfg.train.epochs))
        else:
            stopped_early = self.stopper.should_stop and epoch + 1 < self.cfg.train.epochs
        seconds = time.perf_counter() - start
        if self.dist.is_main:
            self._plot()
        return TrainResult(self.run, self.stopper.best_epoch + 1, self.stopper.best, len(self.history), seconds,
                           seen / seconds if seconds > 0 else 0.0, self.history, stopped_early,
                           self.dist.is_main)

    def _write_epoch(self, epoch: int, record: dict[str, Any], improved: bool, val_auc: float,
                     thresholds: np.ndarray) -> None:
        """last = this epoch with thresholds chosen on val for it; best = the same when it improved."""
        extra = {"epoch": epoch + 1, "val_auc": val_auc, "thresholds": np.asarray(thresholds).tolist(),
                 "threshold_metric": self.cfg.eval.threshold_metric,
                 "thresholds_chosen_on": self.cfg.train.select_on, "selected_on": self.cfg.train.select_on,
                 "data": str(data_paths(self.cfg.data.path)[0]), "intensity_rule": intensity_rule_of(self.train_split.manifest),
                 "intensity_containers": containers_of(self.train_split.manifest, self.train_split.root),
                 "precision": self.precision.record()}
        if isinstance(self.train_split, CombinedSplit):
            extra["data_sources"] = [str(r) for r in self.train_split.roots]
        save_checkpoint(self.run, "last", self.model, self.cfg, extra)
        crash_point("train:between-last-and-best")
        if improved:
            save_checkpoint(self.run, "best", self.model, self.cfg, extra)
        crash_point("train:between-checkpoints-and-state")
        write_state(self.folder.state, self._state(epoch))
        crash_point("train:between-state-and-metrics")
        append_line(self.folder.metrics, json.dumps(record))
        self._tensorboard(record)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        """TensorBoard scalars through one writer per run (skipped when tensorboard is not installed)."""
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard not installed
                self.writer = False
                return
            self.writer = SummaryWriter(str(self.folder.tensorboard))
        if self.writer is False:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def _plot(self) -> None:
        if self.history:
            plot_training_curves(self.history, self.folder.curves)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        D.shutdown(self.dist)


def describe_precision(precision: Precision) -> str:
    """One line: the precision in force (and why), and the CPU kernels the libraries will use."""
    facts = kernel_facts()
    return (f"{precision.line()}; CPU kernels: ATen {facts['cpu_capability']}, oneDNN {facts['onednn_max_cpu_isa']}, "
            f"MKL {facts['mkl_cbwr']}, {facts['threads']} threads")


def require_cpp_compiler() -> None:
    """torch.compile on a CPU builds C++ (torch's inductor): refuse in one line when there is no compiler."""
    import shutil

    compiler = os.environ.get("CXX") or "g++"
    if shutil.which(compiler) is None:
        raise UserError(f"train.compile=true on a CPU needs a C++ compiler for torch's inductor, and '{compiler}' "
                        "is not on PATH: install g++ (or set CXX) or set train.compile=false")


def note_precision_change(run: Path, precision: Precision, log) -> None:
    """A line when a resumed run computes in another precision than its last start (``auto`` on another
    machine); the history records both."""
    before = next((r.get("precision") for r in reversed(RunFolder(run).read_history())
                   if r.get("event") in ("start", "resume") and isinstance(r.get("precision"), dict)), None)
    if before and before.get("in_force") != precision.in_force:
        log(f"note: {run} computed in {before['in_force']} before and resumes in {precision.in_force} "
            f"({precision.device}); its history records both")


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    terms = " ".join(f"{k[6:]}={record[k]:.3f}" for k in loss_terms(record))
    f1 = record["val_f1"] if record["val_f1"] is not None else float("nan")
    mcc = record["val_mcc"] if record["val_mcc"] is not None else float("nan")
    star = " *" if record["best"] else ""
    return (f"epoch {record['epoch']:>3}/{epochs}  {terms}  val AUC={record['val_auc']:.3f} F1={f1:.3f} "
            f"MCC={mcc:.3f}  {record['seconds']:.1f}s{star}")


def train(cfg: Config, name: str | None = None, resume: bool = False, force: bool = False,
          runs_dir: Path = RUNS_DIR, progress: bool = True, log=print) -> TrainResult:
    """Train one run into ``runs_dir/<name>`` and return its summary.

    A new run refuses an existing, non-empty folder unless ``force``, which replaces it only when it
    is a hegl run no process is using. ``resume`` continues the run found there from its last
    finished epoch, with the run's own config (``cfg`` must equal it but for safe keys) and the same
    cache it started with. The run folder is locked while training (a second process on the same run,
    reader or writer, gets a UserError), and the cache is locked for reading.
    """
    rank = int(os.environ.get("RANK", "0"))
    main = rank == 0
    changes: dict[str, list[Any]] = {}
    locks: list = []
    if resume:
        if name is None:
            raise UserError("--resume needs --name of the run to continue")
        run = Path(runs_dir) / validate_run_name(name)
        if not run.is_dir():
            raise UserError(f"nothing to resume: run folder {run} not found")
        if not RunFolder(run).is_hegl_run():
            raise UserError(f"nothing to resume in {run}: not a hegl run (no {RunFolder(run).state.name})")
        locks = RunFolder(run).hold_for_training() if main else []
    elif main:
        run, locks = open_new_run(name, Path(runs_dir), force=force)
    else:  # other DDP ranks only read the run folder that rank 0 makes
        run = Path(runs_dir) / validate_run_name(name if name is not None else time.strftime("%Y%m%d-%H%M%S"))
    try:
        if resume:
            changes = check_resume_config(run, cfg)
        readings = []
        try:
            for path in data_paths(cfg.data.path):
                readings.append(cache_lock(path, shared=True).acquire())
        except BaseException:
            for reading in readings:
                reading.release()
            if main and not resume:
                remove_if_unused(run)  # the run never started: leave no folder behind
            raise
        try:
            return _train_locked(cfg, run, resume, changes, progress, log if main else (lambda *_: None), main)
        finally:
            for reading in reversed(readings):
                reading.release()
    finally:
        for lock in reversed(locks):
            lock.release()


def _train_locked(cfg: Config, run: Path, resume: bool, changes: dict[str, list[Any]], progress: bool, log,
                  main: bool) -> TrainResult:
    try:
        trainer = Trainer(cfg, run, resume, progress, log=log)
        if resume:
            check_resume_data(run, trainer.train_split)
            note_precision_change(run, trainer.precision, log)
    except BaseException:
        if main and not resume:
            remove_if_unused(run)  # leave no empty run folder behind a run that never started
        raise
    log(describe_supervision(trainer.train_split))
    log(describe_precision(trainer.precision))
    for root in trainer.train_split.roots:
        note = outdated_cache_note(read_manifest(root), root)
        if note:
            log(f"warning: {note}")
    try:
        if trainer.dist.is_main:
            trainer.folder.write_marker()
            cfg.dump(trainer.folder.config)
            trainer.folder.append_history("resume" if resume else "start", epoch=trainer.start_epoch + 1,
                                          changed=changes, **data_facts(trainer.train_split),
                                          precision=trainer.precision.record(), kernels=kernel_facts())
            mark_latest(run)
        return trainer.fit()
    finally:
        trainer.close()
