"""The Predictor's GPU path: a TensorRT engine on CUDA with the fusion on the device (uint8 up, uint8 down).

Status: compiled, unexecuted on a GPU. It is written against ``cervrt.runtime.cuda_fusion`` and the
TensorRT engine's ``run_device``. Its host logic runs in the tests on the emulated driver
(tests/runtime/cuda_emulation.py: the kernels compiled for the host, a stand-in engine), which
cannot check real asynchrony, the primary context shared with TensorRT, or the device itself.

Per call: a ``CudaFusion`` (its own streams and pinned slots: CudaFusion is not thread-safe, so
threads sharing a Predictor each get their own) loaded from kernels compiled once per Predictor,
and one ``CudaBand`` for the image. Per batch (the windows of one window row, at most
``batch_size``): ``stage`` crops the uint8 patches on the host into a pinned slot and uploads them
on the copy stream; ``normalize`` turns them into float32 on the compute stream; the engine enqueues
on the same stream (``run_device``); the band accumulates from the engine's output buffer and
hands back uint8 labels of finished rows. The class probabilities of gated models (n x (C - 1)
floats) are the only other thing copied down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from cervrt.runtime.predictor import Progress, Rows, StageTimer, gate_factors
from cervrt.runtime.stitcher import LabelChunk

__all__ = ["cuda_label_rows", "device_ordinal", "row_batches"]

_KERNELS_LOCK = threading.Lock()


def device_ordinal(device: str) -> int:
    """``cuda:N`` -> N, ``cuda`` -> 0."""
    _, _, index = str(device).partition(":")
    return int(index) if index else 0


def row_batches(rows: Rows, batch_size: int) -> list[tuple[int, np.ndarray]]:
    """Batches that never span two window rows (a staged batch is cropped from one band of rows)."""
    return [(y, xs[i : i + batch_size]) for y, xs in rows for i in range(0, xs.size, batch_size)]


def _kernels(predictor: Any) -> bytes:
    """The fusion kernels, compiled by NVRTC once per Predictor (for the engine's device)."""
    from cervrt.runtime.cuda_fusion import compile_kernels, device_arch

    with _KERNELS_LOCK:
        image = getattr(predictor, "_cuda_kernels", None)
        if image is None:
            image = compile_kernels(device_arch(device_ordinal(predictor.engine.device)))
            predictor._cuda_kernels = image
    return image


def _band_rows(source: Any, y: int) -> tuple[np.ndarray, int, int]:
    """The uint8 pixels to crop window row ``y`` from, and where their (0, 0) sits in the image."""
    if hasattr(source, "rows"):  # a slide, read a band at a time
        band, x0 = source.rows(y)
        return band, y, x0
    return source.image, 0, 0  # an image in memory


def _class_probs(gpu: Any, pointer: int, n: int, classes: int) -> np.ndarray:
    """Copy n x (C - 1) float32 class probabilities down (after the engine's work on the stream)."""
    from cervrt.runtime.cuda_fusion import _check, _driver

    host = np.empty((n, classes - 1), dtype=np.float32)
    cu = _driver()
    with gpu.active():
        _check(cu.cuMemcpyDtoHAsync(host.ctypes.data, pointer, host.nbytes, gpu.stream), "cuMemcpyDtoHAsync")
        _check(cu.cuStreamSynchronize(gpu.stream), "cuStreamSynchronize")
    return host


def _run_batch(predictor: Any, gpu: Any, band: Any, staged: Any, timer: StageTimer) -> list[LabelChunk]:
    engine = predictor.engine
    with timer("engine"):
        inputs = gpu.normalize(staged)
        with predictor._lock:
            probs, class_probs = engine.run_device(inputs, len(staged), gpu.stream)
        gate = None
        if engine.gate_epsilon is not None and class_probs is not None:
            raw = _class_probs(gpu, class_probs, len(staged), predictor.num_classes)
            gate = gate_factors(raw, engine.gate_epsilon, predictor.num_classes)
    with timer("fuse"):
        return band.add(staged, probs, gate)


def cuda_label_rows(predictor: Any, source: Any, rows: Rows, height: int, width: int,
                    sink: Callable[[list[LabelChunk]], None], timer: StageTimer, progress: Progress | None) -> int:
    """``Predictor.label_rows`` on the GPU: same windows, same labels (ties aside), returns patches run."""
    from cervrt.runtime.cuda_fusion import CudaFusion

    engine, settings = predictor.engine, predictor.settings
    total, done = sum(xs.size for _, xs in rows), 0
    if progress is not None:
        progress(0, total)
    with CudaFusion(engine.patch_size, predictor.num_classes, batch_size=settings.batch_size, mean=engine.mean,
                    std=engine.std, device=device_ordinal(engine.device), kernels=_kernels(predictor)) as gpu:
        band = gpu.image(height, width, settings.stride, settings.blend)
        for y, xs in row_batches(rows, settings.batch_size):
            with timer("read"):
                pixels, oy, ox = _band_rows(source, y)
            with timer("preprocess"):
                staged = gpu.stage(pixels, np.full(xs.size, y, dtype=np.int64), xs, origin=(oy, ox))
            chunks = _run_batch(predictor, gpu, band, staged, timer)
            with timer("write"):
                sink(chunks)
            done += xs.size
            if progress is not None:
                progress(done, total)
        with timer("fuse"):
            chunks = band.finish()
        with timer("write"):
            sink(chunks)
        band.close()
    return done
