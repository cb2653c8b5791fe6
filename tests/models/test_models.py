"""Architectures: shapes, parameter counts against the papers, the registry's errors, encoder names."""

from __future__ import annotations

import pytest
import torch

from cervrt.errors import CervrtError
from cervrt.models import create_model, list_models


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "encoder", "expected", "tolerance"),
    [
        ("hspnet", "resnet101", 68.22e6, 0.005),
        ("deeplabv3plus", "resnet101", 59.34e6, 0.001),
        ("ensemble_a", "resnet101", 59.35e6, 0.0001),
    ],
)
def test_parameter_counts_match_the_papers(name, encoder, expected, tolerance):
    assert _params(_meta(name, encoder=encoder)) == pytest.approx(expected, rel=tolerance)


def test_ensemble_adds_only_the_assisted_block():
    extra = _params(_meta("ensemble_a", encoder="resnet101")) - _params(_meta("deeplabv3plus", encoder="resnet101"))
    assert extra == 2048 * 4 + 4


@pytest.mark.parametrize("name", ["hspnet", "deeplabv3plus", "ensemble_a"])
@pytest.mark.parametrize(("height", "width"), [(64, 96), (96, 64)])
def test_models_map_images_to_five_class_maps(name, height, width):
    torch.manual_seed(0)
    model = create_model(name, encoder="resnet34").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, height, width))
    seg = out[0] if isinstance(out, tuple) else out
    assert seg.shape == (2, 5, height, width)
    assert isinstance(out, tuple) == model.has_classifier
    if model.has_classifier:
        assert out[1].shape == (2, 4)


def test_resnet101_hspnet_forward_shape():
    model = create_model("hspnet", encoder="resnet101").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)


@pytest.mark.parametrize("name", ["hspnet", "ensemble_a"])
def test_predict_proba_is_a_distribution(name):
    torch.manual_seed(0)
    model = create_model(name, encoder="resnet34").eval()
    with torch.no_grad():
        probs, class_probs = model.predict_proba(torch.randn(2, 3, 64, 64))
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)
    assert (class_probs is not None) == model.has_classifier


def test_ensemble_assisted_multiplication_changes_the_argmax_as_specified():
    model = create_model("ensemble_a", encoder="resnet34").eval()
    probs = torch.tensor([0.1, 0.5, 0.4, 0.0, 0.0]).view(1, 5, 1, 1)
    class_logits = torch.tensor([[-10.0, 10.0, 0.0, 0.0]])  # normal suppressed, CIN 1 kept
    fused, class_probs = model.combine(probs, class_logits)
    expected = probs.flatten() * torch.tensor([1.0, *torch.sigmoid(class_logits).flatten()])
    assert torch.allclose(fused.flatten(), expected / expected.sum(), atol=1e-6)
    assert int(fused.argmax(dim=1)) == 2
    assert torch.allclose(class_probs, torch.sigmoid(class_logits))


def test_registry_lists_models():
    names = list_models()
    assert names == sorted(names) and {"classifier", "deeplabv3plus", "ensemble_a", "hspnet"} <= set(names)


@pytest.mark.parametrize(
    ("name", "kwargs", "fragment"),
    [
        ("unet", {}, "choose one of .*deeplabv3plus, ensemble_a, hspnet"),
        ("hspnet", {"encoder": "resnet50"}, "choose one of resnet34, resnet101"),
        ("hspnet", {"backbone": "resnet34"}, "valid options are encoder, num_classes"),
        ("hspnet", {"num_classes": 1}, "at least 2"),
    ],
)
def test_registry_errors_list_the_valid_values(name, kwargs, fragment):
    with pytest.raises(CervrtError, match=fragment):
        create_model(name, **kwargs)


def test_num_classes_option():
    model = create_model("hspnet", encoder="resnet34", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("name", "task", "has_classifier"),
    [("hspnet", "segmentation", False), ("deeplabv3plus", "segmentation", False),
     ("ensemble_a", "segmentation", True), ("wsss_seg", "segmentation", True),
     ("classifier", "classification", False), ("wsss_cls", "classification", False)],
)
def test_the_spec_states_the_capabilities(name, task, has_classifier):
    from cervrt.models import get_spec

    spec = get_spec(name)
    assert (spec.task, spec.has_classifier, spec.is_classifier) == (task, has_classifier, task == "classification")
    # the spec agrees with what the model class itself declares
    assert bool(getattr(spec.builder, "has_classifier", False)) is has_classifier
    assert getattr(spec.builder, "size_multiple", 32) == spec.size_multiple


def test_a_classifier_cannot_have_a_classifier_head():
    from cervrt.models import ModelSpec

    with pytest.raises(CervrtError, match="only a segmentation model"):
        ModelSpec("x", dict, {}, task="classification", has_classifier=True)
    with pytest.raises(CervrtError, match="task must be one of segmentation, classification"):
        ModelSpec("x", dict, {}, task="detection")
