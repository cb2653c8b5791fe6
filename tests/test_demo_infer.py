"""The demo's inference step: `cervrt infer` on a synthetic slide, scored against its ground truth."""

from __future__ import annotations

import json

import numpy as np

from cervrt._cv import cv2
from cervrt.demo_infer import SLIDE_SIZE, demo_inference
from tests.support.tiny_onnx import save_tiny_model


def test_demo_inference_scores_the_mask_it_wrote(tmp_path):
    model = save_tiny_model(tmp_path / "tiny.onnx")
    lines: list[str] = []
    result = demo_inference(model, tmp_path / "demo", seed=3, echo=lines.append)
    truth = cv2.imread(str(tmp_path / "demo" / "slide" / "synthetic_slide.truth.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(result["outputs"]["mask"], cv2.IMREAD_UNCHANGED)
    assert truth.shape == mask.shape == (SLIDE_SIZE, SLIDE_SIZE) and truth.max() > 0
    assert result["stride"] == 32  # half the tiny model's 64 px patch: overlapping windows, blended
    fg = truth > 0  # SPEC: pixels whose truth is background are left out
    pred, true = mask[fg], truth[fg]
    pairs = [(np.sum((pred == k) & (true == k)), np.sum(pred == k) + np.sum(true == k)) for k in range(1, 5)]
    assert np.isclose(result["metrics"]["dice"], np.mean([2 * a / b for a, b in pairs if b > 0]))
    assert fg.any() and result["patches_per_s"] > 0 and result["macs_per_patch"] == 1_000_000
    assert json.loads((tmp_path / "demo" / "synthetic_slide.json").read_text())["patches"]["run"] > 0
    assert any(line.strip().startswith("synthetic slide 1024x1024: dice ") for line in lines)
