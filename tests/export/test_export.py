"""End to end in-process: a small HSP-Net ResNet-34 checkpoint -> FP32 and FP16 ONNX, checked, plus a plan
built through the recording fake TensorRT (the real build carries the ``tensorrt`` marker)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from cervrt.checkpoint import file_sha256
from cervrt.errors import CervrtError
from cervrt.export import (
    BatchProfile,
    EngineConfig,
    ExportConfig,
    Precision,
    export,
    exporter,
    read_metadata,
    tensorrt_build,
)
from cervrt.export.parity import ort_session, require, run_session
from cervrt.model_info import artifact_info
from tests.support.fake_tensorrt import make_fake_tensorrt
from tests.support.onnx_graphs import segmentation_graph

CLASSES = ["background", "normal", "CIN 1", "CIN 2", "CIN 3"]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    fake = make_fake_tensorrt("10.13.3.9")
    lines: list[str] = []
    engine = EngineConfig(out / "hspnet.plan", BatchProfile(1, 2, 4))
    config = ExportConfig(tiny_checkpoint, output=out / "hspnet.fp16.onnx", precision=Precision.FP16,
                          fp32_output=out / "hspnet.onnx", engine=engine)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "tensorrt", fake)
        patch.setattr(tensorrt_build, "probe_gpu", lambda device=0: ("Fake GPU", "8.9"))
        result = export(config, echo=lines.append)
    return SimpleNamespace(result=result, out=out, lines=lines, trt=fake, checkpoint=tiny_checkpoint)


def test_writes_exactly_the_expected_files(exported):
    names = sorted(p.name for p in exported.out.iterdir())
    assert names == ["hspnet.fp16.onnx", "hspnet.onnx", "hspnet.plan", "hspnet.plan.json", "hspnet.timing.cache"]
    sizes = exported.result.sizes
    assert sizes["fp32"] == (exported.out / "hspnet.onnx").stat().st_size
    assert 0.4 < sizes["fp16"] / sizes["fp32"] < 0.6  # weights halved
    assert set(exported.result.seconds) >= {"load", "export", "fp16", "parity", "engine", "total"}


@pytest.mark.parametrize(("name", "dtype"), [("hspnet.onnx", 1), ("hspnet.fp16.onnx", 1)])
def test_graph_interface_is_dynamic_and_single_file(exported, name, dtype):
    model = onnx.load(exported.out / name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    (image,), (probs,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and image.type.tensor_type.elem_type == dtype and dims == ["N", 3, "H", "W"]
    dims = [d.dim_param or d.dim_value for d in probs.type.tensor_type.shape.dim]
    assert probs.name == "probs" and probs.type.tensor_type.elem_type == dtype and dims == ["N", 5, "H", "W"]


def test_metadata_describes_the_model(exported):
    meta = read_metadata(exported.out / "hspnet.onnx")
    assert meta["arch"] == "hspnet" and meta["arch_kwargs"] == {"encoder": "resnet34"}
    assert meta["class_names"] == CLASSES and meta["palette"][2] == [0, 255, 0]
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["mpp"] == pytest.approx(0.904) and meta["patch_size"] == 64
    assert meta["params"] == pytest.approx(31.86e6, rel=1e-3) and meta["macs_384"] > meta["macs_patch"] > 0
    assert meta["precision"] == "fp32" and meta["opset"] == 18 and meta["input"] == "image"
    assert meta["outputs"] == ["probs"] and meta["source_sha256"] == file_sha256(exported.checkpoint)
    assert meta["cervrt_version"] and meta["torch_version"] and meta["onnx_version"]
    fp16 = read_metadata(exported.out / "hspnet.fp16.onnx")
    assert fp16["precision"] == "fp16" and fp16["io_dtype"] == "float32"
    assert {"Softmax", "ReduceMean"} <= set(fp16["fp32_ops"])


def test_parity_is_checked_and_reported(exported):
    result = exported.result
    for sample in ("random", "tissue"):
        check = result.check("fp32", sample)
        assert check.passed and check.agreement >= 0.9999 and check.max_abs_diff < 1e-4
    fp16 = result.check("fp16", "tissue")
    assert fp16.reference == "fp32 onnx" and fp16.passed and fp16.agreement >= 0.999 and fp16.max_abs_diff < 1e-2
    parity_lines = [line for line in exported.lines if line.startswith("parity")]
    assert len(parity_lines) == 3 and all("max |diff|" in s and "argmax agreement" in s for s in parity_lines)


def test_exported_graph_runs_at_other_sizes(exported):
    session = ort_session(exported.out / "hspnet.onnx")
    for shape in [(3, 3, 96, 160), (1, 3, 400, 400), (1, 3, 70, 45)]:
        image = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        (probs,) = run_session(session, image)
        assert probs.shape == (shape[0], 5, *shape[2:]) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_engine_follows_the_strongly_typed_route_and_describes_itself(exported):
    parsed = onnx.load_from_string(exported.trt.parsed)  # 10.13: the FP16 ONNX, strongly typed
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in parsed.graph.initializer)
    assert (exported.out / "hspnet.plan").read_bytes() == b"PLAN-BYTES"
    info = artifact_info(exported.out / "hspnet.plan")
    assert info["kind"] == "tensorrt" and info["precision"] == "fp16" and info["tensorrt_version"] == "10.13.3.9"
    assert info["gpu_name"] == "Fake GPU" and info["compute_capability"] == "8.9"
    assert info["build_route"] == "fp16-onnx-strongly-typed" and info["classes"] == CLASSES
    assert info["profile"] == {"input": "image", "min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert info["inputs"][0]["name"] == "image" and info["params"] == exported.result.metadata["params"]


def test_a_failed_check_leaves_no_file(tmp_path):
    def refuse(session):
        raise CervrtError("parity failed")

    with pytest.raises(CervrtError, match="parity failed"):
        exporter._save_checked(segmentation_graph(), tmp_path / "m.onnx", refuse)
    assert list(tmp_path.iterdir()) == []


def test_require_names_the_failing_check():
    from cervrt.export.parity import ParityCheck

    good = ParityCheck("fp32 onnx", "torch", "random", (2, 3, 64, 96), 1e-7, 1.0, 0.9999)
    bad = ParityCheck("fp16 onnx", "fp32 onnx", "tissue", (1, 3, 64, 64), 3e-3, 0.998, 0.999)
    require([good])
    with pytest.raises(CervrtError, match=r"fp16 onnx export disagrees with fp32 onnx on tissue input: argmax "
                                          r"agreement 99\.8000% is below 99\.90%.*no file was written"):
        require([good, bad])


def test_read_only_output_directory_is_refused_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    # Root ignores chmod, so the read-only directory is simulated where cervrt asks: os.access.
    import os

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(read_only) else real_access(p, mode))
    with pytest.raises(CervrtError, match=f"output directory {read_only} is not writable"):
        export(ExportConfig(tiny_checkpoint, output=read_only / "m.onnx"))
    assert list(read_only.iterdir()) == []
