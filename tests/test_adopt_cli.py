"""A foreign model end to end: a small torch net exported with torch.onnx (logits, its own three classes),
`cervrt adopt` with a class map, then `cervrt info` and `cervrt infer` on it; the refusals in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

from cervrt._cv import cv2
from cervrt.artifact import attach_metadata
from tests.support.foreign_models import foreign_model
from tests.support.tiny_onnx import save_tiny_model, slide_image, tiny_metadata

torch = pytest.importorskip("torch")

MEAN, STD = "0.5,0.5,0.5", "0.25,0.25,0.25"


def _cervrt(*args):
    return subprocess.run([sys.executable, "-m", "cervrt", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _one_error_line(result):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


class _ElsewhereNet(torch.nn.Module):
    """Conv, a stride-2 conv, a 1x1 head to 3 classes, bilinear back to the input size: raw logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.head(self.body(x))
        return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "elsewhere.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; it is the quick one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(_ElsewhereNet().eval(), (torch.randn(1, 3, 64, 64),), str(path), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": axes, "logits": axes}, opset_version=17,
                          dynamo=False)
    return path


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    path = tmp_path_factory.mktemp("region") / "region.png"
    cv2.imwrite(str(path), slide_image(np.random.default_rng(0), 160, 200, (30, 40, 100, 120))[:, :, ::-1])
    return path


def test_a_torch_export_adopted_with_a_class_map_runs_in_info_and_infer(torch_model, region, tmp_path):
    adopted = tmp_path / "adopted.onnx"
    result = _cervrt("adopt", torch_model, "--classes", "background,lsil,hsil", "--mean", MEAN, "--std", STD,
                     "--mpp", "0.904", "--patch", "64", "--output", "logits",
                     "--class-map", "background=background,lsil=CIN 1,hsil=CIN 3", "-o", adopted)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"adopted {torch_model} -> {adopted}: 5 classes") and "softmax" in result.stdout
    info = _cervrt("info", adopted)
    assert info.returncode == 0 and "Traceback" not in info.stderr, info.stderr
    for text in ("patch", "64", "mean", "0.5", "std", "0.25", "float32"):
        assert text in info.stdout, (text, info.stdout)
    out = tmp_path / "out"
    run = _cervrt("infer", "--engine", adopted, region, "--out", out, "--device", "cpu", "--tissue-threshold", "0")
    assert run.returncode == 0, run.stderr
    report = json.loads((out / "region.json").read_text())
    assert report["model"]["arch"] == "adopted" and list(report["classes"]) == list(report["model"]["classes"])
    labels = cv2.imread(str(out / "region.mask.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (160, 200) and set(np.unique(labels)) <= {0, 2, 4}  # mapped classes only


def test_logits_declared_as_probabilities_are_refused_by_adopt(torch_model, tmp_path):
    line = _one_error_line(_cervrt("adopt", torch_model, "--classes", "background,lsil,hsil", "--mpp", "0.904",
                                   "--patch", "64", "-o", tmp_path / "adopted.onnx"))
    assert "look like logits; pass --output logits" in line
    assert not list(tmp_path.iterdir())


def test_adopt_without_classes_is_a_usage_error(torch_model, tmp_path):
    result = _cervrt("adopt", torch_model, "--mpp", "0.904", "--patch", "64", "-o", tmp_path / "a.onnx")
    assert result.returncode == 2 and "--classes" in result.stderr and "Traceback" not in result.stderr


def test_info_on_a_foreign_model_is_one_line(torch_model):
    line = _one_error_line(_cervrt("info", torch_model))
    assert "no cervrt metadata" in line and "cervrt adopt" in line


def test_the_runtime_refuses_logits_behind_hand_written_metadata(tmp_path, region):
    model = foreign_model()  # logits, 5 classes, input pixel_values
    attach_metadata(model, {**tiny_metadata(), "input": "pixel_values", "outputs": ["logits"]})
    path = tmp_path / "by_hand.onnx"
    onnx.save(model, path)
    line = _one_error_line(_cervrt("infer", "--engine", path, region, "--out", tmp_path / "out", "--device", "cpu"))
    assert "look like logits" in line
    assert not list((tmp_path / "out").glob("region*"))  # the slide's outputs: none (the run record may be there)


def test_the_runtime_takes_a_cervrt_export(tmp_path, region):
    path = save_tiny_model(tmp_path / "tiny.onnx")
    assert _cervrt("infer", "--engine", path, region, "--out", tmp_path / "out", "--device", "cpu").returncode == 0
