"""cervrt checkpoints: a dict of plain types and tensors that ``torch.load(weights_only=True)`` reads.

A checkpoint carries everything needed to rebuild and describe its model -- architecture and its
keyword arguments, class names, palette, normalisation, microns per pixel, patch size, weights --
and, for resuming, the epoch and the optimiser, scheduler and scaler states. Loading never
unpickles arbitrary objects: a file holding anything but plain types and tensors is refused before
any of its code can run.

This module is the file format only and imports nothing from ``cervrt.models``: rebuilding the
model is ``cervrt.models.model_from_checkpoint``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

from cervrt._io import atomic_path, optional_import
from cervrt.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, MTCHI_MPP, PALETTE, PATCH_SIZE
from cervrt.errors import ModelError

__all__ = [
    "DESCRIPTION_KEYS",
    "FORMAT",
    "FORMAT_VERSION",
    "build_checkpoint",
    "describe",
    "file_sha256",
    "load_checkpoint",
    "safe_torch_load",
    "save_checkpoint",
]

FORMAT = "cervrt.checkpoint"
FORMAT_VERSION = 1
_REQUIRED = ("arch", "arch_kwargs", "class_names", "palette", "mean", "std", "mpp", "patch_size", "state_dict")
#: The keys that describe a model (travel on into exported artifacts).
DESCRIPTION_KEYS = ("arch", "arch_kwargs", "class_names", "palette", "mean", "std", "mpp", "patch_size")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line CervrtError."""
    torch = optional_import("torch", "train")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle stream at all ("Unsupported operand"): damaged, not dangerous
            raise ModelError(f"{path} is not a readable PyTorch file (truncated or corrupt?)") from None
        raise ModelError(
            f"{path} was refused: it holds pickled objects other than tensors and plain types (it references "
            f"{found.group(1)}), which could run code; only load checkpoints saved by cervrt or as plain state_dicts"
        ) from None
    except Exception:  # the loader's own words ("101", "pop from empty list") would not help the user
        raise ModelError(f"{path} is not a readable PyTorch file (truncated or corrupt?)") from None


def build_checkpoint(model: Any, arch: str, arch_kwargs: dict[str, Any], *, patch_size: int = PATCH_SIZE,
                     mpp: float = MTCHI_MPP, mean: tuple[float, ...] = IMAGENET_MEAN,
                     std: tuple[float, ...] = IMAGENET_STD, class_names: tuple[str, ...] = CLASS_NAMES,
                     palette: tuple[tuple[int, int, int], ...] = PALETTE, **extra: Any) -> dict[str, Any]:
    """A checkpoint dict for ``model``; ``extra`` adds resumable state (epoch, optimizer, ...)."""
    from cervrt import __version__

    torch = optional_import("torch", "train")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "class_names": list(class_names),
        "palette": [list(c) for c in palette],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "mpp": float(mpp),
        "patch_size": int(patch_size),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "cervrt_version": __version__,
        "torch_version": str(torch.__version__),
        **extra,
    }


def save_checkpoint(path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` atomically: an interrupted save leaves the previous file intact."""
    torch = optional_import("torch", "train")
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a cervrt checkpoint (safely: no arbitrary unpickling)."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelError(f"{path} is not a cervrt checkpoint (no '{FORMAT}' format marker); "
                          "to start from ImageNet weights use --encoder-weights")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise ModelError(f"{path} was written by a newer cervrt (format {ckpt['format_version']}): upgrade cervrt")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ModelError(f"{path} is an incomplete cervrt checkpoint: missing {', '.join(missing)}")
    return ckpt


def describe(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The descriptive part of a checkpoint: plain JSON-friendly values.

    ``gate_epsilon`` (the WSSS classification gate) is included when the checkpoint has one, so
    that exported artifacts carry it; without it there is no gate.
    """
    described = {key: checkpoint[key] for key in DESCRIPTION_KEYS}
    if checkpoint.get("gate_epsilon") is not None:
        described["gate_epsilon"] = float(checkpoint["gate_epsilon"])
    return described
