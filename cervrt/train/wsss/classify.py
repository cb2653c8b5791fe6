"""WSSS phase 1: train the multi-label PDA patch classifier; resumable from ``OUT/last.pt``.

A run of its own rather than :mod:`cervrt.train.loop` (multi-label soft-margin loss on image-level
labels, no segmentation validation, the model told its epoch for the PDA schedule), on the same
epoch loop and optimiser set-up (:mod:`cervrt.train.epoch`). Optimiser as in the authors' code:
SGD (momentum 0.9, weight decay 5e-4), the new 1x1 layer at 10x the encoder's learning rate,
polynomial decay (power 0.9) per iteration. Each epoch ends with an atomic ``OUT/last.pt``
(weights, optimiser, schedule, the PDA coefficient, history, the config) and ``OUT/history.json``.
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
import torch.nn.functional as F
from torch.utils.data import DataLoader

from cervrt._io import ensure_writable_dir, write_json
from cervrt.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from cervrt.constants import MIN_FOREGROUND, MTCHI_MPP, PATCH_SIZE, PATCH_STRIDE
from cervrt.errors import CervrtError
from cervrt.glass import GlassThreshold
from cervrt.models import load_encoder_weights
from cervrt.models.wsss import PDASchedule, WSSSClassifier
from cervrt.train.epoch import poly, run_epoch, sgd
from cervrt.train.tensors import optimizer_step, resolve_device
from cervrt.train.wsss.data import ClassificationDataset, load_weak_source

__all__ = ["CLASSIFIER_ARCH", "ClassifierConfig", "classifier_from_checkpoint", "train_classifier"]

#: The ``arch`` of a phase-1 checkpoint (not a segmentation architecture, so not in the model registry).
CLASSIFIER_ARCH = "wsss_cls"
_ENCODERS = ("resnet34", "resnet101")
#: The multi-label soft-margin loss of all-zero logits: an epoch at exactly this loss has collapsed.
_DEAD_LOSS = math.log(2.0)


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything a phase-1 run depends on; stored in ``last.pt`` so that a re-run continues it."""

    data: str
    out: str
    labels: str | None = None
    encoder: str = "resnet34"
    epochs: int = 20
    batch_size: int = 20
    lr: float = 1e-2
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patch_size: int = PATCH_SIZE
    stride: int = PATCH_STRIDE
    min_foreground: float = MIN_FOREGROUND
    label_min_share: float = 0.01
    pda_start: int = 4
    pda_decay: float = 0.98
    pda_floor: float = 0.65
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    encoder_weights: str | None = None
    mpp: float = MTCHI_MPP
    time_limit_minutes: float | None = None

    def check(self) -> None:
        """Raise CervrtError for values no run can use."""
        for name in ("epochs", "batch_size", "patch_size", "stride"):
            if getattr(self, name) < 1:
                raise CervrtError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.encoder not in _ENCODERS:
            raise CervrtError(f"encoder {self.encoder!r} is not supported: choose one of {', '.join(_ENCODERS)}")
        if self.lr <= 0 or self.head_lr_mult <= 0:
            raise CervrtError(f"lr and head-lr-mult must be positive, got {self.lr} and {self.head_lr_mult}")
        self.schedule()

    def schedule(self) -> PDASchedule:
        return PDASchedule(self.pda_start, self.pda_decay, self.pda_floor)


def classifier_from_checkpoint(ckpt: dict[str, Any]) -> WSSSClassifier:
    """Rebuild a phase-1 classifier from its checkpoint (eval mode)."""
    if ckpt.get("arch") != CLASSIFIER_ARCH:
        raise CervrtError(f"expected a WSSS phase-1 classifier checkpoint ({CLASSIFIER_ARCH}), "
                          f"got {ckpt.get('arch')!r}: pass the last.pt of `cervrt wsss train-cls`")
    model = WSSSClassifier(**ckpt["arch_kwargs"], num_classes=len(ckpt["class_names"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


class _Run:
    def __init__(self, config: ClassifierConfig, resume: dict[str, Any] | None) -> None:
        config.check()
        self.config, self.device = config, resolve_device(config.device)
        torch.manual_seed(config.seed)
        self.model = WSSSClassifier(config.encoder).to(self.device)
        if config.encoder_weights and resume is None:
            load_encoder_weights(self.model.encoder, config.encoder_weights)
        source = load_weak_source(config.data, config.labels, patch=config.patch_size, stride=config.stride,
                                  min_foreground=config.min_foreground, label_min_share=config.label_min_share,
                                  glass=GlassThreshold())
        self.dataset = ClassificationDataset(source, augment=True, seed=config.seed)
        self.loader = DataLoader(self.dataset, batch_size=config.batch_size, shuffle=True, num_workers=config.workers,
                                 drop_last=len(self.dataset) > config.batch_size,
                                 generator=torch.Generator().manual_seed(config.seed))
        self.out = ensure_writable_dir(config.out)
        self.optimizer = sgd(self.model, config.lr, config.head_lr_mult, config.momentum, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, poly(config.epochs * len(self.loader)))
        self.start_epoch, self.history = 0, []
        if resume is not None:
            self.model.load_state_dict(resume["state_dict"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.scheduler.load_state_dict(resume["scheduler"])
            self.start_epoch, self.history = int(resume["epoch"]), list(resume.get("history", []))

    def train_epoch(self, epoch: int, deadline: float | None) -> tuple[dict[str, float], bool]:
        """Loss and exact-match accuracy (threshold 0.5) of 0-based ``epoch``; whether time ran out."""
        mu = self.config.schedule().mu(epoch + 1)
        self.model.set_pda(mu)
        self.model.train()
        self.dataset.set_epoch(epoch)
        exact: list[bool] = []

        def step(_: int, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
            images, targets = (t.to(self.device) for t in batch)
            logits = self.model(images)
            exact.extend(((logits.detach() > 0) == (targets > 0.5)).all(dim=1).tolist())
            return optimizer_step(F.multilabel_soft_margin_loss(logits, targets), self.optimizer, self.scheduler)

        losses, stopped = run_epoch(self.loader, step, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                                    deadline=deadline, postfix=lambda: {"mu": "off" if mu is None else f"{mu:.3f}"})
        return {"loss": float(np.mean(losses)), "exact_match": float(np.mean(exact)), "pda_mu": mu}, stopped

    def save(self, epoch: int) -> None:
        ckpt = build_checkpoint(self.model, CLASSIFIER_ARCH, {"encoder": self.config.encoder},
                                patch_size=self.config.patch_size, mpp=self.config.mpp, epoch=epoch,
                                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                                history=self.history, train_config=asdict(self.config),
                                train_patches=len(self.dataset))
        save_checkpoint(self.out / "last.pt", ckpt)
        write_json(self.out / "history.json", self.history)


def _resume_state(config: ClassifierConfig) -> tuple[ClassifierConfig, dict[str, Any] | None]:
    """Continue ``OUT/last.pt`` when it exists: its settings, with the epochs and run limits of ``config``."""
    last = Path(config.out) / "last.pt"
    if not last.is_file():
        return config, None
    ckpt = load_checkpoint(last)
    if ckpt.get("arch") != CLASSIFIER_ARCH or "train_config" not in ckpt:
        raise CervrtError(f"{last} is not a WSSS phase-1 run: choose another output directory")
    kept = {k: getattr(config, k) for k in ("out", "epochs", "device", "workers", "time_limit_minutes")}
    return replace(ClassifierConfig(**ckpt["train_config"]), **kept), ckpt  # a moved run directory still works


def train_classifier(config: ClassifierConfig, log: Callable[[str], None] = print) -> Path:
    """Train (or continue) phase 1; returns the path of ``last.pt``."""
    config, ckpt = _resume_state(config)
    if ckpt is not None and ckpt["epoch"] >= config.epochs:
        log(f"{config.out}/last.pt already has {ckpt['epoch']} of {config.epochs} epochs: nothing to do "
            "(pass --epochs N with a larger N to train on)")
        return Path(config.out) / "last.pt"
    run = _Run(config, ckpt)
    counts = np.sum([s.multi_hot() for s in run.dataset.source.samples], axis=0).astype(int).tolist()
    log(f"phase 1: {config.encoder} PDA classifier on {len(run.dataset)} patches of {config.patch_size} px "
        f"(patches per class 1..4: {counts}); device {run.device}"
        + (f"; continuing after epoch {run.start_epoch}" if ckpt else ""))
    start = time.monotonic()
    deadline = start + config.time_limit_minutes * 60 if config.time_limit_minutes else None
    for epoch in range(run.start_epoch, config.epochs):
        stats, stopped = run.train_epoch(epoch, deadline)
        if abs(stats["loss"] - _DEAD_LOSS) < 1e-6:
            raise CervrtError(
                f"phase 1 collapsed in epoch {epoch + 1}: every output is 0 (loss ln 2), and so is every gradient "
                "(with PDA on: every class activation map is negative, so the attention is 0). Start again in a new "
                "--out with a lower --lr and --head-lr-mult (from scratch, --lr 1e-3 --head-lr-mult 1 learns on "
                "cervrt synth) or with --encoder-weights")
        run.history.append({"epoch": epoch + 1, **stats, "seconds": time.monotonic() - start})
        run.save(epoch + 1)
        mu = "off" if stats["pda_mu"] is None else f"{stats['pda_mu']:.4f}"
        log(f"epoch {epoch + 1}  loss {stats['loss']:.4f}  exact match {stats['exact_match']:.3f}  PDA mu {mu}")
        if stopped:
            log(f"time limit of {config.time_limit_minutes} min reached: stopped after epoch {epoch + 1}")
            break
    return run.out / "last.pt"
