"""The Predictor's GPU path on the emulated CUDA driver (tests/support/cuda_emulation.py: the kernels
compiled for the host, device memory as guarded host memory) with a stand-in TensorRT engine whose
``run_device`` runs the tiny ONNX model on the host. No GPU runs here: this checks the path's host
logic (which path is picked, batching per window row, staging from a slide band with its origin,
the gate copy, freeing everything), not the device."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cervrt import cuda
from cervrt._cv import cv2
from cervrt.engines import base
from cervrt.engines.onnxruntime import OnnxRuntimeEngine
from cervrt.errors import CervrtError
from cervrt.runtime import cuda_path
from cervrt.runtime.gpu import nvrtc_version
from cervrt.runtime.predictor import FusionPath, Predictor
from tests.support.tiny_onnx import MPP, save_tiny_model, tissue_image


class _EmulatedPlan:
    """A TensorRT-like engine on "cuda:0": the ONNX engine on the host behind device pointers."""

    kind, device, provider, thread_safe, supports_device_io = "tensorrt", "cuda:0", "emulated", False, True

    def __init__(self, path, device, batch_size):
        self._inner = OnnxRuntimeEngine(path, "cpu")
        self.max_batch = batch_size
        self._buffers: list[int] = []
        self.device_calls = 0
        self._context = cuda.PrimaryContext(0)  # as the TensorRT engine: its own hold on the primary context

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _upload(self, array: np.ndarray) -> int:
        cu = cuda.driver()
        _, pointer = cu.cuMemAlloc(array.nbytes)
        cu.cuMemcpyHtoDAsync(pointer, array.ctypes.data, array.nbytes, 0)
        self._buffers.append(pointer)
        return pointer

    def run_device(self, input_ptr: int, n: int, stream: int):
        with self._context.active():
            cu = cuda.driver()
            p = self.patch_size
            batch = np.empty((n, 3, p, p), np.float32)
            cu.cuMemcpyDtoHAsync(batch.ctypes.data, int(input_ptr), batch.nbytes, stream)  # pageable: waits
            self._release()  # valid until the next call, as the TensorRT engine's buffers are
            out = self._inner.run(batch)
            self.device_calls += 1
            class_ptr = None if out.class_probs is None else self._upload(np.ascontiguousarray(out.class_probs))
            return self._upload(out.probs), class_ptr

    def _release(self):
        for pointer in self._buffers:
            cuda.driver().cuMemFree(pointer)
        self._buffers = []

    def close(self):
        with self._context.active():
            self._release()
        self._context.release()
        self._inner.close()


@pytest.fixture
def emulated(emulated, monkeypatch):
    """The emulated driver (conftest) and the stand-in plan engine; the kernels are NVRTC's CUBIN for the
    emulated device, as on a GPU (the emulator checks its architecture, then runs the host build)."""
    try:
        nvrtc_version()
    except CervrtError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")
    monkeypatch.setitem(base._REGISTRY, ".emuplan", _EmulatedPlan)
    return emulated


def _plan_file(tmp_path, **kwargs):
    onnx_path = save_tiny_model(tmp_path / "tiny.onnx", **kwargs)
    return onnx_path, shutil.copy(onnx_path, tmp_path / "tiny.emuplan")


def test_tensorrt_on_cuda_takes_the_gpu_path_and_matches_the_host(emulated, tmp_path):
    onnx_path, plan = _plan_file(tmp_path)
    image = tissue_image(np.random.default_rng(0), 150, 200)
    with Predictor(plan, batch_size=6, stride=16, tissue_threshold=0) as gpu:
        assert gpu.path is FusionPath.CUDA and gpu.fusion_backend == "cuda"
        labels = gpu.predict(image)
        assert gpu.engine.device_calls > 0
    with Predictor(onnx_path, device="cpu", batch_size=6, stride=16, tissue_threshold=0) as host:
        assert host.path is FusionPath.HOST
        np.testing.assert_array_equal(labels, host.predict(image))
    assert {"cervrt_gather_normalize", "cervrt_accumulate", "cervrt_argmax"} <= set(emulated.launches)
    assert emulated.buffers == {} and emulated.context_depth == 0


def test_gpu_path_streams_a_slide_band_by_band(emulated, tmp_path):
    import tifffile

    onnx_path, plan = _plan_file(tmp_path)
    image = tissue_image(np.random.default_rng(1), 260, 230)
    tifffile.imwrite(tmp_path / "slide.tiff", image, tile=(64, 64), photometric="rgb",
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    with Predictor(plan, batch_size=5, stride=32, tissue_threshold=0) as gpu:
        result = gpu.predict_slide(tmp_path / "slide.tiff", tmp_path / "out")
    assert result.report["fusion"] == "cuda" and result.report["engine"] == "tensorrt"
    with Predictor(onnx_path, device="cpu", batch_size=5, stride=32, tissue_threshold=0) as host:
        expected = host.predict(image)
    np.testing.assert_array_equal(cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED), expected)
    assert emulated.buffers == {}


def test_gpu_path_applies_the_gate_from_device_class_probabilities(emulated, tmp_path):
    onnx_path, plan = _plan_file(tmp_path, with_classifier=True, gate_epsilon=0.6)
    image = tissue_image(np.random.default_rng(2), 128, 128)
    with Predictor(plan, batch_size=1, stride=32, tissue_threshold=0) as gpu:
        labels = gpu.predict(image)
    with Predictor(onnx_path, device="cpu", batch_size=1, stride=32, tissue_threshold=0) as host:
        np.testing.assert_array_equal(labels, host.predict(image))
    assert emulated.buffers == {}


def test_row_batches_never_span_window_rows():
    rows = [(0, np.array([0, 16, 32, 48, 64])), (16, np.array([0, 16]))]
    batches = cuda_path.row_batches(rows, 2)
    assert [(y, xs.tolist()) for y, xs in batches] == [(0, [0, 16]), (0, [32, 48]), (0, [64]), (16, [0, 16])]
    assert cuda_path.device_ordinal("cuda:3") == 3 and cuda_path.device_ordinal("cuda") == 0
