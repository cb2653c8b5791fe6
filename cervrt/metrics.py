"""Segmentation metrics of the MTCHI task: Dice, mIoU, AP, WP, FwIoU and per-class IoU.

Everything is derived from one confusion matrix (rows = truth, columns = prediction), accumulated
over a whole evaluation set, as SPEC asks. Background is ignored the MTCHI way: pixels whose *truth*
is 0 are left out entirely, while a foreground pixel predicted as background still counts (as wrong).

Per foreground class i = 1..C-1, over the counted pixels:

* Dice_i = 2|P_i and T_i| / (|P_i| + |T_i|), IoU_i = |P_i and T_i| / |P_i or T_i|;
  a class absent from both prediction and truth is NaN and left out of the means ``dice`` and ``miou``.
* ``ap``: pixel accuracy; ``wp``: window precision, the share of pixels with |y - t| <= 1, where a
  predicted background (y = 0) is always wrong; ``fwiou``: IoU weighted by each class's truth frequency.

numpy only: the runtime imports this module on machines without torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cervrt.constants import CLASS_NAMES, NUM_CLASSES
from cervrt.errors import CervrtError

__all__ = [
    "MetricAccumulator",
    "class_names",
    "confusion_matrix",
    "format_metrics_table",
    "metrics_from_confusion",
    "segmentation_metrics",
]

#: Pixels per np.bincount call: bounds the int64 temporary on whole-slide masks (32 MB).
_CHUNK = 1 << 22

_SUMMARY = (("Dice", "dice"), ("mIoU", "miou"), ("AP", "ap"), ("WP", "wp"), ("FwIoU", "fwiou"))


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise CervrtError(f"num_classes must be an integer >= 2 (background plus classes), got {num_classes!r}")
    return int(num_classes)


def _check_labels(name: str, array: Any, num_classes: int) -> np.ndarray:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.integer):
        raise CervrtError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        bad = np.unique(array[(array < 0) | (array >= num_classes)])
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
        raise CervrtError(f"{name} holds values {shown} outside the class range 0..{num_classes - 1}")
    return array


def _bincount_pairs(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    pred, target = pred.reshape(-1), target.reshape(-1)
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, pred.size, _CHUNK):
        stop = start + _CHUNK
        codes = target[start:stop].astype(np.int64) * num_classes + pred[start:stop]
        counts += np.bincount(codes, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _check_confusion(cm: Any) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 2:
        raise CervrtError(f"a confusion matrix must be square with at least 2 classes, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer) or (cm.size and cm.min() < 0):
        raise CervrtError("a confusion matrix must hold non-negative integer pixel counts")
    return cm.astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 / 0 = NaN and no warning."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _mean_present(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


def _window_hits(fg: np.ndarray) -> int:
    """Counted pixels with |y - t| <= 1 and y != 0; fg holds the truth rows 1.. of the matrix."""
    truth = np.arange(1, fg.shape[0] + 1)[:, None]
    pred = np.arange(fg.shape[1])[None, :]
    window = (np.abs(pred - truth) <= 1) & (pred != 0)
    return int(fg[window].sum())


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dice, IoU and truth counts of classes 1..C-1 over pixels whose truth is not background."""
    fg = cm[1:]
    tp = np.diagonal(cm)[1:].astype(np.float64)
    truth = fg.sum(axis=1).astype(np.float64)
    predicted = fg.sum(axis=0)[1:].astype(np.float64)
    dice = _ratio(2.0 * tp, predicted + truth)
    iou = _ratio(tp, predicted + truth - tp)
    return dice, iou, truth


def class_names(num_classes: int = NUM_CLASSES) -> tuple[str, ...]:
    """Names of the foreground classes 1..num_classes-1: MTCHI names for 5 classes, else "class i"."""
    num_classes = _check_num_classes(num_classes)
    if num_classes == NUM_CLASSES:
        return CLASS_NAMES[1:]
    return tuple(f"class {i}" for i in range(1, num_classes))


def confusion_matrix(pred: Any, target: Any, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixel confusion matrix, int64 (num_classes, num_classes), rows = truth, columns = prediction.

    ``pred`` and ``target`` are integer label arrays of the same shape with values in
    0..num_classes-1. Background rows are kept here; the metrics drop them.
    """
    num_classes = _check_num_classes(num_classes)
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise CervrtError(f"prediction shape {pred.shape} differs from target shape {target.shape}: pass equal shapes")
    pred = _check_labels("prediction", pred, num_classes)
    target = _check_labels("target", target, num_classes)
    return _bincount_pairs(pred, target, num_classes)


def metrics_from_confusion(cm: Any) -> dict[str, Any]:
    """All metrics of the module docstring from a confusion matrix (rows = truth, columns = prediction).

    Returns plain Python floats and ints: ``dice``, ``miou``, ``ap``, ``wp``, ``fwiou``, ``pixels``
    and the per-class dicts ``iou`` and ``dice_per_class`` keyed by class name. With no foreground
    truth pixel every metric is NaN and ``pixels`` is 0.
    """
    cm = _check_confusion(cm)
    names = class_names(cm.shape[0])
    pixels = int(cm[1:].sum())
    dice, iou, truth = _per_class(cm)
    if pixels == 0:
        nan = float("nan")
        fwiou, ap, wp = nan, nan, nan
    else:
        present = truth > 0
        fwiou = float((truth[present] * iou[present]).sum() / pixels)
        ap = float(np.diagonal(cm)[1:].sum() / pixels)
        wp = float(_window_hits(cm[1:]) / pixels)
    return {
        "dice": _mean_present(dice),
        "miou": _mean_present(iou),
        "ap": ap,
        "wp": wp,
        "fwiou": fwiou,
        "iou": {name: float(v) for name, v in zip(names, iou, strict=True)},
        "dice_per_class": {name: float(v) for name, v in zip(names, dice, strict=True)},
        "pixels": pixels,
    }


def segmentation_metrics(pred: Any, target: Any, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """Metrics of one prediction against its mask; see ``metrics_from_confusion`` for the keys."""
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes))


class MetricAccumulator:
    """One confusion matrix summed over an evaluation set; ``compute()`` gives the metrics.

    Dataset-level metrics come from the summed matrix, not from a mean of per-image metrics.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self._cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    @property
    def confusion(self) -> np.ndarray:
        """A copy of the accumulated confusion matrix."""
        return self._cm.copy()

    def update(self, pred: Any, target: Any) -> None:
        """Add one prediction / mask pair (any equal shapes, e.g. a batch (N, H, W))."""
        self._cm += confusion_matrix(pred, target, self.num_classes)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._cm[:] = 0

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add another accumulator's counts (e.g. from another worker) into this one; returns self."""
        if not isinstance(other, MetricAccumulator):
            raise TypeError(f"can only merge a MetricAccumulator, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise CervrtError(f"cannot merge accumulators of {other.num_classes} and {self.num_classes} classes")
        self._cm += other._cm
        return self

    def __iadd__(self, other: object) -> MetricAccumulator:
        if not isinstance(other, MetricAccumulator):
            return NotImplemented
        return self.merge(other)

    def compute(self) -> dict[str, Any]:
        """Metrics of everything accumulated; see ``metrics_from_confusion`` for the keys."""
        return metrics_from_confusion(self._cm)

    def __repr__(self) -> str:
        return f"MetricAccumulator(num_classes={self.num_classes}, pixels={int(self._cm[1:].sum())})"


def _fmt(value: Any) -> str:
    value = float(value)
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A compact aligned text table of a metrics dict (summary line, then IoU and Dice per class)."""
    missing = [key for key in (*(key for _, key in _SUMMARY), "iou") if key not in metrics]
    if missing:
        raise CervrtError(f"metrics dict lacks {', '.join(missing)}: pass the dict from segmentation_metrics")
    summary = [[label for label, _ in _SUMMARY] + ["pixels"]]
    summary.append([_fmt(metrics[key]) for _, key in _SUMMARY] + [str(metrics.get("pixels", "?"))])
    dice = metrics.get("dice_per_class", {})
    classes = [["class", "IoU", "Dice"]]
    classes += [[name, _fmt(iou), _fmt(dice.get(name, float("nan")))] for name, iou in metrics["iou"].items()]
    return "\n".join([*_table(summary), "", *_table(classes)])
