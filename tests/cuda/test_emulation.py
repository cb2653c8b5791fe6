"""The strict emulated driver itself (tests/support/cuda_emulation.py): work waits in its stream's queue
until the host waits for it or another stream depends on it, a context must be current, handles refuse
int(), and module images are checked against the driver version and the device."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from cervrt import cuda
from cervrt.cuda import memory as mem
from tests.support.cuda_emulation import EMULATED_PTX, emulated_cuda


@pytest.fixture
def driver():
    with emulated_cuda(pytest.importorskip("cuda.bindings.driver")) as emulated:
        context = cuda.PrimaryContext(0)
        with context.active():
            yield emulated
        context.release()


def _device_bytes(pointer: int, n: int) -> bytes:
    return ctypes.string_at(pointer, n)


def test_async_work_runs_only_when_its_stream_is_waited_for(driver):
    stream = mem.create_stream()
    address, pinned = mem.malloc_pinned(8)
    pinned[:] = 7
    device = mem.malloc_device(8)
    mem.copy_htod_async(device, address, 8, stream)
    pinned[:] = 9  # a pinned source is read when the copy runs, not when it is queued
    assert _device_bytes(device, 8) == b"\xcd" * 8 and driver.pending() == 1
    mem.synchronize_stream(stream)
    assert _device_bytes(device, 8) == b"\x09" * 8 and driver.pending() == 0
    del pinned
    mem.free_pinned(address)
    mem.free_device(device)


def test_a_pageable_source_is_staged_when_the_copy_is_queued(driver):
    stream = mem.create_stream()
    host = np.full(4, 3, np.uint8)
    device = mem.malloc_device(4)
    mem.copy_htod_async(device, host.ctypes.data, 4, stream)
    host[:] = 5
    mem.synchronize_stream(stream)
    assert _device_bytes(device, 4) == b"\x03" * 4
    mem.free_device(device)


def test_another_streams_work_runs_only_through_an_event_dependency(driver):
    first, second = mem.create_stream(), mem.create_stream()
    device = mem.malloc_device(4)
    host = np.full(4, 1, np.uint8)
    mem.copy_htod_async(device, host.ctypes.data, 4, first)
    event = mem.create_event()
    mem.record_event(event, first)
    mem.wait_event(second, event)
    mem.synchronize_stream(second)  # runs the wait, which runs the first stream up to the record
    assert _device_bytes(device, 4) == b"\x01" * 4
    mem.copy_htod_async(device, np.full(4, 2, np.uint8).ctypes.data, 4, first)
    mem.synchronize_stream(second)  # no new dependency: the first stream's later work stays queued
    assert _device_bytes(device, 4) == b"\x01" * 4 and driver.pending() == 1
    mem.synchronize_event(event)
    assert driver.pending() == 1  # the event was recorded before that copy
    mem.free_device(device)  # a free waits for the whole device
    assert driver.pending() == 0


def test_calls_without_a_current_context_and_int_of_handles_are_refused():
    with emulated_cuda(pytest.importorskip("cuda.bindings.driver")) as driver:
        with pytest.raises(AssertionError, match="cuMemAlloc without a current CUDA context"):
            driver.cuMemAlloc(16)
        context = cuda.PrimaryContext(0)
        with context.active():
            stream = mem.create_stream()
            with pytest.raises(AssertionError, match="get_cuda_native_handle"):
                int(stream)
            assert cuda.native_handle(stream) == stream.value
        context.release()
        assert driver.retained == 0


def test_module_images_are_checked_against_the_driver_and_the_device():
    real = pytest.importorskip("cuda.bindings.driver")
    newer = b".version 9.9\n.target sm_75\n"
    for version, image, expected in [(13000, EMULATED_PTX, "ok"), (13000, newer, "UNSUPPORTED_PTX_VERSION"),
                                     (13090, newer, "ok"), (13000, b"not an image", "INVALID_IMAGE")]:
        with emulated_cuda(real, driver_version=version):
            context = cuda.PrimaryContext(0)
            with context.active():
                try:
                    from cervrt.cuda.nvrtc import load_module

                    load_module(image)
                    got = "ok"
                except cuda.CudaError as exc:
                    got = str(exc)
            context.release()
        assert expected in got, (version, image, got)
