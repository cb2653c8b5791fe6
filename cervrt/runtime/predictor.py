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

The Predictor composes the pipeline (``cervrt.runtime.pipeline``): an ``EngineStage`` (the engine, its
lock, the gate) and a labeler, ``HostLabeler`` or the device's; its settings are one frozen
``PredictorConfig`` (``cervrt.runtime.config``). Nothing below imports this module.

GPU: with an engine that keeps its outputs on a CUDA device (``Engine.supports_device_io``: TensorRT)
and ``fusion="auto"`` or ``"cuda"``, gathering, normalisation, fusion and argmax run on the device
through ``cervrt.runtime.cuda_path.DeviceLabeler`` (uint8 patches up, uint8 labels down). That path
is compiled, unexecuted on a GPU (its host logic is tested on an emulated driver).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cervrt.errors import CervrtError, InputError, ModelError
from cervrt.runtime.config import Fusion, PredictorConfig, default_stride
from cervrt.runtime.fusion import get_backend
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
    """The fusion path for an engine: the GPU for an engine with device IO (``supports_device_io``, i.e.
    TensorRT) on a CUDA device, with fusion ``auto`` or ``cuda``; else the host."""
    fusion = Fusion.parse(fusion)
    on_gpu = bool(engine.supports_device_io) and str(engine.device).startswith("cuda")
    if fusion is Fusion.CUDA and not on_gpu:
        raise InputError(f"fusion 'cuda' needs a TensorRT engine on a CUDA device, got {engine.kind} on "
                          f"{engine.device} (the device path needs an engine that keeps its outputs on the GPU): "
                          "use fusion 'auto', 'c' or 'numpy'")
    return FusionPath.CUDA if on_gpu and fusion in (Fusion.AUTO, Fusion.CUDA) else FusionPath.HOST


class Predictor:
    """Segment H&E images with a cervrt artifact (.onnx, .plan or .pt checkpoint); a context manager.

    The model is a path (the Predictor opens the engine and closes it) or ``engine=``, an open Engine or
    another Predictor's ``EngineStage`` (shared, left open; ``with_settings`` makes one of those).
    Settings come from ``config`` (a ``PredictorConfig``) with keyword ``overrides`` on top, or from
    keywords alone: ``device``, ``batch_size``, ``stride`` (default a quarter of the model's patch),
    ``blend`` (``"gaussian"`` or ``"mean"``), ``tissue_threshold`` (windows whose tissue share is under
    it are not run; 0 runs every window), ``fusion`` (``"auto"``: the GPU for TensorRT on CUDA, else
    the C extension, else numpy; ``"c"``, ``"numpy"`` or ``"cuda"``) and ``mpp`` (overrides the
    microns per pixel of slides; needed for PNG/JPEG not at the model's resolution).
    ``progress(done, total)`` is called after every batch.
    """

    def __init__(self, model_path: str | Path | None = None, config: PredictorConfig | None = None, *,
                 engine: Any = None, progress: Progress | None = None, **overrides: Any) -> None:
        if config is not None and not isinstance(config, PredictorConfig):
            raise InputError(f"config must be a PredictorConfig, got {type(config).__name__}")
        if (model_path is None) == (engine is None):
            raise InputError("a Predictor needs either a model path or an open engine (engine=...), not both")
        config = config or PredictorConfig()
        if overrides:
            config = config.replace(**overrides)
        self._owns_engine = engine is None
        stage = engine if isinstance(engine, EngineStage) else None
        self.engine = self._open(model_path, config) if engine is None else (stage.engine if stage else engine)
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
    def _open(model_path: str | Path | None, config: PredictorConfig) -> Any:
        from cervrt.engines import open_engine

        return open_engine(model_path, device=config.device, batch_size=config.batch_size)  # type: ignore[arg-type]

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

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) labels of an (H, W, 3) uint8 RGB image at the model's resolution (0 = background)."""
        image = self._check_call(image)
        labels = np.zeros(image.shape[:2], dtype=np.uint8)

        def sink(chunks: list[LabelChunk]) -> None:
            for first, block in chunks:
                labels[first : first + block.shape[0]] = block

        timer = StageTimer()
        rows, _ = self.plan_windows(*image.shape[:2], self._image_tissue(image, timer))
        self.label_rows(ArraySource(image, *self.gather_args()), rows, *image.shape[:2], sink, timer, self.progress)
        return labels

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """float32 (C, H, W) fused class probabilities of an (H, W, 3) uint8 RGB image; pixels of skipped
        windows are background with probability 1. Holds C + 1 float32 planes of the image."""
        image = self._check_call(image)
        height, width = image.shape[:2]
        stitcher = ProbabilityStitcher(height, width, self.num_classes, self.engine.patch_size, self.config.blend,
                                       backend=self._backend)
        timer = StageTimer()
        rows, _ = self.plan_windows(height, width, self._image_tissue(image, timer))
        self._host_labeler().label(ArraySource(image, *self.gather_args()), rows, height, width, lambda chunks: None,
                                   timer, self.progress, stitcher=stitcher)
        return stitcher.probabilities()

    # -- whole slides --------------------------------------------------------------------------------

    def predict_slide(self, path: str | Path, out_dir: str | Path, fmt: str = "png", geojson: bool = False,
                      name: str | None = None, progress: Progress | None = None) -> SlideResult:
        """Stream a slide through the model into ``out_dir``: NAME.mask.png (or .tiff), NAME.overlay.jpg,
        NAME.json and, with ``geojson``, NAME.geojson; see ``cervrt.runtime.slide_run``. Returns a SlideResult."""
        from cervrt.runtime.slide_run import run_slide

        self._require_open()
        return run_slide(self, path, out_dir, fmt=fmt, geojson=geojson, name=name,
                         progress=progress if progress is not None else self.progress)

    # -- the pipeline's hooks (shared by every entry point) ---------------------------------------------

    def label_rows(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
                   progress: Progress | None) -> int:
        """Run the planned windows of one image and hand its label chunks to ``sink``; returns patches run."""
        labeler = self._device if self._device is not None else self._host_labeler()
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

    def _host_labeler(self) -> HostLabeler:
        """A host labeler over ``self.infer`` (looked up per call, so a wrapped ``infer`` is honoured)."""
        return HostLabeler(self.infer, self._backend, self.engine.patch_size, self.num_classes, self._stride,
                           self.config.blend, self.config.batch_size)

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
