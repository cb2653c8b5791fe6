"""Fixtures for the export tests: one small HSP-Net ResNet-34 checkpoint (64 px patches) per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "hspnet.pt")
