"""The one CUDA layer: cuda-python's driver API (imported lazily) behind a small surface used by the
GPU fusion, the TensorRT engine and the TensorRT builder.

``core``: loading the bindings, ``check`` (CudaError with the CUresult name) and ``use_driver``, the
one seam where tests install an emulated driver. ``device``: the one device probe (``device_count``,
``gpu_info``, ``device_arch``, ``driver_version``) and ``PrimaryContext``. ``memory``: device and
pinned buffers, streams and events. ``nvrtc``: run-time compilation (a CUBIN for ``sm_XY``, or PTX
checked against the driver's CUDA version) and module loading. ``trt``: the one ``trt.Logger`` the
TensorRT builder and runtimes share. ``native_handle`` is how a handle becomes an int
(``get_cuda_native_handle``; ``int()`` is deprecated in cuda-bindings 13). Nothing here imports
engines, runtime or export; importing it imports no CUDA library.
"""

from __future__ import annotations

from cervrt.cuda.core import CudaError, bindings, check, driver, first_line, native_handle, nvrtc_module, use_driver
from cervrt.cuda.device import (
    GpuInfo,
    NoDeviceError,
    PrimaryContext,
    device_arch,
    device_count,
    driver_version,
    gpu_info,
    open_device,
)

__all__ = [
    "CudaError", "GpuInfo", "NoDeviceError", "PrimaryContext", "bindings", "check", "device_arch", "device_count",
    "driver", "driver_version", "first_line", "gpu_info", "native_handle", "nvrtc_module", "open_device", "use_driver",
]
