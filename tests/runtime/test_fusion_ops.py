"""The three fusion operations on hand-checkable inputs, on both backends (C and numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.runtime.tiling import blend_weights, window_starts

PLAIN = (0.2, 0.5, 0.3)  # class 1 wins
CENTRE = (0.1, 0.1, 0.8)  # class 2 wins


def _band(classes: int, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((classes, rows, width), np.float32), np.zeros((rows, width), np.float32)


def _labels(backend, acc: np.ndarray, wsum: np.ndarray) -> np.ndarray:
    out = np.full(wsum.shape, 99, np.uint8)
    backend.argmax(acc, wsum, out, wsum.shape[0])
    return out


def _constant_windows(values: list[tuple[float, ...]], patch: int) -> np.ndarray:
    """probs (n, C, P, P) with every pixel of window i equal to values[i]."""
    v = np.asarray(values, np.float32)
    return np.ascontiguousarray(np.broadcast_to(v[:, :, None, None], (*v.shape, patch, patch)))


def _grid_4x4_stride_1() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 9 windows of a 4x4 image with 2x2 patches at stride 1; the centre window (1, 1) differs."""
    starts = window_starts(4, 2, 1)
    assert starts == [0, 1, 2]
    ys = np.array([y for y in starts for _ in starts], np.int64)
    xs = np.array([x for _ in starts for x in starts], np.int64)
    values = [CENTRE if (y, x) == (1, 1) else PLAIN for y, x in zip(ys, xs, strict=True)]
    return ys, xs, _constant_windows(values, 2)


def test_mean_blend_by_hand(backend) -> None:
    # Pixel (1, 1) is covered by windows (0,0), (0,1), (1,0), (1,1): fused = (3 * PLAIN + CENTRE) / 4
    # = (0.175, 0.4, 0.425) -> class 2; likewise the other three centre pixels. Every other pixel is
    # covered only by PLAIN windows -> class 1.
    ys, xs, probs = _grid_4x4_stride_1()
    acc, wsum = _band(3, 4, 4)
    backend.accumulate(acc, wsum, probs, ys, xs, blend_weights("mean", 2))
    np.testing.assert_array_equal(wsum, [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
    np.testing.assert_allclose(acc[:, 1, 1] / wsum[1, 1], [0.175, 0.4, 0.425], rtol=1e-6)
    expected = [[1, 1, 1, 1], [1, 2, 2, 1], [1, 2, 2, 1], [1, 1, 1, 1]]
    np.testing.assert_array_equal(_labels(backend, acc, wsum), expected)


def test_stride_equal_to_patch_is_a_mosaic(backend) -> None:
    # Four non-overlapping 2x2 windows: each pixel takes its own window's label.
    ys, xs = np.array([0, 0, 2, 2], np.int64), np.array([0, 2, 0, 2], np.int64)
    probs = _constant_windows([(0.9, 0.05, 0.05), (0.1, 0.8, 0.1), (0.1, 0.1, 0.8), (0.3, 0.3, 0.4)], 2)
    acc, wsum = _band(3, 4, 4)
    backend.accumulate(acc, wsum, probs, ys, xs, blend_weights("gaussian", 2))
    expected = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]
    np.testing.assert_array_equal(_labels(backend, acc, wsum), expected)


def test_gate_zeroes_a_channel(backend) -> None:
    ys, xs, probs = _grid_4x4_stride_1()
    weights = blend_weights("mean", 2)
    # Zero class 2 of the centre window only: the centre pixels fall back to class 1 (0.4 > 0.225).
    gate = np.ones((9, 3), np.float32)
    gate[4, 2] = 0
    acc, wsum = _band(3, 4, 4)
    backend.accumulate(acc, wsum, probs, ys, xs, weights, gate)
    np.testing.assert_array_equal(_labels(backend, acc, wsum), np.ones((4, 4)))
    # Zero class 1 everywhere: class 2 beats class 0 on every pixel (0.3 > 0.2, 0.425 > 0.175).
    gate = np.ones((9, 3), np.float32)
    gate[:, 1] = 0
    acc, wsum = _band(3, 4, 4)
    backend.accumulate(acc, wsum, probs, ys, xs, weights, gate)
    np.testing.assert_array_equal(_labels(backend, acc, wsum), np.full((4, 4), 2))


def test_gate_of_ones_changes_nothing(backend) -> None:
    ys, xs, probs = _grid_4x4_stride_1()
    weights = blend_weights("gaussian", 2)
    plain, gated = _band(3, 4, 4), _band(3, 4, 4)
    backend.accumulate(*plain, probs, ys, xs, weights)
    backend.accumulate(*gated, probs, ys, xs, weights, np.ones((9, 3), np.float32))
    np.testing.assert_array_equal(plain[0], gated[0])


def test_ties_go_to_the_lowest_class(backend) -> None:
    acc, wsum = _band(4, 1, 3)
    probs = _constant_windows([(0.1, 0.45, 0.45, 0.0)], 1)
    backend.accumulate(acc, wsum, probs, np.zeros(1, np.int64), np.array([1], np.int64), np.ones((1, 1), np.float32))
    acc[:, 0, 2] = 0.25  # a four-way tie with wsum 0 -> uncovered wins: 0
    wsum[0, 0] = 1.0
    acc[:, 0, 0] = 0.5  # a four-way tie with wsum 1 -> class 0
    np.testing.assert_array_equal(_labels(backend, acc, wsum), [[0, 1, 0]])


def test_uncovered_and_fully_gated_pixels_are_background(backend) -> None:
    acc, wsum = _band(3, 4, 4)
    probs = _constant_windows([(0.0, 0.0, 1.0), (0.0, 1.0, 0.0)], 2)
    gate = np.array([[1, 1, 1], [0, 0, 0]], np.float32)  # the second window is gated away entirely
    backend.accumulate(acc, wsum, probs, np.array([0, 2], np.int64), np.array([0, 2], np.int64),
                       blend_weights("mean", 2), gate)
    expected = [[2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(_labels(backend, acc, wsum), expected)


def test_argmax_of_the_first_rows_only(backend) -> None:
    acc, wsum = _band(2, 3, 2)
    acc[1] = 1.0
    wsum[:] = 1.0
    out = np.full((3, 2), 7, np.uint8)
    backend.argmax(acc, wsum, out, 2)
    np.testing.assert_array_equal(out, [[1, 1], [1, 1], [7, 7]])
    backend.argmax(acc, wsum, out, 0)  # nothing to do


def test_band_edges_clip_windows(backend) -> None:
    # A window starting above the band (ys = -1) adds only its last row; one starting on the band's
    # last row adds only its first; one left of the band (xs = -1) only its right column.
    acc, wsum = _band(1, 3, 3)
    probs = _constant_windows([(1.0,), (2.0,), (4.0,)], 2)
    backend.accumulate(acc, wsum, probs, np.array([-1, 2, 0], np.int64), np.array([0, 1, -1], np.int64),
                       np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(acc[0], [[5, 1, 0], [4, 0, 0], [0, 2, 2]])
    np.testing.assert_array_equal(wsum, [[2, 1, 0], [1, 0, 0], [0, 1, 1]])
    # Windows wholly outside the band add nothing.
    before = acc.copy()
    backend.accumulate(acc, wsum, probs[:2], np.array([-2, 3], np.int64), np.array([0, 0], np.int64),
                       np.ones((2, 2), np.float32))
    np.testing.assert_array_equal(acc, before)


def test_gather_normalises_and_pads_with_glass(backend) -> None:
    image = np.array([[[0, 51, 102], [255, 0, 0]], [[10, 20, 30], [40, 50, 60]]], np.uint8)
    out = np.full((2, 3, 3, 3), -9, np.float32)
    backend.gather(image, np.array([0], np.int64), np.array([1], np.int64), 3, (0, 0, 0), (1, 1, 1), out)
    # mean 0, std 1: v / 255; the pixels past the right and bottom edges are glass (255 -> 1.0).
    expected = np.ones((3, 3, 3), np.float32)
    expected[:, 0, 0] = np.array([255, 0, 0]) / 255
    expected[:, 1, 0] = np.array([40, 50, 60]) / 255
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert (out[1] == -9).all()  # only the first n patches are written


def test_gather_applies_mean_and_std(backend) -> None:
    image = np.full((4, 4, 3), 128, np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = np.zeros((1, 3, 2, 2), np.float32)
    backend.gather(image, np.array([1], np.int64), np.array([1], np.int64), 2, mean, std, out)
    expected = (128 / 255 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-5)


def test_gather_reads_strided_views(backend) -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    view = image[::-2, 1::3]  # negative and non-unit strides
    ys, xs = np.array([0, 2], np.int64), np.array([0, 1], np.int64)
    out = np.zeros((2, 3, 3, 3), np.float32)
    backend.gather(view, ys, xs, 3, (0, 0, 0), (1, 1, 1), out)
    np.testing.assert_allclose(out[1].transpose(1, 2, 0)[:3, :3], view[2:5, 1:4] / 255, rtol=1e-6)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_weights_are_the_blend_weights(backend, blend: str) -> None:
    acc, wsum = _band(1, 5, 5)
    weights = blend_weights(blend, 5)
    backend.accumulate(acc, wsum, np.ones((1, 1, 5, 5), np.float32), np.zeros(1, np.int64), np.zeros(1, np.int64),
                       weights)
    np.testing.assert_array_equal(wsum, weights)
    np.testing.assert_array_equal(acc[0], weights)
