"""Glass or tissue: the named ways cervrt tells slide background (glass) from stained tissue.

H&E-stained tissue is coloured, glass is grey-white. Three strategies are in use, each tuned for
its job and kept exactly as measured; :func:`glass_strategy` picks one by name:

- ``otsu_saturation`` (:class:`OtsuSaturation`, the runtime's tissue detector on thumbnails): HSV
  saturation, blurred 3x3, above Otsu's threshold but never below ``floor`` (20 of 255, about 8%,
  so that a blank glass slide, whose saturation is all noise, yields no tissue), then a 5x5
  elliptical closing and opening to fill pinholes and drop specks of dust;
- ``near_white`` (:class:`NearWhite`, pseudo-labelling's tissue share of a window): glass where the
  darkest channel is at least 215 and the channel spread (max - min) at most 25;
- ``bright_unsaturated`` (:class:`GlassThreshold`, WSSS pseudo masks and patch labels): glass where
  the RGB mean is at least 200 and the HSV saturation (max - min) / max at most 0.12.

Every strategy has ``glass(rgb) -> bool (H, W)``, True on glass, for an RGB uint8 (H, W, 3) image.
numpy and OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cervrt._cv import cv2
from cervrt.errors import CervrtError

__all__ = ["GLASS_STRATEGIES", "GlassStrategy", "GlassThreshold", "NearWhite", "OtsuSaturation", "glass_strategy"]

_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _check_rgb(rgb: np.ndarray, what: str) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise CervrtError(f"{what} needs an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")


class GlassStrategy(Protocol):
    """What every strategy offers: the glass mask of an RGB uint8 image."""

    def glass(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class OtsuSaturation:
    """Tissue where the blurred HSV saturation is above max(Otsu's threshold, ``floor``), cleaned by
    a 5x5 closing then opening (see the module docstring)."""

    floor: int = 20

    def tissue(self, rgb: np.ndarray) -> tuple[np.ndarray, int]:
        """The tissue mask (bool, H x W) and the saturation threshold (0..255) used."""
        _check_rgb(rgb, "tissue detection")
        saturation = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1], (3, 3), 0)
        otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        threshold = max(int(otsu), self.floor)
        mask = (saturation > threshold).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _KERNEL)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _KERNEL)
        return mask.astype(bool), threshold

    def glass(self, rgb: np.ndarray) -> np.ndarray:
        """Boolean (H, W): True on glass (everything not tissue)."""
        return ~self.tissue(rgb)[0]


@dataclass(frozen=True)
class NearWhite:
    """Glass: the darkest channel at least ``min_value`` and the channel spread at most ``spread``."""

    min_value: int = 215
    spread: int = 25

    def glass(self, rgb: np.ndarray) -> np.ndarray:
        """Boolean (H, W): True on glass."""
        _check_rgb(rgb, "near-white glass detection")
        low = rgb.min(axis=2)
        return (low >= self.min_value) & (rgb.max(axis=2) - low <= self.spread)


@dataclass(frozen=True)
class GlassThreshold:
    """Glass: pixels whose RGB mean is at least ``brightness`` and whose HSV saturation,
    (max - min) / max, is at most ``saturation``."""

    brightness: float = 200.0
    saturation: float = 0.12

    def glass(self, rgb: np.ndarray) -> np.ndarray:
        """Boolean (H, W): True on glass."""
        pixels = rgb.astype(np.float32)
        high, low = pixels.max(axis=2), pixels.min(axis=2)
        saturation = (high - low) / np.maximum(high, 1.0)
        return (pixels.mean(axis=2) >= self.brightness) & (saturation <= self.saturation)


#: The strategies by name.
GLASS_STRATEGIES: dict[str, type] = {
    "otsu_saturation": OtsuSaturation,
    "near_white": NearWhite,
    "bright_unsaturated": GlassThreshold,
}


def glass_strategy(name: str, **settings: Any) -> GlassStrategy:
    """The strategy called ``name`` (see :data:`GLASS_STRATEGIES`), with its settings overridden by
    ``settings``; an unknown name or setting raises a CervrtError listing the valid ones."""
    if name not in GLASS_STRATEGIES:
        raise CervrtError(f"unknown glass strategy {name!r}: use one of {', '.join(GLASS_STRATEGIES)}")
    cls = GLASS_STRATEGIES[name]
    try:
        return cls(**settings)
    except TypeError:
        fields = ", ".join(cls.__dataclass_fields__)
        raise CervrtError(f"glass strategy {name!r} takes the settings {fields}, got {', '.join(settings)}") from None
