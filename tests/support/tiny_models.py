"""Tiny checkpoints and hand-written artifact metadata for the export, engine and model tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cervrt.artifact import ArtifactMetadata
from cervrt.constants import CLASS_NAMES

__all__ = ["save_tiny_checkpoint", "tiny_metadata"]


def save_tiny_checkpoint(path: Path, arch: str = "hspnet", patch_size: int = 64) -> Path:
    """An untrained ``arch`` ResNet-34 checkpoint with ``patch_size`` patches (seeded: same weights each run)."""
    import torch

    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, encoder="resnet34")
    save_checkpoint(path, build_checkpoint(model, arch, {"encoder": "resnet34"}, patch_size=patch_size))
    return path


def tiny_metadata(**changes: Any) -> ArtifactMetadata:
    """The metadata of a 64 px fp32 HSP-Net ResNet-34 ONNX file; ``changes`` override any key."""
    base = ArtifactMetadata(
        format="cervrt.onnx", arch="hspnet", arch_kwargs={"encoder": "resnet34"}, class_names=list(CLASS_NAMES),
        palette=[[0, 0, 0]] * 5, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], mpp=0.904,
        patch_size=64, precision="fp32", opset=18, input="image", outputs=["probs"], params=123, macs_384=4560,
        macs_patch=789)
    return base.replace(**changes)
