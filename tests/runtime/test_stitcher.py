"""BandStitcher against a whole-image fusion, its memory bound and its input checks."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.runtime import reference
from cervrt.runtime.stitcher import BandStitcher, band_rows_for
from cervrt.runtime.tiling import blend_weights, window_starts


def _plan(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    return [(y, x) for y in window_starts(height, patch, stride) for x in window_starts(width, patch, stride)]


def _random_probs(rng: np.random.Generator, n: int, classes: int, patch: int) -> np.ndarray:
    probs = rng.dirichlet(np.ones(classes), size=(n, patch, patch)).astype(np.float32)
    return np.ascontiguousarray(probs.transpose(0, 3, 1, 2))


def _whole_image(height, width, classes, patch, blend, ys, xs, probs, gate=None) -> np.ndarray:
    """The fusion done the obvious way: one full-size (padded) accumulator, one argmax, then crop."""
    rows, cols = max(height, patch), max(width, patch)
    acc, wsum = np.zeros((classes, rows, cols), np.float32), np.zeros((rows, cols), np.float32)
    reference.accumulate(acc, wsum, probs, ys, xs, blend_weights(blend, patch), gate)
    labels = np.zeros((rows, cols), np.uint8)
    reference.argmax(acc, wsum, labels, rows)
    return labels[:height, :width]


def _stitch(stitcher: BandStitcher, ys, xs, probs, batch: int, gate=None) -> np.ndarray:
    chunks = []
    for start in range(0, len(ys), batch):
        part = slice(start, start + batch)
        chunks += stitcher.add(ys[part], xs[part], probs[part], None if gate is None else gate[part])
    chunks += stitcher.finish()
    return _assemble(chunks, stitcher)


def _assemble(chunks, stitcher: BandStitcher) -> np.ndarray:
    """Check the chunks tile rows 0..height-1 in order, each at most band_rows tall; stack them."""
    row = 0
    for first, labels in chunks:
        assert first == row
        assert labels.dtype == np.uint8 and labels.shape[1] == stitcher.width
        assert 0 < labels.shape[0] <= stitcher.band_rows
        row += labels.shape[0]
    assert row == stitcher.height
    return np.concatenate([labels for _, labels in chunks])


CASES = [  # height, width, patch, stride
    (300, 250, 64, 24),
    (40, 250, 64, 24),  # shorter than a patch: padded, one window row
    (300, 30, 64, 24),  # narrower than a patch
    (64, 64, 64, 64),
    (131, 97, 16, 5),
]


@pytest.mark.parametrize(("height", "width", "patch", "stride"), CASES)
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
def test_matches_whole_image_fusion(backend, height: int, width: int, patch: int, stride: int, blend: str) -> None:
    rng = np.random.default_rng(height * width + patch)
    windows = [w for w in _plan(height, width, patch, stride) if rng.random() > 0.15]  # some skipped
    ys = np.array([w[0] for w in windows], np.int64)
    xs = np.array([w[1] for w in windows], np.int64)
    probs = _random_probs(rng, len(windows), 5, patch)
    expected = _whole_image(height, width, 5, patch, blend, ys, xs, probs)
    for batch in (1, 7, 64):
        stitcher = BandStitcher(height, width, 5, patch, stride, blend, backend=backend.name)
        np.testing.assert_array_equal(_stitch(stitcher, ys, xs, probs, batch), expected)


def test_gate_matches_whole_image_fusion(backend) -> None:
    rng = np.random.default_rng(9)
    windows = _plan(200, 120, 32, 12)
    ys, xs = (np.array(v, np.int64) for v in zip(*windows, strict=True))
    probs = _random_probs(rng, len(windows), 5, 32)
    gate = (rng.random((len(windows), 5)) > 0.3).astype(np.float32)
    expected = _whole_image(200, 120, 5, 32, "gaussian", ys, xs, probs, gate)
    stitcher = BandStitcher(200, 120, 5, 32, 12, backend=backend.name)
    np.testing.assert_array_equal(_stitch(stitcher, ys, xs, probs, 10, gate), expected)


def test_rows_without_windows_come_out_as_background(backend) -> None:
    # Only the first and the last window rows run: the rows in between are handed out as zero blocks.
    height, width, patch, stride = 1000, 50, 20, 10
    starts = window_starts(height, patch, stride)
    windows = [(y, x) for y in (starts[0], starts[-1]) for x in window_starts(width, patch, stride)]
    ys, xs = (np.array(v, np.int64) for v in zip(*windows, strict=True))
    probs = np.zeros((len(windows), 3, patch, patch), np.float32)
    probs[:, 2] = 1.0
    stitcher = BandStitcher(height, width, 3, patch, stride, "mean", backend=backend.name)
    labels = _stitch(stitcher, ys, xs, probs, 4)
    assert (labels[:patch] == 2).all() and (labels[-patch:] == 2).all()
    assert not labels[patch:-patch].any()


def test_no_windows_at_all(backend) -> None:
    stitcher = BandStitcher(100, 30, 5, 16, 8, backend=backend.name)
    assert stitcher.add([], [], np.zeros((0, 5, 16, 16), np.float32)) == []
    labels = _assemble(stitcher.finish(), stitcher)
    assert labels.shape == (100, 30) and not labels.any()


def test_finished_rows_come_out_before_finish(backend) -> None:
    height, width, patch, stride = 500, 40, 32, 16
    windows = _plan(height, width, patch, stride)
    ys, xs = (np.array(v, np.int64) for v in zip(*windows, strict=True))
    stitcher = BandStitcher(height, width, 5, patch, stride, backend=backend.name)
    probs = _random_probs(np.random.default_rng(0), len(windows), 5, patch)
    released = 0
    for start in range(0, len(windows), 3):
        stop = min(start + 3, len(windows))
        for first, labels in stitcher.add(ys[start:stop], xs[start:stop], probs[start:stop]):
            assert first + labels.shape[0] <= ys[stop - 1]  # above every window still to come
            released += labels.shape[0]
    assert released > height // 2


def test_memory_is_bounded_by_the_band_not_the_height() -> None:
    classes, width, patch, stride = 5, 300, 64, 16
    sizes = {h: BandStitcher(h, width, classes, patch, stride, backend="numpy").nbytes for h in (200, 5_000, 200_000)}
    assert len(set(sizes.values())) == 1
    assert sizes[200] == 4 * (classes + 1) * (patch + stride) * width
    assert BandStitcher(50, width, classes, patch, stride, backend="numpy").nbytes == 4 * (classes + 1) * 50 * width
    assert band_rows_for(50, patch, stride) == 50


# ---- input checks ---------------------------------------------------------------------------------


@pytest.fixture
def stitcher() -> BandStitcher:
    return BandStitcher(100, 60, 3, 20, 10, backend="numpy")


def _probs(n: int) -> np.ndarray:
    return np.full((n, 3, 20, 20), 1 / 3, np.float32)


@pytest.mark.parametrize(
    ("ys", "xs", "probs", "match"),
    [
        ([5], [0], _probs(1), "not on the tiling plan"),
        ([0], [15], _probs(1), "not on the tiling plan"),
        ([10, 0], [0, 0], _probs(2), "row-major"),
        ([0, 0], [0], _probs(2), "same length"),
        ([0.0], [0], _probs(1), "integers"),
        ([0], [0], np.zeros((1, 3, 20, 20), np.float64), "float32"),
        ([0], [0], np.zeros((1, 4, 20, 20), np.float32), r"\(1, 3, 20, 20\)"),
        ([0, 10], [0, 0], _probs(1), "float32"),
    ],
)
def test_add_rejects_bad_windows(stitcher: BandStitcher, ys, xs, probs, match: str) -> None:
    with pytest.raises(CervrtError, match=match):
        stitcher.add(ys, xs, probs)


def test_add_rejects_going_back_a_row(stitcher: BandStitcher) -> None:
    stitcher.add([10], [0], _probs(1))
    with pytest.raises(CervrtError, match="row-major"):
        stitcher.add([0], [0], _probs(1))


def test_add_rejects_a_bad_gate(stitcher: BandStitcher) -> None:
    with pytest.raises(CervrtError, match="gate"):
        stitcher.add([0], [0], _probs(1), np.ones((1, 4), np.float32))


def test_no_windows_after_finish(stitcher: BandStitcher) -> None:
    stitcher.finish()
    with pytest.raises(CervrtError, match="finished"):
        stitcher.add([0], [0], _probs(1))
    with pytest.raises(CervrtError, match="already"):
        stitcher.finish()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 10, 3, 4, 2), "height"),
        ((10, 10, 0, 4, 2), "num_classes"),
        ((10, 10, 300, 4, 2), "at most 256"),
        ((10, 10, 3, 4, 5), "stride"),
        ((10, 10, 3, 4.0, 2), "patch"),
    ],
)
def test_constructor_checks(args: tuple, match: str) -> None:
    with pytest.raises(CervrtError, match=match):
        BandStitcher(*args, backend="numpy")


def test_unknown_blend_is_refused() -> None:
    with pytest.raises(CervrtError, match="gaussian"):
        BandStitcher(10, 10, 3, 4, 2, blend="median", backend="numpy")
