"""DeepLab v3+ as the papers compared against: ResNet at output stride 16, ASPP, a light decoder.

ResNet-101 with layer4 dilated (multi-grid 1, 2, 4 on dilation 2); ASPP at 256 channels with rates
6/12/18 and a global-pool branch, projected by 1x1 and dropout 0.5; decoder: layer1 -> 1x1 48,
concatenated with the x4 up-sampled ASPP output (304) -> 3x3 256 (dropout 0.5) -> 3x3 256
(dropout 0.1) -> 1x1 classes, up-sampled x4. ResNet-101, 5 classes: 59.34M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from cervrt.models.base import SegmentationModel
from cervrt.models.layers import ASPP, ConvBNReLU, upsample_to
from cervrt.models.resnet import build_encoder

__all__ = ["DeepLabDecoder", "DeepLabV3Plus"]


class DeepLabDecoder(nn.Module):
    """Low-level projection, fusion with the ASPP output and the classifier."""

    def __init__(self, low_channels: int, num_classes: int, aspp_channels: int = 256) -> None:
        super().__init__()
        self.low = ConvBNReLU(low_channels, 48, 1)
        self.fuse = nn.Sequential(
            ConvBNReLU(aspp_channels + 48, 256, 3),
            nn.Dropout(0.5),
            ConvBNReLU(256, 256, 3),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        x = torch.cat([upsample_to(aspp, low.shape[-2:]), low], dim=1)
        return self.classifier(self.fuse(x))


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+ for ``num_classes`` output channels (background included)."""

    def __init__(self, encoder: str = "resnet101", num_classes: int = 5) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, output_stride=16)
        self.aspp = ASPP(self.encoder.out_channels[-1])
        self.decoder = DeepLabDecoder(self.encoder.out_channels[0], num_classes)

    def segment(self, features: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Logits at ``size`` from the encoder's feature maps."""
        return upsample_to(self.decoder(self.aspp(features[-1]), features[0]), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.encoder(x), x.shape[-2:])
