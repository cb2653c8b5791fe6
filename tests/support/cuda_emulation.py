"""Run cervrt's CUDA path on the host, for tests on machines without a GPU: a strict emulation of the
driver that the GPU path's bugs fail under.

``emulated_cuda(...)`` is the one place an emulated driver goes in: it routes ``cervrt.cuda.driver()``
(and so the fusion, the TensorRT engine and the builder's probe) to an ``EmulatedDriver`` for the
block, through the public seam ``cervrt.cuda.use_driver``.

``build_host_kernels`` compiles the device kernels with the host C++ compiler through a shim that
makes ``__global__`` functions plain functions run by a single thread (every kernel is a grid-stride
loop, so one thread does all the work). ``EmulatedDriver`` stands in for ``cuda.bindings.driver``:

- "device" memory is host memory with guard bytes checked on every copy, after every kernel and at free;
- work is deferred: every async copy, memset, kernel launch and event record goes into its stream's
  queue and runs only when the host waits for it (stream or event synchronisation, a pageable
  device-to-host copy, cuCtxSynchronize, a free) or when another stream's ``cuStreamWaitEvent`` needs
  it; nothing else runs, so other streams' work comes adversarially late. A pinned host source is
  read when its copy runs, a pageable one when the copy is queued (as CUDA stages it);
- ``cuModuleLoadData`` checks the image: a PTX ``.version`` newer than ``driver_version`` is
  CUDA_ERROR_UNSUPPORTED_PTX_VERSION, a CUBIN for another architecture than the device's is
  CUDA_ERROR_NO_BINARY_FOR_GPU, anything else CUDA_ERROR_INVALID_IMAGE (``EMULATED_PTX`` passes);
- every memory, stream, event, module and launch call asserts that a context is current on the
  calling thread; handles refuse ``int()`` (deprecated in cuda-bindings 13: ``get_cuda_native_handle``).

Test engines queue their own device work with ``enqueue(stream, fn)``. What this cannot check: the
device's own execution, timing, and concurrency inside one stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import struct
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.cuda import use_driver
from cervrt.cuda.nvrtc import ptx_cuda_version, ptx_version

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
    "cervrt_gate_factors": [_P, _P, _I, _I, _F],
}
GUARD = 64
#: A PTX image every emulated device loads (its ISA is older than any driver emulated here).
EMULATED_PTX = b"//\n// emulated\n.version 7.8\n.target sm_50\n.address_size 64\n"


def build_host_kernels(csrc: Path, workdir: Path, source: str = "cuda_path_kernels.cu") -> ctypes.CDLL | None:
    """The kernels as a host shared library, or None when no C++ compiler is on PATH."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    shim = workdir / "cuda_shim.h"
    shim.write_text(SHIM)
    lib = workdir / "fusion_kernels_host.so"
    cmd = [cxx, "-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
           "-x", "c++", "-include", str(shim), f"-I{csrc}", str(csrc / source), "-o", str(lib)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    kernels = ctypes.CDLL(str(lib))
    for name, argtypes in SIGNATURES.items():
        function = getattr(kernels, name, None)
        if function is not None:
            function.argtypes = argtypes
            function.restype = None
    return kernels


class Handle:
    """An opaque driver handle (stream, event, context); like cuda-bindings 13, no ``int()``."""

    def __init__(self, kind: str, value: int) -> None:
        self.kind, self.value = kind, value

    def __int__(self) -> int:
        raise AssertionError(f"int() of a {self.kind} handle is deprecated in cuda-bindings 13: "
                             "use cuda.bindings.utils.get_cuda_native_handle")

    def __repr__(self) -> str:
        return f"<emulated {self.kind} {self.value:#x}>"


def cubin_arch(image: bytes) -> tuple[int, int]:
    """(major, minor) of the SM a CUBIN (CUDA ELF) was built for, from its ELF header's e_flags."""
    flags = struct.unpack_from("<I", image, 48)[0]
    sm = (flags >> 8) & 0xFF if image[8] >= 8 else flags & 0xFF  # the ABI version 8 layout (CUDA 12.8+) moved it
    return sm // 10, sm % 10


class EmulatedDriver:
    """The subset of ``cuda.bindings.driver`` that cervrt.cuda's users call, on the host: one device
    named ``gpu[0]`` of compute capability ``gpu[1]`` behind a driver of ``driver_version`` (13000 =
    CUDA 13.0); ``kernels`` (from build_host_kernels) or None. See the module docstring."""

    def __init__(self, real_driver: Any, kernels: ctypes.CDLL | None = None,
                 gpu: tuple[str, str] = ("Emulated GPU", "7.5"), driver_version: int = 13000) -> None:
        self.CUresult = real_driver.CUresult
        self.CUstream_flags = real_driver.CUstream_flags
        self.CUevent_flags = real_driver.CUevent_flags
        self.CUdevice_attribute = real_driver.CUdevice_attribute
        self._ok = real_driver.CUresult.CUDA_SUCCESS
        self._kernels = kernels
        self.gpu_name, self.capability = gpu
        self.driver_version = driver_version
        self.names_asked: list[int] = []  # the devices whose name was asked (cuDeviceGetName)
        self.buffers: dict[int, np.ndarray] = {}  # address -> buffer (with guard bytes after it)
        self.sizes: dict[int, int] = {}
        self.pinned: set[int] = set()
        self.launches: list[str] = []
        self.modules: list[str] = []  # "cubin sm_XY" / "ptx X.Y" per module loaded
        self.host_waits = 0  # stream and event synchronisations (the host blocked on the device)
        self.retained = 0  # primary context retains not released yet
        self.streams_created = 0
        self._lock = threading.RLock()
        self._current = threading.local()
        self._queues: dict[int, deque[tuple[int, Callable[[], None]]]] = {}
        self._records: dict[int, tuple[int, int]] = {}  # event -> (stream, seq of its record)
        self._seq = 0
        self._next = 0x5000

    # -- bookkeeping ---------------------------------------------------------------------------

    def _stack(self) -> list[Any]:
        if not hasattr(self._current, "stack"):
            self._current.stack = []
        return self._current.stack

    @property
    def context_depth(self) -> int:
        """Contexts pushed and not popped on the calling thread."""
        return len(self._stack())

    def _need_context(self, what: str) -> None:
        assert self._stack(), f"{what} without a current CUDA context on {threading.current_thread().name}"

    def _handle(self, kind: str) -> Handle:
        self._next += 0x10
        return Handle(kind, self._next)

    def get_cuda_native_handle(self, obj: Any) -> int:
        """What cuda.bindings.utils.get_cuda_native_handle returns for a real handle."""
        assert isinstance(obj, Handle), f"not a handle: {obj!r}"
        return obj.value

    def _stream_id(self, stream: Any) -> int:
        value = stream.value if isinstance(stream, Handle) else int(stream or 0)
        assert value == 0 or value in self._queues, f"stream {value:#x} was never created or is destroyed"
        return value

    # -- deferred work -------------------------------------------------------------------------

    def enqueue(self, stream: Any, work: Callable[[], None]) -> None:
        """Queue ``work`` on ``stream`` (legacy stream 0: run now); for test engines' own device work."""
        with self._lock:
            sid = self._stream_id(stream)
            if sid == 0:
                work()
                return
            self._seq += 1
            self._queues[sid].append((self._seq, work))

    def _run(self, sid: int, upto: int | None = None) -> None:
        """Run ``sid``'s queued work in order, up to and with sequence number ``upto``."""
        with self._lock:
            queue = self._queues.get(sid)
            while queue and (upto is None or queue[0][0] <= upto):
                _, work = queue.popleft()
                work()

    def _run_all(self) -> None:
        with self._lock:
            for sid in list(self._queues):
                self._run(sid)

    def _complete(self, record: tuple[int, int] | None) -> None:
        if record is not None:
            self._run(*record)

    def pending(self) -> int:
        """Work items queued and not run yet, over every stream."""
        return sum(len(q) for q in self._queues.values())

    # -- memory --------------------------------------------------------------------------------

    def _new(self, nbytes: int) -> tuple[Any, int]:
        buf = np.full(nbytes + GUARD, 0xCD, np.uint8)  # garbage, so that missing zeroing shows
        address = buf.ctypes.data
        self.buffers[address], self.sizes[address] = buf, nbytes
        return self._ok, address

    def _find(self, address: int, nbytes: int) -> int | None:
        for base, size in self.sizes.items():
            if base <= address and address + nbytes <= base + size:
                return base
        return None

    def _check_range(self, address: int, nbytes: int) -> None:
        if self._find(address, nbytes) is None:
            raise AssertionError(f"access of {nbytes} bytes at {address:#x} is outside every allocation")

    def check_guards(self) -> None:
        for base, size in self.sizes.items():
            assert (self.buffers[base][size:] == 0xCD).all(), f"write past the end of the allocation at {base:#x}"

    def _free(self, address: Any, what: str) -> tuple[Any]:
        self._need_context(what)
        address = int(address)
        self._run_all()  # freeing waits for the device, as cuMemFree does
        self.check_guards()
        assert address in self.buffers, f"free of unknown pointer {address:#x}"
        del self.buffers[address], self.sizes[address]
        self.pinned.discard(address)
        return (self._ok,)

    def cuMemAlloc(self, nbytes: int) -> tuple[Any, int]:
        self._need_context("cuMemAlloc")
        return self._new(nbytes)

    def cuMemHostAlloc(self, nbytes: int, flags: int) -> tuple[Any, int]:
        self._need_context("cuMemHostAlloc")
        ok, address = self._new(nbytes)
        self.pinned.add(address)
        return ok, address

    def cuMemFree(self, address: Any) -> tuple[Any]:
        return self._free(address, "cuMemFree")

    def cuMemFreeHost(self, address: Any) -> tuple[Any]:
        return self._free(address, "cuMemFreeHost")

    def _is_pinned(self, address: int, nbytes: int) -> bool:
        return self._find(address, nbytes) in self.pinned

    def _memmove(self, dst: int, src: int, nbytes: int) -> None:
        ctypes.memmove(dst, src, nbytes)

    def cuMemcpyHtoDAsync(self, dst: Any, src: Any, nbytes: int, stream: Any) -> tuple[Any]:
        self._need_context("cuMemcpyHtoDAsync")
        dst, src = int(dst), int(src)
        self._check_range(dst, nbytes)
        if self._is_pinned(src, nbytes):  # read when the copy runs
            self.enqueue(stream, lambda: self._memmove(dst, src, nbytes))
        else:  # pageable: staged now
            staged = ctypes.string_at(src, nbytes)
            self.enqueue(stream, lambda: self._memmove(dst, ctypes.cast(staged, ctypes.c_void_p).value, nbytes))
        return (self._ok,)

    def cuMemcpyDtoHAsync(self, dst: Any, src: Any, nbytes: int, stream: Any) -> tuple[Any]:
        self._need_context("cuMemcpyDtoHAsync")
        dst, src = int(dst), int(src)
        self._check_range(src, nbytes)
        self.enqueue(stream, lambda: self._memmove(dst, src, nbytes))
        if not self._is_pinned(dst, nbytes):  # pageable: the call returns once the copy is done
            self._run(self._stream_id(stream))
        return (self._ok,)

    def cuMemcpyHtoD(self, dst: Any, src: Any, nbytes: int) -> tuple[Any]:
        """Synchronous: waits for every stream's work first (the legacy default stream's semantics)."""
        self._need_context("cuMemcpyHtoD")
        self._check_range(int(dst), nbytes)
        self._run_all()
        self._memmove(int(dst), int(src), nbytes)
        return (self._ok,)

    def cuMemcpyDtoH(self, dst: Any, src: Any, nbytes: int) -> tuple[Any]:
        self._need_context("cuMemcpyDtoH")
        self._check_range(int(src), nbytes)
        self._run_all()
        self._memmove(int(dst), int(src), nbytes)
        return (self._ok,)

    def cuMemcpyDtoDAsync(self, dst: Any, src: Any, nbytes: int, stream: Any) -> tuple[Any]:
        self._need_context("cuMemcpyDtoDAsync")
        dst, src = int(dst), int(src)
        self._check_range(dst, nbytes)
        self._check_range(src, nbytes)
        self.enqueue(stream, lambda: self._memmove(dst, src, nbytes))
        return (self._ok,)

    def cuMemsetD32Async(self, dst: Any, value: int, count: int, stream: Any) -> tuple[Any]:
        self._need_context("cuMemsetD32Async")
        dst = int(dst)
        self._check_range(dst, 4 * count)

        def work() -> None:
            np.frombuffer((ctypes.c_uint32 * count).from_address(dst), np.uint32)[:] = value

        self.enqueue(stream, work)
        return (self._ok,)

    # -- modules and kernels -------------------------------------------------------------------

    def cuModuleLoadData(self, image: int) -> tuple[Any, Any]:
        self._need_context("cuModuleLoadData")
        head = ctypes.string_at(int(image), 64)
        major, minor = (int(v) for v in self.capability.split("."))
        if head.startswith(b"\x7fELF"):
            sm = cubin_arch(head)
            if sm[0] != major or sm[1] > minor:
                return self.CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU, None
            self.modules.append(f"cubin sm_{sm[0]}{sm[1]}")
            return self._ok, self._handle("module")
        text = ctypes.string_at(int(image))
        try:
            isa = ptx_version(text)
        except Exception:
            return self.CUresult.CUDA_ERROR_INVALID_IMAGE, None
        need = ptx_cuda_version(isa)
        if need > (self.driver_version // 1000, self.driver_version % 1000 // 10):
            return self.CUresult.CUDA_ERROR_UNSUPPORTED_PTX_VERSION, None
        self.modules.append(f"ptx {isa[0]}.{isa[1]}")
        return self._ok, self._handle("module")

    def cuModuleGetFunction(self, module: Any, name: bytes) -> tuple[Any, Any]:
        self._need_context("cuModuleGetFunction")
        function = getattr(self._kernels, name.decode(), None)
        if function is None:
            return self.CUresult.CUDA_ERROR_NOT_FOUND, None
        return self._ok, function

    def cuModuleUnload(self, module: Any) -> tuple[Any]:
        self._need_context("cuModuleUnload")
        return (self._ok,)

    def cuLaunchKernel(self, f: Any, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, shared: int,
                       stream: Any, params: int, extra: int) -> tuple[Any]:
        self._need_context("cuLaunchKernel")
        assert gx >= 1 and bx >= 1 and (gy, gz, by, bz, shared, extra) == (1, 1, 1, 1, 0, 0)
        pointers = (ctypes.c_void_p * len(f.argtypes)).from_address(params)
        values = [ctypes.cast(pointers[i], ctypes.POINTER(t)).contents.value for i, t in enumerate(f.argtypes)]
        self.launches.append(f.__name__)

        def work() -> None:
            f(*values)
            self.check_guards()

        self.enqueue(stream, work)
        return (self._ok,)

    # -- device and context --------------------------------------------------------------------

    def cuInit(self, flags: int) -> tuple[Any]:
        return (self._ok,)

    def cuDriverGetVersion(self) -> tuple[Any, int]:
        return self._ok, self.driver_version

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

    def cuDevicePrimaryCtxRetain(self, device: Any) -> tuple[Any, Handle]:
        with self._lock:
            self.retained += 1
        return self._ok, Handle("context", 0xC0)

    def cuDevicePrimaryCtxRelease(self, device: Any) -> tuple[Any]:
        with self._lock:
            assert self.retained > 0, "primary context released more often than retained"
            self.retained -= 1
        return (self._ok,)

    def cuCtxPushCurrent(self, context: Any) -> tuple[Any]:
        assert self.retained > 0, "push of a primary context nobody retains"
        self._stack().append(context)
        return (self._ok,)

    def cuCtxPopCurrent(self) -> tuple[Any, Any]:
        assert self._stack(), "pop without push"
        return self._ok, self._stack().pop()

    def cuCtxSynchronize(self) -> tuple[Any]:
        self._need_context("cuCtxSynchronize")
        self.host_waits += 1
        self._run_all()
        return (self._ok,)

    # -- streams and events --------------------------------------------------------------------

    def cuStreamCreate(self, flags: Any) -> tuple[Any, Handle]:
        self._need_context("cuStreamCreate")
        handle = self._handle("stream")
        with self._lock:
            self._queues[handle.value] = deque()
            self.streams_created += 1
        return self._ok, handle

    def cuStreamSynchronize(self, stream: Any) -> tuple[Any]:
        self._need_context("cuStreamSynchronize")
        self.host_waits += 1
        self._run(self._stream_id(stream))
        return (self._ok,)

    def cuStreamDestroy(self, stream: Any) -> tuple[Any]:
        self._need_context("cuStreamDestroy")
        sid = self._stream_id(stream)
        self._run(sid)  # queued work still completes
        with self._lock:
            del self._queues[sid]
        return (self._ok,)

    def cuStreamWaitEvent(self, stream: Any, event: Any, flags: int) -> tuple[Any]:
        self._need_context("cuStreamWaitEvent")
        record = self._records.get(event.value)  # the event's latest record, as of now
        self.enqueue(stream, lambda: self._complete(record))
        return (self._ok,)

    def cuEventCreate(self, flags: Any) -> tuple[Any, Handle]:
        self._need_context("cuEventCreate")
        return self._ok, self._handle("event")

    def cuEventRecord(self, event: Any, stream: Any) -> tuple[Any]:
        self._need_context("cuEventRecord")
        with self._lock:
            sid = self._stream_id(stream)
            if sid == 0:
                self._records.pop(event.value, None)
                return (self._ok,)
            self.enqueue(stream, lambda: None)
            self._records[event.value] = (sid, self._seq)
        return (self._ok,)

    def cuEventSynchronize(self, event: Any) -> tuple[Any]:
        self._need_context("cuEventSynchronize")
        self.host_waits += 1
        self._complete(self._records.get(event.value))
        return (self._ok,)

    def cuEventDestroy(self, event: Any) -> tuple[Any]:
        self._need_context("cuEventDestroy")
        self._records.pop(event.value, None)
        return (self._ok,)

    def cuGetErrorName(self, err: Any) -> tuple[Any, bytes]:
        return self._ok, getattr(err, "name", str(err)).encode()  # as the driver: b"CUDA_ERROR_..."


@contextlib.contextmanager
def emulated_cuda(real_driver: Any, kernels: ctypes.CDLL | None = None,
                  gpu: tuple[str, str] = ("Emulated GPU", "7.5"), driver_version: int = 13000,
                  ) -> Iterator[EmulatedDriver]:
    """cervrt.cuda on an EmulatedDriver for the block (``real_driver`` lends its enums)."""
    with use_driver(EmulatedDriver(real_driver, kernels, gpu, driver_version)) as driver:
        yield driver
