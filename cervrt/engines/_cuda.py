"""Is there a CUDA GPU? Asked of the NVIDIA driver library directly (ctypes), so that choosing a device
for ONNX Runtime or torch needs neither cuda-python nor a CUDA toolkit."""

from __future__ import annotations

import ctypes
import sys

__all__ = ["cuda_device_count"]

_DRIVER_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")


def _load_driver() -> ctypes.CDLL | None:
    for name in _DRIVER_LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why there are none); cuInit + cuDeviceGetCount, no context is created."""
    lib = _load_driver()
    if lib is None:
        return 0, "the NVIDIA driver library (libcuda) is not installed"
    status = lib.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver reports no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, "the NVIDIA driver reports no GPU"
    return int(count.value), ""
