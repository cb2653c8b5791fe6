"""The TensorRT engine's device path and lifetime under the strict emulated driver (deferred streams,
current-context checks, handles without int()), against the fake ``tensorrt`` runtime: each test here
failed on the engine before the review's fixes (issue 13, section 1)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys

import numpy as np
import pytest

from cervrt import cuda
from cervrt.cuda import memory as mem
from cervrt.engines import open_engine
from cervrt.errors import CervrtError
from tests.support.cuda_emulation import EmulatedDriver, emulated_cuda
from tests.support.fake_trt_runtime import GPU, PATCH, make_fake_trt_runtime, plan_metadata, reference, write_plan


@pytest.fixture
def gpu() -> EmulatedDriver:
    with emulated_cuda(pytest.importorskip("cuda.bindings.driver"), gpu=GPU) as driver:
        yield driver


def _install(monkeypatch, **kwargs):
    trt = make_fake_trt_runtime(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, PATCH, PATCH), dtype=np.float32)


@contextlib.contextmanager
def _streams(count):
    context = cuda.PrimaryContext(0)
    try:
        with context.active():
            streams = [mem.create_stream() for _ in range(count)]
            yield streams
            for stream in streams:
                cuda.driver().cuStreamDestroy(stream)
    finally:
        context.release()


def _upload(batch, stream):
    pointer = mem.malloc_device(batch.nbytes)
    mem.copy_htod_async(pointer, batch.ctypes.data, batch.nbytes, stream)
    return pointer


def _pinned_reader(shape, pointer, stream):
    """A pinned host buffer and a device-to-host copy into it queued on ``stream`` (runs when waited for):
    the fusion's later read of an engine output, as the accumulate kernel does."""
    address, view = mem.malloc_pinned(int(np.prod(shape)) * 4, np.float32)
    mem.copy_dtoh_async(address, pointer, view.nbytes, stream)
    return address, view.reshape(shape)


def test_two_streams_get_their_own_context_and_outputs(tmp_path, monkeypatch, gpu):
    _install(monkeypatch)
    a, b = _batch(2, 1), _batch(2, 2)
    with open_engine(write_plan(tmp_path, plan_metadata())) as engine, _streams(2) as (first, second):
        sources = [_upload(a, first), _upload(b, second)]
        probs_a, _ = engine.run_device(sources[0], 2, first)
        mem.synchronize_stream(first)  # the engine's work on the first stream has run ...
        address, seen = _pinned_reader((2, 5, PATCH, PATCH), probs_a, first)  # ... its reader not yet
        engine.run_device(sources[1], 2, second)  # another thread's batch, on its own stream
        mem.synchronize_stream(second)
        mem.synchronize_stream(first)
        np.testing.assert_allclose(seen, reference(a, False)[0], rtol=1e-6)
        del seen
        mem.free_pinned(address)
        for source in sources:
            mem.free_device(source)


def test_run_after_run_device_does_not_overwrite_what_the_fusion_still_reads(tmp_path, monkeypatch, gpu):
    _install(monkeypatch)
    a, b = _batch(2, 3), _batch(2, 4)
    with open_engine(write_plan(tmp_path, plan_metadata())) as engine, _streams(1) as (stream,):
        source = _upload(a, stream)
        probs_a, _ = engine.run_device(source, 2, stream)
        mem.synchronize_stream(stream)
        address, seen = _pinned_reader((2, 5, PATCH, PATCH), probs_a, stream)
        np.testing.assert_allclose(engine.run(b).probs, reference(b, False)[0], rtol=1e-6)
        mem.synchronize_stream(stream)
        np.testing.assert_allclose(seen, reference(a, False)[0], rtol=1e-6)
        del seen
        mem.free_pinned(address)
        mem.free_device(source)


def test_a_short_batch_is_padded_for_a_plan_whose_minimum_is_above_one(tmp_path, monkeypatch, gpu):
    trt = _install(monkeypatch, min_batch=3)
    a = _batch(1, 5)
    with open_engine(write_plan(tmp_path, plan_metadata(min_batch=3)), batch_size=4) as engine, \
            _streams(1) as (stream,):
        source = _upload(a, stream)
        probs, _ = engine.run_device(source, 1, stream)
        out = np.empty((1, 5, PATCH, PATCH), np.float32)
        mem.copy_dtoh_async(out.ctypes.data, probs, out.nbytes, stream)
        np.testing.assert_allclose(out, reference(a, False)[0], rtol=1e-6)
        assert trt.events[-1].startswith("execute 3 on")
        mem.free_device(source)


def test_fp16_io_plans_do_not_claim_device_io(tmp_path, monkeypatch, gpu):
    _install(monkeypatch, io_dtype=np.float16)
    with open_engine(write_plan(tmp_path, plan_metadata(precision="fp16"))) as fp16:
        assert fp16.supports_device_io is False
    _install(monkeypatch)
    with open_engine(write_plan(tmp_path, plan_metadata())) as fp32:
        assert fp32.supports_device_io is True


def test_the_builder_and_every_runtime_share_one_logger(tmp_path, monkeypatch, gpu):
    from cervrt.cuda.trt import shared_logger

    trt = _install(monkeypatch)
    with open_engine(write_plan(tmp_path, plan_metadata())), open_engine(write_plan(tmp_path, plan_metadata())):
        pass
    assert len(trt.loggers) == 1 and trt.runtime_loggers == [trt.loggers[0]] * 2
    assert shared_logger(trt) is trt.loggers[0]  # what the builder takes


def test_close_releases_everything_when_a_cuda_call_fails_and_the_context_last(tmp_path, monkeypatch, gpu):
    trt = _install(monkeypatch)
    engine = open_engine(write_plan(tmp_path, plan_metadata()))
    engine.run(_batch(2))
    failing = gpu.CUresult.CUDA_ERROR_LAUNCH_FAILED
    monkeypatch.setattr(gpu, "cuCtxSynchronize", lambda: (failing,))
    monkeypatch.setattr(gpu, "cuStreamSynchronize", lambda stream: (failing,))
    release = gpu.cuDevicePrimaryCtxRelease

    def record_release(device):
        trt.events.append("release context")
        return release(device)

    monkeypatch.setattr(gpu, "cuDevicePrimaryCtxRelease", record_release)
    engine.close()
    assert gpu.buffers == {} and gpu.retained == 0 and gpu.context_depth == 0
    assert [e for e in trt.events if e.startswith(("del", "release"))] == [
        "del Context", "del Engine", "del Runtime", "release context"]


def test_a_plan_that_does_not_match_its_sha256_is_refused(tmp_path, monkeypatch, gpu):
    _install(monkeypatch)
    good = plan_metadata() | {"plan_sha256": hashlib.sha256(b"FAKEPLAN").hexdigest()}
    with open_engine(write_plan(tmp_path, good)):
        pass
    path = write_plan(tmp_path, good, plan=b"FAKEPLAN but changed")
    with pytest.raises(CervrtError, match="does not match the plan_sha256"):
        open_engine(path)
    assert json.loads(path.with_name("m.plan.json").read_text())["plan_sha256"] == good["plan_sha256"]
    assert gpu.buffers == {} and gpu.retained == 0
