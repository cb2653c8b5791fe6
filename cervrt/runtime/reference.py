"""Pure numpy reference of the three fusion operations of ``cervrt._fusion``.

Same signatures, checks and semantics as the C extension, and the same floating-point operations in
the same order as ``cervrt/csrc/fusion_math.h``, so its labels and sums match the C ones (bit for
bit with setup.py's build; the tests allow 1e-6 and ignore labels within 1e-5 of a tie). It is the
tests' oracle, and the fallback when the extension is not built (slower, and its argmax holds a
float32 copy of the finished rows).

- ``gather``: crop patches at (ys[i], xs[i]) from an (H, W, 3) uint8 image, pad past the bottom or
  right edge with glass (255), normalise with v * scale + bias (scale = 1 / (255 std),
  bias = -mean / std) and write CHW float32 into ``out[:n]``.
- ``accumulate``: ``acc[:, y, x] += (w * gate[i]) * probs[i]`` and ``wsum[y, x] += w`` window by
  window, for band-relative origins that may lie partly or wholly outside the band.
- ``argmax``: labels of the first ``rows`` band rows: argmax of ``acc / wsum``, ties to the lowest
  class, uncovered pixels (``wsum == 0``) 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

__all__ = ["MAX_CLASSES", "accumulate", "argmax", "gather", "norm_coeffs", "ring_runs"]

#: Largest class count whose labels fit in uint8.
MAX_CLASSES = 256


def _check_array(a: object, name: str, dtype: type, ndim: int, contiguous: bool = True,
                 writeable: bool = False) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype) or not a.dtype.isnative:
        raise TypeError(f"{name} must be {np.dtype(dtype).name} in native byte order, got {a.dtype!r}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {a.ndim}")
    if contiguous and not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous and aligned (pass np.ascontiguousarray({name}))")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a


def _check_dim(a: np.ndarray, name: str, axis: int, expected: int, what: str) -> None:
    if a.shape[axis] != expected:
        raise ValueError(f"{name}.shape[{axis}] must be {expected} ({what}), got {a.shape[axis]}")


def _check_origins(ys: object, xs: object) -> tuple[np.ndarray, np.ndarray]:
    ys = _check_array(ys, "ys", np.int64, 1)
    xs = _check_array(xs, "xs", np.int64, 1)
    if ys.shape[0] != xs.shape[0]:
        raise ValueError(f"ys and xs must have the same length, got {ys.shape[0]} and {xs.shape[0]}")
    return ys, xs


def _check_triple(values: object, name: str, positive: bool) -> list[float]:
    try:
        triple = [float(v) for v in values]  # type: ignore[union-attr]
    except TypeError:
        raise TypeError("mean and std must be sequences of 3 floats") from None
    if len(triple) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {len(triple)}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in triple):
        raise ValueError(f"{name} must hold finite{' positive' if positive else ''} values, got {values!r}")
    return triple


def _check_band(acc: object, wsum: object) -> tuple[np.ndarray, np.ndarray]:
    acc = _check_array(acc, "acc", np.float32, 3, writeable=True)
    wsum = _check_array(wsum, "wsum", np.float32, 2, writeable=True)
    if acc.shape[0] < 1:
        raise ValueError("acc must have at least one class plane")
    _check_dim(wsum, "wsum", 0, acc.shape[1], "band rows of acc")
    _check_dim(wsum, "wsum", 1, acc.shape[2], "band width of acc")
    return acc, wsum


def norm_coeffs(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel float32 (scale, bias) with v * scale + bias == (v / 255 - mean) / std.

    Computed in double precision and rounded to float32, as ``cervrt_norm_coeffs`` does in C.
    """
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32)
    bias = np.array([-m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32)
    return scale, bias


def _window_span(origin: int, patch: int, length: int) -> tuple[int, int]:
    """Patch-local [lo, hi) of a window at ``origin`` that lies inside [0, length) (lo >= hi: none)."""
    if origin <= -patch or origin >= length:
        return 0, 0
    return max(0, -origin), min(patch, length - origin)


def gather(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int, mean: Sequence[float],
           std: Sequence[float], out: np.ndarray, threads: int = 0) -> None:
    """Crop, pad with glass and normalise ``len(ys)`` patches into ``out[:n]`` (float32 (B, 3, P, P))."""
    image = _check_array(image, "image", np.uint8, 3, contiguous=False)
    if image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got {image.shape[2]} channels")
    ys, xs = _check_origins(ys, xs)
    patch = operator.index(patch)
    if patch <= 0:
        raise ValueError(f"patch must be positive, got {patch}")
    scale, bias = norm_coeffs(_check_triple(mean, "mean", False), _check_triple(std, "std", True))
    out = _check_array(out, "out", np.float32, 4, writeable=True)
    _check_dim(out, "out", 1, 3, "RGB channels")
    _check_dim(out, "out", 2, patch, "patch")
    _check_dim(out, "out", 3, patch, "patch")
    if out.shape[0] < ys.shape[0]:
        raise ValueError(f"out holds {out.shape[0]} patches but {ys.shape[0]} windows were given")
    bad = np.flatnonzero((ys < 0) | (xs < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"window origins must be >= 0, got ({ys[i]}, {xs[i]}) at index {i}")
    _gather(image, ys, xs, patch, scale[:, None, None], bias[:, None, None], out)


def _gather(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int, scale: np.ndarray,
            bias: np.ndarray, out: np.ndarray) -> None:
    glass = np.float32(255.0) * scale + bias
    height, width = image.shape[:2]
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
        out[i] = glass
        _, h = _window_span(y, patch, height)
        _, w = _window_span(x, patch, width)
        if h > 0 and w > 0:
            crop = image[y : y + h, x : x + w].transpose(2, 0, 1).astype(np.float32)
            out[i, :, :h, :w] = crop * scale + bias


def _check_base(base: int, band_rows: int) -> int:
    base = operator.index(base)
    if not 0 <= base < max(band_rows, 1):
        raise ValueError(f"base must be between 0 and {band_rows - 1} (a band row), got {base}")
    return base


def ring_runs(start: int, stop: int, base: int, band_rows: int) -> list[tuple[int, int, int]]:
    """Band rows [start, stop) stored from physical row ``(start + base) % band_rows`` on, wrapping: the
    (first, last + 1, physical first) runs of them that are contiguous in memory."""
    runs, row = [], start
    while row < stop:
        physical = (row + base) % band_rows
        end = min(stop, row + band_rows - physical)
        runs.append((row, end, physical))
        row = end
    return runs


def accumulate(acc: np.ndarray, wsum: np.ndarray, probs: np.ndarray, ys: np.ndarray, xs: np.ndarray,
               weights: np.ndarray, gate: np.ndarray | None = None, threads: int = 0, base: int = 0) -> None:
    """``acc += (w * gate[i]) * probs[i]`` and ``wsum += w`` for each window, clipped to the band; band row
    y is stored in row ``(y + base) % band_rows`` (a ring; ``threads`` is the C extension's)."""
    acc, wsum = _check_band(acc, wsum)
    base = _check_base(base, acc.shape[1])
    probs = _check_array(probs, "probs", np.float32, 4)
    ys, xs = _check_origins(ys, xs)
    weights = _check_array(weights, "weights", np.float32, 2)
    n, classes, patch = ys.shape[0], acc.shape[0], probs.shape[2]
    if probs.shape[0] < n:
        raise ValueError(f"probs holds {probs.shape[0]} patches but {n} windows were given")
    _check_dim(probs, "probs", 1, classes, "classes of acc")
    _check_dim(probs, "probs", 3, patch, "square patches")
    if patch < 1:
        raise ValueError("probs must hold patches of at least 1x1 pixels")
    _check_dim(weights, "weights", 0, patch, "patch of probs")
    _check_dim(weights, "weights", 1, patch, "patch of probs")
    if gate is not None:
        gate = _check_array(gate, "gate", np.float32, 2)
        _check_dim(gate, "gate", 1, classes, "classes of acc")
        if gate.shape[0] < n:
            raise ValueError(f"gate holds {gate.shape[0]} rows but {n} windows were given")
    for i in range(n):
        _accumulate_window(acc, wsum, probs[i], int(ys[i]), int(xs[i]), weights,
                           None if gate is None else gate[i], base)


def _accumulate_window(acc: np.ndarray, wsum: np.ndarray, prob: np.ndarray, y: int, x: int,
                       weights: np.ndarray, gate: np.ndarray | None, base: int = 0) -> None:
    patch = weights.shape[0]
    r0, r1 = _window_span(y, patch, acc.shape[1])
    c0, c1 = _window_span(x, patch, acc.shape[2])
    if r0 >= r1 or c0 >= c1:
        return
    for a, b, p in ring_runs(y + r0, y + r1, base, acc.shape[1]):
        w = weights[a - y : b - y, c0:c1]
        wg = w[None] if gate is None else w[None] * gate[:, None, None]
        acc[:, p : p + b - a, x + c0 : x + c1] += wg * prob[:, a - y : b - y, c0:c1]
        wsum[p : p + b - a, x + c0 : x + c1] += w


def argmax(acc: np.ndarray, wsum: np.ndarray, out: np.ndarray, rows: int, threads: int = 0, base: int = 0) -> None:
    """uint8 labels of the first ``rows`` band rows (band row y stored in row ``(y + base) % band_rows``)
    into ``out[:rows]``."""
    acc, wsum = _check_band(acc, wsum)
    base = _check_base(base, acc.shape[1])
    if acc.shape[0] > MAX_CLASSES:
        raise ValueError(f"uint8 labels hold at most {MAX_CLASSES} classes, acc has {acc.shape[0]}")
    out = _check_array(out, "out", np.uint8, 2, writeable=True)
    _check_dim(out, "out", 1, acc.shape[2], "band width")
    rows = operator.index(rows)
    limit = min(acc.shape[1], out.shape[0])
    if not 0 <= rows <= limit:
        raise ValueError(f"rows must be between 0 and {limit} (band rows and out rows), got {rows}")
    for a, b, p in ring_runs(0, rows, base, acc.shape[1]):
        _argmax(acc[:, p : p + b - a], wsum[p : p + b - a], out[a:b])


def _argmax(acc: np.ndarray, wsum: np.ndarray, out: np.ndarray) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        fused = acc / wsum
    best = np.zeros(wsum.shape, dtype=np.uint8)
    best_value = fused[0]
    for c in range(1, acc.shape[0]):
        better = fused[c] > best_value
        best[better] = c
        best_value = np.where(better, fused[c], best_value)
    best[~(wsum > 0)] = 0
    out[...] = best
