"""``cervrt.Predictor``: the embedding API. Segment an image in memory or stream a whole slide to disk.

    with Predictor("hspnet.onnx", device="cpu") as predictor:
        labels = predictor.predict(rgb)                          # (H, W) uint8, 0 background .. 4 CIN 3
        result = predictor.predict_slide("slide.svs", "out/")    # out/slide.mask.png, .overlay.jpg, .json

The work runs in short stages (STYLE rule 9), each timed: plan the windows (``window_starts``, SPEC
"Sliding window and fusion"), drop those on glass (``TissueMap.fraction`` under ``tissue_threshold``:
not run, counted as skipped, left background), read the slide a band of rows at a time, gather the
patches into one reused float32 batch with the normalisation fused, run the engine, apply the
classification gate (models whose metadata has ``gate_epsilon`` and which return ``class_probs``),
fuse into a band of rows (``BandStitcher``) and write the finished label rows. A slide is never held
whole: the reader keeps ``patch`` rows of the windows' span, the stitcher ``(classes + 1) x (patch +
stride)`` float32 rows; memory is bounded by classes x patch x slide width.

Threads: one Predictor may be shared by threads. Each call has its own batch buffer, stitcher and
writers; the only shared state is the engine, whose ``run`` is serialised by a lock when the engine
says it is not thread-safe (``Engine.thread_safe``). ``close()`` must not race a running call.
A Predictor holds no global state.

GPU: with a TensorRT engine on a CUDA device (``fusion="auto"`` or ``"cuda"``), gathering,
normalisation, fusion and argmax run on the device through ``cervrt.runtime.cuda_path`` (uint8
patches up, uint8 labels down). That path is compiled, unexecuted on a GPU (its host logic is tested on
an emulated driver).
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cervrt.errors import CervrtError
from cervrt.runtime.fusion import get_backend
from cervrt.runtime.stitcher import BandStitcher, LabelChunk
from cervrt.runtime.tiling import BlendMode, blend_weights, check_tiling, window_starts

if TYPE_CHECKING:
    from cervrt.runtime.slide_run import SlideResult

__all__ = ["STAGES", "FusionPath", "Predictor", "Progress", "Rows", "StageTimer", "choose_fusion", "gate_factors",
           "plan_rows"]

#: The timed stages, in pipeline order.
STAGES = ("read", "tissue", "preprocess", "engine", "fuse", "write")
#: ``progress(done, total)``: patches run so far and patches to run, called after every batch.
Progress = Callable[[int, int], None]
#: The windows to run, row by row: (window row origin, sorted column origins of the windows kept).
Rows = list[tuple[int, np.ndarray]]

_FUSION_NAMES = ("auto", "c", "numpy", "cuda")


class FusionPath(str, enum.Enum):
    """Where patches are gathered and fused: on the host (C extension or numpy) or on the GPU."""

    HOST = "host"
    CUDA = "cuda"


class StageTimer:
    """Seconds spent per stage; ``with timer("engine"): ...`` adds to a stage."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start


# ---- stages (pure functions, tested on their own) -------------------------------------------------


def choose_fusion(fusion: str, engine_kind: str, engine_device: str) -> FusionPath:
    """The fusion path for an engine: the GPU for a TensorRT engine on CUDA (``auto`` or ``cuda``), else the host."""
    if fusion not in _FUSION_NAMES:
        raise CervrtError(f"unknown fusion {fusion!r}: choose one of {', '.join(_FUSION_NAMES)}")
    on_gpu = engine_kind == "tensorrt" and str(engine_device).startswith("cuda")
    if fusion == "cuda" and not on_gpu:
        raise CervrtError(f"fusion 'cuda' needs a TensorRT engine on a CUDA device, got {engine_kind} on "
                          f"{engine_device}: use fusion 'auto', 'c' or 'numpy'")
    return FusionPath.CUDA if on_gpu and fusion in ("auto", "cuda") else FusionPath.HOST


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


def _batches(rows: Rows, batch_size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Row-major batches of at most ``batch_size`` windows, as (row origin, column origins) segments."""
    batch: list[tuple[int, np.ndarray]] = []
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


def gate_factors(class_probs: np.ndarray, epsilon: float, num_classes: int) -> np.ndarray:
    """Classification gate (SPEC): float32 (n, C) factors, 1 for background, 0 for foreground class k
    when ``class_probs[:, k - 1] <= epsilon``, else 1."""
    class_probs = np.asarray(class_probs)
    if class_probs.ndim != 2 or class_probs.shape[1] != num_classes - 1:
        raise CervrtError(f"the engine returned class_probs of shape {class_probs.shape}; "
                          f"expected (n, {num_classes - 1}) for {num_classes} classes")
    gate = np.ones((class_probs.shape[0], num_classes), dtype=np.float32)
    gate[:, 1:] = class_probs > epsilon
    return gate


def check_image(image: object) -> np.ndarray:
    """The image if it is an (H, W, 3) uint8 RGB array with H, W >= 1, else CervrtError saying what is expected."""
    expected = "an (H, W, 3) uint8 RGB numpy array"
    if not isinstance(image, np.ndarray):
        raise CervrtError(f"image must be {expected}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise CervrtError(f"image must be {expected}, got dtype {image.dtype}: scale it to 0..255 and "
                          "convert with .astype(np.uint8)")
    if image.ndim != 3 or image.shape[2] != 3:
        channels = f"{image.shape[2]} channels" if image.ndim == 3 else f"{image.ndim} dimensions"
        raise CervrtError(f"image must be {expected}, got shape {image.shape} ({channels}): convert greyscale "
                          "or RGBA to RGB first")
    if min(image.shape[:2]) < 1:
        raise CervrtError(f"image must be {expected} with at least one pixel, got shape {image.shape}")
    return image


# ---- where patches come from --------------------------------------------------------------------


class _ArraySource:
    """Patches of an image in memory, gathered straight from it (past the edges: glass)."""

    def __init__(self, image: np.ndarray, gather: Callable[..., None], patch: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.image, self._gather, self._patch, self._mean, self._std = image, gather, patch, mean, std

    def gather(self, segments: list[tuple[int, np.ndarray]], out: np.ndarray, timer: StageTimer) -> None:
        k = 0
        with timer("preprocess"):
            for y, xs in segments:
                ys = np.full(xs.size, y, dtype=np.int64)
                self._gather(self.image, ys, xs, self._patch, self._mean, self._std, out[k : k + xs.size])
                k += xs.size


# ---- the Predictor ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictorSettings:
    """How a Predictor tiles, filters and fuses; built from the constructor's arguments and checked."""

    batch_size: int
    stride: int
    blend: BlendMode
    tissue_threshold: float
    fusion: str
    mpp: float | None


def _settings(patch: int, batch_size: int, stride: int | None, blend: str, tissue_threshold: float, fusion: str,
              mpp: float | None) -> PredictorSettings:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CervrtError(f"batch_size must be a positive integer, got {batch_size!r}")
    stride = max(patch // 4, 1) if stride is None else stride
    check_tiling(patch, stride)
    if not 0.0 <= float(tissue_threshold) <= 1.0:
        raise CervrtError(f"tissue_threshold must be between 0 and 1, got {tissue_threshold}")
    if mpp is not None and not float(mpp) > 0:
        raise CervrtError(f"mpp must be positive microns per pixel, got {mpp}")
    return PredictorSettings(batch_size, int(stride), BlendMode.parse(blend), float(tissue_threshold), fusion,
                             None if mpp is None else float(mpp))


class Predictor:
    """Segment H&E images with a cervrt artifact (.onnx, .plan or .pt checkpoint); a context manager.

    ``stride`` defaults to a quarter of the model's patch; ``blend`` is ``"gaussian"`` or ``"mean"``;
    windows whose tissue share is under ``tissue_threshold`` are not run (0 runs every window);
    ``fusion`` is ``"auto"`` (GPU for TensorRT on CUDA, else the C extension, else numpy), ``"c"``,
    ``"numpy"`` or ``"cuda"``; ``mpp`` overrides the microns per pixel of slides (needed for PNG/JPEG
    not at the model's resolution); ``progress(done, total)`` is called after every batch.
    """

    def __init__(self, model_path: str | Path, device: str = "auto", batch_size: int = 8, stride: int | None = None,
                 blend: str = "gaussian", tissue_threshold: float = 0.1, fusion: str = "auto",
                 mpp: float | None = None, progress: Progress | None = None) -> None:
        from cervrt.engines import open_engine

        if fusion not in _FUSION_NAMES:
            raise CervrtError(f"unknown fusion {fusion!r}: choose one of {', '.join(_FUSION_NAMES)}")
        self.engine = open_engine(model_path, device=device, batch_size=batch_size)
        try:
            self.settings = _settings(self.engine.patch_size, batch_size, stride, blend, tissue_threshold, fusion, mpp)
            self._check_engine()
            self.path = choose_fusion(fusion, self.engine.kind, self.engine.device)
            self._backend = get_backend("auto" if fusion == "cuda" or self.path is FusionPath.CUDA else fusion)
        except BaseException:
            self.engine.close()
            raise
        self.progress = progress
        self._lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.engine.thread_safe else threading.Lock())
        self._closed = False

    # -- context --------------------------------------------------------------------------------

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine's resources; the Predictor takes no more calls."""
        if not self._closed:
            self._closed = True
            self.engine.close()

    @property
    def metadata(self) -> dict[str, Any]:
        """The artifact's cervrt metadata (classes, palette, patch size, mean/std, mpp, MACs, ...)."""
        return self.engine.metadata

    @property
    def num_classes(self) -> int:
        return len(self.engine.class_names)

    @property
    def fusion_backend(self) -> str:
        """What fuses: ``"cuda"``, or the host backend's name (``"c"`` or ``"numpy"``)."""
        return "cuda" if self.path is FusionPath.CUDA else self._backend.name

    # -- images in memory --------------------------------------------------------------------------

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) labels of an (H, W, 3) uint8 RGB image at the model's resolution (0 = background)."""
        image = self._check_call(image)
        labels = np.zeros(image.shape[:2], dtype=np.uint8)

        def sink(chunks: list[LabelChunk]) -> None:
            for first, block in chunks:
                labels[first : first + block.shape[0]] = block

        self._label_image(image, sink, StageTimer(), self.progress)
        return labels

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """float32 (C, H, W) fused class probabilities of an (H, W, 3) uint8 RGB image; pixels of skipped
        windows are background with probability 1. Holds C + 1 float32 planes of the image."""
        image = self._check_call(image)
        height, width = image.shape[:2]
        acc = np.zeros((self.num_classes, height, width), dtype=np.float32)
        wsum = np.zeros((height, width), dtype=np.float32)
        weights = blend_weights(self.settings.blend, self.engine.patch_size)

        def fuse(ys: np.ndarray, xs: np.ndarray, probs: np.ndarray, gate: np.ndarray | None) -> list[LabelChunk]:
            self._backend.accumulate(acc, wsum, probs, ys, xs, weights, gate)
            return []

        timer = StageTimer()
        rows, _ = self.plan_windows(height, width, self._image_tissue(image, timer))
        self._run(_ArraySource(image, *self.gather_args()), rows, fuse, lambda chunks: None, timer, self.progress)
        covered = wsum > 0
        np.divide(acc, wsum, out=acc, where=covered)
        acc[0][~covered] = 1.0
        acc[1:, ~covered] = 0.0
        return acc

    # -- whole slides --------------------------------------------------------------------------------

    def predict_slide(self, path: str | Path, out_dir: str | Path, fmt: str = "png", geojson: bool = False,
                      name: str | None = None, progress: Progress | None = None) -> SlideResult:
        """Stream a slide through the model into ``out_dir``: NAME.mask.png (or .tiff), NAME.overlay.jpg,
        NAME.json and, with ``geojson``, NAME.geojson; see ``cervrt.runtime.slide_run``. Returns a SlideResult."""
        from cervrt.runtime.slide_run import run_slide

        self._require_open()
        return run_slide(self, path, out_dir, fmt=fmt, geojson=geojson, name=name,
                         progress=progress if progress is not None else self.progress)

    # -- the pipeline (shared by every entry point) ------------------------------------------------------

    def _label_image(self, image: np.ndarray, sink: Callable[[list[LabelChunk]], None], timer: StageTimer,
                     progress: Progress | None) -> tuple[int, int]:
        height, width = image.shape[:2]
        rows, skipped = self.plan_windows(height, width, self._image_tissue(image, timer))
        source = _ArraySource(image, *self.gather_args())
        return self.label_rows(source, rows, height, width, sink, timer, progress), skipped

    def label_rows(self, source: Any, rows: Rows, height: int, width: int, sink: Callable[[list[LabelChunk]], None],
                   timer: StageTimer, progress: Progress | None) -> int:
        """Run the planned windows of one image and hand its label chunks to ``sink``; returns patches run."""
        if self.path is FusionPath.CUDA:
            from cervrt.runtime.cuda_path import cuda_label_rows

            return cuda_label_rows(self, source, rows, height, width, sink, timer, progress)
        p = self.engine.patch_size
        stitcher = BandStitcher(height, width, self.num_classes, p, self.settings.stride, self.settings.blend,
                                backend=self._backend.name)
        run = self._run(source, rows, stitcher.add, sink, timer, progress)
        with timer("fuse"):
            chunks = stitcher.finish()
        with timer("write"):
            sink(chunks)
        return run

    def _run(self, source: Any, rows: Rows, fuse: Callable[..., list[LabelChunk]],
             sink: Callable[[list[LabelChunk]], None], timer: StageTimer, progress: Progress | None) -> int:
        p, total = self.engine.patch_size, sum(xs.size for _, xs in rows)
        batch = np.empty((min(self.settings.batch_size, max(total, 1)), 3, p, p), dtype=np.float32)
        done = 0
        if progress is not None:
            progress(0, total)
        for segments in _batches(rows, self.settings.batch_size):
            ys = np.concatenate([np.full(xs.size, y, dtype=np.int64) for y, xs in segments])
            xs = np.concatenate([xs for _, xs in segments])
            source.gather(segments, batch, timer)
            with timer("engine"):
                probs, gate = self.infer(batch[: ys.size])
            with timer("fuse"):
                chunks = fuse(ys, xs, probs, gate)
            with timer("write"):
                sink(chunks)
            done += ys.size
            if progress is not None:
                progress(done, total)
        return done

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The engine's probabilities of a normalised float32 (n, 3, P, P) batch and its gate factors (or None)."""
        with self._lock:
            output = self.engine.run(batch)
        expected = (batch.shape[0], self.num_classes, batch.shape[2], batch.shape[3])
        if output.probs.shape != expected:
            raise CervrtError(f"the engine returned probabilities of shape {output.probs.shape}, expected {expected}: "
                              "its metadata does not match its graph; export it again")
        epsilon = self.engine.gate_epsilon
        if epsilon is None or output.class_probs is None:
            return output.probs, None
        return output.probs, gate_factors(output.class_probs, float(epsilon), self.num_classes)

    def plan_windows(self, height: int, width: int, tissue: Any) -> tuple[Rows, int]:
        """The windows of an image to run (row by row) and the number skipped, given its TissueMap or None."""
        fraction = None if tissue is None else tissue.fraction
        return plan_rows(height, width, self.engine.patch_size, self.settings.stride, fraction,
                         self.settings.tissue_threshold)

    def _image_tissue(self, image: np.ndarray, timer: StageTimer) -> Any:
        """The TissueMap of an image in memory, or None when every window runs (threshold 0)."""
        if self.settings.tissue_threshold <= 0:
            return None
        from cervrt.runtime.tissue import TissueMap

        with timer("tissue"):
            return TissueMap.from_image(image)

    def gather_args(self) -> tuple[Callable[..., None], int, tuple[float, ...], tuple[float, ...]]:
        """(gather, patch, mean, std): what a patch source needs to fill a batch."""
        return (self._backend.gather, self.engine.patch_size, tuple(map(float, self.engine.mean)),
                tuple(map(float, self.engine.std)))

    # -- checks ----------------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise CervrtError("this Predictor is closed: create a new one")

    def _check_call(self, image: object) -> np.ndarray:
        self._require_open()
        return check_image(image)

    def _check_engine(self) -> None:
        engine, batch_size = self.engine, self.settings.batch_size
        if engine.max_batch is not None and batch_size > engine.max_batch:
            raise CervrtError(f"batch_size {batch_size} is larger than the engine's profile allows "
                              f"({engine.max_batch}): pass batch_size <= {engine.max_batch} or rebuild the engine")
        if not 2 <= len(engine.class_names) <= 256:
            raise CervrtError(f"the model has {len(engine.class_names)} classes; cervrt needs 2 to 256")
