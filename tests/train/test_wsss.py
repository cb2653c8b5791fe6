"""WSSS: the PDA schedule and dropout, Grad-CAM, pseudo masks, the multi-layer loss, the gate, and the
three stages end to end on tiny synthetic data (64 px patches, one epoch each)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cervrt.checkpoint import build_checkpoint, describe, load_checkpoint
from cervrt.cli import cli
from cervrt.errors import CervrtError
from cervrt.glass import GlassThreshold
from cervrt.models import create_model, model_from_checkpoint
from cervrt.models.wsss import PDASchedule, WSSSClassifier, apply_gate, dropout_attention
from cervrt.train.wsss import MultiLayerPseudoLoss, grad_cams, pseudo_mask
from cervrt.train.wsss.cam import normalise_cams
from cervrt.train.wsss.data import patch_labels

# --- progressive dropout attention --------------------------------------------------------------


def test_pda_schedule_is_off_for_three_epochs_then_decays_to_the_floor():
    schedule = PDASchedule()
    assert [schedule.mu(e) for e in (1, 2, 3)] == [None, None, None]
    assert schedule.mu(4) == pytest.approx(0.98)
    assert schedule.mu(5) == pytest.approx(0.98**2)
    assert schedule.mu(24) == pytest.approx(0.98**21)  # 0.654, still above the floor
    assert schedule.mu(25) == 0.65 and schedule.mu(100) == 0.65
    assert PDASchedule(decay=0.985).mu(6) == pytest.approx(0.985**3)


@pytest.mark.parametrize("kwargs", [{"decay": 0.0}, {"floor": 1.5}, {"start_epoch": 0}])
def test_pda_schedule_refuses_bad_settings(kwargs):
    with pytest.raises(CervrtError):
        PDASchedule(**kwargs)


def _hand_features() -> torch.Tensor:
    c0 = [[1.0, 2.0], [3.0, 4.0]]
    c1 = [[4.0, 0.0], [2.0, -1.0]]
    return torch.tensor([[c0, c1]])  # (1, 2, 2, 2)


def test_dropout_attention_on_a_hand_made_map():
    weight = torch.eye(2).view(2, 2, 1, 1)  # class k reads channel k
    out = dropout_attention(_hand_features(), weight, mu=0.7)
    # CAM0 [[1,2],[3,4]] drops > 2.8 -> [[1,2],[0,0]]; CAM1 relu [[4,0],[2,0]] drops > 2.8 -> [[0,0],[2,0]]
    attention = torch.tensor([[0.5, 1.0], [1.0, 0.0]])
    assert torch.equal(out, _hand_features() * attention)
    assert torch.equal(out[0, 0], torch.tensor([[0.5, 2.0], [3.0, 0.0]]))


def test_pda_acts_in_training_only():
    torch.manual_seed(0)
    model = WSSSClassifier("resnet34")
    last = torch.rand(2, 512, 4, 4)
    plain = model.head(last)
    model.set_pda(0.7)
    model.train()
    assert not torch.allclose(model.head(last), plain)
    model.eval()
    assert torch.equal(model.head(last), plain)
    with pytest.raises(CervrtError):
        model.set_pda(0.0)


# --- Grad-CAM and pseudo masks ------------------------------------------------------------------


def test_grad_cam_on_a_hand_made_network():
    a = torch.tensor([[[[1.0, 2.0], [3.0, -2.0]], [[2.0, 0.0], [1.0, 1.0]]]], requires_grad=True)
    logits = torch.stack([(a[:, 0] * a[:, 1]).mean(dim=(1, 2)), 2 * a[:, 0].mean(dim=(1, 2))], dim=1)
    (cams,) = grad_cams([a], logits)
    # logit 0: weights (mean A1 / 4, mean A0 / 4) = (0.25, 0.25) -> relu(0.25 (A0 + A1))
    assert torch.allclose(cams[0, 0], torch.tensor([[0.75, 0.5], [1.0, 0.0]]))
    # logit 1: weights (0.5, 0) -> relu(0.5 A0)
    assert torch.allclose(cams[0, 1], torch.tensor([[0.5, 1.0], [1.5, 0.0]]))


def test_grad_cam_of_the_last_layer_is_the_class_activation_map():
    torch.manual_seed(0)
    model = WSSSClassifier("resnet34").eval()
    feats = model.features(torch.randn(2, 3, 64, 64))
    last = feats["layer4"]
    (cams,) = grad_cams([last], model.head(last))
    cam = F.relu(torch.einsum("nchw,kc->nkhw", last, model.fc.weight.flatten(1))) / (last.shape[2] * last.shape[3])
    assert torch.allclose(cams, cam, atol=1e-6)


def test_normalise_cams_spans_zero_to_one_and_flat_maps_are_zero():
    cams = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = normalise_cams(cams, 2)
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


def test_pseudo_mask_zeroes_absent_classes_and_sets_background():
    scores = np.zeros((4, 1, 4), np.float32)
    scores[0] = [0.9, 0.1, 0.2, 0.8]  # normal
    scores[1] = [1.0, 1.0, 1.0, 1.0]  # CIN 1: absent from the labels, ignored
    scores[2] = [0.5, 0.2, 0.6, 0.7]  # CIN 2
    glass = np.array([[False, False, False, True]])
    mask = pseudo_mask(scores, (1, 3), glass, bg_threshold=0.3)
    assert mask.tolist() == [[1, 0, 3, 0]]


def test_patch_labels_need_a_minimum_share():
    mask = np.zeros((10, 10), np.uint8)
    mask[:5] = 2
    mask[9, 9] = 4
    assert patch_labels(mask, 0.01) == (2, 4)
    assert patch_labels(mask, 0.02) == (2,)


def test_glass_is_bright_and_unsaturated():
    rgb = np.array([[[240, 240, 238], [235, 180, 210], [120, 80, 150], [205, 205, 205]]], np.uint8)
    assert GlassThreshold().glass(rgb).tolist() == [[True, False, False, True]]


# --- phase 2 loss and the gate ------------------------------------------------------------------


def test_multi_layer_loss_against_a_hand_computed_value():
    from cervrt.train.losses import build_loss

    logits = torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0]).view(1, 5, 1, 1)
    targets = torch.tensor([0, 1, 0]).view(1, 3, 1, 1)
    loss = MultiLayerPseudoLoss(build_loss("ce"))(logits, targets)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 4))
    ce1 = -math.log(1 / (math.exp(2) + 4))
    assert float(loss) == pytest.approx(0.2 * ce0 + 0.2 * ce1 + 0.6 * ce0, rel=1e-6)
    with pytest.raises(CervrtError, match="one per layer"):
        MultiLayerPseudoLoss(build_loss("ce"))(logits, targets[:, :2])


def test_gate_zeroes_channels_at_or_below_epsilon():
    probs = torch.full((1, 5, 1, 1), 0.2)
    class_probs = torch.tensor([[0.05, 0.1, 0.11, 0.9]])
    gated = apply_gate(probs, class_probs, 0.1).flatten().tolist()
    assert gated == pytest.approx([0.2, 0.0, 0.0, 0.2, 0.2])


def test_wsss_seg_returns_segmentation_probs_unchanged_and_sigmoid_class_probs():
    torch.manual_seed(0)
    model = create_model("wsss_seg", encoder="resnet34", cls_encoder="resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        probs, class_probs = model.predict_proba(x)
        assert torch.allclose(probs, torch.softmax(model.segmenter(x), dim=1))
        assert torch.allclose(class_probs, torch.sigmoid(model.classifier(x)))
    assert class_probs.shape == (1, 4)


def test_gated_wsss_model_applies_the_checkpoint_epsilon():
    from cervrt.train.wsss import gated

    torch.manual_seed(0)
    kwargs = {"encoder": "resnet34", "cls_encoder": "resnet34"}
    ckpt = build_checkpoint(create_model("wsss_seg", **kwargs), "wsss_seg", kwargs, gate_epsilon=0.5)
    model, wrapped = model_from_checkpoint(ckpt), gated(ckpt)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        probs, class_probs = model.predict_proba(x)
        gated_probs, _ = wrapped.predict_proba(x)
    assert torch.equal(gated_probs, apply_gate(probs, class_probs, 0.5))
    with pytest.raises(CervrtError, match="wsss_seg"):
        gated(build_checkpoint(create_model("hspnet", encoder="resnet34"), "hspnet", {"encoder": "resnet34"}))


def test_gate_epsilon_is_described_only_when_the_checkpoint_has_one():
    torch.manual_seed(0)
    model = create_model("ensemble_a", encoder="resnet34")
    assert "gate_epsilon" not in describe(build_checkpoint(model, "ensemble_a", {"encoder": "resnet34"}))
    gated = build_checkpoint(model, "ensemble_a", {"encoder": "resnet34"}, gate_epsilon=0.1)
    assert describe(gated)["gate_epsilon"] == 0.1


# --- the three stages end to end ----------------------------------------------------------------


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def wsss_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsss")
    data, cls, pm, seg = (str(root / n) for n in ("data", "cls", "pm", "seg"))
    _invoke(["synth", "--out", data, "--regions", "1", "--weak", "3", "--size", "64", "--seed", "3"])
    weak = ["--data", f"{data}/weak", "--labels", f"{data}/weak/labels.csv"]
    _invoke(["wsss", "train-cls", *weak, "--out", cls, "--epochs", "1", "--patch-size", "64", "--stride", "64",
             "--batch-size", "4", "--device", "cpu"])
    first = _invoke(["wsss", "pseudo-masks", "--classifier", f"{cls}/last.pt", *weak, "--out", pm, "--device", "cpu"])
    _invoke(["wsss", "train-seg", "--pseudo", pm, "--classifier", f"{cls}/last.pt", "--out", seg, "--epochs", "1",
             "--batch-size", "4", "--device", "cpu"])
    return root, first


def test_end_to_end_writes_every_stage_and_a_gated_artifact(wsss_run):
    root, first = wsss_run
    names = sorted(p.name for p in (root / "pm" / "images").iterdir())
    assert names == ["weak_0000_y00000_x00000.png", "weak_0001_y00000_x00000.png", "weak_0002_y00000_x00000.png"]
    for sub in ("masks_layer2", "masks_layer3", "masks", "masks_fused"):
        assert sorted(p.name for p in (root / "pm" / sub).iterdir()) == names
    assert "layer4  against the true masks: mIoU" in first  # weak/masks of the synthetic set are the truth
    ckpt = load_checkpoint(root / "seg" / "wsss_seg.pt")
    assert ckpt["arch"] == "wsss_seg" and ckpt["gate_epsilon"] == 0.1
    model = model_from_checkpoint(ckpt)
    assert model.has_classifier and model.classifier.pda_mu is None


def test_rerunning_each_stage_continues_instead_of_starting_over(wsss_run):
    root, _ = wsss_run
    data = root / "data" / "weak"
    weak = ["--data", str(data), "--labels", str(data / "labels.csv")]
    again = _invoke(["wsss", "train-cls", *weak, "--out", str(root / "cls"), "--epochs", "1", "--device", "cpu"])
    assert "nothing to do" in again
    again = _invoke(["wsss", "pseudo-masks", "--classifier", str(root / "cls" / "last.pt"), *weak,
                     "--out", str(root / "pm"), "--device", "cpu"])
    assert "(3 already written)" in again
    again = _invoke(["wsss", "train-seg", "--pseudo", str(root / "pm"), "--classifier", str(root / "cls" / "last.pt"),
                     "--out", str(root / "seg"), "--epochs", "1", "--device", "cpu"])
    assert "assembling the artifact only" in again


def test_a_moved_classifier_run_continues_where_it_now_is(wsss_run, tmp_path):
    import shutil

    from cervrt.train.wsss import ClassifierConfig, train_classifier

    root, _ = wsss_run
    moved = tmp_path / "moved"
    shutil.copytree(root / "cls", moved)
    data = root / "data" / "weak"
    done = train_classifier(ClassifierConfig(data=str(data), labels=str(data / "labels.csv"), out=str(moved),
                                             epochs=1, device="cpu"), log=lambda _: None)
    assert done == moved / "last.pt"  # not the directory the checkpoint was first written in


def test_cam_scorer_gives_the_classifier_probabilities_and_the_cams_the_masks_were_written_from(wsss_run):
    from cervrt.train.data import read_image, read_mask, read_weak_labels
    from cervrt.train.tensors import to_model_input
    from cervrt.train.wsss.cam import CamScorer, fuse_layers
    from cervrt.train.wsss.classify import classifier_from_checkpoint

    root, _ = wsss_run
    ckpt = load_checkpoint(root / "cls" / "last.pt")
    name = "weak_0001_y00000_x00000.png"
    rgb = read_image(root / "pm" / "images" / name)
    layer_scores, probs = CamScorer(ckpt, "cpu").scores(rgb[None])
    with torch.no_grad():
        logits = classifier_from_checkpoint(ckpt)(to_model_input(rgb[None], ckpt["mean"], ckpt["std"], "cpu"))
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), rtol=1e-5, atol=1e-6)
    assert [s.shape for s in layer_scores] == [(1, 4, 64, 64)] * 3
    labels = sorted(read_weak_labels(root / "data" / "weak" / "labels.csv")["weak_0001"])
    glass = GlassThreshold().glass(rgb)
    written = read_mask(root / "pm" / "masks_fused" / name)
    np.testing.assert_array_equal(pseudo_mask(fuse_layers(layer_scores)[0], labels, glass, 0.0), written)


def test_a_collapsed_phase_1_stops_with_a_clear_error(wsss_run, tmp_path, monkeypatch):
    from cervrt.train.wsss import ClassifierConfig, classify, train_classifier

    class Dead(classify.WSSSClassifier):  # the state PDA at too high an lr ends in: every logit 0
        def forward(self, x):
            return super().forward(x) * 0.0

    monkeypatch.setattr(classify, "WSSSClassifier", Dead)
    root, _ = wsss_run
    config = ClassifierConfig(data=str(root / "data" / "weak"), labels=str(root / "data" / "weak" / "labels.csv"),
                              out=str(tmp_path / "cls"), epochs=2, batch_size=4, patch_size=64, stride=64,
                              device="cpu")
    with pytest.raises(CervrtError, match=r"phase 1 collapsed in epoch 1: every output is 0 .*--head-lr-mult 1"):
        train_classifier(config, log=lambda _: None)
    assert not (tmp_path / "cls" / "last.pt").exists()


def test_classifier_refuses_a_non_positive_head_lr_mult():
    from cervrt.train.wsss import ClassifierConfig

    with pytest.raises(CervrtError, match="head-lr-mult must be positive"):
        ClassifierConfig(data="d", out="o", head_lr_mult=0.0).check()


def test_labels_of_pixel_annotated_data_come_from_the_masks(wsss_run):
    from cervrt.train.wsss.data import load_weak_source

    root, _ = wsss_run
    source = load_weak_source(root / "data", None, patch=32, stride=16, min_foreground=0.2, label_min_share=0.05)
    assert source.samples
    for sample in source.samples:
        assert sample.labels == patch_labels(source.truth(sample), 0.05)
        assert source.crop(sample).shape == (32, 32, 3)
        assert sample.multi_hot().tolist() == [float(c in sample.labels) for c in (1, 2, 3, 4)]


def test_train_seg_refuses_a_checkpoint_that_is_not_a_wsss_classifier(wsss_run, tmp_path):
    root, _ = wsss_run
    result = CliRunner().invoke(cli, ["wsss", "train-seg", "--pseudo", str(root / "pm"), "--classifier",
                                      str(root / "seg" / "wsss_seg.pt"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "is not a WSSS phase-1 classifier" in result.output


# --- export ---------------------------------------------------------------------------------------


def test_export_of_the_wsss_model_carries_class_probs_and_the_gate(tmp_path):
    from cervrt.checkpoint import save_checkpoint
    from cervrt.export import ExportConfig, export, read_metadata
    from cervrt.export.parity import ort_session, run_session

    torch.manual_seed(0)
    kwargs = {"encoder": "resnet34", "cls_encoder": "resnet34"}
    model = create_model("wsss_seg", **kwargs).eval()
    path = tmp_path / "wsss_seg.pt"
    save_checkpoint(path, build_checkpoint(model, "wsss_seg", kwargs, patch_size=64, gate_epsilon=0.1))
    export(ExportConfig(path, output=tmp_path / "wsss_seg.onnx"))
    meta = read_metadata(tmp_path / "wsss_seg.onnx")
    assert meta["gate_epsilon"] == 0.1 and meta["has_classifier"] is True
    assert meta["outputs"] == ["probs", "class_probs"]
    x = torch.randn(1, 3, 64, 64)
    outputs = run_session(ort_session(tmp_path / "wsss_seg.onnx"), x.numpy())
    with torch.no_grad():
        expected = torch.sigmoid(model.classifier(x)).numpy()
    assert np.allclose(outputs[1], expected, atol=1e-4)
