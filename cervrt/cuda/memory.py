"""Device and pinned host buffers, streams and events: thin checked wrappers of the driver calls.

Each call needs the owning context to be current (``PrimaryContext.active()``). Pinned memory comes
back as a numpy view; drop every view before freeing it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from cervrt.cuda.core import check, driver

__all__ = [
    "copy_dtod_async", "copy_dtoh_async", "copy_htod_async", "create_event", "create_stream", "free_device",
    "free_pinned", "malloc_device", "malloc_pinned", "memset_d32_async", "record_event", "synchronize_event",
    "synchronize_stream", "wait_event",
]


def malloc_device(nbytes: int) -> int:
    """``cuMemAlloc``: the address of ``nbytes`` of device memory."""
    return int(check(driver().cuMemAlloc(nbytes), "cuMemAlloc"))


def free_device(ptr: int) -> None:
    check(driver().cuMemFree(ptr), "cuMemFree")


def malloc_pinned(nbytes: int, dtype: Any = np.uint8) -> tuple[int, np.ndarray]:
    """``cuMemHostAlloc``: (address, a flat numpy view of dtype) of ``nbytes`` of page-locked host memory."""
    ptr = int(check(driver().cuMemHostAlloc(nbytes, 0), "cuMemHostAlloc"))
    return ptr, np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=dtype)


def free_pinned(ptr: int) -> None:
    check(driver().cuMemFreeHost(ptr), "cuMemFreeHost")


def copy_htod_async(dst: int, src: int, nbytes: int, stream: Any) -> None:
    check(driver().cuMemcpyHtoDAsync(dst, src, nbytes, stream), "cuMemcpyHtoDAsync")


def copy_dtoh_async(dst: int, src: int, nbytes: int, stream: Any) -> None:
    check(driver().cuMemcpyDtoHAsync(dst, src, nbytes, stream), "cuMemcpyDtoHAsync")


def copy_dtod_async(dst: int, src: int, nbytes: int, stream: Any) -> None:
    check(driver().cuMemcpyDtoDAsync(dst, src, nbytes, stream), "cuMemcpyDtoDAsync")


def memset_d32_async(dst: int, value: int, count: int, stream: Any) -> None:
    """Set ``count`` 32-bit words at ``dst`` to ``value`` (0 is 0.0f) on ``stream``."""
    check(driver().cuMemsetD32Async(dst, value, count, stream), "cuMemsetD32Async")


def create_stream() -> Any:
    """A non-blocking stream (it does not synchronise with the legacy default stream)."""
    cu = driver()
    return check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")


def synchronize_stream(stream: Any) -> None:
    check(driver().cuStreamSynchronize(stream), "cuStreamSynchronize")


def create_event() -> Any:
    """An event without timing (the cheap kind, for ordering and waiting)."""
    cu = driver()
    return check(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate")


def record_event(event: Any, stream: Any) -> None:
    check(driver().cuEventRecord(event, stream), "cuEventRecord")


def synchronize_event(event: Any) -> None:
    check(driver().cuEventSynchronize(event), "cuEventSynchronize")


def wait_event(stream: Any, event: Any) -> None:
    """Make ``stream`` wait for ``event`` (on the device; the host does not block)."""
    check(driver().cuStreamWaitEvent(stream, event, 0), "cuStreamWaitEvent")
