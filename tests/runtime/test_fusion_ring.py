"""The C fusion's ring band (``base``), team size (``threads``) and packed-RGB gather against the numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.runtime import reference
from cervrt.runtime.tiling import blend_weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _windows(seed: int, n: int = 12, classes: int = 5, patch: int = 16, rows: int = 24, width: int = 40):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), size=(n, patch, patch)).astype(np.float32).transpose(0, 3, 1, 2)
    ys = rng.integers(-patch + 1, rows, n).astype(np.int64)  # some across the band's top or bottom
    xs = rng.integers(-patch + 1, width, n).astype(np.int64)
    gate = (rng.random((n, classes)) > 0.25).astype(np.float32)
    return np.ascontiguousarray(probs), ys, xs, gate, blend_weights("gaussian", patch)


@pytest.mark.parametrize("base", [0, 1, 7, 23])
def test_a_ring_band_holds_the_band_rolled_by_base(backend, base: int) -> None:
    probs, ys, xs, gate, weights = _windows(1)
    flat = np.zeros((5, 24, 40), np.float32), np.zeros((24, 40), np.float32)
    ring = np.zeros_like(flat[0]), np.zeros_like(flat[1])
    backend.accumulate(*flat, probs, ys, xs, weights, gate)
    backend.accumulate(*ring, probs, ys, xs, weights, gate, base=base)
    np.testing.assert_array_equal(ring[0], np.roll(flat[0], base, axis=1))  # band row y in row (y + base) % 24
    np.testing.assert_array_equal(ring[1], np.roll(flat[1], base, axis=0))
    got, expected = np.empty((20, 40), np.uint8), np.empty((20, 40), np.uint8)
    backend.argmax(*ring, got, 20, base=base)
    backend.argmax(*flat, expected, 20)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("base", [-1, 24])
def test_a_base_outside_the_band_is_refused(backend, base: int) -> None:
    probs, ys, xs, _, weights = _windows(2)
    acc, wsum = np.zeros((5, 24, 40), np.float32), np.zeros((24, 40), np.float32)
    with pytest.raises(ValueError, match="base must be between 0 and 23"):
        backend.accumulate(acc, wsum, probs, ys, xs, weights, base=base)
    with pytest.raises(ValueError, match="base must be between 0 and 23"):
        backend.argmax(acc, wsum, np.empty((24, 40), np.uint8), 24, base=base)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_c_equals_the_reference_bit_for_bit_whatever_the_team(c_backend, threads: int) -> None:
    c = c_backend
    probs, ys, xs, gate, weights = _windows(3, n=40, patch=32, rows=96, width=300)
    bands = [(np.zeros((5, 96, 300), np.float32), np.zeros((96, 300), np.float32)) for _ in range(2)]
    c.accumulate(*bands[0], probs, ys, xs, weights, gate, threads=threads, base=17)
    reference.accumulate(*bands[1], probs, ys, xs, weights, gate, base=17)
    np.testing.assert_array_equal(bands[0][0], bands[1][0])
    np.testing.assert_array_equal(bands[0][1], bands[1][1])
    labels = [np.empty((96, 300), np.uint8) for _ in range(2)]
    c.argmax(*bands[0], labels[0], 96, threads=threads, base=17)
    reference.argmax(*bands[1], labels[1], 96, base=17)
    np.testing.assert_array_equal(labels[0], labels[1])


def test_packed_rgb_and_strided_views_gather_alike(c_backend) -> None:
    c = c_backend
    rgba = np.random.default_rng(4).integers(0, 256, (70, 90, 4), dtype=np.uint8)
    packed, strided = np.ascontiguousarray(rgba[..., :3]), rgba[..., :3]  # 3 and 4 bytes a pixel
    ys, xs = np.array([0, 10, 60, 3], np.int64), np.array([0, 85, 20, 41], np.int64)  # two past the edges
    outs = [np.empty((4, 3, 24, 24), np.float32) for _ in range(3)]
    c.gather(packed, ys, xs, 24, MEAN, STD, outs[0], threads=1)
    c.gather(strided, ys, xs, 24, MEAN, STD, outs[1])
    reference.gather(packed, ys, xs, 24, MEAN, STD, outs[2])
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[1], outs[2])
