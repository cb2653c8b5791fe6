"""Fuse a whole image's sliding windows into uint8 labels in a band of rows, in bounded memory.

The windows follow ``window_starts`` on both axes (SPEC "Sliding window and fusion"). The caller
feeds the probabilities of the windows it ran in row-major order, grouped by window row, in batches
that may span window rows; windows with no tissue are simply not fed, and pixels no window covers
come out 0 (background). The sums live in a band of ``band_rows = min(patch + stride, height)``
image rows: a batch that spans two consecutive window rows fits in one accumulation, and when a
window does not fit, the rows above it (which no later window can touch) are turned into labels and
the band moves down. So memory is

    nbytes = 4 * (num_classes + 1) * band_rows * width   (float32 sums, plus one plane of weight sums)

whatever the image height: 4 * 6 * 500 * 42,000 bytes = 504 MB for the paper's 400/100 tiling on a
42,000 px wide slide. The labels handed back are at most ``band_rows`` rows at a time; the numpy
fallback's argmax briefly holds a float32 copy of the finished rows as well.

``BandFusion`` holds the bookkeeping, independent of where the sums live; ``BandStitcher`` keeps
them in host memory and runs the C extension or its numpy reference; the CUDA band keeps them on the
GPU. ``ProbabilityStitcher`` keeps whole-image sums instead, for ``Predictor.predict_proba``. All of
them take ``add(ys, xs, probs, gate)`` and ``finish()`` (``cervrt.runtime.pipeline.Stitcher``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import numpy as np

from cervrt.errors import CervrtError
from cervrt.runtime.fusion import FusionBackend, get_backend
from cervrt.runtime.reference import MAX_CLASSES, ring_runs
from cervrt.runtime.tiling import BlendMode, blend_weights, check_tiling, window_starts

__all__ = ["BandFusion", "BandStitcher", "LabelChunk", "ProbabilityStitcher", "band_rows_for"]

#: A finished block of rows: (first image row, uint8 labels of shape (rows, width)).
LabelChunk = tuple[int, np.ndarray]


def band_rows_for(height: int, patch: int, stride: int) -> int:
    """Rows of the accumulation band: patch + stride, or the whole image when it is shorter."""
    return min(patch + stride, height)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise CervrtError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _as_origins(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise CervrtError(f"{name} must be a 1-D sequence of window origins, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise CervrtError(f"{name} must hold integers, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


class BandFusion(abc.ABC):
    """Band bookkeeping for a row-major stream of windows; subclasses own the sums.

    Subclasses implement ``_argmax(rows)`` (labels of the first band rows, a new array) and
    ``_shift(shift, filled)`` (band rows [shift, filled) to the top, vacated rows zeroed), and call
    ``_feed(ys, xs, run)`` from their ``add``, where ``run(lo, hi, ys_band)`` accumulates windows
    lo..hi-1 at band-relative rows ``ys_band``.
    """

    def __init__(self, height: int, width: int, num_classes: int, patch: int, stride: int) -> None:
        self.height = _positive_int(height, "height")
        self.width = _positive_int(width, "width")
        self.num_classes = _positive_int(num_classes, "num_classes")
        if self.num_classes > MAX_CLASSES:
            raise CervrtError(f"num_classes must be at most {MAX_CLASSES} for uint8 labels, got {num_classes}")
        check_tiling(_positive_int(patch, "patch"), _positive_int(stride, "stride"))
        self.patch, self.stride = int(patch), int(stride)
        self.band_rows = band_rows_for(self.height, self.patch, self.stride)
        self.y_starts = np.asarray(window_starts(self.height, self.patch, self.stride), dtype=np.int64)
        self.x_starts = np.asarray(window_starts(self.width, self.patch, self.stride), dtype=np.int64)
        self._zero_row = np.zeros((1, self.width), dtype=np.uint8)
        self._zero_row.setflags(write=False)
        self._y0 = 0  # image row of band row 0
        self._filled = 0  # band rows that may hold non-zero sums
        self._last_y = 0  # origin row of the latest window fed
        self._finished = False

    # -- for subclasses ------------------------------------------------------------------------

    @abc.abstractmethod
    def _argmax(self, rows: int) -> np.ndarray:
        """uint8 labels (rows, width) of the first ``rows`` band rows, as a new array."""

    @abc.abstractmethod
    def _shift(self, shift: int, filled: int) -> None:
        """Move band rows [shift, filled) to the top and zero the rows vacated below them."""

    def _check_windows(self, ys: object, xs: object) -> tuple[np.ndarray, np.ndarray]:
        if self._finished:
            raise CervrtError("this image is finished: create a new stitcher for the next one")
        ys, xs = _as_origins(ys, "ys"), _as_origins(xs, "xs")
        if ys.shape != xs.shape:
            raise CervrtError(f"ys and xs must have the same length, got {ys.size} and {xs.size}")
        for name, values, starts in (("row", ys, self.y_starts), ("column", xs, self.x_starts)):
            found = np.minimum(np.searchsorted(starts, values), starts.size - 1)  # starts are sorted
            off_plan = values[starts[found] != values]
            if off_plan.size:
                raise CervrtError(
                    f"window {name} {off_plan[0]} is not on the tiling plan (window_starts with patch "
                    f"{self.patch}, stride {self.stride}; first starts {starts[:4].tolist()})"
                )
        if ys.size and (ys[0] < self._last_y or np.any(np.diff(ys) < 0)):
            raise CervrtError("windows must come in row-major order: a window row never comes after a later one")
        return ys, xs

    def _check_probs(self, probs: object, gate: object, n: int) -> None:
        shape = (self.num_classes, self.patch, self.patch)
        if not (isinstance(probs, np.ndarray) and probs.dtype == np.float32 and probs.ndim == 4
                and probs.shape[0] >= n and probs.shape[1:] == shape and probs.flags.c_contiguous):
            got = f"{probs.dtype} {probs.shape}" if isinstance(probs, np.ndarray) else type(probs).__name__
            dims = ", ".join(map(str, (n, *shape)))
            raise CervrtError(f"probs must be a C-contiguous float32 array of shape ({dims}), got {got}")
        if gate is None:
            return
        if not (isinstance(gate, np.ndarray) and gate.dtype == np.float32 and gate.ndim == 2
                and gate.shape[0] >= n and gate.shape[1] == self.num_classes and gate.flags.c_contiguous):
            got = f"{gate.dtype} {gate.shape}" if isinstance(gate, np.ndarray) else type(gate).__name__
            raise CervrtError(f"gate must be None or a C-contiguous float32 array of shape ({n}, {self.num_classes}) "
                              f"of 0/1 factors, got {got}")

    def _feed(self, ys: np.ndarray, xs: np.ndarray, run: Callable[[int, int, np.ndarray], None]) -> list[LabelChunk]:
        """Accumulate checked windows in runs that fit the band, moving the band between runs."""
        chunks: list[LabelChunk] = []
        lo = 0
        for i, y in enumerate(ys.tolist()):
            if min(y + self.patch, self.height) > self._y0 + self.band_rows:
                self._run(ys, lo, i, run)
                chunks += self._advance(y)
                lo = i
        self._run(ys, lo, ys.size, run)
        if ys.size:
            self._last_y = int(ys[-1])
        return chunks

    def _run(self, ys: np.ndarray, lo: int, hi: int, run: Callable[[int, int, np.ndarray], None]) -> None:
        if hi <= lo:
            return
        ys_band = ys[lo:hi] - self._y0
        run(lo, hi, ys_band)
        self._filled = max(self._filled, min(int(ys_band[-1]) + self.patch, self.band_rows))

    def _advance(self, y: int) -> list[LabelChunk]:
        """Rows above ``y`` are final: hand them out and move the band to start at ``y``."""
        chunks = self._emit(y)
        shift = y - self._y0
        self._shift(shift, self._filled)
        self._filled = max(self._filled - shift, 0)
        self._y0 = y
        return chunks

    def _emit(self, stop: int) -> list[LabelChunk]:
        """Labels of image rows [band start, stop): computed where sums exist, zero views below."""
        computed = min(stop - self._y0, self._filled)
        chunks: list[LabelChunk] = []
        if computed > 0:
            chunks.append((self._y0, self._argmax(computed)))
        start = self._y0 + max(computed, 0)
        while start < stop:
            rows = min(self.band_rows, stop - start)
            chunks.append((start, np.broadcast_to(self._zero_row, (rows, self.width))))
            start += rows
        return chunks

    def _finish(self) -> list[LabelChunk]:
        if self._finished:
            raise CervrtError("finish() was already called for this image")
        self._finished = True
        return self._emit(self.height)


class BandStitcher(BandFusion):
    """Fuse one image's window probabilities into uint8 labels, a band of rows at a time, on the host.

    ``add(ys, xs, probs, gate=None)`` takes a batch of windows (row-major, grouped by window row;
    ``probs`` float32 (n, num_classes, patch, patch); ``gate`` None or float32 (n, num_classes) of 0/1
    classification-gate factors) and returns the finished blocks as ``(first_row, labels)`` pairs;
    ``finish()`` returns the rest. Concatenated in order, the blocks cover rows 0..height-1 exactly
    once. Blocks of rows no window touched are read-only zero views. Memory: ``nbytes`` (see the
    module docstring), independent of the image height.
    """

    def __init__(self, height: int, width: int, num_classes: int, patch: int, stride: int,
                 blend: BlendMode | str = BlendMode.GAUSSIAN, backend: str = "auto", threads: int = 0) -> None:
        super().__init__(height, width, num_classes, patch, stride)
        self.blend = BlendMode.parse(blend)
        self.backend: FusionBackend = get_backend(backend)
        self.weights = blend_weights(self.blend, self.patch)
        self._acc = np.zeros((self.num_classes, self.band_rows, self.width), dtype=np.float32)
        self._wsum = np.zeros((self.band_rows, self.width), dtype=np.float32)
        self._base = 0  # the row of the sums that holds band row 0
        #: Threads of each fusion call (0: OpenMP's default; 1 where pipeline threads share the cores).
        self.threads = threads

    @property
    def nbytes(self) -> int:
        """Bytes of the band: 4 * (num_classes + 1) * band_rows * width."""
        return self._acc.nbytes + self._wsum.nbytes

    def add(self, ys: Sequence[int] | np.ndarray, xs: Sequence[int] | np.ndarray, probs: np.ndarray,
            gate: np.ndarray | None = None) -> list[LabelChunk]:
        """Accumulate a batch of windows; return the label blocks no later window can touch."""
        ys, xs = self._check_windows(ys, xs)
        self._check_probs(probs, gate, ys.size)

        def run(lo: int, hi: int, ys_band: np.ndarray) -> None:
            self.backend.accumulate(self._acc, self._wsum, probs[lo:hi], ys_band, xs[lo:hi], self.weights,
                                    None if gate is None else gate[lo:hi], threads=self.threads, base=self._base)

        return self._feed(ys, xs, run)

    def finish(self) -> list[LabelChunk]:
        """The label blocks of every row not handed out yet; the stitcher takes no more windows."""
        return self._finish()

    def _argmax(self, rows: int) -> np.ndarray:
        labels = np.empty((rows, self.width), dtype=np.uint8)
        self.backend.argmax(self._acc, self._wsum, labels, rows, threads=self.threads, base=self._base)
        return labels

    def _shift(self, shift: int, filled: int) -> None:
        # The band is a ring (band row y is stored in row (y + base) % band_rows): moving it down zeroes
        # the rows handed out, which become its last rows, and moves the base; no row is copied.
        for a, b, first in ring_runs(0, min(shift, filled), self._base, self.band_rows):
            self._acc[:, first : first + b - a] = 0
            self._wsum[first : first + b - a] = 0
        self._base = (self._base + shift) % self.band_rows


class ProbabilityStitcher:
    """Fuse one image's windows into whole float32 (C, H, W) probability maps (no labels handed out).

    Holds C + 1 float32 planes of the image. ``add`` and ``finish`` return no label rows;
    ``probabilities()`` divides the sums once every window was added: pixels no window covered are
    background with probability 1.
    """

    def __init__(self, height: int, width: int, num_classes: int, patch: int,
                 blend: BlendMode | str = BlendMode.GAUSSIAN, backend: FusionBackend | str = "auto") -> None:
        self.backend = backend if isinstance(backend, FusionBackend) else get_backend(backend)
        self.weights = blend_weights(BlendMode.parse(blend), int(patch))
        self._acc = np.zeros((num_classes, height, width), dtype=np.float32)
        self._wsum = np.zeros((height, width), dtype=np.float32)

    def add(self, ys: np.ndarray, xs: np.ndarray, probs: np.ndarray,
            gate: np.ndarray | None = None) -> list[LabelChunk]:
        self.backend.accumulate(self._acc, self._wsum, probs, _as_origins(ys, "ys"), _as_origins(xs, "xs"),
                                self.weights, gate)
        return []

    def finish(self) -> list[LabelChunk]:
        return []

    def probabilities(self) -> np.ndarray:
        """The fused (C, H, W) probabilities, normalised in place (call once, after the last ``add``)."""
        acc, wsum = self._acc, self._wsum
        covered = wsum > 0
        np.divide(acc, wsum, out=acc, where=covered)
        acc[0][~covered] = 1.0
        acc[1:, ~covered] = 0.0
        return acc
