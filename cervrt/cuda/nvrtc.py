"""NVRTC: compile CUDA C++ to PTX at run time (no GPU needed), and load a PTX or cubin image as a module."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.cuda.core import CudaError, check, driver, first_line, nvrtc_module
from cervrt.errors import CervrtError

__all__ = ["compile_ptx", "load_module", "nvrtc_version"]


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
    """A program's PTX or ProgramLog: nvrtcGet<what>Size, then nvrtcGet<what> into a buffer that size."""
    nvrtc = nvrtc_module()
    size = _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}Size")(prog), f"nvrtcGet{what}Size")
    buffer = b" " * size
    _nvrtc_check(getattr(nvrtc, f"nvrtcGet{what}")(prog, buffer), f"nvrtcGet{what}")
    return buffer.rstrip(b"\0")


def compile_ptx(source: Path, arch: str, include_dirs: Sequence[Path] = ()) -> bytes:
    """PTX of the C++17 file ``source`` for ``arch`` (``compute_XY``); CudaError with NVRTC's log."""
    nvrtc_version()
    nvrtc = nvrtc_module()
    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []),
                        "nvrtcCreateProgram")
    try:
        options = [b"--std=c++17", *(f"--include-path={d}".encode() for d in include_dirs), f"-arch={arch}".encode()]
        err, = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            log = _read(prog, "ProgramLog").decode(errors="replace").strip()
            raise CudaError(f"NVRTC could not compile {source.name} for {arch}: {log}")
        return _read(prog, "PTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def load_module(image: bytes) -> Any:
    """cuModuleLoadData of a PTX (NUL-terminated here) or cubin image; the context must be active."""
    if not image.startswith(b"\x7fELF"):
        image = image.rstrip(b"\0") + b"\0"
    data = np.frombuffer(image, dtype=np.uint8)
    return check(driver().cuModuleLoadData(data.ctypes.data), "cuModuleLoadData")
