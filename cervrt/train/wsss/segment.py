"""WSSS phase 2: HSP-Net on the three pseudo masks (multi-layer pseudo-supervision), then the gated artifact.

Training runs through :func:`cervrt.train.loop.train` with two hooks: the dataset serves each patch
with its three pseudo masks and the loss is ``0.2 CE(layer2) + 0.2 CE(layer3) + 0.6 CE(layer4)``
(paper Eq. 13; the base loss is any of :mod:`cervrt.train.losses`, CE by default). Re-running
continues ``OUT/last.pt``. The run ends by assembling ``OUT/wsss_seg.pt``: the segmentation weights
of ``last.pt`` plus the phase-1 classifier as one ``wsss_seg`` model, with ``gate_epsilon`` (0.1)
so that exported artifacts carry the classification gate for the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cervrt.checkpoint import build_checkpoint, file_sha256, load_checkpoint, save_checkpoint
from cervrt.constants import GATE_EPSILON
from cervrt.errors import CervrtError
from cervrt.models import model_from_checkpoint
from cervrt.models.wsss import WSSSSegmenter, apply_gate
from cervrt.train.data import Region
from cervrt.train.loop import TrainConfig, TrainHooks, train
from cervrt.train.losses import build_loss
from cervrt.train.wsss.cam import LAYER_WEIGHTS
from cervrt.train.wsss.classify import CLASSIFIER_ARCH
from cervrt.train.wsss.data import PseudoMaskDataset

__all__ = ["MultiLayerPseudoLoss", "SegmenterConfig", "assemble_wsss", "gated", "train_segmenter"]

WSSS_ARCH = "wsss_seg"


class MultiLayerPseudoLoss(nn.Module):
    """``sum_i weights[i] * base(logits, targets[:, i])`` over the pseudo masks of the Grad-CAM layers.

    ``logits`` (N, C, H, W), ``targets`` int64 (N, L, H, W) with L = len(weights).
    """

    def __init__(self, base: nn.Module, weights: Sequence[float] = LAYER_WEIGHTS) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights):
            raise CervrtError(f"layer weights must be non-negative numbers, got {list(weights)}")
        self.base, self.weights = base, tuple(float(w) for w in weights)

    def set_progress(self, fraction: float) -> None:
        """Pass training progress on to the base loss."""
        if hasattr(self.base, "set_progress"):
            self.base.set_progress(fraction)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        expected = (logits.shape[0], len(self.weights), *logits.shape[2:])
        if tuple(targets.shape) != expected:
            raise CervrtError(f"pseudo masks must have shape {expected} (one per layer), got {tuple(targets.shape)}")
        return sum(w * self.base(logits, targets[:, i]) for i, w in enumerate(self.weights))


@dataclass(frozen=True)
class SegmenterConfig:
    """Settings of ``cervrt wsss train-seg``."""

    pseudo: str
    classifier: str
    out: str
    encoder: str = "resnet34"
    epochs: int = 30  # the authors' stage 2 (and on cervrt synth, 30 epochs beat 12 by 0.15 mIoU)
    batch_size: int = 8
    loss: str = "ce"
    lr: float = 1e-3
    val_fraction: float = 0.0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    encoder_weights: str | None = None
    time_limit_minutes: float | None = None
    gate_epsilon: float = GATE_EPSILON


def _pseudo_dataset(regions: list[Region], config: TrainConfig) -> PseudoMaskDataset:
    return PseudoMaskDataset(regions, augment=True, seed=config.seed)


def _pseudo_loss(config: TrainConfig) -> nn.Module:
    return MultiLayerPseudoLoss(build_loss(config.loss))


#: What phase 2 swaps into the segmentation loop.
HOOKS = TrainHooks(dataset=_pseudo_dataset, loss=_pseudo_loss)


def _patch_size(pseudo: str) -> int:
    meta = Path(pseudo) / "pseudo.json"
    if not meta.is_file():
        raise CervrtError(f"{pseudo} holds no pseudo.json: run `cervrt wsss pseudo-masks --out {pseudo}` first")
    return int(json.loads(meta.read_text())["patch_size"])


def _train_config(config: SegmenterConfig, mpp: float) -> TrainConfig:
    patch = _patch_size(config.pseudo)
    return TrainConfig(data=config.pseudo, out=config.out, arch="hspnet", encoder=config.encoder,
                       epochs=config.epochs, batch_size=config.batch_size, loss=config.loss, lr=config.lr,
                       patch_size=patch, stride=patch, val_fraction=config.val_fraction, seed=config.seed,
                       workers=config.workers, device=config.device, amp=config.amp,
                       encoder_weights=config.encoder_weights, mpp=mpp, time_limit_minutes=config.time_limit_minutes)


def assemble_wsss(seg: dict[str, Any], cls: dict[str, Any], gate_epsilon: float = GATE_EPSILON,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``wsss_seg`` checkpoint from a phase-2 HSP-Net checkpoint and a phase-1 classifier checkpoint."""
    if seg.get("arch") != "hspnet" or cls.get("arch") != CLASSIFIER_ARCH:
        raise CervrtError(f"expected an hspnet and a {CLASSIFIER_ARCH} checkpoint, got {seg.get('arch')!r} "
                          f"and {cls.get('arch')!r}")
    if not 0.0 <= gate_epsilon < 1.0:
        raise CervrtError(f"gate epsilon must be in [0, 1), got {gate_epsilon}")
    kwargs = {"encoder": seg["arch_kwargs"]["encoder"], "cls_encoder": cls["arch_kwargs"]["encoder"]}
    model = WSSSSegmenter(**kwargs, num_classes=len(seg["class_names"]))
    model.segmenter.load_state_dict(seg["state_dict"])
    model.classifier.load_state_dict(cls["state_dict"])
    return build_checkpoint(model, WSSS_ARCH, kwargs, patch_size=seg["patch_size"], mpp=seg["mpp"],
                            mean=tuple(seg["mean"]), std=tuple(seg["std"]), gate_epsilon=float(gate_epsilon),
                            epoch=seg.get("epoch"), metrics=seg.get("metrics", {}), wsss=provenance or {})


def train_segmenter(config: SegmenterConfig, log: Callable[[str], None] = print) -> Path:
    """Train (or continue) phase 2 and write ``OUT/wsss_seg.pt``; returns its path."""
    cls_ckpt = load_checkpoint(config.classifier)
    if cls_ckpt.get("arch") != CLASSIFIER_ARCH:
        raise CervrtError(f"{config.classifier} is not a WSSS phase-1 classifier: pass the last.pt of "
                          "`cervrt wsss train-cls`")
    train_config = _train_config(config, float(cls_ckpt["mpp"]))
    last = Path(config.out) / "last.pt"
    done = last.is_file() and load_checkpoint(last).get("epoch", 0) >= config.epochs
    if done:
        log(f"{last} already has its {config.epochs} epochs: assembling the artifact only")
    elif last.is_file():
        keep = {"epochs": config.epochs, "device": config.device, "workers": config.workers,
                "time_limit_minutes": config.time_limit_minutes}
        train(resume=str(last), overrides=keep, log=log, hooks=HOOKS)
    else:
        train(train_config, log=log, hooks=HOOKS)
    provenance = {"classifier": str(config.classifier), "classifier_sha256": file_sha256(config.classifier),
                  "pseudo_masks": str(config.pseudo), "layer_weights": list(LAYER_WEIGHTS)}
    target = Path(config.out) / f"{WSSS_ARCH}.pt"
    save_checkpoint(target, assemble_wsss(load_checkpoint(last), cls_ckpt, config.gate_epsilon, provenance))
    log(f"wrote {target}: HSP-Net {train_config.encoder} + PDA classifier, classification gate epsilon "
        f"{config.gate_epsilon} (export it with `cervrt export {target}`)")
    return target


class _Gated(nn.Module):
    """A ``wsss_seg`` model whose ``predict_proba`` applies the gate, for torch-side evaluation."""

    def __init__(self, model: nn.Module, epsilon: float) -> None:
        super().__init__()
        self.model, self.epsilon = model, epsilon

    def predict_proba(self, x: Tensor) -> tuple[Tensor, Tensor]:
        probs, class_probs = self.model.predict_proba(x)
        return apply_gate(probs, class_probs, self.epsilon), class_probs


def gated(checkpoint: dict[str, Any], epsilon: float | None = None) -> nn.Module:
    """The model of a ``wsss_seg`` checkpoint with the gate applied in ``predict_proba`` (evaluation in torch)."""
    if checkpoint.get("arch") != WSSS_ARCH:
        raise CervrtError(f"the gate needs a {WSSS_ARCH} checkpoint, got {checkpoint.get('arch')!r}")
    eps = checkpoint.get("gate_epsilon", GATE_EPSILON) if epsilon is None else epsilon
    return _Gated(model_from_checkpoint(checkpoint), float(eps)).eval()
