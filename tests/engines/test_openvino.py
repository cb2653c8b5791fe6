"""The OpenVINO engine: agrees with ONNX Runtime on cervrt graphs, sets the inference precision itself
(f32 unless bf16 is asked for, which needs the CPU's BF16), reports what runs, refuses what it cannot do."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cervrt.errors import CervrtError
from tests.engines.conftest import save_graph

ov = pytest.importorskip("openvino")

from cervrt.engines import openvino as ov_engine  # noqa: E402 - after the skip
from cervrt.engines.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from cervrt.engines.openvino import OpenVinoEngine, cpu_has_bf16, require_openvino  # noqa: E402


def _batch(n, h=64, w=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)


def test_fp32_agrees_with_onnxruntime(tiny_onnx):
    batch = _batch(3, 64, 96)
    with OpenVinoEngine(tiny_onnx, "cpu") as engine, OnnxRuntimeEngine(tiny_onnx, "cpu") as reference:
        out, expected = engine.run(batch), reference.run(batch)
        assert (engine.kind, engine.device, engine.precision) == ("openvino", "cpu", "fp32")
        assert engine.provider == "OpenVINO CPU (f32)" and engine.inference_precision == "f32"
        assert engine.patch_size == 64 and engine.class_names[4] == "CIN 3"
    np.testing.assert_allclose(out.probs, expected.probs, atol=1e-5)
    assert out.class_probs is None and out.probs.dtype == np.float32 and out.probs.flags.c_contiguous


def test_batch_sizes_and_shapes_change_between_runs(tiny_onnx):
    with OpenVinoEngine(tiny_onnx) as engine, OnnxRuntimeEngine(tiny_onnx, "cpu") as reference:
        for batch in (_batch(1), _batch(4, 96, 64, seed=1), _batch(2, seed=2)):
            np.testing.assert_allclose(engine.run(batch).probs, reference.run(batch).probs, atol=1e-5)


def test_classifier_outputs_come_back_too(tiny_onnx_classifier):
    batch = _batch(1, seed=1)
    with OpenVinoEngine(tiny_onnx_classifier) as engine, OnnxRuntimeEngine(tiny_onnx_classifier, "cpu") as reference:
        out, expected = engine.run(batch), reference.run(batch)
    np.testing.assert_allclose(out.probs, expected.probs, atol=1e-5)
    np.testing.assert_allclose(out.class_probs, expected.class_probs, atol=1e-5)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no AVX-512 BF16 or AMX")
def test_bf16_runs_in_bf16_and_stays_close(tiny_onnx):
    batch = _batch(2)
    with OpenVinoEngine(tiny_onnx, bf16=True) as engine, OnnxRuntimeEngine(tiny_onnx, "cpu") as reference:
        out, expected = engine.run(batch), reference.run(batch)
        assert engine.precision == "bf16" and engine.provider == "OpenVINO CPU (bf16)"
    assert not np.array_equal(out.probs, expected.probs)  # bf16 keeps 8 mantissa bits: not bit-identical
    np.testing.assert_allclose(out.probs, expected.probs, atol=0.05)


def test_bf16_on_a_cpu_without_it_is_one_line(tiny_onnx, monkeypatch):
    monkeypatch.setattr(ov_engine, "cpu_has_bf16", lambda core=None: False)
    with pytest.raises(CervrtError, match="--bf16 needs a CPU with AVX-512 BF16 or AMX") as info:
        OpenVinoEngine(tiny_onnx, bf16=True)
    assert "\n" not in str(info.value)


def test_gpu_devices_are_refused(tiny_onnx):
    with pytest.raises(CervrtError, match="runs on the CPU"):
        OpenVinoEngine(tiny_onnx, "cuda:0")


def test_missing_openvino_names_the_extra(tiny_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(CervrtError, match=r'pip install "cervrt\[openvino\]"'):
        require_openvino()
    with pytest.raises(CervrtError, match="openvino"):
        OpenVinoEngine(tiny_onnx)


def test_graph_without_its_metadata_outputs_is_refused(tmp_path):
    from tests.engines.conftest import ONNX_META

    path = save_graph(tmp_path, metadata={**ONNX_META, "outputs": ["probs", "class_probs"]})
    with pytest.raises(CervrtError, match="do not match its cervrt metadata"):
        OpenVinoEngine(path)


def test_damaged_file_is_one_line(tmp_path):
    from cervrt.engines.base import Engine

    path = tmp_path / "bad.onnx"
    path.write_bytes(b"not an onnx file at all")
    with pytest.raises(CervrtError) as info:
        OpenVinoEngine(path)
    assert "\n" not in str(info.value)
    assert issubclass(OpenVinoEngine, Engine)


def test_closed_engine_refuses_runs(tiny_onnx):
    engine = OpenVinoEngine(tiny_onnx)
    engine.close()
    engine.close()
    with pytest.raises(CervrtError, match="closed"):
        engine.run(_batch(1))


# --- behind open_engine and the Predictor ------------------------------------------------------------


def test_open_engine_picks_openvino_by_backend_and_keeps_onnxruntime_for_auto(tiny_onnx):
    from cervrt.engines import engine_backends, open_engine

    assert engine_backends("onnx") == ("onnxruntime", "openvino")
    with open_engine(tiny_onnx, "cpu", backend="openvino") as engine:
        assert isinstance(engine, OpenVinoEngine) and engine.precision == "fp32"
    for backend in (None, "auto"):
        with open_engine(tiny_onnx, "cpu", backend=backend) as engine:
            assert isinstance(engine, OnnxRuntimeEngine)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no AVX-512 BF16 or AMX")
def test_open_engine_bf16_runs_openvino_in_bf16(tiny_onnx):
    from cervrt.engines import open_engine

    with open_engine(tiny_onnx, backend="openvino", options={"bf16": True}) as engine:
        assert engine.precision == "bf16" and engine.provider == "OpenVINO CPU (bf16)"


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_bf16_without_the_openvino_backend_is_one_line(tiny_onnx, backend):
    from cervrt.engines import open_engine
    from cervrt.runtime.config import PredictorConfig

    with pytest.raises(CervrtError, match="add --backend openvino"):
        PredictorConfig(backend=backend, bf16=True)
    with pytest.raises(CervrtError, match="takes no option bf16"):
        open_engine(tiny_onnx, backend=backend, options={"bf16": True})
    assert PredictorConfig(backend="openvino", bf16=True).engine_options() == {"bf16": True}


def test_predictor_runs_on_openvino_and_agrees_with_onnxruntime(tiny_onnx):
    from cervrt.runtime.config import PredictorConfig
    from cervrt.runtime.predictor import Predictor

    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    config = PredictorConfig(device="cpu", tissue_threshold=0.0)
    with Predictor(tiny_onnx, config.replace(backend="openvino")) as predictor:
        assert predictor.engine.kind == "openvino" and predictor.engine.provider == "OpenVINO CPU (f32)"
        probs = predictor.predict_proba(image)
    with Predictor(tiny_onnx, config) as reference:
        assert reference.engine.kind == "onnxruntime"
        expected = reference.predict_proba(image)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    with pytest.raises(CervrtError, match="backend must be a name"):
        PredictorConfig(backend="")


def _cervrt(*args: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, timeout=600)


def test_cervrt_infer_backend_openvino_reports_what_ran(tmp_path):
    import json

    from cervrt.imageio import write_png
    from tests.support.tiny_onnx import save_tiny_model, slide_image

    model = save_tiny_model(tmp_path / "tiny.onnx")
    write_png(tmp_path / "slide.png", slide_image(np.random.default_rng(0), 160, 200, (20, 30, 100, 120)))
    result = _cervrt("infer", str(tmp_path / "slide.png"), "--engine", str(model), "--out", str(tmp_path / "out"),
                     "--backend", "openvino", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "slide.json").read_text())
    text = json.dumps(report)
    assert '"engine": "openvino"' in text and "OpenVINO CPU (f32)" in text, text[:2000]
    refused = _cervrt("infer", str(tmp_path / "slide.png"), "--engine", str(model), "--out", str(tmp_path / "out2"),
                      "--bf16")
    assert refused.returncode == 1 and "add --backend openvino" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "out2" / "slide.json").exists()


def test_bench_backend_openvino_times_and_runs_the_onnx_model_on_openvino(tmp_path):
    from cervrt.bench import run_bench
    from cervrt.bench.config import BenchConfig
    from tests.support.tiny_onnx import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny.onnx")
    report = run_bench(BenchConfig(out=tmp_path / "report", models=(model,), batch_sizes=(1,), quick=True,
                                   device="cpu", backend="openvino"))
    (row,) = report["models"]
    assert "error" not in row, row.get("error")
    assert (row["engine"], row["provider"], row["precision"]) == ("openvino", "OpenVINO CPU (f32)", "fp32")
    assert report["settings"]["backend"] == "openvino" and row["accuracy"] is not None
