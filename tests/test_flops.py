"""MACs at the papers' 384x384 and at the patch size."""

from __future__ import annotations

import pytest
import torch

from cervrt.flops import count_macs, count_params, model_complexity
from cervrt.models import create_model


def _meta(name, **kwargs):
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_deeplab_macs_at_384_match_the_papers():
    assert count_macs(_meta("deeplabv3plus", encoder="resnet101"), 384) == pytest.approx(49.97e9, rel=0.015)


def test_hspnet_r101_macs_at_400_match_spec():
    assert count_macs(_meta("hspnet", encoder="resnet101"), 400) == pytest.approx(84.2e9, rel=0.01)


def test_macs_of_a_single_convolution_by_hand():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # every output pixel: 8 channels x (3 x 3 x 3) multiply-accumulates
    assert count_macs(conv, (10, 12)) == 10 * 12 * 8 * 27
    assert count_macs(conv, 10, batch=2) == 2 * 10 * 10 * 8 * 27
    assert count_params(conv) == 8 * 27


def test_model_complexity_keys_and_scaling():
    info = model_complexity(_meta("hspnet", encoder="resnet34"), 768)
    assert set(info) == {"params", "macs_384", "macs_patch", "patch_size"}
    # 4x the pixels, 4x the MACs -- but for the global-pool branches' 1x1 convolutions on 1x1 maps
    assert info["macs_patch"] == pytest.approx(4 * info["macs_384"], rel=1e-5)
    assert info["macs_patch"] != 4 * info["macs_384"]
