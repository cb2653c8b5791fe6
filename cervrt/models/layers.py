"""Building blocks shared by the architectures: conv-BN-ReLU, the DS-Block and ASPP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP", "ConvBNReLU", "DSBlock", "upsample_to"]


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (H, W) with align_corners=False."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> ReLU; padding keeps the spatial size."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> None:
        padding = dilation * (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class _PoolBranch(nn.Module):
    """Global average pool -> 1x1 conv-BN-ReLU -> up-sampled back to the input size."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = ConvBNReLU(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.conv(self.pool(x)), x.shape[-2:])


class _ParallelBranches(nn.Module):
    """Pool, 1x1 and dilated 3x3 branches in parallel, concatenated, then a 1x1 projection."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.pool = _PoolBranch(cin, cout)
        self.branches = nn.ModuleList(
            [ConvBNReLU(cin, cout, 1)] + [ConvBNReLU(cin, cout, 3, dilation=r) for r in rates]
        )
        self.project = ConvBNReLU(cout * (len(rates) + 2), cout, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.pool(x)] + [branch(x) for branch in self.branches]
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class DSBlock(_ParallelBranches):
    """HSP-Net's down-sampling block (c -> c'): five parallel branches, each c -> c' with BN+ReLU --
    global-average-pool -> 1x1, 1x1, and 3x3 with dilations 6, 12, 18 -- concatenated to 5c' and
    reduced by a 1x1 conv-BN-ReLU to c'."""

    def __init__(self, cin: int, cout: int, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__(cin, cout, rates, dropout=0.0)


class ASPP(_ParallelBranches):
    """DeepLab v3+ atrous spatial pyramid pooling: the same five branches at 256 channels,
    projected by 1x1 conv-BN-ReLU and dropout 0.5."""

    def __init__(self, cin: int, cout: int = 256, rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__(cin, cout, rates, dropout=0.5)
