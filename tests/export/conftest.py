"""Fixtures for the export tests: one small HSP-Net ResNet-34 checkpoint (64 px patches) per session."""

from __future__ import annotations

from pathlib import Path

import pytest


def save_tiny_checkpoint(path: Path, arch: str = "hspnet", patch_size: int = 64) -> Path:
    """An untrained ``arch`` ResNet-34 checkpoint with ``patch_size`` patches (seeded: same weights each run)."""
    import torch

    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, encoder="resnet34")
    save_checkpoint(path, build_checkpoint(model, arch, {"encoder": "resnet34"}, patch_size=patch_size))
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "hspnet.pt")
