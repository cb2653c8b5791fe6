"""The patch classifier M: paper parameter counts, logits over the four foreground classes, classify()."""

from __future__ import annotations

import pytest
import torch

from cervrt.errors import CervrtError
from cervrt.flops import count_params
from cervrt.models import create_model


@pytest.mark.parametrize(("encoder", "millions"), [("resnet34", 21.29), ("resnet101", 42.51)])
def test_parameter_counts_match_the_mtchi_table(encoder, millions):
    with torch.device("meta"):
        model = create_model("classifier", encoder=encoder)
    assert round(count_params(model) / 1e6, 2) == millions


def test_forward_gives_four_foreground_logits_and_no_masks():
    torch.manual_seed(0)
    model = create_model("classifier", encoder="resnet34").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 4)
        assert torch.equal(model.classify(x), logits)
    with pytest.raises(CervrtError, match="predicts no masks"):
        model.predict_proba(x)


def test_ensemble_classify_matches_its_forward_class_logits():
    torch.manual_seed(0)
    model = create_model("ensemble_a", encoder="resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.classify(x), model(x)[1])


def test_export_refuses_a_classifier_checkpoint(tmp_path):
    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.export import ExportConfig, export

    path = tmp_path / "m.pt"
    save_checkpoint(path, build_checkpoint(create_model("classifier", encoder="resnet34"), "classifier",
                                           {"encoder": "resnet34"}, patch_size=64))
    with pytest.raises(CervrtError, match="is a patch classifier, which predicts no masks"):
        export(ExportConfig.from_options(str(path), output=str(tmp_path / "m.onnx")), echo=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
