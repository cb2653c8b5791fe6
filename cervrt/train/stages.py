"""Training stages: what one pass of the training loop trains, on which patches, judged by what.

- ``full``: the model's own objective on the pixel-annotated patches S0 (segmentation loss, plus
  the patch classification CE for Ensemble-A's joint training).
- ``classify``: patch classification CE only, on S0 plus, when given, pseudo-labelled patches
  S_p (:mod:`cervrt.train.pseudo_label`). The patch classifier trains whole; Ensemble-A trains its
  encoder and assisted block (the segmentation layers get no gradient and stay as they were).
  Validation: patch accuracy and balanced accuracy (the checkpoint score) on the held-out regions'
  patches.
- ``segment``: the segmentation loss on S0 with the encoder and the classification branch frozen
  (their BatchNorm statistics too); validation as ``full``.

Ensemble-A's weakly supervised training (MTCHI Sec. IV-D) is ``classify`` then ``segment``: the
paper's "first, the mixed training set S trains the ResNet backbone and the assisted block; second,
the classification branch is fixed and the rest segmentation layers are trained on S0".
:func:`plan_stages` picks the stages from a training config.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD
from cervrt.errors import CervrtError
from cervrt.models import get_spec
from cervrt.train.data import PatchDataset, Region

__all__ = [
    "MixedPatchDataset",
    "Stage",
    "classification_metrics",
    "freeze_for",
    "load_stage_start",
    "plan_stages",
    "stage_dataset",
    "stage_epochs",
    "stage_loss",
    "stage_out",
    "train_mode",
]

#: The checkpoint score of each stage (higher is better).
SCORE_KEYS = {"full": "dice", "classify": "balanced_accuracy", "segment": "dice"}
#: Modules a frozen classification branch consists of, besides the encoder.
_CLASSIFIER_MODULES = ("assist", "head")


class Stage(str, enum.Enum):
    """What a pass of the training loop trains (see the module docstring)."""

    FULL = "full"
    CLASSIFY = "classify"
    SEGMENT = "segment"

    @property
    def score_key(self) -> str:
        return SCORE_KEYS[self.value]


def plan_stages(arch: str, pseudo_labels: str | None, cls_epochs: int | None) -> tuple[Stage, ...]:
    """The stages of a run: a classifier trains in ``classify``; a segmentation model with a patch
    classifier trains ``classify`` then ``segment`` when given pseudo-labels or classification
    epochs, else ``full``; pseudo-labels on a model without a classifier are an error, and so is an
    architecture another command trains (the spec's ``trained_by``)."""
    spec = get_spec(arch)
    if spec.trained_by != "train":
        raise CervrtError(f"{arch} is trained by `cervrt {spec.trained_by}`, not `cervrt train`")
    if spec.is_classifier:
        if cls_epochs is not None:
            raise CervrtError("cls_epochs is for the two-stage training of ensemble_a: use epochs for a classifier")
        return (Stage.CLASSIFY,)
    if pseudo_labels is None and cls_epochs is None:
        return (Stage.FULL,)
    if not spec.has_classifier:
        raise CervrtError(f"{arch} has no patch classifier to train on pseudo-labels or for cls_epochs: "
                          "use the arch ensemble_a (or classifier)")
    return (Stage.CLASSIFY, Stage.SEGMENT)


def _classifier_params(model: nn.Module) -> list[nn.Parameter]:
    modules = [model.encoder] + [getattr(model, n) for n in _CLASSIFIER_MODULES if hasattr(model, n)]
    return [p for m in modules for p in m.parameters()]


def freeze_for(model: nn.Module, stage: Stage) -> None:
    """``segment`` freezes the encoder and the classification branch (requires_grad False)."""
    if stage is Stage.SEGMENT:
        for p in _classifier_params(model):
            p.requires_grad_(False)


def train_mode(model: nn.Module, stage: Stage) -> None:
    """``model.train()``, keeping frozen parts in eval mode so their BatchNorm statistics stay fixed."""
    model.train()
    if stage is Stage.SEGMENT:
        for name in ("encoder", *_CLASSIFIER_MODULES):
            if hasattr(model, name):
                getattr(model, name).eval()


def stage_loss(stage: Stage, model: nn.Module, loss: nn.Module, images: torch.Tensor, masks: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """The training loss of one batch for ``stage``."""
    if stage is Stage.CLASSIFY:
        return F.cross_entropy(model.classify(images).float(), labels)
    out = model(images)
    if stage is Stage.FULL and isinstance(out, tuple):
        return loss(out[0].float(), out[1].float(), masks, labels).total
    seg = out[0] if isinstance(out, tuple) else out
    return loss(seg.float(), masks)


class MixedPatchDataset(ConcatDataset):
    """S0 followed by S_p, with ``set_epoch``, ``labels`` and ``class_counts`` like a PatchDataset."""

    def __init__(self, parts: Sequence[PatchDataset]) -> None:
        super().__init__(parts)
        self.parts = list(parts)
        self.class_counts = np.sum([p.class_counts for p in parts], axis=0)

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels for p in self.parts])

    def set_epoch(self, epoch: int) -> None:
        for part in self.parts:
            part.set_epoch(epoch)


def stage_dataset(stage: Stage, regions: Sequence[Region], config: Any) -> PatchDataset:
    """The training patches of a stage: S0 of ``regions``, plus S_p in ``classify`` with pseudo-labels
    (``config.weak_data`` set: ``TrainConfig.check`` makes sure)."""
    s0 = PatchDataset(regions, patch=config.patch_size, stride=config.stride, min_foreground=config.min_foreground,
                      augment=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=config.seed)
    if stage is not Stage.CLASSIFY or config.pseudo_labels is None:
        return s0
    from cervrt.train.pseudo_label import PseudoPatchDataset

    sp = PseudoPatchDataset(config.pseudo_labels, config.weak_data, patch=config.patch_size, augment=True,
                            seed=config.seed)
    return MixedPatchDataset([s0, sp])


@torch.no_grad()
def classification_metrics(model: nn.Module, dataset: PatchDataset, device: torch.device,
                           batch_size: int = 16) -> dict[str, Any]:
    """Patch accuracy, balanced accuracy (mean recall over the classes present) and per-class recall."""
    if len(dataset) == 0:
        return {}
    was_training = model.training
    model.eval()
    confusion = np.zeros((4, 4), np.int64)
    for images, _, labels in DataLoader(dataset, batch_size=batch_size):
        preds = model.classify(images.to(device)).argmax(dim=1).cpu().numpy()
        np.add.at(confusion, (labels.numpy(), preds), 1)
    model.train(was_training)
    support = confusion.sum(axis=1)
    recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return {"accuracy": float(np.trace(confusion) / confusion.sum()),
            "balanced_accuracy": float(np.nanmean(recall)),
            "recall": [None if np.isnan(r) else float(r) for r in recall], "patches": int(confusion.sum()),
            "confusion": confusion.tolist()}


def stage_epochs(config: Any, stage: Stage) -> int:
    """Epochs of a stage: ``cls_epochs`` (default ``epochs``) for the first of two stages, else ``epochs``."""
    two = len(plan_stages(config.arch, config.pseudo_labels, config.cls_epochs)) == 2
    return (config.cls_epochs or config.epochs) if two and stage is Stage.CLASSIFY else config.epochs


def stage_out(config: Any, stage: Stage) -> Path:
    """Run directory of a stage: ``OUT/stage1`` for the first of two stages, else ``OUT``."""
    two = len(plan_stages(config.arch, config.pseudo_labels, config.cls_epochs)) == 2
    return Path(config.out) / "stage1" if two and stage is Stage.CLASSIFY else Path(config.out)


def load_stage_start(model: nn.Module, config: Any, stage: Stage, fresh: bool = True) -> None:
    """Freeze what ``stage`` keeps fixed; a fresh ``segment`` stage first loads the ``classify`` stage's best.pt."""
    if stage is Stage.SEGMENT and fresh:
        from cervrt.checkpoint import load_checkpoint

        path = stage_out(config, Stage.CLASSIFY) / "best.pt"
        if not path.is_file():
            raise CervrtError(f"stage 2 starts from {path}, which does not exist: resume stage 1 from its last.pt")
        model.load_state_dict(load_checkpoint(path)["state_dict"])
    freeze_for(model, stage)
