"""The device path's CUDA kernels (``csrc/cuda_path_kernels.cu``: the fusion's and the gate's): compiling
them (NVRTC at run time, nvcc ahead of time), loading them into a context and launching them with
typed parameters.

``build_kernels(ordinal)`` is what the device path loads: a CUBIN for the device's own ``sm_XY`` (no
JIT, so an NVRTC newer than the driver does not matter), else PTX for its ``compute_XY``, checked
against ``cuDriverGetVersion`` before it is handed to the driver.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.cuda import CudaError, check, device_arch, driver, driver_version, gpu_info
from cervrt.cuda.nvrtc import check_ptx, compile_program, load_module
from cervrt.errors import CervrtError

__all__ = ["CSRC_DIR", "DEFAULT_ARCH", "KERNEL_NAMES", "KERNEL_SOURCE", "Kernels", "build_kernels", "compile_kernels",
           "nvcc_compile", "prebuilt_kernels"]

CSRC_DIR = Path(__file__).resolve().parent.parent.parent / "csrc"
KERNEL_SOURCE = CSRC_DIR / "cuda_path_kernels.cu"
#: Oldest architecture CUDA 13 compiles for; used when no device tells us better.
DEFAULT_ARCH = "compute_75"
#: Each kernel's parameter types as in fusion_kernels.cu: p pointer, i int, q long long, f float.
_SIGNATURES = {
    "cervrt_gather_normalize": "ppqiffffff",
    "cervrt_accumulate": "ppiiipppqippiiiii",
    "cervrt_argmax": "pppiiii",
    "cervrt_shift_band": "ppiiiqq",
    "cervrt_gate_factors": "ppiif",
}
_PARAM_TYPES = {"p": np.uint64, "i": np.int32, "q": np.int64, "f": np.float32}
KERNEL_NAMES = tuple(_SIGNATURES)
_BLOCK = 256
_MAX_GRID = 65535


def compile_kernels(arch: str | None = None) -> bytes:
    """The kernels from NVRTC (no GPU needed): a CUBIN for ``sm_XY``, PTX for ``compute_XY``; without
    ``arch`` PTX for the device's architecture, else for DEFAULT_ARCH."""
    return compile_program(KERNEL_SOURCE, arch or device_arch() or DEFAULT_ARCH, [CSRC_DIR])


def build_kernels(ordinal: int = 0) -> tuple[bytes, str]:
    """(image, what it is) for CUDA device ``ordinal``: a CUBIN for its ``sm_XY``; when NVRTC cannot
    build one (a device newer than this NVRTC), PTX for its ``compute_XY`` that the driver can JIT.
    CudaError (both reasons) when neither can be had; needs a device, not a current context."""
    gpu = gpu_info(ordinal)
    try:
        return compile_program(KERNEL_SOURCE, gpu.sm, [CSRC_DIR]), f"cubin {gpu.sm}"
    except CudaError as cubin_error:
        ptx = compile_program(KERNEL_SOURCE, gpu.arch, [CSRC_DIR])
        try:
            check_ptx(ptx, driver_version())
        except (CudaError, CervrtError) as ptx_error:
            raise CudaError(f"no CUDA kernels for {gpu.name} ({gpu.sm}): {cubin_error}; and {ptx_error}") from None
        return ptx, f"ptx {gpu.arch}"


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


def prebuilt_kernels() -> bytes | None:
    """An ahead-of-time cubin or PTX beside the source, if present and not older than the sources."""
    newest_source = max(p.stat().st_mtime for p in (KERNEL_SOURCE, CSRC_DIR / "fusion_math.h"))
    for suffix in (".cubin", ".ptx"):
        path = KERNEL_SOURCE.with_suffix(suffix)
        if path.is_file() and path.stat().st_mtime >= newest_source:
            return path.read_bytes()
    return None


class Kernels:
    """The kernels loaded into the current context: ``launch(name, work, stream, *values)``; ``unload()``.

    ``image``: a PTX or cubin image; by default an ahead-of-time build beside the source (falling
    back to NVRTC if it does not fit the device), else ``build_kernels`` for the device ``ordinal``.
    """

    def __init__(self, image: bytes | None = None, ordinal: int = 0) -> None:
        cu = driver()
        self._module = None
        prebuilt = image or prebuilt_kernels()
        try:
            self._module = load_module(prebuilt or build_kernels(ordinal)[0])
        except CudaError:
            if image is not None or prebuilt is None:
                raise
            self._module = load_module(build_kernels(ordinal)[0])
        self._functions = {name: check(cu.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction")
                           for name in KERNEL_NAMES}

    def launch(self, name: str, work: int, stream: Any, *values: float) -> None:
        """Launch kernel ``name`` over ``work`` grid-stride items on ``stream``, its parameters converted
        to the types of its signature (the driver copies them from the pointed-to arrays)."""
        signature = _SIGNATURES[name]
        if len(values) != len(signature):
            raise TypeError(f"{name} takes {len(signature)} parameters, got {len(values)}")
        if work <= 0:
            return
        args = [np.array([v], dtype=_PARAM_TYPES[t]) for v, t in zip(values, signature, strict=True)]
        grid = min(math.ceil(work / _BLOCK), _MAX_GRID)
        params = np.array([a.ctypes.data for a in args], dtype=np.uint64)
        check(driver().cuLaunchKernel(self._functions[name], grid, 1, 1, _BLOCK, 1, 1, 0, stream,
                                      params.ctypes.data, 0), f"cuLaunchKernel({name})")

    def unload(self) -> None:
        """cuModuleUnload (unchecked: used while closing); the context must be active."""
        if self._module is not None:
            driver().cuModuleUnload(self._module)
            self._module = None
