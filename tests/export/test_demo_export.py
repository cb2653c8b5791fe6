"""The demo's export step: both graphs written with their parity checks, or FP16 refused and FP32 kept."""

from __future__ import annotations

import shutil

import pytest

from cervrt.demo import export_demo_model
from cervrt.errors import CervrtError
from cervrt.export import read_metadata


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    lines: list[str] = []
    return export_demo_model(tiny_checkpoint, tmp_path_factory.mktemp("demo"), echo=lines.append), lines


def test_demo_exports_fp32_and_fp16_with_parity(exported):
    summary, lines = exported
    assert read_metadata(summary["fp32"])["precision"] == "fp32"
    assert read_metadata(summary["fp16"])["precision"] == "fp16"
    checks = {(c["candidate"], c["sample"]): c for c in summary["checks"]}
    assert set(checks) == {("fp32 onnx", "random"), ("fp32 onnx", "tissue"), ("fp16 onnx", "tissue")}
    assert all(c["passed"] for c in checks.values())
    assert any("argmax agreement" in line for line in lines)


def test_refused_fp16_keeps_the_checked_fp32(tiny_checkpoint, tmp_path, monkeypatch):
    import cervrt.export.parity as parity

    monkeypatch.setattr(parity, "FP16_AGREEMENT", 1.01)  # no FP16 graph can pass
    lines: list[str] = []
    summary = export_demo_model(tiny_checkpoint, tmp_path, echo=lines.append)
    assert summary["fp16"] is None and "disagrees" in summary["fp16_refused"]
    assert read_metadata(summary["fp32"])["precision"] == "fp32"
    assert not (tmp_path / "model.fp16.onnx").exists()
    assert any(line.startswith("  FP16 export refused") for line in lines)


def test_a_failing_fp32_export_is_not_hidden_by_an_older_file(exported, tiny_checkpoint, tmp_path, monkeypatch):
    import cervrt.export.parity as parity

    shutil.copy(exported[0]["fp32"], tmp_path / "model.onnx")  # an earlier run's graph
    shutil.copy(exported[0]["fp32"], tmp_path / "old.onnx")
    monkeypatch.setattr(parity, "FP32_AGREEMENT", 1.01)
    with pytest.raises(CervrtError, match="fp32 onnx export disagrees"):
        export_demo_model(tiny_checkpoint, tmp_path, echo=lambda _: None)
    assert (tmp_path / "model.onnx").read_bytes() == (tmp_path / "old.onnx").read_bytes()
