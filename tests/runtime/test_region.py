"""Region geometry: request grids (level 0, a level, microns), the crop on the stride grid, refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cervrt.errors import InputError
from cervrt.runtime.region import labels_to, plan_region, probabilities_to, to_model_resolution


def _slide(width=1000, height=800, downsample=1.0, native_mpp=0.5, levels=(1.0, 4.0)):
    return SimpleNamespace(path="s.tif", width=width, height=height, downsample=downsample, native_mpp=native_mpp,
                           level_downsamples=levels)


def test_a_level0_region_at_the_processing_resolution():
    plan = plan_region(_slide(), x=300, y=200, width=100, height=50, patch=64, stride=16)
    assert plan.box == (200, 300, 250, 400) and plan.size == (50, 100)
    top, left, h, w = plan.crop
    assert top % 16 == 0 and left % 16 == 0 and top <= 200 - 64 and left <= 300 - 64
    assert (top + h, left + w) == (250 + 64, 400 + 64)
    rows, cols = plan.inner()
    assert (rows.start, rows.stop, cols.start, cols.stop) == (200 - top, 250 - top, 300 - left, 400 - left)


def test_the_crop_is_clipped_at_the_slide():
    plan = plan_region(_slide(), x=0, y=760, width=40, height=40, patch=64, stride=16)
    assert plan.crop[0] + plan.crop[2] == 800 and plan.crop[1] == 0


def test_a_downsampled_slide_and_a_grid_in_microns_and_a_level():
    slide = _slide(width=250, height=200, downsample=4.0)  # level 0 is 1000x800, processing 4x coarser
    assert plan_region(slide, x=400, y=80, width=200, height=40, patch=64, stride=16).box == (20, 100, 30, 150)
    by_mpp = plan_region(slide, x=200, y=40, width=100, height=20, patch=64, stride=16, mpp=1.0)  # 2 level-0 px
    assert by_mpp.box == (20, 100, 30, 150) and by_mpp.size == (20, 100)
    by_level = plan_region(slide, x=100, y=20, width=50, height=10, patch=64, stride=16, level=1)
    assert by_level.box == (20, 100, 30, 150)


@pytest.mark.parametrize(("args", "message"), [
    ({"x": 0, "y": 0, "width": 0, "height": 5}, "positive width and height"),
    ({"x": 0, "y": 0, "width": -3, "height": 5}, "positive width and height"),
    ({"x": -1, "y": 0, "width": 5, "height": 5}, "not inside the slide, which is 1000x800"),
    ({"x": 990, "y": 0, "width": 20, "height": 5}, "not inside the slide"),
    ({"x": 0, "y": 0, "width": 5, "height": 5, "level": 2}, "level 2 does not exist"),
    ({"x": 0.5, "y": 0, "width": 5, "height": 5}, "x must be an integer"),
    ({"x": 0, "y": 0, "width": 5, "height": 5, "mpp": -1.0}, "mpp must be a positive number"),
    ({"x": 0, "y": 0, "width": 5, "height": 5, "level": 1, "mpp": 1.0}, "not both"),
])
def test_bad_regions_are_input_errors(args, message):
    with pytest.raises(InputError, match=message):
        plan_region(_slide(), patch=64, stride=16, **args)


def test_microns_need_the_slides_resolution():
    with pytest.raises(InputError, match="no resolution metadata"):
        plan_region(_slide(native_mpp=None), 0, 0, 5, 5, patch=64, stride=16, mpp=1.0)


def test_resampling_to_the_model_and_back():
    image = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    assert to_model_resolution(image, None, 0.5) is image and to_model_resolution(image, 0.5, 0.5) is image
    assert to_model_resolution(image, 0.25, 0.5).shape == (50, 60, 3)
    assert to_model_resolution(image, 1.0, 0.5).shape == (200, 240, 3)
    labels = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(labels_to(labels, 4, 6), np.repeat(np.repeat(labels, 2, 0), 2, 1))
    probs = np.random.default_rng(1).dirichlet(np.ones(3), size=(5, 7)).transpose(2, 0, 1).astype(np.float32)
    back = probabilities_to(probs, 10, 14)
    assert back.shape == (3, 10, 14)
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
