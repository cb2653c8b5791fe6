"""The engine protocol: the (format, backend) registry, the batch checks of Engine.run, lifetime."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cervrt.artifact import ArtifactMetadata
from cervrt.devices import Device
from cervrt.engines import (
    Engine,
    EngineOutput,
    engine_backends,
    engine_suffixes,
    open_engine,
    register_backend,
    register_engine,
)
from cervrt.engines import base as engine_base
from cervrt.errors import CervrtError

META = ArtifactMetadata(arch="dummy", arch_kwargs={}, class_names=["background", "a", "b"],
                        palette=[[0, 0, 0], [9, 9, 9], [1, 2, 3]], mean=[0.5] * 3, std=[0.25] * 3, mpp=0.5,
                        patch_size=32, precision="fp32", opset=None, input="image", outputs=["probs"],
                        gate_epsilon=0.1).to_dict()


class DummyEngine(Engine):
    """Uniform probabilities; optionally square-only with a maximum batch, like TensorRT."""

    kind = "dummy"

    def __init__(self, path=None, device=None, batch_size=None, *, fixed=False, max_batch=None,
                 input_dtype=np.float32, wrong_output=False):
        self.metadata, self.device, self.provider, self.precision = dict(META), "cpu", "numpy", "fp32"
        self.fixed_size, self.max_batch, self.input_dtype = fixed, max_batch, np.dtype(input_dtype)
        self.wrong_output = wrong_output
        self.seen: list[np.ndarray] = []
        self.closed_count = 0

    def _run(self, batch):
        self.seen.append(batch)
        n, _, h, w = batch.shape
        c = 2 if self.wrong_output else 3
        return EngineOutput(np.full((n, c, h, w), 1 / c, np.float64), None)

    def _close(self):
        self.closed_count += 1


def test_open_engine_refuses_unknown_suffixes_listing_the_valid_ones(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"x")
    with pytest.raises(CervrtError, match=r"unknown model type '.h5'; cervrt opens .onnx, .plan, .pt, .pth"):
        open_engine(path)


@pytest.mark.parametrize(("kind", "fragment"), [("absent", "does not exist"), ("dir", "is not a file"),
                                               ("empty", "is empty")])
def test_open_engine_refuses_missing_or_empty_files(tmp_path, kind, fragment):
    path = tmp_path / f"{kind}.onnx"
    if kind == "dir":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(CervrtError, match=fragment):
        open_engine(path)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8", True])
def test_open_engine_refuses_bad_batch_sizes(tiny_onnx, batch_size):
    with pytest.raises(CervrtError, match="batch_size must be a positive integer or None"):
        open_engine(tiny_onnx, batch_size=batch_size)


def test_open_engine_refuses_a_bad_device_before_reading_the_file(tmp_path):
    with pytest.raises(CervrtError, match="unknown device 'gpu7'"):
        open_engine(tmp_path / "absent.onnx", device="gpu7")


def test_register_engine_adds_a_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_base, "_REGISTRY", dict(engine_base._REGISTRY))
    calls = []
    register_engine(".dummy", lambda path, device, batch_size: calls.append((path, device, batch_size))
                    or DummyEngine())
    path = tmp_path / "m.DUMMY"
    path.write_bytes(b"weights")
    engine = open_engine(path, "cuda:1", 4)
    assert isinstance(engine, DummyEngine) and calls == [(path, Device("cuda", 1), 4)]
    assert ".dummy" in engine_suffixes()
    with pytest.raises(CervrtError, match="starts with a dot"):
        register_engine("onnx", DummyEngine)


def test_metadata_properties():
    engine = DummyEngine()
    assert engine.class_names == ("background", "a", "b") and engine.num_classes == 3
    assert engine.palette == ((0, 0, 0), (9, 9, 9), (1, 2, 3)) and engine.patch_size == 32
    assert engine.mean == (0.5, 0.5, 0.5) and engine.std == (0.25,) * 3 and engine.mpp == 0.5
    assert engine.gate_epsilon == 0.1 and engine.has_classifier is False
    assert "DummyEngine dummy fp32 on cpu (numpy)" in repr(engine)


def test_run_returns_float32_c_contiguous_probabilities():
    engine = DummyEngine()
    batch = np.zeros((2, 3, 40, 48), np.float32)[:, :, :, ::-1]  # a non-contiguous view is accepted
    out = engine.run(batch)
    assert out.probs.dtype == np.float32 and out.probs.flags.c_contiguous and out.probs.shape == (2, 3, 40, 48)
    assert engine.seen[0].flags.c_contiguous and out.class_probs is None


@pytest.mark.parametrize(("batch", "fragment"), [
    (np.zeros((1, 3, 32, 32), np.float64), "must be a float32 numpy array .* got a float64 array"),
    (np.zeros((1, 3, 32, 32), np.uint8), "got a uint8 array of shape"),
    ([[[[0.0]]]], "got a list"),
    (np.zeros((3, 32, 32), np.float32), r"shape \(n, 3, H, W\) with 3 RGB channels, got \(3, 32, 32\)"),
    (np.zeros((1, 4, 32, 32), np.float32), "with 3 RGB channels, got \\(1, 4, 32, 32\\)"),
    (np.zeros((1, 32, 32, 3), np.float32), "with 3 RGB channels"),
    (np.zeros((0, 3, 32, 32), np.float32), "holds 0 patches; this dummy engine takes at least 1"),
    (np.zeros((1, 3, 16, 64), np.float32), "at least 32x32 pixels, got 16x64"),
])
def test_run_refuses_bad_batches_naming_expected_and_got(batch, fragment):
    with pytest.raises(CervrtError, match=fragment):
        DummyEngine().run(batch)


def test_fixed_size_engines_take_only_their_patch_and_batch():
    engine = DummyEngine(fixed=True, max_batch=2)
    engine.run(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(CervrtError, match=r"takes 32x32 patches .* got 32x64"):
        engine.run(np.zeros((1, 3, 32, 64), np.float32))
    with pytest.raises(CervrtError, match="holds 3 patches; this dummy engine takes 1 to 2"):
        engine.run(np.zeros((3, 3, 32, 32), np.float32))


def test_fp16_engines_accept_float32_and_float16_and_get_float16():
    engine = DummyEngine(input_dtype=np.float16)
    engine.run(np.ones((1, 3, 32, 32), np.float32))
    engine.run(np.ones((1, 3, 32, 32), np.float16))
    assert [b.dtype for b in engine.seen] == [np.float16, np.float16]
    with pytest.raises(CervrtError, match="float16 or float32 numpy array"):
        engine.run(np.ones((1, 3, 32, 32), np.float64))
    with pytest.raises(CervrtError, match="must be a float32 numpy array"):
        DummyEngine().run(np.ones((1, 3, 32, 32), np.float16))


def test_an_output_that_contradicts_the_metadata_is_refused():
    with pytest.raises(CervrtError, match=r"probabilities of shape \(1, 2, 32, 32\), expected \(1, 3, 32, 32\)"):
        DummyEngine(wrong_output=True).run(np.zeros((1, 3, 32, 32), np.float32))


def test_context_manager_closes_once_and_refuses_later_runs():
    with DummyEngine() as engine:
        pass
    engine.close()
    assert engine.closed_count == 1 and "closed" in repr(engine)
    with pytest.raises(CervrtError, match="this dummy engine is closed"):
        engine.run(np.zeros((1, 3, 32, 32), np.float32))


def test_importing_the_engines_imports_no_backend():
    code = ("import sys, cervrt.engines; bad = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'cuda') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def fresh_registry(monkeypatch):
    """The engine registry as shipped, restored after the test."""
    monkeypatch.setattr(engine_base, "_REGISTRY", dict(engine_base._REGISTRY))
    monkeypatch.setattr(engine_base, "_FORMATS", dict(engine_base._FORMATS))
    monkeypatch.setattr(engine_base, "_BACKENDS", {k: dict(v) for k, v in engine_base._BACKENDS.items()})


def test_each_format_has_its_default_backend():
    assert (engine_backends("onnx"), engine_backends("plan"), engine_backends("pt")) == (
        ("onnxruntime", "openvino"), ("tensorrt",), ("torch",))
    assert engine_backends("h5") == ()


def test_open_engine_refuses_an_unknown_backend_listing_the_valid_ones(tiny_onnx):
    with pytest.raises(CervrtError, match=r"unknown backend 'tvm' for onnx models .*use one of onnxruntime, openvino$"):
        open_engine(tiny_onnx, backend="tvm")


def test_register_backend_adds_a_second_backend_with_its_own_device_kinds(tiny_onnx, fresh_registry):
    calls = []
    register_backend("onnx", "openvino", lambda path, device, batch_size: calls.append(device) or DummyEngine(),
                     device_kinds=("npu",))
    assert engine_backends("onnx") == ("onnxruntime", "openvino")
    assert isinstance(open_engine(tiny_onnx, "npu:1", backend="openvino"), DummyEngine)
    assert calls == [Device("npu", 1)]
    with pytest.raises(CervrtError, match=r"unknown device 'npu'.*use one of auto, cpu, cuda, cuda:N \("):
        open_engine(tiny_onnx, "npu")  # the default backend (ONNX Runtime) takes no NPU
    register_backend("onnx", "openvino", DummyEngine, suffixes=(".xml",), default=True)
    assert engine_backends("onnx") == ("openvino", "onnxruntime") and ".xml" in engine_suffixes()
    assert isinstance(open_engine(tiny_onnx, "cpu"), DummyEngine)
    with pytest.raises(CervrtError, match="starts with a dot"):
        register_backend("onnx", "x", DummyEngine, suffixes=("xml",))


def test_a_registered_engine_yields_to_a_named_backend(tiny_onnx, fresh_registry):
    register_engine(".onnx", DummyEngine)
    assert isinstance(open_engine(tiny_onnx, "cpu"), DummyEngine)
    with open_engine(tiny_onnx, "cpu", backend="onnxruntime") as engine:
        assert engine.kind == "onnxruntime"
