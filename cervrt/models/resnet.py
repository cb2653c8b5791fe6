"""ResNet-34 and ResNet-101 encoders with torchvision's module names.

Because the names match, a torchvision ImageNet ``state_dict`` saved to a file loads into these
encoders by path (see :func:`cervrt.models.weights.load_encoder_weights`); nothing is downloaded.
An encoder returns the feature maps of layer1..layer4 and exposes their channel counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ENCODERS", "BasicBlock", "Bottleneck", "ResNetEncoder", "build_encoder"]


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride) if stride != 1 or cin != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection (ResNet-50/101), stride on the 3x3."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, cout, stride) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


#: name -> (block, blocks per stage)
ENCODERS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNetEncoder(nn.Module):
    """ResNet without its classifier; ``forward`` returns [layer1, layer2, layer3, layer4] outputs.

    ``output_stride=32`` is the plain network (x/4, x/8, x/16, x/32). ``output_stride=16`` keeps
    layer4 at x/16 with dilation 2 and the multi-grid ``(1, 2, 4)`` of DeepLab v3+.
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], output_stride: int = 32,
                 multi_grid: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dilated = output_stride == 16
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        if dilated:
            self.layer4 = self._make_layer(block, 512, layers[3], dilations=[2 * g for g in multi_grid])
        else:
            self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.out_channels: tuple[int, ...] = tuple(c * block.expansion for c in (64, 128, 256, 512))
        self.reductions: tuple[int, ...] = (4, 8, 16, 16 if dilated else 32)
        _init_weights(self)

    def _make_layer(self, block: type[nn.Module], planes: int, count: int, stride: int = 1,
                    dilations: Sequence[int] | None = None) -> nn.Sequential:
        dilations = list(dilations) if dilations is not None else [1] * count
        dilations += [dilations[-1]] * (count - len(dilations))
        blocks = [block(self.inplanes, planes, stride, dilations[0])]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, dilations[i]) for i in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_encoder(name: str, output_stride: int = 32) -> ResNetEncoder:
    """Build a named encoder; the caller (the registry) has validated ``name``."""
    block, layers = ENCODERS[name]
    return ResNetEncoder(block, layers, output_stride=output_stride)
