"""The GPU path of the fusion: CUDA kernels compiled by NVRTC, a pinned double-buffered patch loader
and the band on the device, through ``cervrt.cuda`` (cuda-python's driver API).

Kernels: a CUBIN for the device's own ``sm_XY`` from NVRTC (``build_kernels``), else PTX checked
against the driver's CUDA version. Status: the kernels compile (NVRTC and nvcc, in the tests) and
their logic runs on the host in the tests through an emulated driver; everything below that talks to
a GPU is written against the documented cuda-python API but is compiled, unexecuted code until a test
marked ``gpu`` runs.

``kernels``: compiling, loading and launching; ``staging``: CudaFusion (context, streams, pinned
slots, stage/normalize); ``band``: CudaBand (the band of sums on the device). Pipeline (one compute
stream for the device work, one copy stream for uploads)::

    with CudaFusion(patch=400, num_classes=5, batch_size=16) as gpu:
        band = gpu.image(height, width, stride=100, blend="gaussian")
        for ys, xs in batches:                    # row-major, grouped by window row
            staged = gpu.stage(slide, ys, xs)     # crop uint8 patches into pinned memory, upload async
            inputs = gpu.normalize(staged)        # device pointer: float32 (n, 3, P, P) on gpu.stream
            probs = engine(inputs, len(ys), stream=gpu.stream)  # device pointer: float32 (n, C, P, P)
            write(band.add(staged, probs, gate))  # accumulate; labels of finished rows come back as uint8
        write(band.finish())
        band.close()

The engine must enqueue its work on ``gpu.stream`` (TensorRT ``execute_async_v3``, ONNX Runtime's
CUDA ``user_compute_stream``) or synchronise itself; only uint8 patches go up and only uint8 labels
come down.
"""

from __future__ import annotations

from cervrt.cuda import CudaError, device_arch
from cervrt.cuda.nvrtc import nvrtc_version
from cervrt.runtime.gpu.band import CudaBand, accumulate_box
from cervrt.runtime.gpu.kernels import (
    CSRC_DIR,
    DEFAULT_ARCH,
    KERNEL_NAMES,
    build_kernels,
    compile_kernels,
    nvcc_compile,
)
from cervrt.runtime.gpu.staging import CudaFusion, StagedBatch, crop_patches

__all__ = [
    "CSRC_DIR", "DEFAULT_ARCH", "KERNEL_NAMES", "CudaBand", "CudaError", "CudaFusion", "StagedBatch",
    "accumulate_box", "build_kernels", "compile_kernels", "crop_patches", "device_arch", "nvcc_compile",
    "nvrtc_version",
]
