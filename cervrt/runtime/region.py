"""Regions of a slide and images at another resolution: the geometry behind ``Predictor.predict_region``
and ``Predictor.predict(image, mpp=...)``.

A region is asked for in a *request grid*: level-0 pixels of the slide (``level=0``, the one
grid), the pixels of pyramid level N (``level=N``), or pixels of ``mpp`` microns (``mpp=...``). The
Predictor works at the model's resolution (*processing pixels*: level-0 pixels divided by the slide's
``downsample``). :func:`plan_region` turns a request into the processing box of the region and the
crop to read around it: one patch of context on every side (clipped to the slide), its origin on the
stride grid of a whole-slide run, so that with ``tissue_threshold=0`` the region's labels are the
whole-slide labels of the same pixels. Only that crop is read. The labels (or probabilities) of the
box are brought back to the request grid (``width`` x ``height``) by nearest neighbour (labels) or
bilinear interpolation (probabilities, which keeps them summing to 1).

:func:`to_model_resolution` resizes an image at ``mpp`` to the model's (``cv2.INTER_AREA`` shrinking,
``cv2.INTER_LINEAR`` enlarging, as the PNG/JPEG reader does) and :func:`labels_to` /
:func:`probabilities_to` bring results back to the image's own size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cervrt._cv import cv2
from cervrt.errors import InputError

__all__ = ["RegionPlan", "labels_to", "plan_region", "probabilities_to", "to_model_resolution"]

#: Relative difference under which two resolutions count as the same (no resampling).
_SAME = 1e-6


def _integer(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{what} must be an integer number of pixels, got {value!r}")
    return int(value)


def _positive_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{what} must be a positive number, got {value!r}")
    return float(value)


# ---- images at another resolution ---------------------------------------------------------------------


def to_model_resolution(image: np.ndarray, mpp: float | None, model_mpp: float | None) -> np.ndarray:
    """``image`` (at ``mpp`` microns per pixel) resized to ``model_mpp``; the image itself when either is None
    or they agree."""
    if mpp is None:
        return image
    mpp = _positive_float(mpp, "mpp")
    if model_mpp is None or abs(mpp / model_mpp - 1.0) < _SAME:
        return image
    scale = mpp / model_mpp  # model pixels per image pixel
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def labels_to(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 labels resized to ``height`` x ``width`` by nearest neighbour (the labels themselves if equal)."""
    if labels.shape[:2] == (height, width):
        return labels
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


def probabilities_to(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (C, h, w) probabilities resized to (C, ``height``, ``width``), bilinear per class."""
    if probs.shape[1:] == (height, width):
        return probs
    return np.stack([cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR) for plane in probs])


# ---- regions of a slide ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionPlan:
    """Where a region lies in processing pixels: the box ``(top, left, bottom, right)``, the crop read
    around it ``(top, left, height, width)`` and the request grid's size ``(height, width)``."""

    box: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]
    size: tuple[int, int]

    def inner(self) -> tuple[slice, slice]:
        """The box inside the crop."""
        top, left, bottom, right = self.box
        return slice(top - self.crop[0], bottom - self.crop[0]), slice(left - self.crop[1], right - self.crop[1])


def _grid_factor(slide: Any, level: int | None, mpp: float | None) -> float:
    """Level-0 pixels per request-grid pixel."""
    if mpp is not None:
        mpp = _positive_float(mpp, "mpp")
        native = getattr(slide, "native_mpp", None)
        if native is None:
            raise InputError(f"{slide.path} has no resolution metadata, so a region cannot be given in microns: "
                             "give it in level-0 pixels (level=0), or open the slide with its mpp")
        return mpp / float(native)
    level = _integer(0 if level is None else level, "level")
    downsamples = tuple(getattr(slide, "level_downsamples", (1.0,)))
    if not 0 <= level < len(downsamples):
        raise InputError(f"level {level} does not exist: {slide.path} has level(s) 0..{len(downsamples) - 1}")
    return float(downsamples[level])


def _aligned(start: int, stride: int) -> int:
    return (start // stride) * stride


def plan_region(slide: Any, x: int, y: int, width: int, height: int, patch: int, stride: int,
                level: int | None = None, mpp: float | None = None) -> RegionPlan:
    """The processing box of a request-grid region and the crop to read (see the module docstring);
    InputError for a negative or empty size, a region outside the slide, both ``level`` and ``mpp``."""
    if level not in (None, 0) and mpp is not None:
        raise InputError("give a region's grid as level or as mpp, not both")
    x, y = _integer(x, "x"), _integer(y, "y")
    width, height = _integer(width, "width"), _integer(height, "height")
    if width < 1 or height < 1:
        raise InputError(f"a region needs a positive width and height, got {width}x{height}")
    grid = _grid_factor(slide, level, mpp)
    full_w, full_h = slide.width * slide.downsample / grid, slide.height * slide.downsample / grid
    if x < 0 or y < 0 or x + width > math.ceil(full_w - 1e-6) or y + height > math.ceil(full_h - 1e-6):
        raise InputError(f"the region x={x}, y={y}, {width}x{height} is not inside the slide, which is "
                         f"{math.ceil(full_w - 1e-6)}x{math.ceil(full_h - 1e-6)} pixels in that grid")
    f = grid / slide.downsample  # processing pixels per request pixel
    top, left = math.floor(y * f + 1e-9), math.floor(x * f + 1e-9)
    bottom = min(max(math.ceil((y + height) * f - 1e-9), top + 1), slide.height)
    right = min(max(math.ceil((x + width) * f - 1e-9), left + 1), slide.width)
    crop_top, crop_left = _aligned(max(top - patch, 0), stride), _aligned(max(left - patch, 0), stride)
    crop_bottom, crop_right = min(bottom + patch, slide.height), min(right + patch, slide.width)
    return RegionPlan((top, left, bottom, right), (crop_top, crop_left, crop_bottom - crop_top,
                                                   crop_right - crop_left), (height, width))
