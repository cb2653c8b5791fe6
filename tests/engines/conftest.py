"""Fixtures for the engine tests: tiny cervrt ONNX graphs (no torch) and a tiny checkpoint."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from cervrt.artifact import attach_metadata
from cervrt.constants import PALETTE
from tests.support.onnx_graphs import segmentation_graph
from tests.support.tiny_models import tiny_metadata

#: The tiny graph's metadata: the tiny HSP-Net's, with the real palette and no parameter or MAC counts.
ONNX_META = tiny_metadata(palette=PALETTE, io_dtype="float32", has_classifier=False, params=None, macs_384=None,
                          macs_patch=None).to_dict()


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
