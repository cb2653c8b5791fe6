"""The demo's INT8 step: exports the trained checkpoint calibrated on its training images, reports agreement and
the speed ratio beside FP32, and goes on (saying why) when the gate refuses the INT8 graph."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.demo_fastpath import demo_int8, speed_ratio
from cervrt.imageio import write_png
from tests.support.tiny_onnx import save_tiny_model


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from cervrt.synth import synthesize_region

    root = tmp_path_factory.mktemp("demo_data")
    (root / "images").mkdir()
    for seed in (0, 2, 3, 4, 5, 6, 7):
        write_png(root / "images" / f"r{seed}.png", synthesize_region(np.random.default_rng(seed), 384)[0])
    return root


def test_speed_ratio_times_both_models_in_one_run(tmp_path):
    model = save_tiny_model(tmp_path / "tiny.onnx")
    speed = speed_ratio(model, model, rounds=2)
    assert speed["fp32_patches_per_s"] > 0 and speed["int8_patches_per_s"] > 0
    assert speed["ratio"] == pytest.approx(speed["int8_patches_per_s"] / speed["fp32_patches_per_s"])


def test_demo_int8_reports_agreement_and_speed(tmp_path, calibration, monkeypatch):
    from cervrt.export import int8
    from tests.support.tiny_models import save_tiny_checkpoint

    monkeypatch.setattr(int8, "INT8_AGREEMENT", 0.0)  # an untrained tiny network: the gate is tested in test_int8
    checkpoint = save_tiny_checkpoint(tmp_path / "best.pt")
    lines: list[str] = []
    summary = demo_int8(checkpoint, save_tiny_model(tmp_path / "fp32.onnx"), calibration, tmp_path, echo=lines.append)
    assert summary["int8"] == str(tmp_path / "model.int8.onnx") and (tmp_path / "model.int8.onnx").is_file()
    assert 0.0 <= summary["agreement"] <= 1.0 and summary["ratio"] > 0
    assert summary["int8_metadata"]["calibration_method"] == "minmax"
    assert lines[-1].startswith("  INT8 vs FP32 (ONNX Runtime, CPU): argmax agreement")


def test_demo_int8_goes_on_when_the_export_refuses(tmp_path, monkeypatch):
    from cervrt.export import int8
    from tests.support.tiny_models import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "best.pt")
    empty = tmp_path / "no_images"
    empty.mkdir()
    lines: list[str] = []
    summary = demo_int8(checkpoint, tmp_path / "fp32.onnx", empty, tmp_path, echo=lines.append)
    assert summary["int8"] is None and "holds no images" in summary["int8_refused"]
    assert lines[-1].startswith("  INT8 export refused:") and not (tmp_path / "model.int8.onnx").exists()
    assert int8.INT8_AGREEMENT == 0.99
