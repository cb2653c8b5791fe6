"""cuda-python, loaded lazily: the driver and NVRTC bindings, the one error check, and the one seam
through which tests put an emulated driver in place of the real one.

Every CUDA call in cervrt goes through ``driver()`` (the ``cuda.bindings.driver`` module, or the
module installed by ``use_driver``) and ``check(result, what)``, which unpacks cuda-python's
``(CUresult, *values)`` tuples and raises ``CudaError`` with the CUresult's name.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from cervrt.errors import DeviceError, MissingDependencyError

__all__ = ["CudaError", "bindings", "check", "driver", "first_line", "native_handle", "nvrtc_module", "use_driver"]

_installed: list[Any] = []  # the stack of modules use_driver() put in place of cuda.bindings.driver


class CudaError(DeviceError, RuntimeError):
    """A CUDA driver or NVRTC call failed (a bug or a broken installation, not bad input)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def bindings(name: str, extra: str = "gpu") -> Any:
    """``cuda.bindings.<name>``; MissingDependencyError naming ``extra`` when cuda-python is not installed."""
    try:
        return importlib.import_module(f"cuda.bindings.{name}")
    except ImportError as exc:
        raise MissingDependencyError("cuda-python", extra) from exc


def driver(extra: str = "gpu") -> Any:
    """The CUDA driver API: ``cuda.bindings.driver``, or the module installed by ``use_driver``."""
    return _installed[-1] if _installed else bindings("driver", extra)


def nvrtc_module() -> Any:
    """``cuda.bindings.nvrtc`` (NVRTC needs no GPU)."""
    return bindings("nvrtc")


@contextlib.contextmanager
def use_driver(module: Any) -> Iterator[Any]:
    """Route every ``driver()`` call to ``module`` for the block (tests: a host emulation of the driver)."""
    _installed.append(module)
    try:
        yield module
    finally:
        _installed.remove(module)


def check(result: tuple[Any, ...], what: str = "a CUDA driver call") -> Any:
    """Unpack a driver call's ``(CUresult, *values)``; CudaError with the CUresult's name unless CUDA_SUCCESS."""
    cu = driver()
    err, *values = result
    if err != cu.CUresult.CUDA_SUCCESS:
        name_err, name = cu.cuGetErrorName(err)
        label = name.decode() if name_err == cu.CUresult.CUDA_SUCCESS else str(err)
        raise CudaError(f"{what} failed: {label}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def native_handle(obj: Any) -> int:
    """The address a CUDA handle (CUstream, CUevent, ...) wraps, as an int (``int(handle)`` is deprecated in
    cuda-bindings 13): ``cuda.bindings.utils.get_cuda_native_handle``, or the installed driver module's own
    ``get_cuda_native_handle`` (an emulated driver's). Ints pass through."""
    if isinstance(obj, int):
        return obj
    own = getattr(driver(), "get_cuda_native_handle", None)
    if own is not None:
        return int(own(obj))
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:  # cuda-bindings before get_cuda_native_handle: int() still works there
        return int(obj)
    return int(get_cuda_native_handle(obj))
