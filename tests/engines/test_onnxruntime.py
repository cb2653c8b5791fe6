"""The ONNX Runtime engine: agrees with onnxruntime run directly, reports the provider that really runs,
refuses foreign or damaged files and a CUDA request it cannot honour."""

from __future__ import annotations

import threading
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from cervrt.devices import Device
from cervrt.engines import onnxruntime as ort_engine
from cervrt.engines import open_engine
from cervrt.engines.onnxruntime import CPU_PROVIDER, CUDA_PROVIDER, OnnxRuntimeEngine, choose_providers
from cervrt.errors import CervrtError
from tests.engines.conftest import ONNX_META, save_graph
from tests.support.onnx_graphs import segmentation_graph


def _direct(path, batch):
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    return session.run(None, {"image": batch})


def _batch(n, h=64, w=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)


def test_agrees_with_onnxruntime_run_directly(tiny_onnx):
    batch = _batch(3, 64, 96)
    with open_engine(tiny_onnx, "cpu") as engine:
        out = engine.run(batch)
    (expected,) = _direct(tiny_onnx, batch)
    np.testing.assert_array_equal(out.probs, expected)
    assert out.class_probs is None and out.probs.dtype == np.float32 and out.probs.flags.c_contiguous


def test_classifier_outputs_come_back_too(tiny_onnx_classifier):
    batch = _batch(1, seed=1)  # the tiny classifier graph's Concat takes batch 1 only
    with open_engine(tiny_onnx_classifier) as engine:
        out = engine.run(batch)
        assert engine.has_classifier
    probs, class_probs = _direct(tiny_onnx_classifier, batch)
    np.testing.assert_array_equal(out.probs, probs)
    np.testing.assert_array_equal(out.class_probs, class_probs)
    assert out.class_probs.shape == (1, 4)


def test_reports_what_runs_and_its_metadata(tiny_onnx):
    with open_engine(tiny_onnx) as engine:  # auto on a machine without a GPU
        assert (engine.kind, engine.provider, engine.device, engine.fallback) == ("onnxruntime", CPU_PROVIDER,
                                                                                 "cpu", None)
        assert engine.providers == [CPU_PROVIDER] and engine.thread_safe and engine.max_batch is None
        assert engine.class_names[4] == "CIN 3" and engine.patch_size == 64 and engine.mpp == 0.904
        assert engine.precision == "fp32" and engine.input_dtype == np.float32 and engine.gate_epsilon is None
        assert engine.metadata == ONNX_META
    assert engine.providers == []


def test_fp16_io_graphs_take_float32_and_return_float32(tmp_path, tiny_onnx):
    from cervrt.export.fp16 import convert_to_fp16

    fp16 = convert_to_fp16(segmentation_graph(), fp16_io=True)
    path = save_graph(tmp_path, model=fp16, name="tiny.fp16.onnx",
                      metadata={**ONNX_META, "precision": "fp16", "io_dtype": "float16"})
    batch = _batch(2)
    with open_engine(path) as engine, open_engine(tiny_onnx) as reference:
        assert engine.input_dtype == np.float16 and engine.precision == "fp16"
        out = engine.run(batch)
        np.testing.assert_allclose(out.probs, reference.run(batch).probs, atol=2e-2)
        assert out.probs.dtype == np.float32
        assert engine.run(batch.astype(np.float16)).probs.dtype == np.float32


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda p: save_graph(p, metadata={}), "has no cervrt metadata: export it with `cervrt export CHECKPOINT`"),
    (lambda p: save_graph(p, metadata={"arch": "x"}), "the cervrt metadata lacks"),
    (lambda p: save_graph(p, metadata={**ONNX_META, "outputs": ["probs", "class_probs"]}),
     "do not match its cervrt metadata"),
    (lambda p: save_graph(p, metadata={**ONNX_META, "input": "pixels"}), "do not match its cervrt metadata"),
])
def test_foreign_graphs_are_refused(tmp_path, make, fragment):
    with pytest.raises(CervrtError, match=fragment):
        open_engine(make(tmp_path))


def test_a_truncated_file_is_refused(tmp_path, tiny_onnx):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[:300])
    with pytest.raises(CervrtError, match="is not a readable ONNX file"):
        open_engine(truncated)


def test_cuda_without_a_gpu_is_a_clear_error(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ort_engine, "cuda_device_count", lambda: (0, "the NVIDIA driver library is not installed"))
    for device in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(CervrtError, match=rf"device {device} was asked for but no CUDA GPU is visible: the NVIDIA"):
            open_engine(tiny_onnx, device)


def test_cuda_on_this_machine_is_refused_or_really_runs(tiny_onnx):
    try:
        engine = open_engine(tiny_onnx, "cuda")
    except CervrtError as exc:
        assert "device cuda was asked for but" in str(exc) and "use device cpu" in str(exc)
    else:  # a machine whose GPU works: then the CUDA provider must be what runs
        with engine:
            assert engine.provider == CUDA_PROVIDER and engine.device == "cuda:0"


def test_cuda_needs_an_onnxruntime_with_the_cuda_provider(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU_PROVIDER])
    with pytest.raises(CervrtError, match=r"this onnxruntime has no CUDAExecutionProvider .*cervrt\[gpu\]"):
        open_engine(tiny_onnx, "cuda")
    with open_engine(tiny_onnx, "auto") as engine:
        assert engine.provider == CPU_PROVIDER and engine.fallback is None


_REAL_SESSION = ort.InferenceSession


class _FallingBack:
    """An InferenceSession that, like ORT when the CUDA libraries are missing, quietly runs on the CPU."""

    asked: ClassVar[list] = []

    def __new__(cls, path, sess_options=None, providers=None):
        cls.asked.append(providers)
        return _REAL_SESSION(path, sess_options=sess_options, providers=[CPU_PROVIDER])


def test_a_silent_cpu_fallback_is_refused_for_cuda_and_reported_for_auto(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ort_engine, "cuda_device_count", lambda: (1, ""))
    monkeypatch.setattr(ort, "InferenceSession", _FallingBack)
    _FallingBack.asked = []
    with pytest.raises(CervrtError, match=r"device cuda:0 was asked for but ONNX Runtime could not load its "
                                          r"CUDAExecutionProvider .* fell back to the CPU"):
        open_engine(tiny_onnx, "cuda:0")
    with open_engine(tiny_onnx, "auto") as engine:
        assert engine.provider == CPU_PROVIDER and engine.device == "cpu"
        assert "fell back to the CPU" in engine.fallback
        engine.run(_batch(1))
    assert [p[0][0] for p in _FallingBack.asked] == [CUDA_PROVIDER, CUDA_PROVIDER]
    assert _FallingBack.asked[0][0][1] == {"device_id": "0"}


def test_provider_choice():
    cuda, cpu, auto = Device("cuda", 1), Device("cpu"), Device("auto")
    both = [CUDA_PROVIDER, CPU_PROVIDER]
    assert choose_providers(cpu, both, 2, "") == [CPU_PROVIDER]
    assert choose_providers(auto, both, 0, "none") == [CPU_PROVIDER]
    assert choose_providers(auto, [CPU_PROVIDER], 2, "") == [CPU_PROVIDER]
    assert choose_providers(auto, both, 1, "") == [(CUDA_PROVIDER, {"device_id": "0"}), CPU_PROVIDER]
    options = choose_providers(cuda, both, 2, "", {"user_compute_stream": 1234})[0][1]
    assert options == {"device_id": "1", "user_compute_stream": "1234", "has_user_compute_stream": "1"}
    with pytest.raises(CervrtError, match="device cuda:1 was asked for but 1 CUDA GPU"):
        choose_providers(cuda, both, 1, "")


def test_cuda_options_reach_the_session(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ort_engine, "cuda_device_count", lambda: (1, ""))
    monkeypatch.setattr(ort, "InferenceSession", _FallingBack)
    _FallingBack.asked = []
    with OnnxRuntimeEngine(tiny_onnx, "auto", cuda_options={"gpu_mem_limit": "1024"}):
        pass
    assert _FallingBack.asked[0][0] == (CUDA_PROVIDER, {"device_id": "0", "gpu_mem_limit": "1024"})


def test_concurrent_runs_on_one_session_agree_with_sequential_ones(tiny_onnx):
    batches = [_batch(2, seed=s) for s in range(6)]
    with open_engine(tiny_onnx) as engine:
        expected = [engine.run(b).probs for b in batches]
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, engine.run(batches[i]).probs))
                   for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, probs in enumerate(expected):
        np.testing.assert_array_equal(results[i], probs)


def test_runs_after_close_are_refused(tiny_onnx):
    engine = open_engine(tiny_onnx)
    engine.close()
    with pytest.raises(CervrtError, match="this onnxruntime engine is closed"):
        engine.run(_batch(1))
