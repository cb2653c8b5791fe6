"""The Predictor's device path with the TensorRT engine itself (the fake ``tensorrt`` runtime computing on
the host at the addresses it is given) on the strict emulated driver: threads sharing one Predictor,
one CudaFusion per thread, the gate on the device without a host wait per batch, and the host
fallback when the kernels cannot be built (issue 13, sections 1 and 3). Each failed before the fixes."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import tifffile

from cervrt.errors import CervrtError
from cervrt.runtime.gpu import nvrtc_version
from cervrt.runtime.predictor import FusionPath, Predictor
from tests.support.cuda_emulation import emulated_cuda
from tests.support.fake_trt_runtime import make_fake_trt_runtime, plan_metadata, write_plan

GPU = ("Emulated GPU", "7.5")  # the conftest's emulated device


@pytest.fixture
def plan(emulated, tmp_path, monkeypatch):
    """A fake plan for the emulated device, the fake tensorrt installed; NVRTC builds the real kernels."""
    try:
        nvrtc_version()
    except CervrtError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")

    def make(gate_epsilon=None, io_dtype=np.float32, precision="fp32", **kwargs):
        trt = make_fake_trt_runtime(max_batch=4, io_dtype=io_dtype, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        metadata = plan_metadata(gpu=GPU, max_batch=4, precision=precision, **kwargs)
        if gate_epsilon is not None:
            metadata["gate_epsilon"] = gate_epsilon
        return write_plan(tmp_path, metadata)

    return make


def _image(seed, height=112, width=96):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _host(path, image, **settings):
    with Predictor(path, fusion="numpy", **settings) as host:
        return host.predict(image)


SETTINGS = {"batch_size": 4, "stride": 16, "tissue_threshold": 0}


def test_threads_sharing_a_predictor_each_get_their_own_labels(plan, emulated):
    path = plan()
    images = [_image(seed) for seed in range(4)]
    expected = [_host(path, image, **SETTINGS) for image in images]
    results: dict[int, np.ndarray] = {}
    with Predictor(path, **SETTINGS) as gpu:
        assert gpu.path is FusionPath.CUDA

        def work(i):
            results[i] = gpu.predict(images[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for i, labels in sorted(results.items()):
        np.testing.assert_array_equal(labels, expected[i])
    assert len(results) == 4 and emulated.buffers == {} and emulated.retained == 0


def test_one_cuda_fusion_per_thread_not_per_call(plan, emulated):
    path = plan()
    image = _image(7)
    with Predictor(path, **SETTINGS) as gpu:
        first = gpu.predict(image)
        streams = emulated.streams_created
        for _ in range(2):
            np.testing.assert_array_equal(gpu.predict(image), first)
        assert emulated.streams_created == streams  # the same fusion's streams, again
    np.testing.assert_array_equal(first, _host(path, image, **SETTINGS))
    assert emulated.buffers == {} and emulated.retained == 0


def test_a_gated_model_adds_no_host_wait_per_batch(plan, emulated):
    image = _image(3)
    waits = {}
    for gated in (False, True):
        path = plan(with_classifier=True, gate_epsilon=0.5 if gated else None)
        with Predictor(path, **SETTINGS) as gpu:
            gpu.predict(image)  # warm: kernels, this thread's fusion
            before = emulated.host_waits
            labels = gpu.predict(image)
            waits[gated] = emulated.host_waits - before
        np.testing.assert_array_equal(labels, _host(path, image, **SETTINGS))
    assert waits[True] == waits[False]


def test_fp16_io_and_min_batch_plans_are_not_refused_on_cuda(plan, emulated):
    image = _image(9)
    fp16 = plan(io_dtype=np.float16, precision="fp16")
    with Predictor(fp16, **SETTINGS) as gpu:  # float16 I/O: fused on the host, chosen by what the plan can do
        assert gpu.path is FusionPath.HOST
        assert gpu.predict(image).shape == image.shape[:2]
    minimum = plan(min_batch=3)
    with Predictor(minimum, **SETTINGS) as gpu:  # rows of 1 or 2 windows are padded on the device
        assert gpu.path is FusionPath.CUDA
        labels = gpu.predict(image[:, :40])  # 2 windows per row
    # the host path fills batches across rows (12 windows: three full batches of 4)
    np.testing.assert_array_equal(labels, _host(minimum, image[:, :40], **SETTINGS))


def test_kernels_that_cannot_be_built_fall_back_to_the_host_with_the_reason(plan, emulated, tmp_path):
    plan()  # the fake tensorrt
    real = pytest.importorskip("cuda.bindings.driver")
    with emulated_cuda(real, emulated._kernels, ("Emulated GPU", "9.9")):  # no NVRTC target for sm_99
        import json

        meta = plan_metadata(gpu=("Emulated GPU", "9.9"), max_batch=4)
        path = write_plan(tmp_path, meta, name="new.plan")
        assert json.loads(path.with_name("new.plan.json").read_text())["compute_capability"] == "9.9"
        image = _image(5)
        with Predictor(path, **SETTINGS) as gpu:
            assert gpu.path is FusionPath.HOST and gpu.fusion_backend != "cuda"
            assert "the host fuses instead" in gpu.engine.fallback
            labels = gpu.predict(image)
            slide = tmp_path / "slide.tiff"
            tifffile.imwrite(slide, image, photometric="rgb", resolution=(1e4 / 0.904, 1e4 / 0.904),
                             resolutionunit="CENTIMETER")
            report = gpu.predict_slide(slide, tmp_path / "out").report
        np.testing.assert_array_equal(labels, _host(path, image, **SETTINGS))
        assert report["fusion"] != "cuda" and "the host fuses instead" in report["fallback"]


@pytest.mark.gpu
def test_the_torch_engine_on_cuda_runs_the_whole_image_on_the_gpu(tmp_path):
    pytest.importorskip("torch")
    from tests.support.tiny_models import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "hspnet.pt")
    image = _image(11, 256, 224)
    settings = {"batch_size": 8, "stride": 32, "tissue_threshold": 0}
    with Predictor(checkpoint, device="cuda", **settings) as gpu:
        assert gpu.path is FusionPath.CUDA and gpu.engine.fallback is None
        labels = gpu.predict(image)
    with Predictor(checkpoint, device="cuda", fusion="numpy", **settings) as host:
        expected = host.predict(image)
    assert (labels == expected).mean() > 0.999  # the same engine; ties and cuDNN's algorithm choice aside


@pytest.mark.gpu
def test_cervrt_infer_with_a_checkpoint_on_cuda_runs_the_slide_on_the_gpu(tmp_path):
    import json
    import subprocess

    pytest.importorskip("torch")
    from tests.support.tiny_models import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "hspnet.pt")
    slide = tmp_path / "slide.tiff"
    tifffile.imwrite(slide, _image(12, 320, 288), photometric="rgb", resolution=(1e4 / 0.904, 1e4 / 0.904),
                     resolutionunit="CENTIMETER")
    done = subprocess.run([sys.executable, "-m", "cervrt", "infer", "--engine", str(checkpoint), str(slide),
                           "--out", str(tmp_path / "out"), "--device", "cuda"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(next((tmp_path / "out").rglob("slide.json")).read_text())
    assert report["engine"] == "torch" and report["fusion"] == "cuda" and report["fallback"] is None
