"""``cervrt.Predictor``: the embedding API. Segment an image in memory or stream a whole slide to disk.

    with Predictor("hspnet.onnx", device="cpu") as predictor:
        labels = predictor.predict(rgb)                          # (H, W) uint8, 0 background .. 4 CIN 3
        labels = predictor.predict(rgb, mpp=0.25, cancel=event)  # at 0.25 um/px; event.set() stops it
        region = predictor.predict_region("slide.svs", x, y, 2000, 2000)  # level-0 pixels, labels on that grid
        result = predictor.predict_slide("slide.svs", "out/")    # out/slide.mask.png, .overlay.jpg, .json

The work runs in short stages, each timed: plan the windows (``window_starts``: 0, stride, 2 stride, ...
and a last window flush with the image's end), drop those on glass (``TissueMap.fraction`` under
``tissue_threshold``: not run, counted as skipped, left background), read the slide a band of rows at a
time, gather the patches into one reused float32 batch with the normalisation fused, run the engine,
apply the classification gate (models whose metadata has ``gate_epsilon`` and which return
``class_probs``), fuse into a band of rows (``BandStitcher``) and write the finished label rows. A slide
is never held whole: the reader keeps ``patch`` rows of the windows' span, the stitcher ``(classes + 1)
x (patch + stride)`` float32 rows; memory is bounded by classes x patch x slide width.

Threads: one Predictor may be shared by threads. Each call has its own batch buffer, stitcher and
writers; the only shared state is the engine, whose ``run`` is serialised by a lock when the engine
says it is not thread-safe (``Engine.thread_safe``). ``close()`` must not race a running call.
A Predictor holds no global state.

The Predictor composes the pipeline (``cervrt.runtime.pipeline``): an ``EngineStage`` (the engine, its
lock, the gate) and a labeler, ``HostLabeler`` or the device's; its settings are one frozen
``PredictorConfig`` (``cervrt.runtime.config``). Nothing below imports this module.

GPU: with an engine that keeps its outputs on a CUDA device (``Engine.supports_device_io``: TensorRT,
torch on CUDA, ONNX Runtime's CUDA provider) and ``fusion="auto"`` or ``"cuda"``, gathering,
normalisation, fusion and argmax run on the device through ``cervrt.runtime.cuda_path.DeviceLabeler``
(uint8 patches up, uint8 labels down). That path is compiled, unexecuted on a GPU (its host logic is
tested on an emulated driver).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cervrt.errors import CervrtError, InputError, ModelError
from cervrt.probs_check import check_probabilities
from cervrt.runtime.config import Fusion, PredictorConfig, default_stride
from cervrt.runtime.fusion import get_backend
from cervrt.runtime.hooks import OnRows, call_progress, rows_sink
from cervrt.runtime.pipeline import (
    STAGES,
    ArraySource,
    EngineStage,
    HostLabeler,
    Labeler,
    PatchSource,
    Progress,
    Rows,
    Sink,
    StageTimer,
    check_image,
    gate_factors,
    plan_rows,
)
from cervrt.runtime.region import RegionPlan, labels_to, plan_region, probabilities_to, to_model_resolution
from cervrt.runtime.stitcher import LabelChunk, ProbabilityStitcher

if TYPE_CHECKING:
    from cervrt.runtime.slide_run import SlideResult

__all__ = ["STAGES", "FusionPath", "Predictor", "PredictorConfig", "Progress", "Rows", "StageTimer", "choose_fusion",
           "gate_factors", "plan_rows"]


class FusionPath(str, enum.Enum):
    """Where patches are gathered and fused: on the host (C extension or numpy) or on the GPU."""

    HOST = "host"
    CUDA = "cuda"


def choose_fusion(fusion: Fusion | str, engine: Any) -> FusionPath:
    """The fusion path for an engine: the GPU for an engine with device IO (``supports_device_io``:
    TensorRT, torch on CUDA, ONNX Runtime's CUDA provider) on a CUDA device, with fusion ``auto`` or
    ``cuda``; else the host."""
    fusion = Fusion.parse(fusion)
    on_gpu = bool(engine.supports_device_io) and str(engine.device).startswith("cuda")
    if fusion is Fusion.CUDA and not on_gpu:
        raise InputError(f"fusion 'cuda' needs an engine with device IO on a CUDA device, got {engine.kind} on "
                         f"{engine.device} (the device path needs an engine that keeps its outputs on the GPU: "
                         "TensorRT, torch or ONNX Runtime on cuda): use fusion 'auto', 'c' or 'numpy'")
    return FusionPath.CUDA if on_gpu and fusion in (Fusion.AUTO, Fusion.CUDA) else FusionPath.HOST


def _engine_options(threads: int | None, gpu_mem_limit: int | None,
                    engine_options: dict[str, Any] | None) -> dict[str, Any]:
    """The engine's keyword arguments for ``threads``, ``gpu_mem_limit`` and ``engine_options``."""
    options = dict(engine_options or {})
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a positive integer, got {threads!r}")
        options["threads"] = threads
    if gpu_mem_limit is not None:
        if isinstance(gpu_mem_limit, bool) or not isinstance(gpu_mem_limit, (int, float)) or gpu_mem_limit <= 0:
            raise InputError(f"gpu_mem_limit must be a positive number of bytes, got {gpu_mem_limit!r}")
        options["cuda_options"] = {**options.get("cuda_options", {}), "gpu_mem_limit": str(int(gpu_mem_limit))}
    return options


class Predictor:
    """Segment H&E images with a cervrt artifact (.onnx, .plan or .pt checkpoint); a context manager.

    The model is a path (the Predictor opens the engine and closes it) or ``engine=``, an open Engine or
    another Predictor's ``EngineStage`` (shared, left open; ``with_settings`` makes one of those).
    Settings come from ``config`` (a ``PredictorConfig``) with keyword ``overrides`` on top, or from
    keywords alone: ``device``, ``batch_size``, ``stride`` (default a quarter of the model's patch),
    ``blend`` (``"gaussian"`` or ``"mean"``), ``tissue_threshold`` (windows whose tissue share is under
    it are not run; 0 runs every window), ``fusion`` (``"auto"``: the GPU for an engine with device IO on CUDA, else
    the C extension, else numpy; ``"c"``, ``"numpy"`` or ``"cuda"``) and ``mpp`` (overrides the
    microns per pixel of slides; needed for PNG/JPEG not at the model's resolution).
    ``progress(done, total)`` is called after every batch (each call may pass its own).

    Resources: ``threads`` (ONNX Runtime's intra-op threads; None: its default, one per core),
    ``gpu_mem_limit`` (bytes ONNX Runtime's CUDA provider may allocate) and ``engine_options`` (other
    keyword arguments of the engine's constructor, e.g. ``cuda_options`` for ONNX Runtime) apply when
    the Predictor opens the model; an engine that takes no such option refuses it by name.
    """

    def __init__(self, model_path: str | Path | None = None, config: PredictorConfig | None = None, *,
                 engine: Any = None, progress: Progress | None = None, threads: int | None = None,
                 gpu_mem_limit: int | None = None, engine_options: dict[str, Any] | None = None,
                 **overrides: Any) -> None:
        if config is not None and not isinstance(config, PredictorConfig):
            raise InputError(f"config must be a PredictorConfig, got {type(config).__name__}")
        if (model_path is None) == (engine is None):
            raise InputError("a Predictor needs either a model path or an open engine (engine=...), not both")
        config = config or PredictorConfig()
        if overrides:
            config = config.replace(**overrides)
        self._owns_engine = engine is None
        stage = engine if isinstance(engine, EngineStage) else None
        options = _engine_options(threads, gpu_mem_limit, engine_options)
        if engine is not None and options:
            raise InputError("threads, gpu_mem_limit and engine_options configure an engine the Predictor opens: "
                             "pass them with a model path, or set them on the engine you pass")
        self.engine = (self._open(model_path, config, options) if engine is None
                       else (stage.engine if stage else engine))
        try:
            self.config = config.resolve(self.engine.patch_size)
            self._stride = self.config.stride or default_stride(self.engine.patch_size)
            self._check_classes()
            self.path = choose_fusion(self.config.fusion, self.engine)
            on_gpu = self.config.fusion is Fusion.CUDA or self.path is FusionPath.CUDA
            self._backend = get_backend(Fusion.AUTO.value if on_gpu else self.config.fusion.value)  # predict_proba's
        except BaseException:
            if self._owns_engine:
                self.engine.close()
            raise
        self.progress = progress
        self._stage = stage or EngineStage(self.engine)
        self._device: Labeler | None = self._device_labeler() if self.path is FusionPath.CUDA else None
        self._closed = False

    @staticmethod
    def _open(model_path: str | Path | None, config: PredictorConfig, options: dict[str, Any]) -> Any:
        from cervrt.engines import open_engine

        return open_engine(model_path, device=config.device, batch_size=config.batch_size,  # type: ignore[arg-type]
                           backend=config.backend, options={**config.engine_options(), **options})

    def with_settings(self, **changes: Any) -> Predictor:
        """A Predictor over this one's engine (and its lock) with ``changes`` to the settings; closing it
        leaves the engine open. ``device`` and a ``batch_size`` above the engine's are fixed by the engine."""
        self._require_open()
        return Predictor(config=self.config.replace(**changes), engine=self._stage, progress=self.progress)

    # -- context --------------------------------------------------------------------------------

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine's resources (unless it was passed in open); the Predictor takes no more calls."""
        if not self._closed:
            self._closed = True
            if self._device is not None:
                self._device.close()  # the device labeler's per-thread GPU resources
            if self._owns_engine:
                self.engine.close()

    @property
    def engine_stage(self) -> EngineStage:
        """The engine behind its lock and gate, shareable with other Predictors (``engine=``)."""
        return self._stage

    @property
    def settings(self) -> PredictorConfig:
        """The resolved settings (the stride filled in); the same object as ``config``."""
        return self.config

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

    def predict(self, image: np.ndarray, *, mpp: float | None = None, progress: Progress | None = None,
                cancel: Any = None, on_rows: OnRows | None = None) -> np.ndarray:
        """uint8 (H, W) labels (0 = background) of an (H, W, 3) uint8 RGB image.

        ``mpp``: the image's microns per pixel; the image is resized to the model's resolution for the
        run and the labels come back to (H, W) by nearest neighbour (None: it is at the model's).
        ``progress(done, total)``: called before the first batch and after every batch of this call
        (default: the constructor's). ``cancel``: a ``threading.Event``, a ``cervrt.CancelToken`` or a
        callable returning true to stop; checked before the start and after every batch, it raises
        ``cervrt.errors.Cancelled`` and the Predictor stays usable. ``on_rows(y0, labels)``: each band
        of finished label rows, top to bottom, at the model's resolution (read-only: copy to keep).
        """
        image = self._check_call(image)
        hook = call_progress(self._progress(progress), cancel, "predict")
        labels = self._labels(to_model_resolution(image, mpp, self.engine.mpp), hook, on_rows)
        return labels_to(labels, *image.shape[:2])

    def predict_proba(self, image: np.ndarray, *, mpp: float | None = None, progress: Progress | None = None,
                      cancel: Any = None) -> np.ndarray:
        """float32 (C, H, W) fused class probabilities of an (H, W, 3) uint8 RGB image; pixels of skipped
        windows are background with probability 1. Holds C + 1 float32 planes of the image. ``mpp``,
        ``progress`` and ``cancel`` as for ``predict`` (probabilities come back bilinearly)."""
        image = self._check_call(image)
        hook = call_progress(self._progress(progress), cancel, "predict_proba")
        probs = self._probabilities(to_model_resolution(image, mpp, self.engine.mpp), hook)
        return probabilities_to(probs, *image.shape[:2])

    # -- regions of a slide ------------------------------------------------------------------------------

    def predict_region(self, slide: Any, x: int, y: int, width: int, height: int, *, level: int | None = None,
                       mpp: float | None = None, progress: Progress | None = None, cancel: Any = None) -> np.ndarray:
        """uint8 (height, width) labels of a region of a slide (a path, or a slide opened with
        ``cervrt.runtime.readers.open_slide``), reading only the region and one patch of context around it.

        ``x, y, width, height`` are level-0 pixels of the slide (``level=N``: pixels of pyramid level N;
        ``mpp=M``: pixels of M microns); the labels are on that grid. With ``tissue_threshold=0`` they
        equal the whole-slide labels of the same pixels. ``progress`` and ``cancel`` as for ``predict``.
        A region outside the slide or of no size raises ``InputError``.
        """
        plan, pixels, hook = self._region(slide, x, y, width, height, level, mpp, progress, cancel)
        return labels_to(np.ascontiguousarray(self._labels(pixels, hook, None)[plan.inner()]), *plan.size)

    def predict_region_proba(self, slide: Any, x: int, y: int, width: int, height: int, *, level: int | None = None,
                             mpp: float | None = None, progress: Progress | None = None,
                             cancel: Any = None) -> np.ndarray:
        """float32 (C, height, width) probabilities of a region; arguments as for ``predict_region``."""
        plan, pixels, hook = self._region(slide, x, y, width, height, level, mpp, progress, cancel)
        rows, cols = plan.inner()
        return probabilities_to(np.ascontiguousarray(self._probabilities(pixels, hook)[:, rows, cols]), *plan.size)

    # -- whole slides --------------------------------------------------------------------------------

    def predict_slide(self, path: str | Path, out_dir: str | Path, fmt: str | Sequence[str] = "png",
                      geojson: bool = False, name: str | None = None, progress: Progress | None = None,
                      cancel: Any = None, on_rows: OnRows | None = None, **options: Any) -> SlideResult:
        """Stream a slide through the model into ``out_dir``: NAME.mask.png (or .tiff), NAME.overlay.jpg,
        NAME.json and, with ``geojson``, NAME.geojson; see ``cervrt.runtime.slide_run``. Returns a SlideResult.

        ``progress``, ``cancel`` and ``on_rows`` as for ``predict`` (rows of the mask, at the model's
        resolution); a failed or cancelled run removes every output it had written. ``fmt`` may name several
        formats; ``options``: ``geojson_simplify``, ``geojson_gzip``, ``require_mpp`` (see ``run_slide``)."""
        from cervrt.runtime.slide_run import run_slide

        self._require_open()
        hook = call_progress(self._progress(progress), cancel, f"the slide {path}")
        return run_slide(self, path, out_dir, fmt=fmt, geojson=geojson, name=name, progress=hook, on_rows=on_rows,
                         **options)

    # -- the pipeline's hooks (shared by every entry point) ---------------------------------------------

    def label_rows(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
                   progress: Progress | None, *, overlap: bool = True) -> int:
        """Run the planned windows of one image and hand its label chunks to ``sink``; returns patches run.
        ``overlap``: the host stages on threads of their own (``run_windows``), else one after another."""
        labeler = self._device if self._device is not None else self._host_labeler(overlap)
        return labeler.label(source, rows, height, width, sink, timer, progress)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The engine's probabilities of a normalised float32 (n, 3, P, P) batch and its gate factors (or None)."""
        return self._stage.infer(batch)

    def plan_windows(self, height: int, width: int, tissue: Any) -> tuple[Rows, int]:
        """The windows of an image to run (row by row) and the number skipped, given its TissueMap or None."""
        fraction = None if tissue is None else tissue.fraction
        return plan_rows(height, width, self.engine.patch_size, self._stride, fraction, self.config.tissue_threshold)

    def gather_args(self) -> tuple[Callable[..., None], int, tuple[float, ...], tuple[float, ...]]:
        """(gather, patch, mean, std): what a patch source needs to fill a batch."""
        return (self._backend.gather, self.engine.patch_size, tuple(map(float, self.engine.mean)),
                tuple(map(float, self.engine.std)))

    # -- composition ---------------------------------------------------------------------------------

    def _host_labeler(self, overlap: bool = True) -> HostLabeler:
        """A host labeler over ``self.infer`` (looked up per call, so a wrapped ``infer`` is honoured)."""
        return HostLabeler(self._checked_infer(), self._backend, self.engine.patch_size, self.num_classes,
                           self._stride, self.config.blend, self.config.batch_size, overlap=overlap)

    def _checked_infer(self) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
        """``self.infer`` whose first batch (of each call) is checked to be NCHW probabilities summing to 1."""
        first = [True]

        def infer(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            probs, gate = self.infer(batch)
            if first[0]:
                expected = (batch.shape[0], self.num_classes, batch.shape[2], batch.shape[3])
                check_probabilities(probs, expected, f"the model {getattr(self.engine, 'path', '')}".rstrip())
                first[0] = False
            return probs, gate

        return infer

    def _progress(self, progress: Progress | None) -> Progress | None:
        return progress if progress is not None else self.progress

    def _labels(self, image: np.ndarray, progress: Progress | None, on_rows: OnRows | None) -> np.ndarray:
        """uint8 labels of an image at the model's resolution."""
        labels = np.zeros(image.shape[:2], dtype=np.uint8)

        def sink(chunks: list[LabelChunk]) -> None:
            for first, block in chunks:
                labels[first : first + block.shape[0]] = block

        timer = StageTimer()
        rows, _ = self.plan_windows(*image.shape[:2], self._image_tissue(image, timer))
        self.label_rows(ArraySource(image, *self.gather_args()), rows, *image.shape[:2], rows_sink(sink, on_rows),
                        timer, progress)
        return labels

    def _probabilities(self, image: np.ndarray, progress: Progress | None) -> np.ndarray:
        """float32 (C, H, W) probabilities of an image at the model's resolution."""
        height, width = image.shape[:2]
        stitcher = ProbabilityStitcher(height, width, self.num_classes, self.engine.patch_size, self.config.blend,
                                       backend=self._backend)
        timer = StageTimer()
        rows, _ = self.plan_windows(height, width, self._image_tissue(image, timer))
        self._host_labeler().label(ArraySource(image, *self.gather_args()), rows, height, width, lambda chunks: None,
                                   timer, progress, stitcher=stitcher)
        return stitcher.probabilities()

    def _region(self, slide: Any, x: int, y: int, width: int, height: int, level: int | None, mpp: float | None,
                progress: Progress | None, cancel: Any) -> tuple[RegionPlan, np.ndarray, Progress | None]:
        """The region's plan, the pixels of its crop and the call's progress hook."""
        self._require_open()
        hook = call_progress(self._progress(progress), cancel, "predict_region")
        with self._slide(slide) as opened:
            plan = plan_region(opened, x, y, width, height, self.engine.patch_size, self._stride, level, mpp)
            top, left, rows, cols = plan.crop
            return plan, opened.read(top, left, rows, cols), hook

    def _slide(self, slide: Any) -> Any:
        """A context manager giving an open slide: ``slide`` itself (left open), or the path opened."""
        import contextlib

        if hasattr(slide, "read") and hasattr(slide, "downsample"):
            return contextlib.nullcontext(slide)
        from cervrt.runtime.readers import open_slide

        if not isinstance(slide, (str, Path)):
            raise InputError(f"slide must be a path or an open slide, got {type(slide).__name__}")
        return open_slide(slide, target_mpp=self.engine.mpp, mpp=self.config.mpp)

    def _device_labeler(self) -> Labeler | None:
        """The device labeler, or None with the reason in ``engine.fallback`` when its kernels or GPU
        resources cannot be had (the host fuses then)."""
        from cervrt.runtime.cuda_path import DeviceLabeler

        labeler = DeviceLabeler(self._stage, self.engine.patch_size, self._stride, self.config.blend,
                                self.config.batch_size)
        reason = labeler.prepare()
        if reason is None:
            return labeler
        labeler.close()
        self.engine.fallback = f"the GPU fusion could not start, the host fuses instead: {reason}"
        self.path = FusionPath.HOST
        return None

    def _image_tissue(self, image: np.ndarray, timer: StageTimer) -> Any:
        """The TissueMap of an image in memory, or None when every window runs (threshold 0)."""
        if self.config.tissue_threshold <= 0:
            return None
        from cervrt.runtime.tissue import TissueMap

        with timer("tissue"):
            return TissueMap.from_image(image)

    # -- checks ----------------------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise CervrtError("this Predictor is closed: create a new one")

    def _check_call(self, image: object) -> np.ndarray:
        self._require_open()
        return check_image(image)

    def _check_classes(self) -> None:
        if not 2 <= len(self.engine.class_names) <= 256:
            raise ModelError(f"the model has {len(self.engine.class_names)} classes; cervrt needs 2 to 256")
