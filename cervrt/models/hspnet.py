"""HSP-Net: hierarchical spatial pyramid network (V-HSP + H-HSP) on a ResNet encoder.

Encoder taps layer1..layer4 (x/4 .. x/32, no dilation). DS-Blocks 1-4 reduce them to 32, 64, 128
and 256 channels; DS2-DS4 are up-sampled to x/4 and concatenated with DS1 (480 channels); DS5
(480 -> 256); head of three 3x3 convolutions (the last one to the classes, with bias) and a bilinear
x4 up-sampling to the input size. With ResNet-101 and 5 classes: 68.22M parameters (see SPEC for why
not the paper's 69.70M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cervrt.models.base import SegmentationModel
from cervrt.models.layers import ConvBNReLU, DSBlock, upsample_to
from cervrt.models.resnet import build_encoder

__all__ = ["HSPNet"]


class HSPNet(SegmentationModel):
    """HSP-Net for ``num_classes`` output channels (background included)."""

    def __init__(self, encoder: str = "resnet34", num_classes: int = 5,
                 ds_channels: Sequence[int] = (32, 64, 128, 256), fuse_channels: int = 256) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder, output_stride=32)
        self.ds = nn.ModuleList(
            [DSBlock(cin, cout) for cin, cout in zip(self.encoder.out_channels, ds_channels, strict=True)]
        )
        self.ds5 = DSBlock(sum(ds_channels), fuse_channels)
        self.head = nn.Sequential(
            ConvBNReLU(fuse_channels, fuse_channels, 3),
            ConvBNReLU(fuse_channels, fuse_channels, 3),
            nn.Conv2d(fuse_channels, num_classes, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        reduced = [block(f) for block, f in zip(self.ds, features, strict=True)]
        size = reduced[0].shape[-2:]
        fused = torch.cat([reduced[0]] + [upsample_to(r, size) for r in reduced[1:]], dim=1)
        return upsample_to(self.head(self.ds5(fused)), x.shape[-2:])
