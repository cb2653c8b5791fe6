"""The inference pipeline's vocabulary and its one loop: plan -> load -> infer -> stitch -> write.

    rows, skipped = plan_rows(height, width, patch, stride, tissue.fraction, threshold)   # the plan
    run = run_windows(host_batches(rows, 8), loader, infer, stitcher, sink, timer, progress)

The loop knows stages only by their small protocols, so each is a separate object that can be
swapped, tested alone or put behind a thread and a bounded queue (``overlap``, below):

- ``Loader.load(batch, timer) -> loaded``: the batch's patches made ready for the engine (host: read
  and gathered into a float32 buffer; device: cropped into pinned memory and uploaded);
- ``Infer(loaded) -> (probs, gate)``: the engine's probabilities and the classification gate's
  factors (``gate_factors``) or None; ``EngineStage`` is the one for an Engine;
- ``Stitcher.add(ys, xs, probs, gate) -> chunks`` and ``finish() -> chunks`` (MONAI's Merger in
  spirit): fuse windows and hand back finished label rows (``BandStitcher`` on the host, the CUDA
  band on the device, ``ProbabilityStitcher`` for whole probability maps);
- ``sink(chunks)``: where finished rows go (a mask writer, an array).

A ``Labeler`` puts the three together for one image; ``HostLabeler`` (C or numpy fusion) is here,
the device labeler is ``cervrt.runtime.cuda_path.DeviceLabeler``. Stages are timed per ``STAGES``
name with one ``StageTimer`` per call, and ``progress(done, total)`` is called before the first batch
and after every batch.

Overlap (``run_windows(..., overlap=True)``, the host labeler's default): the loader and the engine
each run on a thread of their own, the stitcher on the calling thread and the sink on a writer
thread, joined by bounded queues of ``depth`` items (``Lanes``), so memory stays bounded by a few
batches and label bands. ``progress`` (and the cancellation it checks) runs on the calling thread
after every fused batch; the sink runs on the writer thread, in order. The first error of any
thread, or a KeyboardInterrupt of the calling thread, stops every thread (each waits on a queue for
at most ``POLL`` seconds between looks at the stop flag) and is raised once they are joined, so no
thread outlives the call and the caller's writers can discard what they hold.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from cervrt.errors import InputError, ModelError
from cervrt.runtime.fusion import FusionBackend
from cervrt.runtime.lanes import POLL, Lanes
from cervrt.runtime.stitcher import BandStitcher, LabelChunk
from cervrt.runtime.tiling import BlendMode, window_starts

__all__ = [
    "POLL", "STAGES", "ArraySource", "Batch", "EngineStage", "HostLabeler", "Infer", "Labeler", "Lanes", "Loader",
    "PatchSource", "Progress", "Rows", "Segments", "Sink", "StageTimer", "Stitcher", "batches", "check_image",
    "gate_factors", "host_batches", "plan_rows", "row_batches", "run_windows",
]

#: The timed stages, in pipeline order.
STAGES = ("read", "tissue", "preprocess", "engine", "fuse", "write")
#: ``progress(done, total)``: patches run so far and patches to run, called after every batch.
Progress = Callable[[int, int], None]
#: The windows to run, row by row: (window row origin, sorted column origins of the windows kept).
Rows = list[tuple[int, np.ndarray]]
#: One batch's windows as (window row origin, column origins) segments, in row-major order.
Segments = list[tuple[int, np.ndarray]]
#: Where finished label rows go.
Sink = Callable[[list[LabelChunk]], None]


class StageTimer:
    """Seconds spent per stage; ``with timer("engine"): ...`` adds to a stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()  # stages may be timed on several threads at once

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed


# ---- the plan ---------------------------------------------------------------------------------------


def plan_rows(height: int, width: int, patch: int, stride: int,
              fraction: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None,
              threshold: float) -> tuple[Rows, int]:
    """The windows to run, row by row, and the number skipped for too little tissue.

    ``fraction(ys, xs, patch)`` is the tissue share of each window (``TissueMap.fraction``); None, or a
    threshold of 0, runs every window.
    """
    ys, xs = window_starts(height, patch, stride), np.asarray(window_starts(width, patch, stride), dtype=np.int64)
    rows: Rows = []
    skipped = 0
    for y in ys:
        keep = xs
        if fraction is not None and threshold > 0:
            keep = xs[np.asarray(fraction(np.full(xs.size, y, dtype=np.int64), xs, patch)) >= threshold]
        skipped += xs.size - keep.size
        if keep.size:
            rows.append((int(y), keep))
    return rows, skipped


@dataclass(frozen=True)
class Batch:
    """One engine call's windows: its segments and their flat row and column origins."""

    segments: Segments
    ys: np.ndarray
    xs: np.ndarray

    @classmethod
    def of(cls, segments: Segments) -> Batch:
        ys = np.concatenate([np.full(xs.size, y, dtype=np.int64) for y, xs in segments])
        return cls(segments, ys, np.concatenate([xs for _, xs in segments]).astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.ys.size)


def batches(rows: Rows, batch_size: int) -> Iterator[Segments]:
    """Row-major batches of at most ``batch_size`` windows, as (row origin, column origins) segments."""
    batch: Segments = []
    room = batch_size
    for y, xs in rows:
        start = 0
        while start < xs.size:
            part = xs[start : start + room]
            batch.append((y, part))
            start += part.size
            room -= part.size
            if room == 0:
                yield batch
                batch, room = [], batch_size
    if batch:
        yield batch


def row_batches(rows: Rows, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """Batches that never span two window rows (a staged batch is cropped from one band of rows)."""
    return [(y, xs[i : i + batch_size]) for y, xs in rows for i in range(0, xs.size, batch_size)]


def host_batches(rows: Rows, batch_size: int) -> Iterator[Batch]:
    """``batches`` as Batch objects: full batches that may span window rows (the host fusion takes them)."""
    return (Batch.of(segments) for segments in batches(rows, batch_size))


# ---- the stages' protocols ------------------------------------------------------------------------


class PatchSource(Protocol):
    """Where one image's patches come from: an array in memory (``ArraySource``) or a slide read a band
    at a time (``cervrt.runtime.slide_run.SlideRows``)."""

    def gather(self, segments: Segments, out: np.ndarray, timer: StageTimer) -> None:
        """Fill ``out[:n]`` with the segments' patches, normalised float32 (n, 3, P, P)."""

    def pixels(self, y: int) -> tuple[np.ndarray, int, int]:
        """uint8 (h, w, 3) pixels that hold window row ``y``'s windows, and the image (row, column) of their (0, 0)."""


class Loader(Protocol):
    def load(self, batch: Batch, timer: StageTimer) -> Any:
        """The batch made ready for the engine (times its own ``read`` and ``preprocess``)."""


#: ``infer(loaded) -> (probs, gate)``: the engine's probabilities and the gate factors (or None).
Infer = Callable[[Any], tuple[Any, "np.ndarray | None"]]


class Stitcher(Protocol):
    def add(self, ys: np.ndarray, xs: np.ndarray, probs: Any, gate: np.ndarray | None) -> list[LabelChunk]:
        """Fuse a batch of windows; return the label rows no later window can touch."""

    def finish(self) -> list[LabelChunk]:
        """The label rows not handed out yet; the stitcher takes no more windows."""


class Labeler(Protocol):
    """One image's planned windows -> its label rows, handed to ``sink``; returns the patches run."""

    name: str

    def label(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
              progress: Progress | None) -> int: ...


# ---- the loop ---------------------------------------------------------------------------------------


def run_windows(work: Iterable[Batch], loader: Loader, infer: Infer, stitcher: Stitcher, sink: Sink,
                timer: StageTimer, progress: Progress | None, total: int, *, overlap: bool = False,
                depth: int = 2) -> int:
    """Load, infer and stitch every batch in ``work``, sink the finished rows, then finish; returns patches run.

    ``overlap``: loader, engine and sink on threads of their own, ``depth`` items per queue (see the
    module docstring); the loader must then not reuse a buffer before ``depth + 2`` later loads.
    """
    if overlap:
        return _run_overlapped(work, loader, infer, stitcher, sink, timer, progress, total, depth)
    done = 0
    if progress is not None:
        progress(0, total)
    for batch in work:
        loaded = loader.load(batch, timer)
        with timer("engine"):
            probs, gate = infer(loaded)
        with timer("fuse"):
            chunks = stitcher.add(batch.ys, batch.xs, probs, gate)
        with timer("write"):
            sink(chunks)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    with timer("fuse"):
        chunks = stitcher.finish()
    with timer("write"):
        sink(chunks)
    return done


def _timed_sink(sink: Sink, timer: StageTimer) -> Sink:
    def timed(chunks: list[LabelChunk]) -> None:
        with timer("write"):
            sink(chunks)

    return timed


def _run_overlapped(work: Iterable[Batch], loader: Loader, infer: Infer, stitcher: Stitcher, sink: Sink,
                    timer: StageTimer, progress: Progress | None, total: int, depth: int) -> int:
    def load() -> Iterator[tuple[Batch, Any]]:
        for batch in work:
            yield batch, loader.load(batch, timer)

    def run(loaded: Iterator[tuple[Batch, Any]]) -> Iterator[tuple[Batch, Any, np.ndarray | None]]:
        for batch, inputs in loaded:
            with timer("engine"):
                probs, gate = infer(inputs)
            yield batch, probs, gate

    done = 0
    if progress is not None:
        progress(0, total)
    with Lanes() as lanes:
        inferred = lanes.background(run(lanes.background(load(), depth, "cervrt-load")), depth, "cervrt-engine")
        put, finish = lanes.writer(_timed_sink(sink, timer), depth)
        for batch, probs, gate in inferred:
            with timer("fuse"):
                chunks = stitcher.add(batch.ys, batch.xs, probs, gate)
            if chunks:
                put(chunks)
            done += len(batch)
            if progress is not None:
                progress(done, total)
        with timer("fuse"):
            put(stitcher.finish())
        finish()
    return done


# ---- the engine stage -------------------------------------------------------------------------------


def gate_factors(class_probs: np.ndarray, epsilon: float, num_classes: int) -> np.ndarray:
    """Classification gate (SPEC): float32 (n, C) factors, 1 for background, 0 for foreground class k
    when ``class_probs[:, k - 1] <= epsilon``, else 1."""
    class_probs = np.asarray(class_probs)
    if class_probs.ndim != 2 or class_probs.shape[1] != num_classes - 1:
        raise ModelError(f"the engine returned class_probs of shape {class_probs.shape}; "
                          f"expected (n, {num_classes - 1}) for {num_classes} classes")
    gate = np.ones((class_probs.shape[0], num_classes), dtype=np.float32)
    gate[:, 1:] = class_probs > epsilon
    return gate


class EngineStage:
    """An engine shared by every call of a Predictor: its runs serialised by a lock when the engine says
    it is not thread-safe (``Engine.thread_safe``), its class probabilities turned into gate factors."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.num_classes = len(engine.class_names)
        self._lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if engine.thread_safe else threading.Lock())

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The engine's probabilities of a normalised float32 (n, 3, P, P) batch and its gate factors (or None)."""
        with self._lock:
            output = self.engine.run(batch)
        return output.probs, self.gate(output.class_probs)

    def run_device(self, inputs: int, n: int, stream: Any) -> tuple[int, int | None]:
        """``engine.run_device`` under the lock: device pointers of the probabilities and class probabilities."""
        with self._lock:
            return self.engine.run_device(inputs, n, stream)

    @property
    def gated(self) -> bool:
        """Whether the model's metadata asks for the classification gate."""
        return self.engine.gate_epsilon is not None

    def gate(self, class_probs: np.ndarray | None) -> np.ndarray | None:
        """Gate factors of host class probabilities, or None when the model is not gated or has none."""
        epsilon = self.engine.gate_epsilon
        if epsilon is None or class_probs is None:
            return None
        return gate_factors(class_probs, float(epsilon), self.num_classes)


# ---- the host labeler -------------------------------------------------------------------------------


def check_image(image: object) -> np.ndarray:
    """The image if it is an (H, W, 3) uint8 RGB array with H, W >= 1, else InputError saying what is expected."""
    expected = "an (H, W, 3) uint8 RGB numpy array"
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be {expected}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be {expected}, got dtype {image.dtype}: scale it to 0..255 and "
                          "convert with .astype(np.uint8)")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
        raise InputError(f"image must be {expected}, got shape {image.shape}: that is channel-first (C, H, W); "
                         "pass image.transpose(1, 2, 0) (and convert greyscale or RGBA to RGB)")
    if image.ndim != 3 or image.shape[2] != 3:
        channels = f"{image.shape[2]} channels" if image.ndim == 3 else f"{image.ndim} dimensions"
        raise InputError(f"image must be {expected}, got shape {image.shape} ({channels}): convert greyscale "
                          "or RGBA to RGB first")
    if min(image.shape[:2]) < 1:
        raise InputError(f"image must be {expected} with at least one pixel, got shape {image.shape}")
    return image


class ArraySource:
    """Patches of an image in memory, gathered straight from it (past the edges: glass)."""

    def __init__(self, image: np.ndarray, gather: Callable[..., None], patch: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.image, self._gather, self._patch, self._mean, self._std = image, gather, patch, mean, std

    def gather(self, segments: Segments, out: np.ndarray, timer: StageTimer) -> None:
        k = 0
        with timer("preprocess"):
            for y, xs in segments:
                ys = np.full(xs.size, y, dtype=np.int64)
                self._gather(self.image, ys, xs, self._patch, self._mean, self._std, out[k : k + xs.size])
                k += xs.size

    def pixels(self, y: int) -> tuple[np.ndarray, int, int]:
        return self.image, 0, 0


class _BufferLoader:
    """Gathers each batch into the next of ``ring`` reused float32 (batch_size, 3, P, P) buffers."""

    def __init__(self, source: PatchSource, batch_size: int, patch: int, ring: int = 1) -> None:
        self._source = source
        self._buffers = [np.empty((batch_size, 3, patch, patch), dtype=np.float32) for _ in range(ring)]
        self._next = 0

    def load(self, batch: Batch, timer: StageTimer) -> np.ndarray:
        buffer = self._buffers[self._next]
        self._next = (self._next + 1) % len(self._buffers)
        self._source.gather(batch.segments, buffer, timer)
        return buffer[: len(batch)]


class HostLabeler:
    """Patches gathered on the host, ``infer`` run on each batch, fused by the C extension or numpy
    (``BandStitcher``), or by any stitcher passed to ``label``. With ``overlap`` (the default) loading,
    the engine, fusion and the sink run at once on their own threads (``run_windows``)."""

    def __init__(self, infer: Infer, backend: FusionBackend, patch: int, num_classes: int, stride: int,
                 blend: BlendMode, batch_size: int, *, overlap: bool = True, depth: int = 2) -> None:
        self.infer, self.backend = infer, backend
        self.patch, self.num_classes, self.stride, self.blend, self.batch_size = (
            patch, num_classes, stride, blend, batch_size)
        self.overlap, self.depth = overlap, depth
        self.name = backend.name

    def stitcher(self, height: int, width: int, threads: int = 0) -> BandStitcher:
        return BandStitcher(height, width, self.num_classes, self.patch, self.stride, self.blend,
                            backend=self.backend.name, threads=threads)

    def label(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
              progress: Progress | None, stitcher: Stitcher | None = None) -> int:
        total = sum(xs.size for _, xs in rows)
        overlap = self.overlap and total > self.batch_size  # one batch has nothing to overlap with
        loader = _BufferLoader(source, min(self.batch_size, max(total, 1)), self.patch,
                               ring=self.depth + 2 if overlap else 1)
        # Overlapped, the stage threads already fill the cores: a fusion call that forks OpenMP threads
        # beside them waits for cores at every join, so it runs on its own thread (measured: as fast or faster).
        stitcher = self.stitcher(height, width, threads=1 if overlap else 0) if stitcher is None else stitcher
        return run_windows(host_batches(rows, self.batch_size), loader, self.infer, stitcher, sink, timer,
                           progress, total, overlap=overlap, depth=self.depth)
