"""The C extension against the numpy reference on random inputs, argument checks, and backend choice."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.runtime import fusion
from cervrt.runtime.tiling import blend_weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _random_windows(rng: np.random.Generator, n: int, classes: int, patch: int, rows: int, width: int):
    probs = rng.dirichlet(np.ones(classes), size=(n, patch, patch)).astype(np.float32).transpose(0, 3, 1, 2)
    ys = rng.integers(-patch - 2, rows + 2, n).astype(np.int64)  # some above, below or across the band
    xs = rng.integers(-patch - 2, width + 2, n).astype(np.int64)
    gate = (rng.random((n, classes)) > 0.25).astype(np.float32)
    return np.ascontiguousarray(probs), ys, xs, gate


def _top2_margin(acc: np.ndarray, wsum: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        fused = np.sort(acc / wsum, axis=0)
    return np.where(wsum > 0, fused[-1] - fused[-2], np.inf)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("gated", [False, True])
def test_accumulate_and_argmax_match_reference(c_backend, numpy_backend, seed: int, blend: str, gated: bool) -> None:
    rng = np.random.default_rng(seed)
    classes, patch, rows, width = 5, 17, 40, 61
    probs, ys, xs, gate = _random_windows(rng, 30, classes, patch, rows, width)
    weights = blend_weights(blend, patch)
    bands = {}
    for b in (c_backend, numpy_backend):
        acc, wsum = np.zeros((classes, rows, width), np.float32), np.zeros((rows, width), np.float32)
        b.accumulate(acc, wsum, probs, ys, xs, weights, gate if gated else None)
        bands[b.name] = acc, wsum
    (acc_c, wsum_c), (acc_np, wsum_np) = bands["c"], bands["numpy"]
    np.testing.assert_allclose(acc_c, acc_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(wsum_c, wsum_np, rtol=1e-6, atol=1e-6)
    labels = {}
    for b, (acc, wsum) in zip((c_backend, numpy_backend), (bands["c"], bands["numpy"]), strict=True):
        labels[b.name] = np.zeros((rows, width), np.uint8)
        b.argmax(acc, wsum, labels[b.name], rows)
    clear = _top2_margin(acc_np, wsum_np) > 1e-5
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels["c"][clear], labels["numpy"][clear])
    assert (labels["c"][wsum_np == 0] == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_argmax_matches_reference_on_the_same_sums(c_backend, numpy_backend, seed: int) -> None:
    rng = np.random.default_rng(seed)
    acc = rng.random((7, 33, 45), dtype=np.float32)
    acc[:, :5, :5] = 0.5  # ties
    wsum = rng.random((33, 45), dtype=np.float32)
    wsum[10:12] = 0  # uncovered
    outs = [np.zeros((30, 45), np.uint8) for _ in range(2)]
    c_backend.argmax(acc, wsum, outs[0], 30)
    numpy_backend.argmax(acc, wsum, outs[1], 30)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("view", ["contiguous", "strided"])
def test_gather_matches_reference(c_backend, numpy_backend, view: str) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    if view == "strided":
        image = image[5:, ::-1][:, 3:]
    ys = rng.integers(0, image.shape[0] + 5, 12).astype(np.int64)  # some past the bottom edge
    xs = rng.integers(0, image.shape[1] + 5, 12).astype(np.int64)
    outs = [np.full((14, 3, 24, 24), np.nan, np.float32) for _ in range(2)]
    c_backend.gather(image, ys, xs, 24, MEAN, STD, outs[0])
    numpy_backend.gather(image, ys, xs, 24, MEAN, STD, outs[1])
    np.testing.assert_allclose(outs[0][:12], outs[1][:12], rtol=1e-6, atol=1e-6)
    assert np.isnan(outs[0][12:]).all()


def test_gather_pads_past_the_edges_with_glass(backend) -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    out = np.zeros((1, 3, 6, 6), np.float32)
    backend.gather(image, np.array([5], np.int64), np.array([8], np.int64), 6, MEAN, STD, out)
    glass = ((255 / 255 - np.array(MEAN)) / np.array(STD)).astype(np.float32)
    black = ((0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)
    inside = np.zeros((6, 6), bool)
    inside[:5, :2] = True  # rows 5..9 and columns 8..9 are inside the image
    for c in range(3):
        np.testing.assert_allclose(out[0, c][inside], black[c], rtol=1e-6)
        np.testing.assert_allclose(out[0, c][~inside], glass[c], rtol=1e-6)


def test_band_equals_a_slice_of_the_whole_canvas(backend) -> None:
    # Accumulating band-relative windows (negative ys, rows past the band) into a band gives exactly
    # the same rows as accumulating the absolute windows into the whole canvas.
    rng = np.random.default_rng(11)
    classes, patch, height, width, top, rows = 3, 9, 50, 30, 17, 12
    probs, _, _, gate = _random_windows(rng, 25, classes, patch, height, width)
    ys = rng.integers(0, height - patch + 1, 25).astype(np.int64)
    xs = rng.integers(0, width - patch + 1, 25).astype(np.int64)
    weights = blend_weights("gaussian", patch)
    canvas = np.zeros((classes, height, width), np.float32), np.zeros((height, width), np.float32)
    band = np.zeros((classes, rows, width), np.float32), np.zeros((rows, width), np.float32)
    backend.accumulate(*canvas, probs, ys, xs, weights, gate)
    backend.accumulate(*band, probs, ys - top, xs, weights, gate)
    np.testing.assert_array_equal(band[0], canvas[0][:, top : top + rows])
    np.testing.assert_array_equal(band[1], canvas[1][top : top + rows])


def test_extreme_origins_touch_nothing(backend) -> None:
    acc, wsum = np.zeros((2, 4, 4), np.float32), np.zeros((4, 4), np.float32)
    big = np.iinfo(np.int64)
    ys = np.array([big.min, big.max, 0, 0], np.int64)
    xs = np.array([0, 0, big.min, big.max], np.int64)
    backend.accumulate(acc, wsum, np.ones((4, 2, 3, 3), np.float32), ys, xs, np.ones((3, 3), np.float32))
    assert not acc.any() and not wsum.any()
    out = np.zeros((1, 3, 3, 3), np.float32)
    backend.gather(np.zeros((4, 4, 3), np.uint8), np.array([big.max], np.int64), np.array([big.max], np.int64), 3,
                   (0, 0, 0), (1, 1, 1), out)
    np.testing.assert_array_equal(out, 1.0)


# ---- argument checks ------------------------------------------------------------------------------


def _gather_args(**override):
    args = dict(image=np.zeros((8, 8, 3), np.uint8), ys=np.zeros(2, np.int64), xs=np.zeros(2, np.int64), patch=4,
                mean=MEAN, std=STD, out=np.zeros((2, 3, 4, 4), np.float32))
    args.update(override)
    return args


def _accumulate_args(**override):
    args = dict(acc=np.zeros((3, 5, 6), np.float32), wsum=np.zeros((5, 6), np.float32),
                probs=np.zeros((2, 3, 4, 4), np.float32), ys=np.zeros(2, np.int64), xs=np.zeros(2, np.int64),
                weights=np.ones((4, 4), np.float32), gate=None)
    args.update(override)
    return args


def _argmax_args(**override):
    args = dict(acc=np.zeros((3, 5, 6), np.float32), wsum=np.zeros((5, 6), np.float32),
                out=np.zeros((5, 6), np.uint8), rows=5)
    args.update(override)
    return args


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


BAD_GATHER = [
    (TypeError, dict(image=[[0]])),
    (TypeError, dict(image=np.zeros((8, 8, 3), np.float32))),
    (ValueError, dict(image=np.zeros((8, 8, 4), np.uint8))),
    (ValueError, dict(image=np.zeros((8, 8), np.uint8))),
    (TypeError, dict(ys=np.zeros(2, np.int32))),
    (ValueError, dict(xs=np.zeros(3, np.int64))),
    (ValueError, dict(ys=np.zeros((2, 1), np.int64))),
    (ValueError, dict(ys=np.array([0, -1], np.int64))),
    (ValueError, dict(patch=0)),
    (TypeError, dict(patch=4.0)),
    (ValueError, dict(mean=(0.5, 0.5))),
    (TypeError, dict(mean=0.5)),
    (ValueError, dict(std=(1.0, 0.0, 1.0))),
    (ValueError, dict(std=(1.0, float("nan"), 1.0))),
    (TypeError, dict(out=np.zeros((2, 3, 4, 4), np.float64))),
    (ValueError, dict(out=np.zeros((1, 3, 4, 4), np.float32))),
    (ValueError, dict(out=np.zeros((2, 3, 5, 5), np.float32))),
    (ValueError, dict(out=np.zeros((2, 3, 4, 8), np.float32)[..., ::2])),
    (ValueError, dict(out=_read_only(np.zeros((2, 3, 4, 4), np.float32)))),
    (TypeError, dict(out=np.zeros((2, 3, 4, 4), ">f4"))),
]

BAD_ACCUMULATE = [
    (TypeError, dict(acc=np.zeros((3, 5, 6), np.float64))),
    (ValueError, dict(acc=np.zeros((0, 5, 6), np.float32))),
    (ValueError, dict(acc=_read_only(np.zeros((3, 5, 6), np.float32)))),
    (ValueError, dict(acc=np.zeros((3, 6, 5), np.float32).transpose(0, 2, 1))),
    (ValueError, dict(wsum=np.zeros((5, 7), np.float32))),
    (ValueError, dict(probs=np.zeros((2, 4, 4, 4), np.float32))),
    (ValueError, dict(probs=np.zeros((1, 3, 4, 4), np.float32))),
    (ValueError, dict(probs=np.zeros((2, 3, 4, 5), np.float32))),
    (TypeError, dict(probs=np.zeros((2, 3, 4, 4), np.float16))),
    (ValueError, dict(weights=np.ones((3, 3), np.float32))),
    (TypeError, dict(weights=np.ones((4, 4)))),
    (TypeError, dict(ys=[0, 0])),
    (ValueError, dict(gate=np.ones((2, 4), np.float32))),
    (ValueError, dict(gate=np.ones((1, 3), np.float32))),
    (TypeError, dict(gate=np.ones((2, 3), np.float64))),
]

BAD_ARGMAX = [
    (ValueError, dict(out=np.zeros((5, 7), np.uint8))),
    (TypeError, dict(out=np.zeros((5, 6), np.int8))),
    (ValueError, dict(rows=6)),
    (ValueError, dict(rows=-1)),
    (ValueError, dict(out=np.zeros((4, 6), np.uint8))),
    (ValueError, dict(acc=np.zeros((257, 5, 6), np.float32))),
    (ValueError, dict(wsum=np.zeros((4, 6), np.float32))),
]


@pytest.mark.parametrize(("error", "override"), BAD_GATHER)
def test_gather_rejects_bad_arguments(backend, error: type[Exception], override: dict) -> None:
    with pytest.raises(error):
        backend.gather(**_gather_args(**override))


@pytest.mark.parametrize(("error", "override"), BAD_ACCUMULATE)
def test_accumulate_rejects_bad_arguments(backend, error: type[Exception], override: dict) -> None:
    with pytest.raises(error):
        backend.accumulate(**_accumulate_args(**override))


@pytest.mark.parametrize(("error", "override"), BAD_ARGMAX)
def test_argmax_rejects_bad_arguments(backend, error: type[Exception], override: dict) -> None:
    with pytest.raises(error):
        backend.argmax(**_argmax_args(**override))


def test_good_arguments_pass(backend) -> None:
    backend.gather(**_gather_args())
    backend.accumulate(**_accumulate_args(gate=np.ones((2, 3), np.float32)))
    backend.argmax(**_argmax_args())


def test_error_messages_name_the_argument(backend) -> None:
    with pytest.raises(ValueError, match=r"probs\.shape\[1\] must be 3"):
        backend.accumulate(**_accumulate_args(probs=np.zeros((2, 4, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        backend.gather(**_gather_args(out=np.zeros((2, 3, 4, 8), np.float32)[..., ::2]))


# ---- choosing the backend -------------------------------------------------------------------------


@pytest.fixture
def extension_missing(monkeypatch: pytest.MonkeyPatch):
    """Make ``import cervrt._fusion`` fail, as on an install without a C compiler."""
    monkeypatch.setitem(sys.modules, "cervrt._fusion", None)
    fusion._import_extension.cache_clear()
    yield
    fusion._import_extension.cache_clear()


def test_auto_falls_back_to_numpy_with_one_warning(extension_missing) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = fusion.get_backend("auto")
    assert backend.name == "numpy"
    assert [w.category for w in caught] == [RuntimeWarning]
    assert "pip install -e ." in str(caught[0].message)


def test_c_backend_without_the_extension_says_how_to_build(extension_missing) -> None:
    with pytest.raises(CervrtError, match="pip install -e"):
        fusion.get_backend("c")


def test_auto_prefers_the_extension(c_backend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fusion.get_backend().name == "c"


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(CervrtError, match="auto, c, numpy"):
        fusion.get_backend("cuda")
    assert fusion.available_backends() == ("auto", "c", "numpy")
