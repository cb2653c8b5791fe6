"""The device labeler: an engine that keeps its outputs on a CUDA device, with the fusion there too
(uint8 patches up, uint8 labels down), behind the pipeline's one loop (``cervrt.runtime.pipeline``).

Status: compiled, unexecuted on a GPU. It is written against ``cervrt.runtime.gpu`` and the engine's
``run_device`` (``Engine.supports_device_io``: TensorRT, the torch engine on CUDA, ONNX Runtime's CUDA
provider). Its host logic runs in the tests on the strict emulated driver (the kernels compiled for
the host, deferred per-stream queues, current-context checks), which cannot check the device itself.

Per ``DeviceLabeler``: the kernels (``build_kernels``: a CUBIN for the engine's device, else PTX the
driver can JIT), built once, and one ``CudaFusion`` per thread (its own context hold, streams and
pinned slots; CudaFusion is not thread-safe), kept for the labeler's life and freed by ``close()``.
``prepare()`` builds the kernels and the calling thread's CudaFusion up front and returns why the
device path cannot run, if it cannot (the Predictor then fuses on the host and says why in
``engine.fallback`` and the slide report). Per call: one ``CudaBand`` for the image. Per batch (the
windows of one window row, at most ``batch_size``): the loader crops the uint8 patches on the host
into a pinned slot and uploads them on the copy stream; the engine stage normalises them into float32
on the compute stream and the engine enqueues on the same stream (``run_device``; its outputs are that
stream's own, so threads never share them); a gated model's gate factors are computed on the device
(``cervrt_gate_factors``: no copy down, no synchronisation per batch); the stitcher accumulates from
the engine's output buffer and hands back uint8 labels of finished rows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from cervrt.errors import CervrtError
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
    """The kernels for ``device``: a CUBIN for its ``sm_XY`` from NVRTC, else PTX its driver can JIT."""
    from cervrt.runtime.gpu import build_kernels

    return build_kernels(device_ordinal(device))[0]


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
    """Normalise on the device, run the engine on the compute stream, gate on the device."""

    def __init__(self, gpu: Any, engine: EngineStage) -> None:
        self._gpu, self._engine = gpu, engine

    def __call__(self, staged: Any) -> tuple[_DeviceProbs, int | None]:
        gpu, n = self._gpu, len(staged)
        inputs = gpu.normalize(staged)
        with gpu.active():  # the engine's context (the primary one) is current for its own calls too
            probs, class_probs = self._engine.run_device(inputs, n, gpu.compute_stream)
        gate = None
        epsilon = self._engine.engine.gate_epsilon
        if epsilon is not None and class_probs is not None:
            gate = gpu.gate(staged, class_probs, float(epsilon))  # a device pointer, on the compute stream
        return _DeviceProbs(staged, probs), gate


class _BandStitcher:
    """The CUDA band behind the pipeline's Stitcher protocol."""

    def __init__(self, band: Any) -> None:
        self._band = band

    def add(self, ys: np.ndarray, xs: np.ndarray, probs: _DeviceProbs, gate: Any) -> list[LabelChunk]:
        return self._band.add(probs.staged, probs.pointer, gate)

    def finish(self) -> list[LabelChunk]:
        return self._band.finish()


class DeviceLabeler:
    """Label images on the engine's CUDA device: same windows and labels as the host (ties aside)."""

    name = "cuda"

    def __init__(self, engine: EngineStage, patch: int, stride: int, blend: BlendMode, batch_size: int) -> None:
        self.engine, self.patch, self.stride, self.blend, self.batch_size = engine, patch, stride, blend, batch_size
        self._kernels: bytes | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._fusions: list[Any] = []
        self._closed = False

    def kernels(self) -> bytes:
        """The kernels, built on first use (once per labeler, whichever thread comes first)."""
        with self._lock:
            if self._kernels is None:
                self._kernels = _kernels(self.engine.engine.device)
            return self._kernels

    def prepare(self) -> str | None:
        """Build the kernels and this thread's CudaFusion; None when the device path can run, else why not."""
        from cervrt.cuda import first_line

        try:
            self.fusion()
        except CervrtError as exc:  # CudaError, NoDeviceError, NVRTC missing: all CervrtErrors
            return first_line(exc)
        return None

    def fusion(self) -> Any:
        """The calling thread's CudaFusion (created on its first call, kept until ``close()``)."""
        from cervrt.runtime.gpu import CudaFusion

        gpu = getattr(self._local, "fusion", None)
        if gpu is None or not gpu.is_open:
            if self._closed:
                raise CervrtError("this device labeler is closed")
            engine = self.engine.engine
            gpu = CudaFusion(self.patch, self.engine.num_classes, batch_size=self.batch_size, mean=engine.mean,
                             std=engine.std, device=device_ordinal(engine.device), kernels=self.kernels())
            self._local.fusion = gpu
            with self._lock:
                self._fusions.append(gpu)
        return gpu

    def label(self, source: PatchSource, rows: Rows, height: int, width: int, sink: Sink, timer: StageTimer,
              progress: Progress | None) -> int:
        """``Predictor.label_rows`` on the GPU; returns the patches run."""
        gpu = self.fusion()
        total = sum(xs.size for _, xs in rows)
        with gpu.image(height, width, self.stride, self.blend) as band:
            return run_windows(_device_batches(rows, self.batch_size), _StagingLoader(gpu, source),
                               _DeviceInfer(gpu, self.engine), _BandStitcher(band), sink, timer, progress, total)

    def close(self) -> None:
        """Free every thread's CudaFusion (no call may be running)."""
        with self._lock:
            self._closed = True
            fusions, self._fusions = self._fusions, []
        for gpu in fusions:
            gpu.close()
