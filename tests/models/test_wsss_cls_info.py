"""The WSSS phase-1 classifier is registered: ``cervrt info cls/last.pt`` describes it."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from cervrt.checkpoint import build_checkpoint, save_checkpoint
from cervrt.model_info import checkpoint_info
from cervrt.models import create_model, model_from_checkpoint
from cervrt.models.wsss import WSSSClassifier


def _save(path):
    torch.manual_seed(0)
    model = WSSSClassifier("resnet34")
    save_checkpoint(path, build_checkpoint(model, "wsss_cls", {"encoder": "resnet34"}, patch_size=64, epoch=3))
    return model


def test_info_describes_a_phase1_classifier_checkpoint(tmp_path):
    model = _save(tmp_path / "last.pt")
    info = checkpoint_info(tmp_path / "last.pt")
    assert info["arch"] == "wsss_cls" and info["arch_kwargs"] == {"encoder": "resnet34"} and info["epoch"] == 3
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["macs_384"] > info["macs_patch"] > 0


def test_the_cli_info_command_reads_it(tmp_path):
    _save(tmp_path / "last.pt")
    result = subprocess.run([sys.executable, "-m", "cervrt", "info", str(tmp_path / "last.pt"), "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["arch"] == "wsss_cls"


def test_it_rebuilds_from_its_checkpoint_with_the_same_logits(tmp_path):
    from cervrt.checkpoint import load_checkpoint

    model = _save(tmp_path / "last.pt").eval()
    rebuilt = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))
    assert isinstance(create_model("wsss_cls"), WSSSClassifier)


def test_its_spec_says_which_command_trains_it():
    from cervrt.models import get_spec

    assert get_spec("wsss_cls").trained_by == "wsss train-cls" and get_spec("wsss_cls").is_classifier
    assert {get_spec(n).trained_by for n in ("hspnet", "ensemble_a", "classifier", "wsss_seg")} == {"train"}
