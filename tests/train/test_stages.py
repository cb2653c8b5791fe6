"""Training stages: the plan, freezing, classification metrics, and the weak pipeline end to end on tiny data."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from cervrt.checkpoint import load_checkpoint
from cervrt.errors import CervrtError
from cervrt.models import create_model
from cervrt.synth import write_dataset
from cervrt.train.loop import TrainConfig, train
from cervrt.train.pseudo_label import PseudoLabelConfig, pseudo_label, read_pseudo_labels
from cervrt.train.stages import (
    Stage,
    classification_metrics,
    freeze_for,
    plan_stages,
    stage_epochs,
    stage_out,
    train_mode,
)


def test_plan_stages():
    assert plan_stages("classifier", None, None) == (Stage.CLASSIFY,)
    assert plan_stages("classifier", "s_p.csv", None) == (Stage.CLASSIFY,)
    assert plan_stages("hspnet", None, None) == (Stage.FULL,)
    assert plan_stages("ensemble_a", None, None) == (Stage.FULL,)
    assert plan_stages("ensemble_a", "s_p.csv", None) == (Stage.CLASSIFY, Stage.SEGMENT)
    assert plan_stages("ensemble_a", None, 3) == (Stage.CLASSIFY, Stage.SEGMENT)
    with pytest.raises(CervrtError, match="hspnet has no patch classifier"):
        plan_stages("hspnet", "s_p.csv", None)
    with pytest.raises(CervrtError, match="use epochs for a classifier"):
        plan_stages("classifier", None, 3)
    assert plan_stages("wsss_seg", "s_p.csv", None) == (Stage.CLASSIFY, Stage.SEGMENT)


def test_an_architecture_another_command_trains_is_refused_naming_that_command(tmp_path):
    with pytest.raises(CervrtError, match=r"^wsss_cls is trained by `cervrt wsss train-cls`, not `cervrt train`$"):
        plan_stages("wsss_cls", None, None)
    (tmp_path / "data").mkdir()
    result = subprocess.run([sys.executable, "-m", "cervrt", "train", "--arch", "wsss_cls", "--data",
                             str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, check=False)
    assert result.returncode != 0 and result.stderr.strip().splitlines() == [
        "error: wsss_cls is trained by `cervrt wsss train-cls`, not `cervrt train`"]
    assert not (tmp_path / "run").exists()


def test_two_stage_epochs_and_directories():
    config = TrainConfig(data="d", out="run", arch="ensemble_a", epochs=2, cls_epochs=5)
    assert [stage_epochs(config, s) for s in (Stage.CLASSIFY, Stage.SEGMENT)] == [5, 2]
    assert [stage_out(config, s).as_posix() for s in (Stage.CLASSIFY, Stage.SEGMENT)] == ["run/stage1", "run"]
    single = TrainConfig(data="d", out="run", arch="classifier", epochs=2)
    assert stage_epochs(single, Stage.CLASSIFY) == 2 and stage_out(single, Stage.CLASSIFY).as_posix() == "run"


def test_segment_stage_freezes_encoder_and_classifier_with_their_batchnorm():
    model = create_model("ensemble_a", encoder="resnet34")
    freeze_for(model, Stage.SEGMENT)
    train_mode(model, Stage.SEGMENT)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not any(p.requires_grad for p in model.assist.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters()) and model.decoder.training
    assert not model.encoder.training and not model.encoder.bn1.training


class _Fixed(nn.Module):
    """Predicts class 0 for every patch."""

    def classify(self, images):
        return torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(len(images), 1)


def test_classification_metrics_on_a_fixed_prediction():
    items = [(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.long), torch.tensor(label)) for label in (0, 0, 1)]
    metrics = classification_metrics(_Fixed(), items, torch.device("cpu"), batch_size=2)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["balanced_accuracy"] == pytest.approx(0.5)
    assert metrics["recall"] == [1.0, 0.0, None, None] and metrics["confusion"][1][0] == 1


@pytest.fixture(scope="module")
def weak_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("weak")
    write_dataset(root, regions=3, size=96, seed=3, weak_regions=3, progress=False)
    return root


def _same(a, b, prefix):
    return all(torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_classifier_pseudo_labels_and_two_stage_ensemble_end_to_end(weak_dataset, tmp_path):
    common = {"data": str(weak_dataset), "encoder": "resnet34", "batch_size": 4, "patch_size": 64, "stride": 32,
              "val_fraction": 0.34, "lr": 0.002, "device": "cpu"}
    m = train(TrainConfig(out=str(tmp_path / "m"), arch="classifier", epochs=1, **common), log=lambda _: None)
    assert m.score_key == "balanced_accuracy" and not math.isnan(m.best_metrics["balanced_accuracy"])
    assert load_checkpoint(tmp_path / "m" / "best.pt")["stage"] == "classify"

    summary = pseudo_label(PseudoLabelConfig(str(tmp_path / "m" / "best.pt"), str(weak_dataset / "weak"),
                                             str(weak_dataset / "weak" / "labels.csv"), str(tmp_path / "pl"),
                                             np_total=40, keep=50, stride=32, device="cpu"), progress=False)
    patches = read_pseudo_labels(tmp_path / "pl" / "pseudo.csv")
    assert len(patches) == summary["total_kept"] > 0
    assert all(math.ceil(summary["s_p"][k] / 2) == n for k, n in summary["kept"].items())
    assert json.loads((tmp_path / "pl" / "pseudo.json").read_text())["patch_size"] == 64

    run = tmp_path / "ens"
    result = train(TrainConfig(out=str(run), arch="ensemble_a", epochs=1, cls_epochs=1, loss="ce", **common,
                               pseudo_labels=str(tmp_path / "pl" / "pseudo.csv"), weak_data=str(weak_dataset / "weak")),
                   log=lambda _: None)
    assert result.out == run and result.score_key == "dice"
    first, second = load_checkpoint(run / "stage1" / "best.pt"), load_checkpoint(run / "last.pt")
    assert (first["stage"], second["stage"]) == ("classify", "segment")
    assert _same(first["state_dict"], second["state_dict"], "encoder.")  # frozen in stage 2
    assert _same(first["state_dict"], second["state_dict"], "assist.")
    assert not _same(first["state_dict"], second["state_dict"], "decoder.")

    resumed = train(resume=str(run / "last.pt"), overrides={"epochs": 2}, log=lambda _: None)
    assert resumed.epochs_run == 1 and load_checkpoint(run / "last.pt")["epoch"] == 2
