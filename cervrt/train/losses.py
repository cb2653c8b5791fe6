"""Training losses: cross entropy, cervrt's AE-loss reconstruction and the Ensemble-A joint loss.

Segmentation losses take logits (N, C, *spatial) and int64 targets (N, *spatial) and return the mean
over pixels. Both registered losses share one small protocol: ``loss(logits, target)`` plus
``set_progress(fraction)`` / ``set_epoch(epoch, total_epochs)``, a no-op for CE, so the training
loop can drive any of them the same way. ``build_loss(name)`` picks one by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cervrt.constants import NUM_CLASSES
from cervrt.errors import CervrtError

__all__ = [
    "LOSS_NAMES",
    "AELoss",
    "CELoss",
    "EnsembleLoss",
    "EnsembleLossOutput",
    "build_loss",
    "ce_loss",
    "grade_distances",
]


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise CervrtError(f"num_classes must be an integer >= 2 (background plus classes), got {num_classes!r}")
    return num_classes


def _check_logits_target(logits: Tensor, target: Tensor, num_classes: int | None = None) -> None:
    """Shapes and dtype only: a range check would force a device sync on every step."""
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise CervrtError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match: "
            "expected logits (N, C, H, W) and target (N, H, W)"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise CervrtError(f"logits have {logits.shape[1]} channels but the loss was built for {num_classes} classes")
    if target.dtype != torch.long:
        raise CervrtError(f"target must be int64 class indices, got {target.dtype}")


def _progress_to_fraction(epoch: int, total_epochs: int) -> float:
    if total_epochs <= 0 or not 0 <= epoch <= total_epochs:
        raise CervrtError(f"need 0 <= epoch <= total_epochs and total_epochs > 0, got {epoch} of {total_epochs}")
    return epoch / total_epochs


def _check_cls(seg_logits: Tensor, cls_logits: Tensor, labels: Tensor) -> None:
    expected = (seg_logits.shape[0], seg_logits.shape[1] - 1)
    if cls_logits.dim() != 2 or tuple(cls_logits.shape) != expected:
        raise CervrtError(
            f"class logits must have shape {expected} (one per foreground class), got {tuple(cls_logits.shape)}"
        )
    if labels.shape != (seg_logits.shape[0],) or labels.dtype != torch.long:
        raise CervrtError(
            f"patch labels must be int64 of shape ({seg_logits.shape[0]},), got {labels.dtype} {tuple(labels.shape)}"
        )


def grade_distances(num_classes: int = NUM_CLASSES) -> Tensor:
    """AE-loss weights W[t, j] = |j - t| / (num_classes - 2) for t, j >= 1; row and column 0 are 0.

    The denominator is the largest grade distance (3 for normal..CIN 3), so the farthest
    confusion weighs 1. With a single foreground class there is nothing to penalise.
    """
    num_classes = _check_num_classes(num_classes)
    grades = torch.arange(num_classes, dtype=torch.float32)
    weights = (grades[None, :] - grades[:, None]).abs() / max(1, num_classes - 2)
    weights[0, :] = 0.0
    weights[:, 0] = 0.0
    return weights


def ce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Plain cross entropy of logits (N, C, H, W) against int64 targets (N, H, W), mean over pixels."""
    _check_logits_target(logits, target)
    return F.cross_entropy(logits, target)


class _ScheduledLoss(nn.Module):
    """Shared protocol: a class count and the fraction of training done (0..1)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        """Tell the loss how much of training is done: 0 at the start, 1 at the end."""
        if not 0.0 <= fraction <= 1.0:
            raise CervrtError(f"training progress must lie in 0..1, got {fraction}")
        self.progress = float(fraction)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Same as ``set_progress(epoch / total_epochs)``; epochs count from 0."""
        self.set_progress(_progress_to_fraction(epoch, total_epochs))


class CELoss(_ScheduledLoss):
    """Cross entropy as a module; ``set_progress`` is accepted and ignored."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits_target(logits, target, self.num_classes)
        return F.cross_entropy(logits, target)


class AELoss(_ScheduledLoss):
    """AE-loss (adaptive elastic loss) as reconstructed by cervrt.

    AE-loss is reference [23] of the HSP-Net paper ([45] of the MTCHI paper; Meng et al., ICASSP 2020).
    Its definition is not published in any text reachable by this project, so this is NOT the authors'
    loss: it is cervrt's reconstruction, as decided by the project's SPEC. For a pixel with foreground
    target t and softmax probabilities p::

        L = CE + lambda * sum_{j != t, j >= 1} (|j - t| / (C - 2)) * p_j

    (C - 2 = 3 for the five MTCHI classes, the largest grade distance); background pixels (t = 0)
    get plain CE. Putting probability on an adjacent grade thus costs less than on a distant one,
    matching the WP metric. lambda = min(1, 2 * progress) ramps from 0 to 1 over the first half of
    training: call ``set_progress`` or ``set_epoch`` every epoch, or the loss stays plain CE.
    """

    distances: Tensor

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(num_classes)
        self.register_buffer("distances", grade_distances(num_classes), persistent=False)

    @property
    def lam(self) -> float:
        """The current weight lambda of the grade-distance term."""
        return min(1.0, 2.0 * self.progress)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits_target(logits, target, self.num_classes)
        log_p = F.log_softmax(logits, dim=1)
        ce = F.nll_loss(log_p, target, reduction="none")
        if self.lam == 0.0:
            return ce.mean()
        weights = self.distances.to(log_p.device, log_p.dtype)[target].movedim(-1, 1)
        penalty = (weights * log_p.exp()).sum(dim=1)
        return (ce + self.lam * penalty).mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, lam={self.lam:.3f}"


@dataclass(frozen=True)
class EnsembleLossOutput:
    """The joint loss and its two parts (the parts detached, for logging)."""

    total: Tensor
    seg: Tensor
    cls: Tensor


class EnsembleLoss(nn.Module):
    """Ensemble-A's joint loss: segmentation loss + cls_weight * patch classification CE.

    ``forward(seg_logits (N, C, H, W), cls_logits (N, C - 1), target (N, H, W), labels (N,))``;
    labels are 0..C-2, a patch's largest non-background class minus 1.
    """

    def __init__(self, seg_loss: Callable[[Tensor, Tensor], Tensor], cls_weight: float = 1.0) -> None:
        super().__init__()
        if not cls_weight >= 0.0:
            raise CervrtError(f"cls_weight must be >= 0, got {cls_weight}")
        self.seg_loss = seg_loss
        self.cls_weight = float(cls_weight)

    def set_progress(self, fraction: float) -> None:
        """Pass training progress on to the segmentation loss, if it uses it."""
        if hasattr(self.seg_loss, "set_progress"):
            self.seg_loss.set_progress(fraction)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Same as ``set_progress(epoch / total_epochs)``."""
        self.set_progress(_progress_to_fraction(epoch, total_epochs))

    def forward(self, seg_logits: Tensor, cls_logits: Tensor, target: Tensor, labels: Tensor) -> EnsembleLossOutput:
        _check_cls(seg_logits, cls_logits, labels)
        seg = self.seg_loss(seg_logits, target)
        cls = F.cross_entropy(cls_logits, labels)
        return EnsembleLossOutput(total=seg + self.cls_weight * cls, seg=seg.detach(), cls=cls.detach())


_LOSSES: dict[str, Callable[[int], nn.Module]] = {"ce": CELoss, "ae": AELoss}

#: Names accepted by ``build_loss``.
LOSS_NAMES: tuple[str, ...] = tuple(sorted(_LOSSES))


def build_loss(name: str, num_classes: int = NUM_CLASSES) -> nn.Module:
    """The segmentation loss registered as ``name`` ("ce" or "ae") for ``num_classes`` classes."""
    if name not in _LOSSES:
        raise CervrtError(f"unknown loss {name!r}: choose one of {', '.join(LOSS_NAMES)}")
    return _LOSSES[name](num_classes)
