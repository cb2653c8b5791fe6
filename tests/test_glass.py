"""The named glass strategies: each equals the formula it replaced, picked by name."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.glass import GLASS_STRATEGIES, GlassThreshold, NearWhite, OtsuSaturation, glass_strategy


def _pixels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(150, 256, (64, 64, 3), dtype=np.uint8)
    rgb[:32, :32] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # some strongly coloured pixels
    return rgb


def test_near_white_is_min_at_least_215_and_spread_at_most_25():
    rgb = _pixels(1)
    want = (rgb.min(axis=2) >= 215) & (rgb.max(axis=2) - rgb.min(axis=2) <= 25)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(glass_strategy("near_white").glass(rgb), want)
    edge = np.array([[[215, 215, 240], [214, 230, 230], [230, 255, 230], [255, 255, 255]]], np.uint8)
    assert NearWhite().glass(edge).tolist() == [[True, False, True, True]]


def test_bright_unsaturated_is_mean_at_least_200_and_saturation_at_most_012():
    rgb = _pixels(2)
    f = rgb.astype(np.float64)
    want = (f.mean(axis=2) >= 200) & ((f.max(axis=2) - f.min(axis=2)) / np.maximum(f.max(axis=2), 1) <= 0.12)
    assert want.any() and not want.all()
    np.testing.assert_array_equal(glass_strategy("bright_unsaturated").glass(rgb), want)
    assert glass_strategy("bright_unsaturated", brightness=0.0, saturation=1.0).glass(rgb).all()


def test_otsu_saturation_separates_stain_from_glass_and_keeps_its_floor():
    rgb = np.full((80, 80, 3), 235, np.uint8)
    rgb[:, 40:] = (180, 90, 160)  # eosin-pink half
    tissue, threshold = OtsuSaturation().tissue(rgb)
    assert tissue[:, 45:].all() and not tissue[:, :35].any() and threshold >= 20
    np.testing.assert_array_equal(glass_strategy("otsu_saturation").glass(rgb), ~tissue)
    blank = np.random.default_rng(3).normal(235, 2, (60, 60, 3)).clip(0, 255).astype(np.uint8)
    assert OtsuSaturation().tissue(blank)[1] == 20 and not OtsuSaturation().tissue(blank)[0].any()


def test_strategies_are_chosen_by_name_and_bad_names_list_the_valid_ones():
    assert isinstance(glass_strategy("bright_unsaturated"), GlassThreshold)
    assert set(GLASS_STRATEGIES) == {"otsu_saturation", "near_white", "bright_unsaturated"}
    with pytest.raises(CervrtError, match="unknown glass strategy 'otsu': use one of otsu_saturation, near_white"):
        glass_strategy("otsu")
    with pytest.raises(CervrtError, match="takes the settings min_value, spread, got floor"):
        glass_strategy("near_white", floor=3)


def test_non_rgb_input_is_refused_in_one_line():
    with pytest.raises(CervrtError, match=r"needs an RGB uint8 image \(H, W, 3\)"):
        NearWhite().glass(np.zeros((4, 4), np.uint8))
