"""The one CUDA device probe, and a device's primary context (retained, pushed and popped around work).

``device_count()`` never raises: it is how a backend decides whether ``auto`` means a GPU. When
cuda-python is missing it asks the NVIDIA driver library directly (ctypes), so that ONNX Runtime's
device choice needs neither cuda-python nor a CUDA toolkit. ``open_device``, ``gpu_info`` and
``device_arch`` go through cuda-python's driver API.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cervrt.cuda.core import CudaError, check, driver, first_line
from cervrt.errors import CervrtError, DeviceError, MissingDependencyError

__all__ = ["GpuInfo", "NoDeviceError", "PrimaryContext", "device_arch", "device_count", "driver_version", "gpu_info",
           "open_device"]

_DRIVER_LIBRARIES = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
_NO_LIBRARY = "the NVIDIA driver library (libcuda) is not installed"


class NoDeviceError(DeviceError):
    """There is no usable CUDA device; ``reason`` is one word (a CUresult name or an exception type)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GpuInfo:
    """A CUDA device's name and compute capability (``"8.9"``)."""

    name: str
    capability: str

    @property
    def arch(self) -> str:
        """``compute_XY``, what NVRTC and nvcc take."""
        return "compute_" + self.capability.replace(".", "")

    @property
    def sm(self) -> str:
        """``sm_XY``, the real architecture a CUBIN is built for."""
        return "sm_" + self.capability.replace(".", "")


def _ctypes_count() -> tuple[int, str]:
    """cuInit + cuDeviceGetCount through libcuda itself (no cuda-python)."""
    lib = None
    for name in _DRIVER_LIBRARIES:
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(name)
            break
    if lib is None:
        return 0, _NO_LIBRARY
    status = lib.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver reports no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    status = lib.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, "the NVIDIA driver reports no GPU"
    return int(count.value), ""


def device_count() -> tuple[int, str]:
    """(number of CUDA devices, why there are none); cuInit + cuDeviceGetCount, no context is created."""
    try:
        cu = driver()
    except MissingDependencyError:
        return _ctypes_count()
    try:
        (err,) = cu.cuInit(0)
    except RuntimeError:  # cuda.pathfinder cannot find libcuda
        return 0, _NO_LIBRARY
    if err != cu.CUresult.CUDA_SUCCESS:
        return 0, f"the NVIDIA driver reports no usable GPU (cuInit error {getattr(err, 'name', err)})"
    err, count = cu.cuDeviceGetCount()
    if err != cu.CUresult.CUDA_SUCCESS or count == 0:
        return 0, "the NVIDIA driver reports no GPU"
    return int(count), ""


def open_device(ordinal: int = 0, extra: str = "gpu") -> Any:
    """The CUdevice of ``ordinal``; NoDeviceError("no CUDA device: ...") when there is none."""
    cu = driver(extra)
    try:
        (err,) = cu.cuInit(0)
    except RuntimeError as exc:  # the driver library itself is missing
        raise NoDeviceError(f"no CUDA device: the NVIDIA driver library could not be loaded ({first_line(exc)})",
                            type(exc).__name__) from exc
    if err != cu.CUresult.CUDA_SUCCESS:
        raise NoDeviceError(f"no CUDA device: cuInit returned {err}", str(getattr(err, "name", err)))
    count = check(cu.cuDeviceGetCount(), "cuDeviceGetCount")
    if not 0 <= ordinal < count:
        raise NoDeviceError(f"no CUDA device: ordinal {ordinal} requested, {count} present",
                            "CUDA_ERROR_INVALID_DEVICE" if count else "CUDA_ERROR_NO_DEVICE")
    return check(cu.cuDeviceGet(ordinal), "cuDeviceGet")


def gpu_info(ordinal: int = 0, extra: str = "gpu") -> GpuInfo:
    """Name and compute capability of CUDA device ``ordinal``; NoDeviceError when there is none."""
    dev = open_device(ordinal, extra)
    cu = driver()
    attr = cu.CUdevice_attribute
    major, minor = (check(cu.cuDeviceGetAttribute(a, dev), "cuDeviceGetAttribute") for a in (
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
    raw = check(cu.cuDeviceGetName(256, dev), "cuDeviceGetName")
    name = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuInfo(name.split("\x00")[0].strip(), f"{major}.{minor}")


def device_arch(ordinal: int = 0) -> str | None:
    """``compute_XY`` of a CUDA device, or None when there is no usable device."""
    try:
        return gpu_info(ordinal).arch
    except (CervrtError, CudaError):
        return None


def driver_version() -> int:
    """``cuDriverGetVersion``: the CUDA version the driver supports (13000 = CUDA 13.0)."""
    return int(check(driver().cuDriverGetVersion(), "cuDriverGetVersion"))


class PrimaryContext:
    """A device's primary context (the one the CUDA runtime, and so TensorRT, uses), retained until
    ``release()``; ``with ctx.active():`` makes it current on the calling thread for the block."""

    def __init__(self, ordinal: int = 0) -> None:
        self.ordinal = int(ordinal)
        self.device = open_device(self.ordinal)
        self._ctx: Any = check(driver().cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain")

    @property
    def is_open(self) -> bool:
        return self._ctx is not None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Push the context for the block, pop it after."""
        cu = driver()
        check(cu.cuCtxPushCurrent(self._ctx), "cuCtxPushCurrent")
        try:
            yield
        finally:
            check(cu.cuCtxPopCurrent(), "cuCtxPopCurrent")

    def release(self) -> None:
        """Release the retained context (once; later calls do nothing)."""
        if self._ctx is None:
            return
        driver().cuDevicePrimaryCtxRelease(self.device)
        self._ctx = None
