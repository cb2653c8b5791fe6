"""A real server on a loopback port around the tiny ONNX model, shared by the HTTP tests of a module."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt._cv import cv2
from tests.support.tiny_onnx import save_tiny_model, slide_image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="package")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("serve-model") / "tiny.onnx")


@pytest.fixture(scope="package")
def region_png(tmp_path_factory):
    """A 200x260 PNG: glass with a block of tissue."""
    path = tmp_path_factory.mktemp("serve-images") / "region.png"
    rgb = slide_image(np.random.default_rng(0), 200, 260, (40, 60, 128, 160))
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def start(tmp_path, model, **settings):
    """A started BackgroundServer (a context manager already entered) and an httpx client for it."""
    from cervrt.serve import BackgroundServer, ServeConfig

    config = ServeConfig(model, port=0, device="cpu", out_dir=tmp_path / "jobs", **settings)
    server = BackgroundServer(config).__enter__()
    return server, httpx.Client(base_url=server.url, timeout=60)
