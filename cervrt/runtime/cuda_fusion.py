"""The GPU path of the fusion: CUDA kernels compiled by NVRTC, a pinned double-buffered patch loader
and the band on the device, through cuda-python's driver API.

Status: the kernels compile (NVRTC and nvcc, in the tests) and their logic runs on the host in the
tests through a CUDA-less shim; everything below that talks to a GPU is written against the
documented cuda-python API but is compiled, unexecuted code until a test marked ``gpu`` runs.

Pipeline (one compute stream for the device work, one copy stream for uploads)::

    with CudaFusion(patch=400, num_classes=5, batch_size=16) as gpu:
        band = gpu.image(height, width, stride=100, blend="gaussian")
        for ys, xs in batches:                    # row-major, grouped by window row
            staged = gpu.stage(slide, ys, xs)     # crop uint8 patches into pinned memory, upload async
            inputs = gpu.normalize(staged)        # device pointer: float32 (n, 3, P, P) on gpu.stream
            probs = engine(inputs, len(ys), stream=gpu.stream)  # device pointer: float32 (n, C, P, P)
            write(band.add(staged, probs, gate))  # accumulate; labels of finished rows come back as uint8
        write(band.finish())
        band.close()

``stage`` fills one of ``num_slots`` (>= 2) pinned buffers and queues its upload on the copy stream,
so the upload of batch k+1 overlaps the engine's work on batch k; it waits only for the slot's
previous batch. The engine must enqueue its work on ``gpu.stream`` (TensorRT ``execute_async_v3``,
ONNX Runtime's CUDA ``user_compute_stream``) or synchronise itself; only uint8 patches go up and
only uint8 labels come down. Not thread-safe: use one CudaFusion per thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import math
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, PATCH_SIZE
from cervrt.errors import CervrtError, MissingDependencyError
from cervrt.runtime.reference import norm_coeffs
from cervrt.runtime.stitcher import BandFusion, LabelChunk
from cervrt.runtime.tiling import BlendMode, blend_weights

__all__ = [
    "CSRC_DIR", "DEFAULT_ARCH", "KERNEL_NAMES", "CudaBand", "CudaError", "CudaFusion", "StagedBatch",
    "accumulate_box", "compile_kernels", "crop_patches", "device_arch", "nvcc_compile", "nvrtc_version",
]

CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"
KERNEL_SOURCE = CSRC_DIR / "fusion_kernels.cu"
#: Oldest architecture CUDA 13 compiles for; used when no device tells us better.
DEFAULT_ARCH = "compute_75"
#: Each kernel's parameter types as in fusion_kernels.cu: p pointer, i int, q long long, f float.
_SIGNATURES = {
    "cervrt_gather_normalize": "ppqiffffff",
    "cervrt_accumulate": "ppiiipppqippiiiii",
    "cervrt_argmax": "pppiiii",
    "cervrt_shift_band": "ppiiiqq",
}
_PARAM_TYPES = {"p": np.uint64, "i": np.int32, "q": np.int64, "f": np.float32}
KERNEL_NAMES = tuple(_SIGNATURES)
_BLOCK = 256
_MAX_GRID = 65535


class CudaError(RuntimeError):
    """A CUDA driver or NVRTC call failed (a bug or a broken installation, not bad input)."""


# ---- cuda-python access ---------------------------------------------------------------------------


def _bindings(name: str) -> Any:
    try:
        return importlib.import_module(f"cuda.bindings.{name}")
    except ImportError as exc:
        raise MissingDependencyError("cuda-python", "gpu") from exc


def _driver() -> Any:
    return _bindings("driver")


def _nvrtc() -> Any:
    return _bindings("nvrtc")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check(result: tuple[Any, ...], what: str) -> Any:
    """Unpack a driver call's ``(CUresult, *values)``; raise CudaError unless it is CUDA_SUCCESS."""
    cu = _driver()
    err, *values = result
    if err != cu.CUresult.CUDA_SUCCESS:
        name_err, name = cu.cuGetErrorName(err)
        label = name.decode() if name_err == cu.CUresult.CUDA_SUCCESS else str(err)
        raise CudaError(f"{what} failed: {label}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _nvrtc_check(result: tuple[Any, ...], what: str) -> Any:
    nvrtc = _nvrtc()
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor); CervrtError with the reason when libnvrtc cannot be loaded."""
    nvrtc = _nvrtc()
    try:
        return _nvrtc_check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except RuntimeError as exc:  # cuda.pathfinder's DynamicLibNotFoundError is a RuntimeError
        raise CervrtError(f"NVRTC is not available ({_first_line(exc)}): pip install nvidia-cuda-nvrtc") from exc


def _init_driver(device: int) -> Any:
    """The CUdevice of ordinal ``device``; CervrtError("no CUDA device: ...") when there is none."""
    cu = _driver()
    try:
        err, = cu.cuInit(0)
    except RuntimeError as exc:  # the driver library itself is missing
        reason = _first_line(exc)
        raise CervrtError(f"no CUDA device: the NVIDIA driver library could not be loaded ({reason})") from exc
    if err != cu.CUresult.CUDA_SUCCESS:
        raise CervrtError(f"no CUDA device: cuInit returned {err}")
    count = _check(cu.cuDeviceGetCount(), "cuDeviceGetCount")
    if not 0 <= device < count:
        raise CervrtError(f"no CUDA device: ordinal {device} requested, {count} present")
    return _check(cu.cuDeviceGet(device), "cuDeviceGet")


def device_arch(device: int = 0) -> str | None:
    """``compute_XY`` of a CUDA device, or None when there is no usable device."""
    try:
        dev = _init_driver(device)
    except (CervrtError, CudaError):
        return None
    cu = _driver()
    attr = cu.CUdevice_attribute
    major, minor = (_check(cu.cuDeviceGetAttribute(a, dev), "cuDeviceGetAttribute") for a in (
        attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR))
    return f"compute_{major}{minor}"


# ---- compiling the kernels ------------------------------------------------------------------------


def compile_kernels(arch: str | None = None) -> bytes:
    """PTX of ``fusion_kernels.cu`` from NVRTC (no GPU needed): ``arch`` like ``compute_86``, else the
    device's, else DEFAULT_ARCH."""
    nvrtc_version()
    nvrtc = _nvrtc()
    arch = arch or device_arch() or DEFAULT_ARCH
    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.read_bytes(), b"fusion_kernels.cu", 0, [], []),
                        "nvrtcCreateProgram")
    try:
        options = [b"--std=c++17", f"--include-path={CSRC_DIR}".encode(), f"-arch={arch}".encode()]
        err, = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = _nvrtc_read(prog, "ProgramLog").decode(errors="replace").strip()
            raise CudaError(f"NVRTC could not compile {KERNEL_SOURCE.name} for {arch}: {log}")
        return _nvrtc_read(prog, "PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _nvrtc_read(prog: Any, what: str) -> bytes:
    """A program's PTX or ProgramLog: nvrtcGet<what>Size, then nvrtcGet<what> into a buffer that size."""
    nvrtc = _nvrtc()
    size = _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}Size")(prog), f"nvrtcGet{what}Size")
    buffer = b" " * size
    _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}")(prog, buffer), f"nvrtcGet{what}")
    return buffer.rstrip(b"\0")


def nvcc_compile(output: str | Path, arch: str = DEFAULT_ARCH) -> Path:
    """Compile the kernels ahead of time with nvcc: PTX for ``compute_XY``, a cubin for ``sm_XY``.

    Put the result beside the source as ``fusion_kernels.ptx`` or ``fusion_kernels.cubin`` and
    CudaFusion loads it instead of running NVRTC.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CervrtError("nvcc is not on PATH: install the CUDA toolkit, or let NVRTC compile at run time")
    kind = "-ptx" if arch.startswith("compute_") else "-cubin"
    output = Path(output)
    cmd = [nvcc, kind, f"-arch={arch}", "-std=c++17", f"-I{CSRC_DIR}", str(KERNEL_SOURCE), "-o", str(output)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CudaError(f"nvcc failed ({done.returncode}): {done.stderr.strip()}")
    return output


def _prebuilt_kernels() -> bytes | None:
    """An ahead-of-time cubin or PTX beside the source, if present and not older than the sources."""
    newest_source = max(p.stat().st_mtime for p in (KERNEL_SOURCE, CSRC_DIR / "fusion_math.h"))
    for suffix in (".cubin", ".ptx"):
        path = KERNEL_SOURCE.with_suffix(suffix)
        if path.is_file() and path.stat().st_mtime >= newest_source:
            return path.read_bytes()
    return None


# ---- host helpers (pure numpy, tested without a GPU) ----------------------------------------------


def crop_patches(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int, out: np.ndarray) -> None:
    """uint8 (n, P, P, 3) HWC crops of ``image`` at (ys[i], xs[i]) into ``out[:n]``, glass (255) past the edges."""
    height, width = image.shape[:2]
    for i, (y, x) in enumerate(zip(ys.tolist(), xs.tolist(), strict=True)):
        h, w = max(0, min(patch, height - y)), max(0, min(patch, width - x))
        out[i] = 255
        out[i, :h, :w] = image[y : y + h, x : x + w]


def accumulate_box(ys_band: np.ndarray, xs: np.ndarray, patch: int, band_rows: int, width: int) -> tuple[int, ...]:
    """(y0, x0, h, w): the windows' bounding box clipped to the band, the accumulate kernel's grid."""
    y0, x0 = max(0, int(ys_band.min())), max(0, int(xs.min()))
    y1, x1 = min(band_rows, int(ys_band.max()) + patch), min(width, int(xs.max()) + patch)
    return y0, x0, max(0, y1 - y0), max(0, x1 - x0)


def _load_module(image: bytes) -> Any:
    """cuModuleLoadData of a PTX (NUL-terminated here) or cubin image; the context must be active."""
    if not image.startswith(b"\x7fELF"):
        image = image.rstrip(b"\0") + b"\0"
    data = np.frombuffer(image, dtype=np.uint8)
    return _check(_driver().cuModuleLoadData(data.ctypes.data), "cuModuleLoadData")


# ---- device resources -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StagedBatch:
    """A batch of windows whose uint8 patches are (being) uploaded into one of CudaFusion's slots."""

    slot: int
    generation: int
    ys: np.ndarray
    xs: np.ndarray

    def __len__(self) -> int:
        return int(self.ys.size)


@dataclass
class _Slot:
    """Pinned host and device buffers of one in-flight batch; events after its upload and its last reader."""

    host: dict[str, np.ndarray]
    device: dict[str, int]
    uploaded: Any
    released: Any
    generation: int = 0


class CudaFusion:
    """GPU resources of the fusion (context, kernels, streams, pinned slots); a context manager.

    ``kernels``: a PTX or cubin image; by default an ahead-of-time build beside the source, else
    NVRTC. Raises CervrtError("no CUDA device: ...") without a GPU.
    """

    def __init__(self, patch: int = PATCH_SIZE, num_classes: int = NUM_CLASSES, *, batch_size: int = 16,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: int = 0, num_slots: int = 2, kernels: bytes | None = None) -> None:
        if patch < 1 or batch_size < 1 or num_classes < 1 or num_slots < 2:
            raise CervrtError("patch, batch_size and num_classes must be positive and num_slots at least 2")
        self.patch, self.num_classes, self.batch_size = int(patch), int(num_classes), int(batch_size)
        self._scale, self._bias = norm_coeffs(mean, std)
        self._slots: list[_Slot] = []
        self._allocs: list[int] = []
        self._pinned: list[int] = []
        self._bands: list[CudaBand] = []
        self._next_slot = 0
        self._ctx = self._module = self._stream = self._copy_stream = None
        self._functions: dict[str, Any] = {}
        self._ordinal = int(device)
        self._dev = _init_driver(self._ordinal)
        cu = _driver()
        self._ctx = _check(cu.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        try:
            with self.active():
                self._load(kernels)
                flags = cu.CUstream_flags.CU_STREAM_NON_BLOCKING
                self._stream = _check(cu.cuStreamCreate(flags), "cuStreamCreate")
                self._copy_stream = _check(cu.cuStreamCreate(flags), "cuStreamCreate")
                for _ in range(num_slots):
                    self._slots.append(self._new_slot())
        except BaseException:
            self.close()
            raise

    # -- context -------------------------------------------------------------------------------

    def __enter__(self) -> CudaFusion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._ctx is None:
            raise CervrtError("this CudaFusion is closed")

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this object's CUDA context current on the calling thread for the block."""
        self._require_open()
        cu = _driver()
        _check(cu.cuCtxPushCurrent(self._ctx), "cuCtxPushCurrent")
        try:
            yield
        finally:
            _check(cu.cuCtxPopCurrent(), "cuCtxPopCurrent")

    @property
    def stream(self) -> int:
        """Handle of the compute stream: the engine must enqueue its work here."""
        return int(self._stream)

    # -- public API ----------------------------------------------------------------------------

    def stage(self, image: np.ndarray, ys: Sequence[int] | np.ndarray, xs: Sequence[int] | np.ndarray,
              origin: tuple[int, int] = (0, 0)) -> StagedBatch:
        """Crop up to batch_size patches of an (H, W, 3) uint8 image into a pinned slot and upload them
        asynchronously on the copy stream. ``origin``: where the image's pixel (0, 0) lies in the whole
        image (a band of a slide): patches are cropped at (ys, xs) - origin, windows keep (ys, xs)."""
        self._require_open()
        oy, ox = (int(v) for v in origin)
        image, ys, xs = self._check_batch(image, np.asarray(ys) - oy, np.asarray(xs) - ox)
        ys, xs = ys + oy, xs + ox
        index = self._next_slot
        slot = self._slots[index]
        n, cu = ys.size, _driver()
        with self.active():
            for event in (slot.uploaded, slot.released):  # the slot's last upload and its last reader
                _check(cu.cuEventSynchronize(event), "cuEventSynchronize")
            crop_patches(image, ys - oy, xs - ox, self.patch, slot.host["patches"])
            slot.host["ys"][:n], slot.host["xs"][:n] = ys, xs
            for name, nbytes in (("patches", n * self.patch * self.patch * 3), ("ys", n * 8), ("xs", n * 8)):
                _check(cu.cuMemcpyHtoDAsync(slot.device[name], slot.host[name].ctypes.data, nbytes,
                                            self._copy_stream), "cuMemcpyHtoDAsync")
            _check(cu.cuEventRecord(slot.uploaded, self._copy_stream), "cuEventRecord")
        slot.generation += 1
        self._next_slot = (index + 1) % len(self._slots)
        return StagedBatch(index, slot.generation, ys, xs)

    def normalize(self, batch: StagedBatch) -> int:
        """Device pointer of the batch normalised to float32 (n, 3, P, P), ready on ``stream``."""
        self._require_open()
        slot = self._slot(batch)
        with self.active():
            _check(_driver().cuStreamWaitEvent(self._stream, slot.uploaded, 0), "cuStreamWaitEvent")
            self.launch("cervrt_gather_normalize", len(batch) * self.patch * self.patch, slot.device["patches"],
                        slot.device["inputs"], len(batch), self.patch, *self._scale, *self._bias)
            _check(_driver().cuEventRecord(slot.released, self._stream), "cuEventRecord")
        return slot.device["inputs"]

    def image(self, height: int, width: int, stride: int, blend: BlendMode | str = BlendMode.GAUSSIAN) -> CudaBand:
        """A device band for one image of ``height`` x ``width`` pixels."""
        self._require_open()
        band = CudaBand(self, height, width, stride, blend)
        self._bands.append(band)
        return band

    def synchronize(self) -> None:
        """Wait for all queued work on both streams."""
        with self.active():
            for stream in (self._copy_stream, self._stream):
                _check(_driver().cuStreamSynchronize(stream), "cuStreamSynchronize")

    def close(self) -> None:
        """Free every device and pinned buffer, stream, event and the module; release the context."""
        if self._ctx is None:
            return
        cu = _driver()
        for band in list(self._bands):
            with contextlib.suppress(CudaError):
                band.close()
        with contextlib.suppress(CudaError), self.active():
            for stream in (self._stream, self._copy_stream):
                if stream is not None:
                    cu.cuStreamSynchronize(stream)
                    cu.cuStreamDestroy(stream)
            for slot in self._slots:
                cu.cuEventDestroy(slot.uploaded)
                cu.cuEventDestroy(slot.released)
            for ptr in self._allocs:
                cu.cuMemFree(ptr)
            for ptr in self._pinned:
                cu.cuMemFreeHost(ptr)
            if self._module is not None:
                cu.cuModuleUnload(self._module)
        self._slots, self._allocs, self._pinned, self._bands = [], [], [], []
        cu.cuDevicePrimaryCtxRelease(self._dev)
        self._ctx = None

    # -- shared with CudaBand --------------------------------------------------------------------

    def alloc(self, nbytes: int) -> int:
        """Device memory, freed by free() or close(); the context must be active."""
        ptr = int(_check(_driver().cuMemAlloc(max(int(nbytes), 1)), "cuMemAlloc"))
        self._allocs.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        """Free device memory from alloc() before close(); the context must be active."""
        self._allocs.remove(ptr)
        _check(_driver().cuMemFree(ptr), "cuMemFree")

    def pinned(self, nbytes: int, dtype: type = np.uint8) -> np.ndarray:
        """A numpy view of page-locked host memory, freed by free_pinned() or close(); the context must be active."""
        nbytes = max(int(nbytes), 1)
        ptr = int(_check(_driver().cuMemHostAlloc(nbytes, 0), "cuMemHostAlloc"))
        self._pinned.append(ptr)
        return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        """Free pinned memory from pinned() before close(); drop every view of it first."""
        ptr = array.ctypes.data
        self._pinned.remove(ptr)
        _check(_driver().cuMemFreeHost(ptr), "cuMemFreeHost")

    def launch(self, name: str, work: int, *values: float) -> None:
        """Launch kernel ``name`` over ``work`` grid-stride items on the compute stream, its parameters
        converted to the types of its signature (the driver copies them from the pointed-to arrays)."""
        signature = _SIGNATURES[name]
        if len(values) != len(signature):
            raise TypeError(f"{name} takes {len(signature)} parameters, got {len(values)}")
        if work <= 0:
            return
        args = [np.array([v], dtype=_PARAM_TYPES[t]) for v, t in zip(values, signature, strict=True)]
        grid = min(math.ceil(work / _BLOCK), _MAX_GRID)
        params = np.array([a.ctypes.data for a in args], dtype=np.uint64)
        _check(_driver().cuLaunchKernel(self._functions[name], grid, 1, 1, _BLOCK, 1, 1, 0, self._stream,
                                        params.ctypes.data, 0), f"cuLaunchKernel({name})")

    def _slot(self, batch: StagedBatch) -> _Slot:
        if not isinstance(batch, StagedBatch) or not 0 <= batch.slot < len(self._slots):
            raise CervrtError("expected a StagedBatch returned by this CudaFusion's stage()")
        slot = self._slots[batch.slot]
        if slot.generation != batch.generation:
            raise CervrtError(f"this batch's slot was reused: use a batch before staging {len(self._slots)} more")
        return slot

    # -- set-up ----------------------------------------------------------------------------------

    def _load(self, kernels: bytes | None) -> None:
        """Load ``kernels``, else an ahead-of-time build (falling back to NVRTC if it does not fit the device)."""
        cu = _driver()
        image = kernels or _prebuilt_kernels()
        try:
            self._module = _load_module(image or compile_kernels(device_arch(self._ordinal)))
        except CudaError:
            if kernels is not None or image is None:
                raise
            self._module = _load_module(compile_kernels(device_arch(self._ordinal)))
        self._functions = {name: _check(cu.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction")
                           for name in KERNEL_NAMES}

    def _new_slot(self) -> _Slot:
        cu, n, p = _driver(), self.batch_size, self.patch
        host = {"patches": self.pinned(n * p * p * 3).reshape(n, p, p, 3), "ys": self.pinned(n * 8, np.int64),
                "xs": self.pinned(n * 8, np.int64), "gate": self.pinned(n * self.num_classes * 4, np.float32)}
        sizes = {"patches": n * p * p * 3, "ys": n * 8, "xs": n * 8, "gate": n * self.num_classes * 4,
                 "inputs": n * 3 * p * p * 4}
        device = {name: self.alloc(size) for name, size in sizes.items()}
        events = [_check(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate") for _ in range(2)]
        return _Slot(host, device, *events)

    def _check_batch(self, image: object, ys: object, xs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise CervrtError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")
        ys, xs = np.asarray(ys), np.asarray(xs)
        if ys.ndim != 1 or ys.shape != xs.shape or not 1 <= ys.size <= self.batch_size:
            raise CervrtError(f"ys and xs must be 1-D with the same length, 1 to {self.batch_size} windows")
        if not (np.issubdtype(ys.dtype, np.integer) and np.issubdtype(xs.dtype, np.integer)):
            raise CervrtError("window origins must be integers")
        if ys.min() < 0 or xs.min() < 0:
            raise CervrtError("window origins must be >= 0")
        return image, ys.astype(np.int64), xs.astype(np.int64)


class CudaBand(BandFusion):
    """One image's band on the device: ``add(batch, probs, gate=None)`` / ``finish()`` like BandStitcher.

    ``probs`` is a device pointer (int or CUdeviceptr) to float32 (n, num_classes, P, P) written on
    the compute stream; ``gate`` a host float32 (n, num_classes) array of 0/1 factors or None. The
    sums are double-buffered on the device: ``nbytes = 2 * 4 * (num_classes + 1) * band_rows * width``.
    """

    def __init__(self, fusion: CudaFusion, height: int, width: int, stride: int,
                 blend: BlendMode | str = BlendMode.GAUSSIAN) -> None:
        super().__init__(height, width, fusion.num_classes, fusion.patch, stride)
        self._fusion = fusion
        self._closed = False
        self._plane = self.band_rows * self.width
        self.nbytes = 2 * 4 * (self.num_classes + 1) * self._plane
        cu = _driver()
        with fusion.active():
            # Kept alive with the band; queued on the compute stream so that the kernels see it.
            self._host_weights = np.ascontiguousarray(blend_weights(blend, self.patch))
            self._weights = fusion.alloc(self._host_weights.nbytes)
            _check(cu.cuMemcpyHtoDAsync(self._weights, self._host_weights.ctypes.data, self._host_weights.nbytes,
                                        fusion._stream), "cuMemcpyHtoDAsync")
            self._buffers = [fusion.alloc(self.nbytes // 2) for _ in range(2)]
            _check(cu.cuMemsetD32Async(self._buffers[0], 0, (self.num_classes + 1) * self._plane, fusion._stream),
                   "cuMemsetD32Async")
            self._labels = fusion.alloc(self._plane)
            self._host_labels = fusion.pinned(self._plane)

    def __enter__(self) -> CudaBand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise CervrtError("this band is closed: ask CudaFusion.image() for a new one")
        self._fusion._require_open()

    def add(self, batch: StagedBatch, probs: Any, gate: np.ndarray | None = None) -> list[LabelChunk]:
        """Accumulate a staged batch's probabilities; return the label blocks no later window can touch."""
        self._require_open()
        slot = self._fusion._slot(batch)
        ys, xs = self._check_windows(batch.ys, batch.xs)
        probs_ptr = int(probs)
        if probs_ptr <= 0:
            raise CervrtError("probs must be a device pointer to float32 (n, classes, P, P)")
        cu, fusion = _driver(), self._fusion
        with fusion.active():
            gate_ptr = self._upload_gate(slot, gate, ys.size)

            def run(lo: int, hi: int, ys_band: np.ndarray) -> None:
                self._accumulate(slot, probs_ptr, gate_ptr, lo, hi, ys_band, xs[lo:hi])

            chunks = self._feed(ys, xs, run)
            _check(cu.cuEventRecord(slot.released, fusion._stream), "cuEventRecord")
        return chunks

    def finish(self) -> list[LabelChunk]:
        """The label blocks of every row not handed out yet."""
        self._require_open()
        with self._fusion.active():
            return self._finish()

    def close(self) -> None:
        """Free the band's device and pinned memory once its queued work is done (CudaFusion.close does too)."""
        if self._closed:
            return
        self._closed = self._finished = True
        fusion = self._fusion
        if fusion._ctx is None:
            return
        fusion._bands.remove(self)
        with fusion.active():
            _check(_driver().cuStreamSynchronize(fusion._stream), "cuStreamSynchronize")
            for ptr in (self._weights, *self._buffers, self._labels):
                fusion.free(ptr)
            fusion.free_pinned(self._host_labels)
        del self._host_labels  # a view of freed memory

    def _upload_gate(self, slot: _Slot, gate: np.ndarray | None, n: int) -> int:
        if gate is None:
            return 0
        gate = np.asarray(gate)
        if gate.dtype != np.float32 or gate.shape != (n, self.num_classes):
            raise CervrtError(f"gate must be None or float32 ({n}, {self.num_classes}), got {gate.dtype} {gate.shape}")
        slot.host["gate"][: gate.size] = gate.ravel()
        _check(_driver().cuMemcpyHtoDAsync(slot.device["gate"], slot.host["gate"].ctypes.data, gate.nbytes,
                                           self._fusion._stream), "cuMemcpyHtoDAsync")
        return slot.device["gate"]

    def _accumulate(self, slot: _Slot, probs: int, gate: int, lo: int, hi: int, ys_band: np.ndarray,
                    xs: np.ndarray) -> None:
        y0, x0, h, w = accumulate_box(ys_band, xs, self.patch, self.band_rows, self.width)
        acc = self._buffers[0]
        c, p = self.num_classes, self.patch
        self._fusion.launch(
            "cervrt_accumulate", h * w, acc, acc + 4 * c * self._plane, c, self.band_rows, self.width,
            probs + 4 * lo * c * p * p, slot.device["ys"] + 8 * lo, slot.device["xs"] + 8 * lo, self._y0, hi - lo,
            self._weights, gate + 4 * lo * c if gate else 0, p, y0, x0, h, w)

    def _argmax(self, rows: int) -> np.ndarray:
        cu, fusion, acc = _driver(), self._fusion, self._buffers[0]
        fusion.launch("cervrt_argmax", rows * self.width, acc, acc + 4 * self.num_classes * self._plane, self._labels,
                      self.num_classes, self.band_rows, self.width, rows)
        nbytes = rows * self.width
        _check(cu.cuMemcpyDtoHAsync(self._host_labels.ctypes.data, self._labels, nbytes, fusion._stream),
               "cuMemcpyDtoHAsync")
        _check(cu.cuStreamSynchronize(fusion._stream), "cuStreamSynchronize")
        return self._host_labels[:nbytes].reshape(rows, self.width).copy()

    def _shift(self, shift: int, filled: int) -> None:
        src, dst = self._buffers
        self._fusion.launch("cervrt_shift_band", (self.num_classes + 1) * self._plane, src, dst,
                            self.num_classes + 1, self.band_rows, self.width, shift, filled)
        self._buffers = [dst, src]
