"""Tissue detection: Otsu on saturation with a floor, and window fractions from the integral image."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt._cv import cv2
from cervrt.errors import CervrtError
from cervrt.runtime.readers import open_slide
from cervrt.runtime.tissue import SATURATION_FLOOR, TissueMap, tissue_mask


def _glass(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Grey-white glass with sensor noise (low saturation everywhere)."""
    noise = np.random.default_rng(seed).normal(0, 3, (h, w, 3))
    return np.clip(236 + noise, 0, 255).astype(np.uint8)


def _half_tissue(h: int, w: int) -> np.ndarray:
    """Left half glass, right half H&E pink/purple (eosin 230,150,200; haematoxylin speckles)."""
    image = _glass(h, w)
    rng = np.random.default_rng(1)
    tissue = np.clip(np.array([220, 140, 190]) + rng.normal(0, 10, (h, w - w // 2, 3)), 0, 255)
    tissue[rng.random((h, w - w // 2)) < 0.1] = (120, 60, 150)
    image[:, w // 2 :] = tissue.astype(np.uint8)
    return image


def test_half_glass_half_tissue():
    tissue = TissueMap.from_image(_half_tissue(200, 400))
    assert tissue.threshold >= SATURATION_FLOOR
    assert tissue.tissue_share == pytest.approx(0.5, abs=0.02)
    ys = np.array([0, 0, 100, 50])
    xs = np.array([0, 300, 150, 180])
    np.testing.assert_allclose(tissue.fraction(ys, xs, 100), [0.0, 1.0, 0.5, 0.8], atol=0.03)


def test_blank_glass_has_no_tissue():
    mask, threshold = tissue_mask(_glass(300, 300, seed=3))
    assert threshold == SATURATION_FLOOR  # Otsu alone would split the noise in two
    assert not mask.any()


def test_from_slide_windows_are_in_processing_pixels(tmp_path):
    image = _half_tissue(200, 400)
    cv2.imwrite(str(tmp_path / "s.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    with open_slide(tmp_path / "s.png", target_mpp=1.0, mpp=0.5) as slide:  # 100 x 200 processing pixels
        tissue = TissueMap.from_slide(slide, max_side=50)  # thumbnail 25 x 50
    assert tissue.mask.shape == (25, 50) and (tissue.height, tissue.width) == (100, 200)
    np.testing.assert_allclose(tissue.fraction([0, 0], [0, 120], 60), [0.0, 1.0], atol=0.03)


def test_windows_past_the_edge_count_the_outside_as_glass():
    tissue = TissueMap(np.ones((10, 10), bool), 100, 100)
    np.testing.assert_allclose(tissue.fraction([0, 50, -50, 90], [50, 50, 0, 90], 100), [0.5, 0.25, 0.5, 0.01])


def test_tissue_mask_refuses_non_rgb():
    with pytest.raises(CervrtError, match="RGB uint8"):
        tissue_mask(np.zeros((4, 4), np.uint8))
