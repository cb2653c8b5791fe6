"""The TensorRT engine without TensorRT or a GPU: its refusals, and its binding, shape, batch, copy and
lifetime logic against a fake ``tensorrt`` runtime and the host-emulated CUDA driver. The real thing
runs in the test marked ``tensorrt``."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

from cervrt import cuda
from cervrt.cuda import memory as mem
from cervrt.engines import open_engine
from cervrt.engines.tensorrt import check_version, version_triple
from cervrt.errors import CervrtError, MissingDependencyError
from tests.support.cuda_emulation import EmulatedDriver, emulated_cuda
from tests.support.fake_trt_runtime import GPU, PATCH, make_fake_trt_runtime, plan_metadata, reference, write_plan


@pytest.fixture
def gpu() -> EmulatedDriver:
    """cervrt.cuda on the emulated CUDA driver, its one device the fake GPU the plans were built on."""
    with emulated_cuda(pytest.importorskip("cuda.bindings.driver"), gpu=GPU) as driver:
        yield driver


def _install(monkeypatch, **kwargs):
    trt = make_fake_trt_runtime(**kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@contextlib.contextmanager
def _current():
    """A caller's stream in the device's primary context, made current for the block (as CudaFusion does)."""
    context = cuda.PrimaryContext(0)
    try:
        with context.active():
            stream = mem.create_stream()
            yield stream
            cuda.driver().cuStreamDestroy(stream)
    finally:
        context.release()


def _batch(n, seed=0, size=PATCH):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


# ---- refusals ---------------------------------------------------------------------------------------


def test_a_plan_without_its_json_is_refused_before_tensorrt_is_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it would fail
    with pytest.raises(CervrtError, match=r"m\.plan\.json does not exist: a cervrt engine is described by the"):
        open_engine(write_plan(tmp_path))


def test_without_tensorrt_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    expected = r'^tensorrt is not installed: run pip install "cervrt\[tensorrt\]"$'
    with pytest.raises(MissingDependencyError, match=expected):
        open_engine(write_plan(tmp_path, plan_metadata()))


def test_cpu_is_refused_for_a_plan(tmp_path):
    with pytest.raises(CervrtError, match="runs on a CUDA GPU only: use device auto or cuda"):
        open_engine(write_plan(tmp_path, plan_metadata()), "cpu")


def test_a_batch_size_above_the_profile_is_refused(tmp_path):
    with pytest.raises(CervrtError, match="batch size 5 is above the plan's profile maximum of 4"):
        open_engine(write_plan(tmp_path, plan_metadata(max_batch=4)), batch_size=5)


@pytest.mark.parametrize("installed", ["10.14.0.1", "10.13.2.9", "11.0.0", "10.13"])
def test_another_tensorrt_version_is_refused(tmp_path, monkeypatch, gpu, installed):
    _install(monkeypatch, version=installed)
    with pytest.raises(CervrtError, match=rf"built with TensorRT 10\.13\.3\.9 but TensorRT {installed} is installed"):
        open_engine(write_plan(tmp_path, plan_metadata(version="10.13.3.9")))
    assert gpu.buffers == {} and gpu.context_depth == 0


def test_without_a_gpu_the_plan_is_refused_in_one_line(tmp_path, monkeypatch):
    from cervrt import cuda

    pytest.importorskip("cuda.bindings.driver")
    if cuda.device_count()[0]:
        pytest.skip("this machine has a CUDA GPU")
    _install(monkeypatch)
    with pytest.raises(cuda.NoDeviceError, match=r"^no CUDA device: [^\n]*$"):
        open_engine(write_plan(tmp_path, plan_metadata()))


def test_version_triples():
    assert version_triple("10.13.3.9") == (10, 13, 3) and version_triple("11.0.0+cuda13") == (11, 0, 0)
    check_version({"tensorrt_version": "10.13.3.9"}, "10.13.3.1", "m.plan")  # another build number is fine
    with pytest.raises(CervrtError, match="cannot read the TensorRT version"):
        version_triple("dev")
    with pytest.raises(CervrtError, match="does not record the TensorRT version"):
        check_version({}, "10.13.3", "m.plan")


@pytest.mark.parametrize("recorded", [("NVIDIA A100-SXM4-40GB", "8.9"), ("NVIDIA Fake GPU", "8.6")])
def test_another_gpu_model_is_refused(tmp_path, monkeypatch, gpu, recorded):
    _install(monkeypatch)
    with pytest.raises(CervrtError, match=rf"was built on a {recorded[0]} \(compute {recorded[1]}\) but cuda:0 is a "
                                          r"NVIDIA Fake GPU \(compute 8\.9\).*only runs on the GPU model"):
        open_engine(write_plan(tmp_path, plan_metadata(gpu=recorded)))
    assert gpu.buffers == {}


def test_the_gpu_of_cuda_n_is_the_one_probed(tmp_path, monkeypatch, gpu):
    _install(monkeypatch)
    probed = gpu.names_asked
    with open_engine(write_plan(tmp_path, plan_metadata()), "cuda:0") as engine:
        assert engine.device == "cuda:0"
    assert probed == [0]


def test_a_plan_tensorrt_cannot_deserialise_is_refused_and_nothing_leaks(tmp_path, monkeypatch, gpu):
    trt = _install(monkeypatch)
    with pytest.raises(CervrtError, match=r"TensorRT could not deserialise .*m\.plan"):
        open_engine(write_plan(tmp_path, plan_metadata(), plan=b"GARBAGE"))
    assert gpu.buffers == {} and gpu.context_depth == 0 and "del Runtime" in trt.events


def test_an_engine_whose_tensors_contradict_its_json_is_refused(tmp_path, monkeypatch, gpu):
    _install(monkeypatch, input_name="pixels")
    with pytest.raises(CervrtError, match=r"the engine's tensors \(\['pixels', 'probs'\]\) do not match"):
        open_engine(write_plan(tmp_path, plan_metadata()))
    assert gpu.buffers == {} and gpu.context_depth == 0


# ---- running on the fakes ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_classifier", [False, True])
def test_run_matches_the_engine_for_every_batch_size(tmp_path, monkeypatch, gpu, with_classifier):
    trt = _install(monkeypatch, with_classifier=with_classifier)
    path = write_plan(tmp_path, plan_metadata(with_classifier=with_classifier))
    with open_engine(path, batch_size=2) as engine:
        assert (engine.kind, engine.provider, engine.device, engine.max_batch) == ("tensorrt", "TensorRT 10.13.3.9",
                                                                                  "cuda:0", 4)
        assert not engine.thread_safe and engine.has_classifier is with_classifier
        for n in (1, 2, 4, 3):  # 4 grows the buffers sized for batch_size 2
            batch = _batch(n, seed=n)
            out = engine.run(batch)
            probs, class_probs = reference(batch, with_classifier)
            np.testing.assert_allclose(out.probs, probs, rtol=1e-6)
            if with_classifier:
                np.testing.assert_allclose(out.class_probs, class_probs, rtol=1e-6)
            else:
                assert out.class_probs is None
        assert [e for e in trt.events if e.startswith("execute")][-1].startswith("execute 3")
        gpu.check_guards()
    assert gpu.buffers == {} and gpu.context_depth == 0


def test_run_checks_the_patch_and_the_batch_against_the_profile(tmp_path, monkeypatch, gpu):
    _install(monkeypatch)
    with open_engine(write_plan(tmp_path, plan_metadata(max_batch=4))) as engine:
        with pytest.raises(CervrtError, match="holds 5 patches; this tensorrt engine takes 1 to 4"):
            engine.run(_batch(5))
        with pytest.raises(CervrtError, match=f"takes {PATCH}x{PATCH} patches \\(its profile\\), got 64x64"):
            engine.run(_batch(1, size=64))
        with pytest.raises(CervrtError, match="float32 numpy array"):
            engine.run(_batch(1).astype(np.float64))


def test_a_batch_under_the_profile_minimum_is_refused(tmp_path, monkeypatch, gpu):
    _install(monkeypatch, min_batch=2)
    with open_engine(write_plan(tmp_path, plan_metadata(min_batch=2)), batch_size=1) as engine:
        assert engine.run(_batch(2)).probs.shape[0] == 2
        with pytest.raises(CervrtError, match="the plan's profile takes batches of 2 to 4 patches, got 1"):
            engine.run(_batch(1))


def test_resources_are_released_in_the_documented_order(tmp_path, monkeypatch, gpu):
    trt = _install(monkeypatch)
    engine = open_engine(write_plan(tmp_path, plan_metadata()))
    engine.run(_batch(2))
    engine.close()
    engine.close()
    deletions = [e for e in trt.events if e.startswith("del")]
    assert deletions == ["del Context", "del Engine", "del Runtime"]
    assert gpu.buffers == {} and gpu.context_depth == 0
    with pytest.raises(CervrtError, match="closed"):
        engine.run_device(1, 1, 0)


def test_run_device_leaves_the_outputs_on_the_device(tmp_path, monkeypatch, gpu):
    trt = _install(monkeypatch, with_classifier=True)
    batch = _batch(3, seed=7)
    with open_engine(write_plan(tmp_path, plan_metadata(with_classifier=True))) as engine, _current() as stream:
        source = mem.malloc_device(batch.nbytes)
        mem.copy_htod_async(source, batch.ctypes.data, batch.nbytes, stream)
        probs_ptr, class_ptr = engine.run_device(source, 3, stream)
        probs = np.empty((3, 5, PATCH, PATCH), np.float32)
        class_probs = np.empty((3, 4), np.float32)
        mem.copy_dtoh_async(probs.ctypes.data, probs_ptr, probs.nbytes, stream)  # pageable: waits
        mem.copy_dtoh_async(class_probs.ctypes.data, class_ptr, class_probs.nbytes, stream)
        expected, expected_class = reference(batch, True)
        np.testing.assert_allclose(probs, expected, rtol=1e-6)
        np.testing.assert_allclose(class_probs, expected_class, rtol=1e-6)
        assert trt.events[-1] == f"execute 3 on {cuda.native_handle(stream)}"  # the caller's stream
        engine.run(batch[:1])  # run() rebinds its own input buffer afterwards
        for bad in (0, 5, 2.0, True):
            with pytest.raises(CervrtError, match="n must be an integer from 1 to 4"):
                engine.run_device(source, bad, stream)
        with pytest.raises(CervrtError, match="input_ptr must be a device pointer"):
            engine.run_device(0, 1, stream)
        mem.free_device(source)


def test_fp16_io_plans_convert_on_run_and_refuse_run_device(tmp_path, monkeypatch, gpu):
    _install(monkeypatch, io_dtype=np.float16)
    with open_engine(write_plan(tmp_path, plan_metadata(precision="fp16"))) as engine:
        assert engine.input_dtype == np.float16 and engine.precision == "fp16"
        batch = _batch(2)
        out = engine.run(batch)
        assert out.probs.dtype == np.float32
        np.testing.assert_allclose(out.probs, reference(batch.astype(np.float16), False)[0], atol=2e-3)
        with pytest.raises(CervrtError, match="run_device needs a plan with float32 input and outputs"):
            engine.run_device(1234, 1, 0)


# ---- the real thing ---------------------------------------------------------------------------------


@pytest.mark.tensorrt
def test_real_plan_agrees_with_onnx_runtime(tmp_path, tiny_checkpoint):
    from cervrt.export import ExportConfig, export
    from cervrt.export.config import BatchProfile, EngineConfig

    plan = tmp_path / "tiny.plan"
    engine = EngineConfig(plan, BatchProfile(1, 2, 4))
    export(ExportConfig(tiny_checkpoint, output=tmp_path / "tiny.onnx", engine=engine))
    batch = _batch(3, size=64)
    with open_engine(plan, "cuda", batch_size=4) as engine, open_engine(tmp_path / "tiny.onnx", "cpu") as onnx:
        out, expected = engine.run(batch), onnx.run(batch)
        assert engine.provider.startswith("TensorRT ") and engine.device == "cuda:0"
        # TensorRT may use TF32 for FP32 layers on Ampere and newer: close, not identical.
        assert np.mean(out.probs.argmax(1) == expected.probs.argmax(1)) > 0.99
        np.testing.assert_allclose(out.probs, expected.probs, atol=1e-2)
        from cervrt.runtime.gpu import CudaFusion

        with CudaFusion(64, 5, batch_size=4, mean=engine.mean, std=engine.std) as gpu:  # the fusion path's call
            source = gpu.alloc(batch.nbytes)
            _cuda_copy_up(gpu, source, batch)
            probs_ptr, class_ptr = engine.run_device(source, 3, gpu.stream)
            probs = np.empty_like(out.probs)
            _cuda_copy_down(gpu, probs, probs_ptr)
        assert class_ptr is None
        np.testing.assert_allclose(probs, out.probs, atol=1e-6)


def _cuda_copy_up(gpu, device_ptr, array):
    from cervrt.cuda import check as _check
    from cervrt.cuda import driver as _driver

    with gpu.active():
        _check(_driver().cuMemcpyHtoD(device_ptr, array.ctypes.data, array.nbytes), "cuMemcpyHtoD")


def _cuda_copy_down(gpu, array, device_ptr):
    from cervrt.cuda import check as _check
    from cervrt.cuda import driver as _driver

    gpu.synchronize()
    with gpu.active():
        _check(_driver().cuMemcpyDtoH(array.ctypes.data, device_ptr, array.nbytes), "cuMemcpyDtoH")
