"""Fixtures for the engine tests: tiny cervrt ONNX graphs (no torch) and a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from cervrt.artifact import attach_metadata
from tests.support.onnx_graphs import segmentation_graph

ONNX_META = {"format": "cervrt.onnx", "arch": "hspnet", "arch_kwargs": {"encoder": "resnet34"},
             "class_names": ["background", "normal", "CIN 1", "CIN 2", "CIN 3"],
             "palette": [[0, 0, 0], [255, 255, 255], [0, 255, 0], [0, 0, 255], [255, 0, 0]],
             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "mpp": 0.904, "patch_size": 64,
             "precision": "fp32", "io_dtype": "float32", "opset": 18, "input": "image", "outputs": ["probs"],
             "has_classifier": False}


def save_graph(directory: Path, *, with_classifier: bool = False, metadata: dict | None = None,
               name: str = "tiny.onnx", model: onnx.ModelProto | None = None) -> Path:
    """The tiny segmentation graph with cervrt metadata (``metadata={}`` for none at all)."""
    model = model or segmentation_graph(with_classifier)
    if metadata is None:
        outputs = ["probs", "class_probs"] if with_classifier else ["probs"]
        metadata = {**ONNX_META, "outputs": outputs, "has_classifier": with_classifier}
    if metadata:
        attach_metadata(model, metadata)
    path = directory / name
    onnx.save(model, path)
    return path


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return save_graph(tmp_path)


@pytest.fixture
def tiny_onnx_classifier(tmp_path) -> Path:
    return save_graph(tmp_path, with_classifier=True, name="tiny_cls.onnx")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tests.support.tiny_models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("engines_ckpt") / "hspnet.pt")
