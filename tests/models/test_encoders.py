"""ResNet encoders carry torchvision's parameter names, so an ImageNet state_dict loads by path."""

from __future__ import annotations

import pytest
import torch

from cervrt.errors import CervrtError
from cervrt.models import load_encoder_weights
from cervrt.models.resnet import build_encoder

# A handful of torchvision names and shapes, written out from torchvision.models.resnet34/101.
TORCHVISION_RESNET34 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.num_batches_tracked": (),
    "layer3.5.bn2.bias": (256,),
    "layer4.2.conv2.weight": (512, 512, 3, 3),
}
TORCHVISION_RESNET101 = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer3.22.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.1.running_var": (2048,),
    "layer4.2.bn3.weight": (2048,),
}


@pytest.mark.parametrize(("name", "expected"),
                         [("resnet34", TORCHVISION_RESNET34), ("resnet101", TORCHVISION_RESNET101)])
def test_encoder_keys_match_torchvision(name, expected):
    with torch.device("meta"):
        state = build_encoder(name).state_dict()
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("fc.") for k in state)


@pytest.mark.parametrize(("name", "channels"),
                         [("resnet34", (64, 128, 256, 512)), ("resnet101", (256, 512, 1024, 2048))])
def test_encoder_returns_four_feature_maps(name, channels):
    encoder = build_encoder(name).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    assert encoder.out_channels == channels
    assert [f.shape[1] for f in feats] == list(channels)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_output_stride_16_keeps_layer4_at_a_sixteenth():
    encoder = build_encoder("resnet34", output_stride=16).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    assert feats[-1].shape[-1] == 4
    assert encoder.layer4[1].conv1.dilation == (4, 4)  # multi-grid (1, 2, 4) on dilation 2


def _torchvision_like_file(tmp_path, name: str) -> tuple:
    torch.manual_seed(1)
    source = build_encoder(name)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.zeros(1000, source.out_channels[-1])
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return source, path


def test_load_encoder_weights_from_a_torchvision_state_dict(tmp_path):
    source, path = _torchvision_like_file(tmp_path, "resnet34")
    torch.manual_seed(2)
    target = build_encoder("resnet34")
    loaded = load_encoder_weights(target, path)
    assert loaded == len(target.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_mismatched_encoder_weights_are_reported(tmp_path):
    _, path = _torchvision_like_file(tmp_path, "resnet34")
    target = build_encoder("resnet101")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    expected = r"missing: layer1\.0\.bn3.* \(\+\d+ more\); wrong shape: .*right ResNet depth"
    with pytest.raises(CervrtError, match=expected):
        load_encoder_weights(target, path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_extra_encoder_keys_are_reported(tmp_path):
    _, path = _torchvision_like_file(tmp_path, "resnet101")
    with pytest.raises(CervrtError, match=r"unexpected: layer1\.0\.bn3"):
        load_encoder_weights(build_encoder("resnet34"), path)


def test_encoder_weights_file_must_be_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CervrtError, match="not a state_dict"):
        load_encoder_weights(build_encoder("resnet34"), path)
