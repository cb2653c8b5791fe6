"""Parameters and multiply-accumulates (MACs) of a model, counted with torch's own flop counter.

The papers' "FLOPs" are MACs at a 384x384 input (ptflops/thop convention), so cervrt reports MACs
at 384 and at the model's patch size. torch.utils.flop_counter counts convolutions and matrix
products (2 FLOPs per MAC); element-wise layers (BN, ReLU, pooling, up-sampling) are not counted,
which is why DeepLab v3+ lands 0.3% under the papers' 49.97G. The graph runs on torch's ``meta``
device, so counting a ResNet-101 model costs milliseconds and no memory.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PAPER_INPUT", "count_macs", "count_params", "model_complexity"]

#: The papers' input size for FLOP figures.
PAPER_INPUT = 384


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int | tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass at ``size`` for ``batch`` images (eval mode)."""
    height, width = (size, size) if isinstance(size, int) else size
    meta = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(batch, 3, height, width, device="meta"))
    return counter.get_total_flops() // 2


def model_complexity(model: nn.Module, patch_size: int) -> dict[str, int]:
    """``params``, ``macs_384`` and ``macs_patch`` (per image) for ``patch_size``."""
    return {
        "params": count_params(model),
        "macs_384": count_macs(model, PAPER_INPUT),
        "macs_patch": count_macs(model, patch_size),
        "patch_size": int(patch_size),
    }
