"""The one check that a model's output is per-pixel class probabilities, NCHW (adopt and the runtime).

``check_probabilities(probs, (n, C, H, W))`` raises :class:`~cervrt.errors.ModelError` with the reason
when the output is not what cervrt blends: channel-last (NHWC) instead of (N, C, H, W), another
shape, non-finite values, values outside [0, 1], or class sums that are not 1 -- logits, for example.
Tolerance: ``PROB_TOLERANCE`` (1e-3) on the range and on every pixel's sum over the classes, loose
enough for FP16 outputs (each rounded by at most 2^-11 of its value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cervrt.errors import ModelError

__all__ = ["PROB_TOLERANCE", "check_probabilities"]

#: How far outputs may be from [0, 1] and their class sums from 1.
PROB_TOLERANCE = 1e-3


def _check_shape(probs: np.ndarray, expected: tuple[int, ...], source: str) -> None:
    if probs.shape == expected:
        return
    n, c, h, w = expected
    if probs.shape == (n, h, w, c):
        raise ModelError(f"{source} returns {probs.shape}: channel-last (NHWC) output; cervrt needs (N, C, H, W) "
                         f"= {expected} (add a Transpose to the graph, perm 0,3,1,2)")
    if probs.ndim == 4 and probs.shape[:2] == (n, c) and probs.shape[2:] != (h, w):
        raise ModelError(f"{source} returns {probs.shape}: outputs must have the input's height and width "
                         f"{(h, w)} (add a Resize to the graph)")
    raise ModelError(f"{source} returns shape {probs.shape}, expected {expected} (N, classes, H, W)")


def check_probabilities(probs: np.ndarray, expected: Sequence[int], source: str = "the model",
                        hint: str = "adopt it with `cervrt adopt MODEL --output logits`") -> None:
    """ModelError unless ``probs`` is an ``expected`` = (n, C, H, W) array of probabilities summing to 1
    over axis 1 (within ``PROB_TOLERANCE``); ``hint`` is what the message says to do about logits."""
    expected = tuple(int(v) for v in expected)
    probs = np.asarray(probs)
    _check_shape(probs, expected, source)
    values = probs.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ModelError(f"{source} returns NaN or infinite values: it cannot be blended")
    low, high = float(values.min()), float(values.max())
    sums = values.sum(axis=1, dtype=np.float64)
    worst = float(np.abs(sums - 1.0).max())
    if low < -PROB_TOLERANCE or high > 1 + PROB_TOLERANCE or worst > PROB_TOLERANCE:
        raise ModelError(f"{source} returns values {low:.4g}..{high:.4g} whose class sums range "
                         f"{float(sums.min()):.4g}..{float(sums.max()):.4g}, not probabilities summing to 1 "
                         f"(within {PROB_TOLERANCE:g}): they look like logits; {hint}")
