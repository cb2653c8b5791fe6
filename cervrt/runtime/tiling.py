"""The sliding-window plan of SPEC: window positions, blending weights and the blend modes.

Shared by evaluation during training (torch), the runtime's stitcher (C / numpy) and the GPU
kernels, so that every path tiles and weights an image the same way.
"""

from __future__ import annotations

import enum
from functools import lru_cache

import numpy as np

from cervrt.constants import GAUSSIAN_SIGMA_SCALE
from cervrt.errors import InputError

__all__ = ["BlendMode", "blend_weights", "check_tiling", "gaussian_weights", "window_starts"]

_WEIGHT_FLOOR = 1e-3


class BlendMode(str, enum.Enum):
    """How overlapping patch predictions are fused: every pixel weight 1, or a Gaussian bump."""

    MEAN = "mean"
    GAUSSIAN = "gaussian"

    @classmethod
    def parse(cls, value: str | BlendMode) -> BlendMode:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise InputError(f"unknown blend {value!r}: choose one of {valid}") from None


def check_tiling(patch: int, stride: int) -> None:
    """Raise CervrtError unless 0 < stride <= patch."""
    if patch <= 0:
        raise InputError(f"patch size must be positive, got {patch}")
    if not 0 < stride <= patch:
        raise InputError(f"stride must be between 1 and the patch size {patch}, got {stride}")


def window_starts(length: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2*stride, ... and a last window flush with the end.

    An axis shorter than the patch gets the single start 0 (the caller pads the image with glass).
    """
    check_tiling(patch, stride)
    if length <= patch:
        return [0]
    last = length - patch
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


@lru_cache(maxsize=16)
def _gaussian(patch: int, sigma_scale: float) -> np.ndarray:
    u = np.arange(patch, dtype=np.float64)
    sigma = sigma_scale * patch
    g = np.exp(-((u - (patch - 1) / 2.0) ** 2) / (2.0 * sigma * sigma))
    w = np.outer(g, g)
    w /= w.max()
    w = np.maximum(w, _WEIGHT_FLOOR).astype(np.float32)
    w.setflags(write=False)
    return w


def gaussian_weights(patch: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """w(u, v) = g(u) g(v), g(u) = exp(-(u - (P-1)/2)^2 / (2 sigma^2)), sigma = sigma_scale * P,
    normalised to a maximum of 1 and floored at 1e-3; float32, read-only, shape (P, P)."""
    if sigma_scale <= 0:
        raise InputError(f"sigma scale must be positive, got {sigma_scale}")
    return _gaussian(int(patch), float(sigma_scale))


def blend_weights(mode: BlendMode | str, patch: int, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """The (P, P) float32 weight map for a blend mode."""
    mode = BlendMode.parse(mode)
    if mode is BlendMode.MEAN:
        w = np.ones((patch, patch), dtype=np.float32)
        w.setflags(write=False)
        return w
    return gaussian_weights(patch, sigma_scale)
