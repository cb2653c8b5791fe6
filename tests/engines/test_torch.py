"""The torch engine: a checkpoint's model run as it would be in torch, described like its ONNX export."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.engines import open_engine
from cervrt.errors import CervrtError

torch = pytest.importorskip("torch")


def _batch(n, h=64, w=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, h, w), dtype=np.float32)


@pytest.fixture(scope="module")
def torch_engine(tiny_checkpoint):
    with open_engine(tiny_checkpoint, "cpu") as engine:
        yield engine


def test_runs_the_models_predict_proba(torch_engine, tiny_checkpoint):
    from cervrt.checkpoint import load_checkpoint
    from cervrt.models import model_from_checkpoint

    batch = _batch(2, 64, 96)
    out = torch_engine.run(batch)
    with torch.no_grad():
        expected, _ = model_from_checkpoint(load_checkpoint(tiny_checkpoint)).predict_proba(torch.from_numpy(batch))
    np.testing.assert_allclose(out.probs, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert out.probs.shape == (2, 5, 64, 96) and out.class_probs is None and out.probs.dtype == np.float32


def test_metadata_is_built_like_the_exporters(torch_engine):
    meta = torch_engine.metadata
    assert (torch_engine.kind, torch_engine.provider, torch_engine.device) == ("torch", "torch", "cpu")
    assert torch_engine.precision == "fp32" and not torch_engine.thread_safe and torch_engine.max_batch is None
    assert meta["arch"] == "hspnet" and meta["arch_kwargs"] == {"encoder": "resnet34"} and meta["patch_size"] == 64
    assert meta["params"] > 1e6 and meta["macs_384"] > meta["macs_patch"] > 0
    assert meta["outputs"] == ["probs"] and meta["input"] == "image" and meta["has_classifier"] is False
    assert torch_engine.gate_epsilon is None and torch_engine.class_names[0] == "background"
    assert torch_engine.mean == pytest.approx((0.485, 0.456, 0.406)) and torch_engine.mpp == pytest.approx(0.904)


def test_a_gate_epsilon_in_the_checkpoint_reaches_the_metadata(torch_engine, tiny_checkpoint):
    from cervrt.checkpoint import load_checkpoint
    from cervrt.engines.torch import checkpoint_metadata

    checkpoint = {**load_checkpoint(tiny_checkpoint), "gate_epsilon": 0.1}
    metadata = checkpoint_metadata(checkpoint, torch_engine._model, tiny_checkpoint)
    assert metadata["gate_epsilon"] == 0.1 and metadata["source_checkpoint"] == "hspnet.pt"


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CervrtError, match=r"device cuda:1 was asked for but (this torch is a CPU build|torch sees no)"):
        open_engine(tiny_checkpoint, "cuda:1")


@pytest.mark.parametrize(("content", "fragment"), [
    (lambda good: good[: len(good) // 3], "is not a readable PyTorch file"),
    (None, "is not a cervrt checkpoint"),
])
def test_damaged_or_foreign_checkpoints_are_refused(tmp_path, tiny_checkpoint, content, fragment):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"weight": torch.zeros(2)}, path)
    else:
        path.write_bytes(content(tiny_checkpoint.read_bytes()))
    with pytest.raises(CervrtError, match=fragment):
        open_engine(path, "cpu")


def test_bad_batches_are_refused(torch_engine):
    with pytest.raises(CervrtError, match="with 3 RGB channels, got"):
        torch_engine.run(np.zeros((1, 1, 64, 64), np.float32))


@pytest.mark.slow
def test_agrees_with_onnx_runtime_on_its_export(tmp_path, tiny_checkpoint, torch_engine):
    from cervrt.export import ExportConfig, export

    export(ExportConfig(tiny_checkpoint, output=tmp_path / "tiny.onnx"))
    batch = _batch(2, 64, 96, seed=3)
    with open_engine(tmp_path / "tiny.onnx", "cpu") as onnx_engine:
        expected = onnx_engine.run(batch)
        assert {k: onnx_engine.metadata[k] for k in ("params", "macs_384", "macs_patch", "outputs", "class_names")} \
            == {k: torch_engine.metadata[k] for k in ("params", "macs_384", "macs_patch", "outputs", "class_names")}
    out = torch_engine.run(batch)
    np.testing.assert_allclose(out.probs, expected.probs, atol=1e-5)
    assert np.mean(out.probs.argmax(1) == expected.probs.argmax(1)) > 0.9999
