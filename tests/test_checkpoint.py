"""Checkpoints load with weights_only; malicious, truncated and foreign files are refused clearly."""

from __future__ import annotations

import os

import pytest
import torch

from cervrt.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from cervrt.errors import CervrtError
from cervrt.models import create_model, model_from_checkpoint


class _SideEffect:
    """Unpickling this runs os.system: a stranger's 'checkpoint' must never get that far."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("hspnet", encoder="resnet34")
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, build_checkpoint(model, "hspnet", {"encoder": "resnet34"}, patch_size=128, epoch=3))
    return path, model


def test_checkpoint_is_plain_for_weights_only_load(tiny_checkpoint):
    path, _ = tiny_checkpoint
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "hspnet" and raw["arch_kwargs"] == {"encoder": "resnet34"}
    assert raw["class_names"] == ["background", "normal", "CIN 1", "CIN 2", "CIN 3"]
    assert raw["palette"][4] == [255, 0, 0]
    assert raw["patch_size"] == 128 and raw["mpp"] == pytest.approx(0.904) and raw["epoch"] == 3


def test_model_round_trips(tiny_checkpoint):
    path, model = tiny_checkpoint
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model.eval()(x))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "cervrt.checkpoint", "payload": _SideEffect(str(marker))}, path)
    with pytest.raises(CervrtError, match=r"refused: .*posix\.system.*could run code"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "is empty"),
        (b"this is not a checkpoint", r"not a readable PyTorch file \(truncated or corrupt\?\)$"),
        (bytes(range(256)) * 8, r"not a readable PyTorch file \(truncated or corrupt\?\)$"),  # not "refused"
    ],
)
def test_garbage_files_are_refused(tmp_path, content, fragment):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CervrtError, match=fragment):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CervrtError, match="truncated or corrupt"):
        load_checkpoint(cut)


def test_missing_file_and_foreign_state_dict(tmp_path):
    with pytest.raises(CervrtError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    plain = tmp_path / "plain.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(CervrtError, match="not a cervrt checkpoint"):
        load_checkpoint(plain)


def test_weights_of_another_architecture_are_refused(tiny_checkpoint):
    path, _ = tiny_checkpoint
    ckpt = load_checkpoint(path)
    ckpt["arch_kwargs"] = {"encoder": "resnet101"}
    with pytest.raises(CervrtError, match="do not fit hspnet"):
        model_from_checkpoint(ckpt)


def test_save_is_atomic(tiny_checkpoint, tmp_path, monkeypatch):
    path, _model = tiny_checkpoint
    target = tmp_path / "last.pt"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError):
        save_checkpoint(target, {"format": "cervrt.checkpoint"})
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
