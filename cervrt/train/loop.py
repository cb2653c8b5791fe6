"""The training loop: the HSP-Net paper's optimiser, per-epoch validation, atomic resumable checkpoints.

Defaults follow the HSP-Net paper: SGD with momentum 0.9, the encoder at lr 1e-3 and every other
block at 10x, cosine annealing (per iteration) to zero over the run. Weight decay (1e-4) is cervrt's
choice; the paper does not give one. Each epoch ends with a sliding-window validation on held-out
regions, ``RUN/last.pt`` and (when the validation Dice improves) ``RUN/best.pt``, both written
atomically, and ``RUN/history.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cervrt._io import ensure_writable_dir, write_json
from cervrt.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from cervrt.constants import MIN_FOREGROUND, MTCHI_MPP, PATCH_SIZE, PATCH_STRIDE
from cervrt.errors import CervrtError
from cervrt.models import create_model, get_spec, load_encoder_weights
from cervrt.runtime.tiling import BlendMode
from cervrt.train.data import PatchDataset, list_regions, load_region, split_regions
from cervrt.train.epoch import cosine, run_epoch, sgd
from cervrt.train.evaluate import SlidingWindow, evaluate_regions
from cervrt.train.losses import EnsembleLoss, build_loss
from cervrt.train.stages import (
    Stage,
    classification_metrics,
    load_stage_start,
    plan_stages,
    stage_dataset,
    stage_epochs,
    stage_loss,
    stage_out,
    train_mode,
)
from cervrt.train.tensors import optimizer_step, resolve_device

__all__ = ["TrainConfig", "TrainHooks", "TrainResult", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in its checkpoints so ``--resume`` can continue."""

    data: str
    out: str
    arch: str = "hspnet"
    encoder: str | None = None
    epochs: int = 30
    batch_size: int = 16
    loss: str = "ae"
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    patch_size: int = PATCH_SIZE
    stride: int = PATCH_STRIDE
    min_foreground: float = MIN_FOREGROUND
    val_fraction: float = 0.2
    val_stride: int | None = None
    val_blend: str = BlendMode.GAUSSIAN.value
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    encoder_weights: str | None = None
    mpp: float = MTCHI_MPP
    time_limit_minutes: float | None = None
    pseudo_labels: str | None = None  # S_p CSV (cervrt pseudo-label): trains the patch classifier only
    weak_data: str | None = None  # the weak images/ the pseudo-labelled patches come from
    cls_epochs: int | None = None  # ensemble_a: first train encoder + classifier this long (stage 1)

    def check(self) -> None:
        """Raise CervrtError for values no run can use."""
        for name in ("epochs", "batch_size", "patch_size", "stride"):
            if getattr(self, name) < 1:
                raise CervrtError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise CervrtError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise CervrtError(f"lr must be positive, got {self.lr}")
        if self.cls_epochs is not None and self.cls_epochs < 1:
            raise CervrtError(f"cls-epochs must be at least 1, got {self.cls_epochs}")
        plan_stages(self.arch, self.pseudo_labels, self.cls_epochs)
        if self.pseudo_labels and not self.weak_data:
            raise CervrtError("pseudo_labels needs weak_data, the directory whose images/ the pseudo-labelled "
                              "patches come from")


@dataclass(frozen=True)
class TrainHooks:
    """Swap this loop's patch dataset and loss (WSSS phase 2 trains on pseudo masks this way).

    ``dataset(train_regions, config)`` returns a map-style dataset of ``(image, target, label)``
    with ``set_epoch(epoch)``; ``loss(config)`` returns a module called as ``loss(logits, target)``
    with ``set_progress(fraction)``. Pass the same hooks again to resume.
    """

    dataset: Callable[[list[Any], TrainConfig], Any]
    loss: Callable[[TrainConfig], nn.Module]


@dataclass
class TrainResult:
    """Where the run's files are and how it went."""

    out: Path
    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, Any]
    last_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    train_patches: int
    val_regions: int
    stopped: bool = False
    score_key: str = "dice"  # the metric best.pt was chosen by


def _arch_kwargs(config: TrainConfig) -> dict[str, Any]:
    spec = get_spec(config.arch)
    kwargs = {} if config.encoder is None else {"encoder": config.encoder}
    return {k: v for k, v in spec.resolve(kwargs).items() if k != "num_classes"}


class _Run:
    """One training run's state: model, data, optimiser, schedule, loss, history."""

    def __init__(self, config: TrainConfig, resume: dict[str, Any] | None, hooks: TrainHooks | None = None,
                 stage: Stage = Stage.FULL) -> None:
        config.check()
        self.stage, self.epochs = stage, stage_epochs(config, stage)
        self.config, self.hooks = config, hooks
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.arch_kwargs = _arch_kwargs(config)
        self.model = create_model(config.arch, **self.arch_kwargs).to(self.device)
        if config.encoder_weights and resume is None:
            load_encoder_weights(self.model.encoder, config.encoder_weights)
        load_stage_start(self.model, config, stage, fresh=resume is None)
        self._load_data()
        self.out = ensure_writable_dir(stage_out(config, stage))
        self.steps_per_epoch = len(self.loader)
        self.optimizer = sgd(self.model, config.lr, config.head_lr_mult, config.momentum, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine(self.epochs * self.steps_per_epoch))
        self.amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        seg_loss = hooks.loss(config) if hooks else build_loss(config.loss)
        joint = stage is Stage.FULL and getattr(self.model, "has_classifier", False)
        self.loss = EnsembleLoss(seg_loss) if joint else seg_loss
        self.start_epoch, self.history, self.best = 0, [], (-math.inf, 0, {})
        if resume is not None:
            self._restore(resume)

    def _load_data(self) -> None:
        c = self.config
        regions = list_regions(c.data)
        train_regions, val_regions = split_regions(regions, c.val_fraction, c.seed) if c.val_fraction else (regions, [])
        make = self.hooks.dataset if self.hooks else lambda regions, cfg: stage_dataset(self.stage, regions, cfg)
        self.dataset = make(train_regions, c)
        if len(self.dataset) == 0:
            raise CervrtError(f"no training patch of {c.patch_size} px has {c.min_foreground:.0%} foreground "
                              f"in {c.data}")
        generator = torch.Generator().manual_seed(c.seed)
        self.loader = DataLoader(self.dataset, batch_size=c.batch_size, shuffle=True,
                                 drop_last=len(self.dataset) > c.batch_size, num_workers=c.workers,
                                 generator=generator, pin_memory=self.device.type == "cuda")
        self.val = [(r.name, *load_region(r)) for r in val_regions]
        self.val_patches = PatchDataset(val_regions, patch=c.patch_size, stride=c.val_stride or c.patch_size,
                                        min_foreground=c.min_foreground) if self.stage is Stage.CLASSIFY else None

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = list(ckpt.get("history", []))
        self.best = (float(ckpt.get("best_score", -math.inf)), int(ckpt.get("best_epoch", 0)),
                     ckpt.get("best_metrics", {}))

    def _step(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> float:
        images, masks, labels = (t.to(self.device, non_blocking=True) for t in (images, masks, labels))
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss = stage_loss(self.stage, self.model, self.loss, images, masks, labels)
        return optimizer_step(loss, self.optimizer, self.scheduler, self.scaler)

    def train_epoch(self, epoch: int, deadline: float | None) -> tuple[float, bool]:
        """Mean training loss of one epoch and whether the time limit cut it short."""
        train_mode(self.model, self.stage)
        self.dataset.set_epoch(epoch)

        def step(index: int, batch: tuple[torch.Tensor, ...]) -> float:
            self.loss.set_progress((epoch + index / self.steps_per_epoch) / self.epochs)
            return self._step(*batch)

        losses, stopped = run_epoch(self.loader, step, desc=f"{self.stage.value} epoch {epoch + 1}/{self.epochs}",
                                    deadline=deadline)
        return float(np.mean(losses)), stopped

    def validate(self) -> dict[str, Any]:
        if not self.val:
            return {}
        c = self.config
        if self.stage is Stage.CLASSIFY:
            return classification_metrics(self.model, self.val_patches, self.device, c.batch_size)
        sw = SlidingWindow(patch=c.patch_size, stride=c.val_stride or c.patch_size, blend=BlendMode.parse(c.val_blend),
                           batch_size=c.batch_size)
        overall, _ = evaluate_regions(self.model, self.val, sw, self.device)
        return overall

    def save(self, epoch: int, metrics: dict[str, Any]) -> None:
        score = metrics.get(self.stage.score_key, math.nan)
        score = -math.inf if score is None or math.isnan(score) else float(score)
        improved = score > self.best[0] or not self.history[:-1]
        if improved:
            self.best = (score, epoch, metrics)
        ckpt = build_checkpoint(
            self.model, self.config.arch, self.arch_kwargs, patch_size=self.config.patch_size, mpp=self.config.mpp,
            epoch=epoch, optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.amp else None, metrics=metrics, history=self.history,
            best_score=self.best[0], best_epoch=self.best[1], best_metrics=self.best[2],
            train_config=asdict(self.config), stage=self.stage.value,
        )
        save_checkpoint(self.out / "last.pt", ckpt)
        if improved:
            save_checkpoint(self.out / "best.pt", ckpt)
        write_json(self.out / "history.json", self.history)


def _resume_config(path: str, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None, Stage]:
    """The run's config, the checkpoint to continue (None: its stage is done, start the next) and the stage."""
    ckpt = load_checkpoint(path)
    if "train_config" not in ckpt or "optimizer" not in ckpt:
        raise CervrtError(f"{path} has no training state to resume from (was it exported or stripped?)")
    config = replace(TrainConfig(**ckpt["train_config"]), **overrides)
    stage = Stage(ckpt.get("stage", Stage.FULL.value))
    stages = plan_stages(config.arch, config.pseudo_labels, config.cls_epochs)
    if ckpt["epoch"] >= stage_epochs(config, stage):
        if stage is not stages[-1]:
            return config, None, stages[stages.index(stage) + 1]
        done = ckpt["epoch"]
        raise CervrtError(f"{path} already finished its {config.epochs} epochs: resume with epochs > {done}")
    return config, ckpt, stage


def _train_stage(run: _Run, log: Callable[[str], None], start: float, deadline: float | None) -> TrainResult:
    config = run.config
    log(f"training {config.arch} ({run.arch_kwargs}, stage {run.stage.value}) on {len(run.dataset)} patches of "
        f"{config.patch_size} px from {config.data}; {len(run.val)} validation regions; device {run.device}")
    epoch, metrics, stopped = run.start_epoch, {}, False
    for epoch in range(run.start_epoch, run.epochs):
        train_loss, stopped = run.train_epoch(epoch, deadline)
        metrics = run.validate()
        run.history.append({"epoch": epoch + 1, "train_loss": train_loss, "seconds": time.monotonic() - start,
                            **{k: metrics[k] for k in _LOGGED if k in metrics}})
        run.save(epoch + 1, metrics)
        log(_epoch_line(run.history[-1]))
        if stopped:
            log(f"time limit of {config.time_limit_minutes} min reached: stopped after epoch {epoch + 1}")
            break
    return TrainResult(out=run.out, epochs_run=epoch + 1 - run.start_epoch, best_epoch=run.best[1],
                       best_metrics=run.best[2], last_metrics=metrics, history=run.history,
                       seconds=time.monotonic() - start, train_patches=len(run.dataset), val_regions=len(run.val),
                       stopped=stopped, score_key=run.stage.score_key)


def train(config: TrainConfig | None = None, resume: str | None = None, overrides: dict[str, Any] | None = None,
          log: Callable[[str], None] = print, hooks: TrainHooks | None = None) -> TrainResult:
    """Train (or resume) a model through its stages (see :mod:`cervrt.train.stages`); returns the last
    stage's result. A two-stage run resumes from either stage's ``last.pt`` and continues to the end."""
    ckpt, first = None, None
    if resume is not None:
        config, ckpt, first = _resume_config(resume, overrides or {})
    if config is None:
        raise CervrtError("train needs a config or a checkpoint to resume")
    config.check()
    stages = plan_stages(config.arch, config.pseudo_labels, config.cls_epochs)
    start = time.monotonic()
    deadline = start + config.time_limit_minutes * 60 if config.time_limit_minutes else None
    result = None
    for stage in stages[stages.index(first) if first else 0:]:
        result = _train_stage(_Run(config, ckpt, hooks, stage), log, start, deadline)
        ckpt = None
        if result.stopped:
            break
    return result


_LOGGED = ("dice", "miou", "ap", "wp", "fwiou", "dice_per_class", "accuracy", "balanced_accuracy")


def _epoch_line(entry: dict[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}", f"loss {entry['train_loss']:.4f}"]
    parts += [f"{k} {entry[k]:.4f}" for k in ("dice", "miou", "ap", "wp", "balanced_accuracy") if k in entry]
    return "  ".join(parts)
