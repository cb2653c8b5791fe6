"""The device labeler: an engine that keeps its outputs on a CUDA device, with the fusion there too
(uint8 patches up, uint8 labels down), behind the pipeline's one loop (``cervrt.runtime.pipeline``).

Status: compiled, unexecuted on a GPU. It is written against ``cervrt.runtime.gpu`` and the engine's
``run_device`` (``Engine.supports_device_io``). Its host logic runs in the tests on the emulated
driver (the kernels compiled for the host, a stand-in engine), which cannot check real asynchrony,
the primary context shared with TensorRT, or the device itself.

Per ``DeviceLabeler``: the fusion kernels, compiled by NVRTC once for the engine's device. Per call:
a ``CudaFusion`` (its own streams and pinned slots: CudaFusion is not thread-safe, so threads sharing
a Predictor each get their own) and one ``CudaBand`` for the image. Per batch (the windows of one
window row, at most ``batch_size``): the loader crops the uint8 patches on the host into a pinned
slot and uploads them on the copy stream; the engine stage normalises them into float32 on the
compute stream, and the engine enqueues on the same stream (``run_device``); the stitcher
accumulates from the engine's output buffer and hands back uint8 labels of finished rows. The class
probabilities of gated models (n x (C - 1) floats) are the only other thing copied down.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cervrt.runtime.pipeline import (
    Batch,
    EngineStage,
    PatchSource,
    Progress,
    Rows,
    Sink,
    StageTimer,
    row_batches,
    run_windows,
)
from cervrt.runtime.stitcher import LabelChunk
from cervrt.runtime.tiling import BlendMode

__all__ = ["DeviceLabeler", "device_ordinal", "row_batches"]


def device_ordinal(device: str) -> int:
    """``cuda:N`` -> N, ``cuda`` -> 0."""
    _, _, index = str(device).partition(":")
    return int(index) if index else 0


def _kernels(device: str) -> bytes:
    """The fusion kernels compiled by NVRTC for ``device``'s architecture."""
    from cervrt.runtime.gpu import compile_kernels, device_arch

    return compile_kernels(device_arch(device_ordinal(device)))


def _device_batches(rows: Rows, batch_size: int) -> list[Batch]:
    return [Batch.of([(y, xs)]) for y, xs in row_batches(rows, batch_size)]


@dataclass(frozen=True)
class _DeviceProbs:
    """The engine's output for a staged batch: its device pointer, with the batch it belongs to."""

    staged: Any
    pointer: int


class _StagingLoader:
    """Crops each batch's uint8 patches into a pinned slot and uploads them (the copy stream)."""

    def __init__(self, gpu: Any, source: PatchSource) -> None:
        self._gpu, self._source = gpu, source

    def load(self, batch: Batch, timer: StageTimer) -> Any:
        (y, _), = batch.segments
        with timer("read"):
            pixels, oy, ox = self._source.pixels(y)
        with timer("preprocess"):
            return self._gpu.stage(pixels, batch.ys, batch.xs, origin=(oy, ox))


class _DeviceInfer:
    """Normalise on the device, run the engine on the compute stream, copy gated class probabilities down."""

    def __init__(self, gpu: Any, engine: EngineStage) -> None:
        self._gpu, self._engine = gpu, engine

    def __call__(self, staged: Any) -> tuple[_DeviceProbs, np.ndarray | None]:
        gpu, n = self._gpu, len(staged)
        inputs = gpu.normalize(staged)
        probs, class_probs = self._engine.run_device(inputs, n, gpu.stream)
        gate = None
        if self._engine.gated and class_probs is not None:
            gate = self._engine.gate(self._copy_down(class_probs, n))
        return _DeviceProbs(staged, probs), gate

    def _copy_down(self, pointer: int, n: int) -> np.ndarray:
        """n x (C - 1) float32 class probabilities, after the engine's work on the compute stream."""
        from cervrt.cuda.memory import copy_dtoh_async, synchronize_stream

        host = np.empty((n, self._engine.num_classes - 1), dtype=np.float32)
        with self._gpu.active():
            copy_dtoh_async(host.ctypes.data, pointer, host.nbytes, self._gpu.compute_stream)
            synchronize_stream(self._gpu.compute_stream)
        return host


class _BandStitcher:
    """The CUDA band behind the pipeline's Stitcher protocol."""

    def __init__(self, band: Any) -> None:
        self._band = band

    def add(self, ys: np.ndarray, xs: np.ndarray, probs: _DeviceProbs, gate: np.ndarray | None) -> list[LabelChunk]:
        return self._band.add(probs.staged, probs.pointer, gate)

    def finish(self) -> list[LabelChunk]:
        return self._band.finish()


class DeviceLabeler:
    """Label images on the engine's CUDA device: same windows and labels as the host (ties aside)."""

    name = "cuda"

    def __init__(self, engine: EngineStage, patch: int, stride: int, blend: BlendMode, batch_size: int) -> None:
        self.engine, self.patch, self.stride, self.blend, self.batch_size = engine, patch, stride, blend, batch_size
        self._kernels: bytes | None = None
        self._kernels_lock = threading.Lock()

    def kernels(self) -> bytes:
        """The fusion kernels, compiled on first use (once per labeler, whichever thread comes first)."""
        with self._kernels_lock:
            if self._kernels is None:
                self._kernels = _kernels(self.engine.engine.device)
            return self._kernels

    def label(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
              progress: Progress | None) -> int:
        """``Predictor.label_rows`` on the GPU; returns the patches run."""
        from cervrt.runtime.gpu import CudaFusion

        engine = self.engine.engine
        total = sum(xs.size for _, xs in rows)
        with CudaFusion(self.patch, self.engine.num_classes, batch_size=self.batch_size, mean=engine.mean,
                        std=engine.std, device=device_ordinal(engine.device), kernels=self.kernels()) as gpu:
            band = gpu.image(height, width, self.stride, self.blend)  # on failure, closing gpu frees it
            run = run_windows(_device_batches(rows, self.batch_size), _StagingLoader(gpu, source),
                              _DeviceInfer(gpu, self.engine), _BandStitcher(band), sink, timer, progress, total)
            band.close()
        return run
