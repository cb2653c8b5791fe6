"""A tiny end-to-end training run: the loss falls, the run resumes from last.pt, and evaluates."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cervrt._io import nan_to_none
from cervrt.checkpoint import load_checkpoint
from cervrt.errors import CervrtError
from cervrt.synth import write_dataset
from cervrt.train.evaluate import evaluate_checkpoint
from cervrt.train.loop import TrainConfig, train


def _no_constants(name: str) -> None:
    raise AssertionError(f"eval.json holds {name}: not strict JSON")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, regions=3, size=128, seed=3, progress=False)
    return root


def test_tiny_run_lowers_the_loss_resumes_and_evaluates(dataset, tmp_path):
    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), arch="hspnet", encoder="resnet34", epochs=4,
                         batch_size=4, loss="ce", lr=0.002, patch_size=64, stride=32, val_fraction=0.34, seed=0)
    first = train(config, log=lambda _: None)
    losses = [e["train_loss"] for e in first.history]
    assert losses[-1] < losses[0]
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 4

    resumed = train(resume=str(tmp_path / "run" / "last.pt"), overrides={"epochs": 5}, log=lambda _: None)
    assert resumed.epochs_run == 1 and [e["epoch"] for e in resumed.history] == [1, 2, 3, 4, 5]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 5

    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", dataset, stride=32, echo=lambda _: None,
                                 json_out=tmp_path / "eval.json")
    assert result["metrics"]["pixels"] > 0 and not math.isnan(result["metrics"]["ap"])
    strict = json.loads((tmp_path / "eval.json").read_text(), parse_constant=_no_constants)
    assert strict["metrics"] == json.loads(json.dumps(nan_to_none(result["metrics"])))
    absent = [name for name, d in result["metrics"]["dice_per_class"].items() if math.isnan(d)]
    assert [strict["metrics"]["dice_per_class"][name] for name in absent] == [None] * len(absent)


def test_resume_of_a_finished_run_says_what_to_do(dataset, tmp_path):
    config = TrainConfig(data=str(dataset), out=str(tmp_path / "run"), encoder="resnet34", epochs=1, batch_size=4,
                         patch_size=64, stride=64, val_fraction=0.0)
    train(config, log=lambda _: None)
    with pytest.raises(CervrtError, match="resume with epochs > 1"):
        train(resume=str(tmp_path / "run" / "last.pt"), log=lambda _: None)
