"""The torch glue every training module shares: the device to train on and the model's input tensor.

It sits below the loop, evaluation, pseudo-labelling and WSSS so that none of them imports another
for these two helpers (which made ``loop -> evaluate -> loop`` and ``stages -> pseudo_label -> loop``
cycles). Device strings are parsed by :func:`cervrt.devices.parse_device`, as the runtime does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cervrt.devices import parse_device
from cervrt.errors import CervrtError

__all__ = ["resolve_device", "to_model_input"]

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


def to_model_input(patches: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   device: torch.device | str) -> torch.Tensor:
    """uint8 (N, P, P, 3) RGB patches -> float32 (N, 3, P, P) on ``device``, ``(v / 255 - mean) / std``:
    the normalisation every torch-side consumer of patches uses (the runtime's is the C ``gather``)."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t
