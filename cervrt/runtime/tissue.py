"""Tissue detection at low resolution, so that glass is never sent to the engine.

H&E-stained tissue is coloured and glass is grey-white, so the mask is a threshold on the HSV
saturation of a thumbnail: the ``otsu_saturation`` strategy of :mod:`cervrt.glass`, Otsu's
threshold between the two populations, but never below :data:`SATURATION_FLOOR` (about 8%
saturation), then a 5x5 closing and opening. The tissue share of a window is read from an
integral image of the mask in O(1) per window.
"""

from __future__ import annotations

import numpy as np

from cervrt._cv import cv2
from cervrt.errors import CervrtError
from cervrt.glass import OtsuSaturation
from cervrt.runtime.slides import Slide

__all__ = ["SATURATION_FLOOR", "TissueMap", "tissue_mask"]

#: Lowest saturation threshold (0..255): glass, however noisy, stays below it.
SATURATION_FLOOR = 20
_DETECTOR = OtsuSaturation(floor=SATURATION_FLOOR)


def tissue_mask(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The tissue mask (bool, H x W) of an RGB uint8 thumbnail and the saturation threshold used."""
    return _DETECTOR.tissue(rgb)


class TissueMap:
    """A low-resolution tissue mask covering an image of ``height`` x ``width`` processing pixels."""

    def __init__(self, mask: np.ndarray, height: int, width: int, threshold: int | None = None) -> None:
        if mask.ndim != 2 or mask.size == 0:
            raise CervrtError(f"a tissue mask must be a non-empty 2-D array, got shape {mask.shape}")
        self.mask = mask.astype(bool)
        self.height = int(height)
        self.width = int(width)
        self.threshold = threshold
        self._integral = cv2.integral(self.mask.astype(np.uint8))  # (h + 1, w + 1) int32

    @classmethod
    def from_image(cls, rgb: np.ndarray, max_side: int = 2048) -> TissueMap:
        """The tissue map of an in-memory RGB uint8 image, detected on a copy at most ``max_side`` wide."""
        height, width = rgb.shape[:2]
        f = min(1.0, max_side / max(height, width, 1))
        small = rgb if f == 1.0 else cv2.resize(
            rgb, (max(1, round(width * f)), max(1, round(height * f))), interpolation=cv2.INTER_AREA)
        mask, threshold = tissue_mask(small)
        return cls(mask, height, width, threshold)

    @classmethod
    def from_slide(cls, slide: Slide, max_side: int = 2048) -> TissueMap:
        """The tissue map of ``slide``, detected on its thumbnail of at most ``max_side`` pixels."""
        mask, threshold = tissue_mask(slide.thumbnail(max_side))
        return cls(mask, slide.height, slide.width, threshold)

    @property
    def tissue_share(self) -> float:
        """Share of the whole image that is tissue."""
        return float(self.mask.mean())

    def fraction(self, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
        """Tissue share (float32, 0..1) of each ``patch`` x ``patch`` window with top-left (ys[i], xs[i]).

        Windows are in processing pixels; the part of a window outside the image counts as glass.
        """
        ys, xs = np.broadcast_arrays(np.asarray(ys, np.float64), np.asarray(xs, np.float64))
        mh, mw = self.mask.shape
        sy, sx = mh / self.height, mw / self.width  # mask pixels per processing pixel
        r0 = np.rint(ys * sy).astype(np.int64)
        c0 = np.rint(xs * sx).astype(np.int64)
        r1 = np.maximum(np.rint((ys + patch) * sy).astype(np.int64), r0 + 1)
        c1 = np.maximum(np.rint((xs + patch) * sx).astype(np.int64), c0 + 1)
        area = (r1 - r0) * (c1 - c0)
        r0, r1 = np.clip(r0, 0, mh), np.clip(r1, 0, mh)
        c0, c1 = np.clip(c0, 0, mw), np.clip(c1, 0, mw)
        ii = self._integral
        inside = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return (inside / area).astype(np.float32)
