"""The torch glue every training module shares: the device, the model's input tensor, one optimiser step.

It sits below the loop, evaluation, pseudo-labelling and WSSS so that none of them imports another
for these two helpers (which made ``loop -> evaluate -> loop`` and ``stages -> pseudo_label -> loop``
cycles). Device strings are parsed by :func:`cervrt.devices.parse_device`, as the runtime does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cervrt.devices import parse_device
from cervrt.errors import CervrtError

__all__ = ["optimizer_step", "resolve_device", "to_model_input"]

#: torch device kinds training accepts besides auto, cpu and cuda[:N].
_TORCH_KINDS = ("mps", "xpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable device is an error."""
    device = parse_device(name, extra_kinds=_TORCH_KINDS)
    if device.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.kind == "cuda" and not torch.cuda.is_available():
        raise CervrtError(f"device {name!r} asked for but no CUDA GPU is available to torch: use device 'cpu'")
    try:
        return torch.device(str(device))
    except RuntimeError:  # a kind this torch build does not know
        raise CervrtError(f"device {name!r} is not supported by this torch build: use auto, cpu or cuda[:N]") from None


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: torch.amp.GradScaler | None = None) -> float:
    """One training step on ``loss`` (the segmentation loop's and WSSS phase 1's): refuse a NaN or
    infinite loss, back-propagate (through ``scaler`` when given, for mixed precision), step the
    optimiser and the per-iteration schedule. Returns the loss as a float."""
    if not torch.isfinite(loss):
        raise CervrtError("the loss became NaN or infinite: lower the learning rate (lr)")
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    scheduler.step()
    return float(loss.detach())


def to_model_input(patches: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str) -> torch.Tensor:
    """uint8 (N, P, P, 3) RGB patches -> float32 (N, 3, P, P) on ``device``, ``(v / 255 - mean) / std``:
    the normalisation every torch-side consumer of patches uses (the runtime's is the C ``gather``)."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
