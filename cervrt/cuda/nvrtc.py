"""NVRTC: compile CUDA C++ at run time (no GPU needed) to a CUBIN for one ``sm_XY`` or to PTX for a
``compute_XY``, check a PTX image against the driver, and load an image as a module.

Why CUBIN first: NVRTC from PyPI is often newer than the driver (NVRTC 13.5 emits PTX ISA 9.5, a
CUDA 13.0 driver refuses it with ``CUDA_ERROR_UNSUPPORTED_PTX_VERSION``). A CUBIN for the device's
own ``sm_XY`` needs no JIT, so the driver's version does not matter. PTX is the fallback for a device
this NVRTC cannot compile a CUBIN for; ``check_ptx`` compares its ``.version`` with
``cuDriverGetVersion`` first so that a mismatch is one clear line, not a failed module load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.cuda.core import CudaError, check, driver, first_line, nvrtc_module
from cervrt.errors import CervrtError

__all__ = ["check_ptx", "compile_cubin", "compile_program", "compile_ptx", "load_module", "nvrtc_version",
           "ptx_cuda_version", "ptx_version"]

#: PTX ISA version -> the first CUDA release (major, minor) whose driver JITs it (PTX ISA docs, table
#: "PTX ISA versions"); ISA 9.x follows CUDA 13.x.
_PTX_CUDA = {(7, 8): (11, 8), (8, 0): (12, 0), (8, 1): (12, 1), (8, 2): (12, 2), (8, 3): (12, 3), (8, 4): (12, 4),
             (8, 5): (12, 5), (8, 6): (12, 7), (8, 7): (12, 8), (8, 8): (12, 9)}


def _nvrtc_check(result: tuple[Any, ...], what: str) -> Any:
    nvrtc = nvrtc_module()
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CudaError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor); CervrtError with the reason when libnvrtc cannot be loaded."""
    nvrtc = nvrtc_module()
    try:
        return _nvrtc_check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except RuntimeError as exc:  # cuda.pathfinder's DynamicLibNotFoundError is a RuntimeError
        raise CervrtError(f"NVRTC is not available ({first_line(exc)}): pip install nvidia-cuda-nvrtc") from exc


def _read(prog: Any, what: str) -> bytes:
    """A program's PTX, CUBIN or ProgramLog: nvrtcGet<what>Size, then nvrtcGet<what> into a buffer that
    size. A bytearray: NVRTC writes into it (``b" " * 1`` would be the interpreter's shared ``b" "``)."""
    nvrtc = nvrtc_module()
    size = _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}Size")(prog), f"nvrtcGet{what}Size")
    buffer = bytearray(size)
    _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}")(prog, buffer), f"nvrtcGet{what}")
    return bytes(buffer) if what == "CUBIN" else bytes(buffer).rstrip(b"\0")


def compile_program(source: Path, arch: str, include_dirs: Sequence[Path] = ()) -> bytes:
    """The C++17 file ``source`` compiled by NVRTC: a CUBIN for ``sm_XY``, PTX for ``compute_XY``;
    CudaError with NVRTC's log."""
    if not re.fullmatch(r"(sm|compute)_\d+[a-z]?", arch):
        raise CervrtError(f"arch must look like sm_90 (a CUBIN) or compute_90 (PTX), got {arch!r}")
    nvrtc_version()
    nvrtc = nvrtc_module()
    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []),
                        "nvrtcCreateProgram")
    try:
        options = [b"--std=c++17", *(f"--include-path={d}".encode() for d in include_dirs), f"-arch={arch}".encode()]
        err, = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = _read(prog, "ProgramLog").decode(errors="replace").strip()
            raise CudaError(f"NVRTC could not compile {source.name} for {arch}: {log or err}")
        return _read(prog, "CUBIN" if arch.startswith("sm_") else "PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_ptx(source: Path, arch: str, include_dirs: Sequence[Path] = ()) -> bytes:
    """PTX of ``source`` for ``arch`` (``compute_XY``)."""
    return compile_program(source, arch, include_dirs)


def compile_cubin(source: Path, arch: str, include_dirs: Sequence[Path] = ()) -> bytes:
    """A CUBIN (ELF) of ``source`` for ``arch`` (``sm_XY``; ``compute_XY`` is taken as its ``sm_XY``)."""
    return compile_program(source, arch.replace("compute_", "sm_"), include_dirs)


def ptx_version(ptx: bytes) -> tuple[int, int]:
    """The PTX ISA ``.version`` of a PTX image; CervrtError when it has none."""
    found = re.search(rb"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.MULTILINE)
    if found is None:
        raise CervrtError("the PTX image has no .version directive")
    return int(found.group(1)), int(found.group(2))


def ptx_cuda_version(version: tuple[int, int]) -> tuple[int, int]:
    """The first CUDA (major, minor) whose driver JITs PTX ISA ``version``."""
    if version in _PTX_CUDA:
        return _PTX_CUDA[version]
    if version[0] >= 9:
        return version[0] + 4, version[1]
    return (12, 0) if version > (8, 0) else (11, 8)


def check_ptx(ptx: bytes, driver_version: int) -> None:
    """CudaError unless a driver of ``driver_version`` (``cuDriverGetVersion``: 13000 = CUDA 13.0) can JIT ``ptx``."""
    isa = ptx_version(ptx)
    need = ptx_cuda_version(isa)
    have = (driver_version // 1000, driver_version % 1000 // 10)
    if have < need:
        raise CudaError(f"the kernels' PTX is ISA {isa[0]}.{isa[1]}, which needs a CUDA {need[0]}.{need[1]} driver; "
                        f"this driver is CUDA {have[0]}.{have[1]}: install an NVRTC no newer than the driver "
                        f"(pip install 'nvidia-cuda-nvrtc<{have[0]}.{have[1] + 1}') or update the driver")


def load_module(image: bytes) -> Any:
    """cuModuleLoadData of a PTX (NUL-terminated here) or CUBIN image; the context must be active."""
    if not image.startswith(b"\x7fELF"):
        image = image.rstrip(b"\0") + b"\0"
    data = np.frombuffer(image, dtype=np.uint8)
    return check(driver().cuModuleLoadData(data.ctypes.data), "cuModuleLoadData")
