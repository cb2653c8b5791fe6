"""Run cervrt's CUDA path on the host, for tests on machines without a GPU.

``emulated_cuda(...)`` is the one place an emulated driver goes in: it routes ``cervrt.cuda.driver()``
(and so the fusion, the TensorRT engine and the builder's probe) to an ``EmulatedDriver`` for the
block, through the public seam ``cervrt.cuda.use_driver``.

``build_host_kernels`` compiles ``fusion_kernels.cu`` with the host C++ compiler through a shim that
makes ``__global__`` functions plain functions run by a single thread (every kernel is a grid-stride
loop, so one thread does all the work). ``EmulatedDriver`` stands in for ``cuda.bindings.driver``:
"device" memory is host memory with guard bytes checked on every copy and at free, kernel launches
unpack ``kernelParams`` exactly as the driver does (an array of pointers to the values, read with
the kernel's parameter types), and streams and events are no-ops because everything is synchronous.
What this cannot check: real asynchrony, the primary context, and device execution itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.cuda import use_driver

SHIM = """
#define __global__
#define __host__
#define __device__
#define __forceinline__ inline
struct cervrt_dim3 { unsigned int x, y, z; };
static const cervrt_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
"""

_P, _I, _Q, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_float
SIGNATURES = {
    "cervrt_gather_normalize": [_P, _P, _Q, _I, _F, _F, _F, _F, _F, _F],
    "cervrt_accumulate": [_P, _P, _I, _I, _I, _P, _P, _P, _Q, _I, _P, _P, _I, _I, _I, _I, _I],
    "cervrt_argmax": [_P, _P, _P, _I, _I, _I, _I],
    "cervrt_shift_band": [_P, _P, _I, _I, _I, _Q, _Q],
}
GUARD = 64


def build_host_kernels(csrc: Path, workdir: Path) -> ctypes.CDLL | None:
    """The kernels as a host shared library, or None when no C++ compiler is on PATH."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    shim = workdir / "cuda_shim.h"
    shim.write_text(SHIM)
    lib = workdir / "fusion_kernels_host.so"
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           "-x", "c++", "-include", str(shim), f"-I{csrc}", str(csrc / "fusion_kernels.cu"), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    kernels = ctypes.CDLL(str(lib))
    for name, argtypes in SIGNATURES.items():
        getattr(kernels, name).argtypes = argtypes
        getattr(kernels, name).restype = None
    return kernels


class Handle:
    """An opaque handle that converts to int, like cuda-python's CUstream."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


class EmulatedDriver:
    """The subset of ``cuda.bindings.driver`` that cervrt.cuda's users call, on the host: one device
    named ``gpu[0]`` of compute capability ``gpu[1]``; ``kernels`` (from build_host_kernels) or None."""

    def __init__(self, real_driver: Any, kernels: ctypes.CDLL | None = None,
                 gpu: tuple[str, str] = ("Emulated GPU", "7.5")) -> None:
        self.CUresult = real_driver.CUresult
        self.CUstream_flags = real_driver.CUstream_flags
        self.CUevent_flags = real_driver.CUevent_flags
        self.CUdevice_attribute = real_driver.CUdevice_attribute
        self._ok = real_driver.CUresult.CUDA_SUCCESS
        self._kernels = kernels
        self.gpu_name, self.capability = gpu
        self.names_asked: list[int] = []  # the devices whose name was asked (cuDeviceGetName)
        self.buffers: dict[int, np.ndarray] = {}  # address -> buffer (with guard bytes after it)
        self.sizes: dict[int, int] = {}
        self.context_depth = 0
        self.launches: list[str] = []

    # -- memory --------------------------------------------------------------------------------

    def _new(self, nbytes: int) -> tuple[Any, int]:
        buf = np.full(nbytes + GUARD, 0xCD, np.uint8)  # garbage, so that missing zeroing shows
        address = buf.ctypes.data
        self.buffers[address], self.sizes[address] = buf, nbytes
        return self._ok, address

    def _check_range(self, address: int, nbytes: int) -> None:
        for base, size in self.sizes.items():
            if base <= address and address + nbytes <= base + size:
                return
        raise AssertionError(f"access of {nbytes} bytes at {address:#x} is outside every allocation")

    def check_guards(self) -> None:
        for base, size in self.sizes.items():
            assert (self.buffers[base][size:] == 0xCD).all(), f"write past the end of the allocation at {base:#x}"

    def _free(self, address: Any) -> tuple[Any]:
        address = int(address)
        self.check_guards()
        assert address in self.buffers, f"free of unknown pointer {address:#x}"
        del self.buffers[address], self.sizes[address]
        return (self._ok,)

    def cuMemAlloc(self, nbytes: int) -> tuple[Any, int]:
        return self._new(nbytes)

    def cuMemHostAlloc(self, nbytes: int, flags: int) -> tuple[Any, int]:
        return self._new(nbytes)

    def cuMemFree(self, address: Any) -> tuple[Any]:
        return self._free(address)

    def cuMemFreeHost(self, address: Any) -> tuple[Any]:
        return self._free(address)

    def _copy(self, dst: Any, src: Any, nbytes: int, device: Any) -> tuple[Any]:
        """Copy, checking the device side only (the host side may be pageable memory, as CUDA allows)."""
        self._check_range(int(device), nbytes)
        ctypes.memmove(int(dst), int(src), nbytes)
        return (self._ok,)

    def cuMemcpyHtoD(self, dst: Any, src: Any, nbytes: int) -> tuple[Any]:
        return self._copy(dst, src, nbytes, dst)

    def cuMemcpyHtoDAsync(self, dst: Any, src: Any, nbytes: int, stream: Any) -> tuple[Any]:
        return self._copy(dst, src, nbytes, dst)

    def cuMemcpyDtoHAsync(self, dst: Any, src: Any, nbytes: int, stream: Any) -> tuple[Any]:
        return self._copy(dst, src, nbytes, src)

    def cuMemsetD32Async(self, dst: Any, value: int, count: int, stream: Any) -> tuple[Any]:
        self._check_range(int(dst), 4 * count)
        np.frombuffer((ctypes.c_uint32 * count).from_address(int(dst)), np.uint32)[:] = value
        return (self._ok,)

    # -- kernels -------------------------------------------------------------------------------

    def cuModuleLoadData(self, image: int) -> tuple[Any, str]:
        return self._ok, "module"

    def cuModuleGetFunction(self, module: Any, name: bytes) -> tuple[Any, Any]:
        return self._ok, getattr(self._kernels, name.decode())

    def cuModuleUnload(self, module: Any) -> tuple[Any]:
        return (self._ok,)

    def cuLaunchKernel(self, f: Any, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, shared: int,
                       stream: Any, params: int, extra: int) -> tuple[Any]:
        assert gx >= 1 and bx >= 1 and (gy, gz, by, bz, shared, extra) == (1, 1, 1, 1, 0, 0)
        pointers = (ctypes.c_void_p * len(f.argtypes)).from_address(params)
        values = [ctypes.cast(pointers[i], ctypes.POINTER(t)).contents.value for i, t in enumerate(f.argtypes)]
        self.launches.append(f.__name__)
        f(*values)
        self.check_guards()
        return (self._ok,)

    # -- device, context, streams, events (synchronous: nothing to do) -------------------------

    def cuInit(self, flags: int) -> tuple[Any]:
        return (self._ok,)

    def cuDeviceGetCount(self) -> tuple[Any, int]:
        return self._ok, 1

    def cuDeviceGet(self, ordinal: int) -> tuple[Any, int]:
        return self._ok, ordinal

    def cuDeviceGetAttribute(self, attribute: Any, device: Any) -> tuple[Any, int]:
        major, minor = (int(v) for v in self.capability.split("."))
        return self._ok, major if "MAJOR" in str(attribute) else minor

    def cuDeviceGetName(self, length: int, device: Any) -> tuple[Any, bytes]:
        self.names_asked.append(int(device))
        return self._ok, self.gpu_name.encode()[:length]

    def cuDevicePrimaryCtxRetain(self, device: Any) -> tuple[Any, str]:
        return self._ok, "context"

    def cuDevicePrimaryCtxRelease(self, device: Any) -> tuple[Any]:
        return (self._ok,)

    def cuCtxPushCurrent(self, context: Any) -> tuple[Any]:
        self.context_depth += 1
        return (self._ok,)

    def cuCtxPopCurrent(self) -> tuple[Any, str]:
        assert self.context_depth > 0, "pop without push"
        self.context_depth -= 1
        return self._ok, "context"

    def cuStreamCreate(self, flags: Any) -> tuple[Any, Handle]:
        return self._ok, Handle(0x5000 + len(self.buffers))

    def cuEventCreate(self, flags: Any) -> tuple[Any, object]:
        return self._ok, object()

    def _nothing(self, *args: Any) -> tuple[Any]:
        return (self._ok,)

    cuStreamDestroy = cuStreamSynchronize = cuStreamWaitEvent = cuCtxSynchronize = _nothing
    cuEventRecord = cuEventSynchronize = cuEventDestroy = _nothing

    def cuGetErrorName(self, err: Any) -> tuple[Any, bytes]:
        return self._ok, getattr(err, "name", str(err)).encode()  # as the driver: b"CUDA_ERROR_..."


@contextlib.contextmanager
def emulated_cuda(real_driver: Any, kernels: ctypes.CDLL | None = None,
                  gpu: tuple[str, str] = ("Emulated GPU", "7.5")) -> Iterator[EmulatedDriver]:
    """cervrt.cuda on an EmulatedDriver for the block (``real_driver`` lends its enums)."""
    with use_driver(EmulatedDriver(real_driver, kernels, gpu)) as driver:
        yield driver
