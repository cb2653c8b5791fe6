"""A tiny cervrt ONNX artifact (no torch): the hand-made segmentation graph with cervrt metadata, patch 64."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from cervrt.artifact import FORMAT_VERSION, ONNX_FORMAT, ArtifactMetadata, attach_metadata
from cervrt.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from tests.support.onnx_graphs import segmentation_graph

PATCH = 64
MPP = 0.904


def tiny_metadata(with_classifier: bool = False, gate_epsilon: float | None = None, patch: int = PATCH) -> dict:
    """The tiny graph's metadata in its on-disk (JSON) form."""
    return ArtifactMetadata(
        format=ONNX_FORMAT, format_version=FORMAT_VERSION, arch="tiny", arch_kwargs={}, class_names=CLASS_NAMES,
        palette=PALETTE, mean=IMAGENET_MEAN, std=IMAGENET_STD, mpp=MPP, patch_size=patch, size_multiple=1,
        params=229, macs_384=3_000_000, macs_patch=1_000_000, precision="fp32", io_dtype="float32", opset=18,
        input="image", outputs=["probs", "class_probs"] if with_classifier else ["probs"],
        has_classifier=with_classifier, gate_epsilon=gate_epsilon).to_dict()


def save_tiny_model(path: Path, with_classifier: bool = False, gate_epsilon: float | None = None,
                    patch: int = PATCH) -> Path:
    """Write the tiny artifact to ``path`` and return it."""
    model = segmentation_graph(with_classifier=with_classifier)
    attach_metadata(model, tiny_metadata(with_classifier, gate_epsilon, patch))
    onnx.save(model, path)
    return path


def tissue_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A pink-and-purple textured image (every pixel tissue-coloured), uint8 RGB."""
    base = np.array([200, 120, 170], dtype=np.float32)
    noise = rng.normal(0.0, 35.0, size=(height, width, 3)).astype(np.float32)
    smooth = np.cumsum(rng.normal(0, 3, size=(height, 1, 1)), axis=0) + np.cumsum(rng.normal(0, 3, size=(1, width, 1)),
                                                                                 axis=1)
    return np.clip(base + noise + smooth, 0, 255).astype(np.uint8)


def slide_image(rng: np.random.Generator, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """White glass with a block of tissue at ``box`` = (y, x, h, w)."""
    image = np.full((height, width, 3), 245, dtype=np.uint8)
    image += rng.integers(0, 8, size=image.shape, dtype=np.uint8)
    y, x, h, w = box
    image[y : y + h, x : x + w] = tissue_image(rng, h, w)
    return image
