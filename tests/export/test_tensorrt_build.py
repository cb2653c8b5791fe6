"""TensorRT: the version -> FP16 route choice, the missing-package / missing-GPU errors, and the API calls.

The build itself runs only where tensorrt and a GPU exist (``tensorrt`` marker). Elsewhere a recording
fake module checks that the calls follow the documented Python API for each version route.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cervrt import cuda
from cervrt.errors import CervrtError, MissingDependencyError
from cervrt.export import tensorrt_build
from cervrt.export.config import BatchProfile, EngineConfig, Precision
from cervrt.export.tensorrt_build import BuildRecipe, TensorRTEnv, build_engine, build_recipe, parse_version
from tests.support.fake_tensorrt import make_fake_tensorrt


@pytest.mark.parametrize(
    ("version", "fp16", "fp32"),
    [
        ("10.0.1.6", BuildRecipe(Precision.FP32, False, True, "fp32-onnx-builder-flag-fp16"),
         BuildRecipe(Precision.FP32, False, False, "fp32-onnx")),
        ("10.11.0.33", BuildRecipe(Precision.FP32, False, True, "fp32-onnx-builder-flag-fp16"),
         BuildRecipe(Precision.FP32, False, False, "fp32-onnx")),
        ("10.12.0.36", BuildRecipe(Precision.FP16, True, False, "fp16-onnx-strongly-typed"),
         BuildRecipe(Precision.FP32, True, False, "fp32-onnx-strongly-typed")),
        ("10.13.3.9", BuildRecipe(Precision.FP16, True, False, "fp16-onnx-strongly-typed"),
         BuildRecipe(Precision.FP32, True, False, "fp32-onnx-strongly-typed")),
        ("11.0.0.2", BuildRecipe(Precision.FP16, False, False, "fp16-onnx-always-strongly-typed"),
         BuildRecipe(Precision.FP32, False, False, "fp32-onnx")),
        ("11.4.1", BuildRecipe(Precision.FP16, False, False, "fp16-onnx-always-strongly-typed"),
         BuildRecipe(Precision.FP32, False, False, "fp32-onnx")),
    ],
)
def test_fp16_route_is_a_function_of_the_version(version, fp16, fp32):
    assert build_recipe(version, "fp16") == fp16
    assert build_recipe(version, Precision.FP32) == fp32


@pytest.mark.parametrize(("version", "fragment"), [("8.6.1", "too old"), ("9.3.0", "too old"), ("abc", "cannot read")])
def test_old_or_unreadable_versions_are_refused(version, fragment):
    with pytest.raises(CervrtError, match=fragment):
        build_recipe(version, "fp16")


def test_parse_version():
    assert parse_version("10.13.3.9") == (10, 13) and parse_version("11.0") == (11, 0)


def test_missing_tensorrt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail even where it is installed
    with pytest.raises(MissingDependencyError) as info:
        tensorrt_build.require_tensorrt()
    assert str(info.value) == 'tensorrt is not installed: run pip install "cervrt[tensorrt]"'


def test_missing_gpu_is_one_clear_line(monkeypatch):
    pytest.importorskip("cuda.bindings.driver")
    if cuda.device_count()[0]:
        pytest.skip("this machine has a CUDA GPU")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.3.9"))
    with pytest.raises(CervrtError, match=r"^no CUDA GPU is available \(\w+\): TensorRT builds an engine") as info:
        tensorrt_build.require_tensorrt()
    assert "\n" not in str(info.value)


def test_missing_cuda_python_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
    expected = r'cuda-python is not installed: run pip install "cervrt\[tensorrt\]"'
    with pytest.raises(MissingDependencyError, match=expected):
        tensorrt_build.probe_gpu()


def _build(tmp_path: Path, version: str, precision: str, **fake) -> tuple[object, bytes]:
    trt = make_fake_tensorrt(version, **fake)
    env = TensorRTEnv(trt, version, "Fake GPU", "8.6")
    engine = EngineConfig(tmp_path / "m.plan", BatchProfile(1, 4, 16), workspace_gb=2.0)
    plan = build_engine(env, b"onnx-bytes", build_recipe(version, precision), engine, "image", 96)
    return trt, plan


def test_weak_typing_route_sets_fp16_and_pins_softmax_and_reduce(tmp_path):
    trt, plan = _build(tmp_path, "10.8.0", "fp16")
    record = trt.record
    assert plan == b"PLAN-BYTES"
    assert record.args("builder.create_network") == [(0,)]
    assert ("FP16",) in record.args("config.set_flag") and ("PREFER_PRECISION_CONSTRAINTS",) in record.args(
        "config.set_flag")
    assert {args[0] for args in record.args("layer.precision")} == {"SOFTMAX", "REDUCE"}
    assert record.args("config.set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 2 * 2**30)]
    assert record.args("profile.set_shape") == [("image", (1, 3, 96, 96), (4, 3, 96, 96), (16, 3, 96, 96))]
    names = record.names()
    assert names.index("config.set_timing_cache") < names.index("builder.build_serialized_network")


def test_strongly_typed_route_uses_the_network_flag_and_no_builder_flag(tmp_path):
    trt, _ = _build(tmp_path, "10.13.3.9", "fp16")
    assert trt.record.args("builder.create_network") == [(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),)]
    assert trt.record.args("config.set_flag") == [] and trt.record.args("layer.precision") == []


def test_tensorrt_11_route_needs_neither_flag(tmp_path):
    trt, _ = _build(tmp_path, "11.0.0.2", "fp16")  # the fake 11 has no BuilderFlag.FP16: touching it would fail
    assert trt.record.args("builder.create_network") == [(0,)] and trt.record.args("config.set_flag") == []


def test_timing_cache_is_saved_then_reused_and_a_stale_one_replaced(tmp_path):
    cache = tmp_path / "m.timing.cache"
    trt, _ = _build(tmp_path, "10.13.3.9", "fp32")
    assert trt.record.args("config.create_timing_cache") == [(b"",)] and cache.read_bytes() == b"CACHE:"
    trt, _ = _build(tmp_path, "10.13.3.9", "fp32")
    assert trt.record.args("config.create_timing_cache") == [(b"CACHE:",)]
    cache.write_bytes(b"STALE")
    trt, _ = _build(tmp_path, "10.13.3.9", "fp32")
    assert trt.record.args("config.create_timing_cache") == [(b"STALE",), (b"",)]
    assert trt.record.args("config.set_timing_cache") == [(False,), (False,)]


def test_parser_and_builder_failures_are_one_line_and_write_nothing(tmp_path):
    with pytest.raises(CervrtError, match="ONNX parser refused the graph: unsupported operator FancyOp"):
        _build(tmp_path, "10.13.3.9", "fp16", parse_ok=False)
    with pytest.raises(CervrtError, match="could not build the engine"):
        _build(tmp_path, "10.13.3.9", "fp16", build_ok=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tensorrt
def test_real_engine_build(tmp_path, tiny_checkpoint):
    pytest.importorskip("tensorrt")
    from cervrt.export import ExportConfig, export
    from cervrt.model_info import artifact_info

    plan = tmp_path / "tiny.plan"
    config = ExportConfig(tiny_checkpoint, output=tmp_path / "tiny.fp16.onnx", precision=Precision.FP16,
                          engine=EngineConfig(plan, BatchProfile(1, 2, 4)))
    result = export(config)
    assert plan.stat().st_size > 0 and result.files["engine_json"] == tmp_path / "tiny.plan.json"
    assert (tmp_path / "tiny.timing.cache").is_file()
    info = artifact_info(plan)
    assert info["kind"] == "tensorrt" and info["profile"]["opt"] == [2, 3, 64, 64] and info["gpu_name"]
