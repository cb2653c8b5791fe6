"""Loading torchvision ImageNet encoder weights from a file (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from cervrt.errors import CervrtError

__all__ = ["load_encoder_weights"]

_CLASSIFIER_PREFIXES = ("fc.",)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from cervrt.checkpoint import safe_torch_load

    obj = safe_torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CervrtError(f"{path} is not a state_dict: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _mismatch_message(path: Path, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    return f"{path} does not match the encoder ({'; '.join(parts)}): is it the right ResNet depth?"


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> int:
    """Copy a torchvision ResNet state_dict from ``path`` into ``encoder``; returns the tensors loaded.

    The classifier (``fc.*``) is ignored. Any missing, unexpected or mis-shaped key is an error
    naming the first few keys, and nothing is copied.
    """
    path = Path(path)
    source = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
    target = encoder.state_dict()
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = sorted(
        f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
        for k in set(source) & set(target)
        if source[k].shape != target[k].shape
    )
    if missing or unexpected or shapes:
        raise CervrtError(_mismatch_message(path, missing, unexpected, shapes))
    encoder.load_state_dict(source, strict=True)
    return len(source)
