"""What a model is: ``info`` for checkpoints, architectures, ONNX files and plans (the metadata: ``artifact``).

Later stages add ONNX files and TensorRT plans; each kind reports the same core keys -- ``arch``,
``arch_kwargs``, ``classes``, ``params``, ``macs_384``, ``macs_patch``, ``patch_size`` -- plus its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cervrt.artifact import onnx_info, plan_info
from cervrt.errors import CervrtError

__all__ = ["arch_info", "artifact_info", "checkpoint_info", "format_info"]


def _complexity(arch: str, arch_kwargs: dict[str, Any], patch_size: int) -> dict[str, Any]:
    import torch

    from cervrt.flops import model_complexity
    from cervrt.models import create_model

    with torch.device("meta"):
        model = create_model(arch, **arch_kwargs)
    return model_complexity(model, patch_size)


def arch_info(arch: str, encoder: str | None = None, patch_size: int | None = None) -> dict[str, Any]:
    """Parameters and MACs of an architecture (no weights needed)."""
    from cervrt.constants import CLASS_NAMES, PATCH_SIZE
    from cervrt.models import get_spec

    kwargs = {} if encoder is None else {"encoder": encoder}
    full = {k: v for k, v in get_spec(arch).resolve(kwargs).items() if k != "num_classes"}
    patch = patch_size or PATCH_SIZE
    return {"kind": "architecture", "arch": arch, "arch_kwargs": full, "classes": list(CLASS_NAMES),
            **_complexity(arch, full, patch)}


def checkpoint_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Description, complexity and training state of a cervrt checkpoint."""
    from cervrt.checkpoint import describe, load_checkpoint

    ckpt = load_checkpoint(path)
    info = describe(ckpt)
    info["classes"] = info.pop("class_names")
    kwargs = {**ckpt["arch_kwargs"], "num_classes": len(info["classes"])}
    complexity = _complexity(ckpt["arch"], kwargs, ckpt["patch_size"])
    return {"kind": "checkpoint", "path": str(path), **info, **complexity, "epoch": ckpt.get("epoch"),
            "metrics": {k: ckpt.get("metrics", {}).get(k) for k in ("dice", "miou", "ap", "wp", "fwiou")},
            "cervrt_version": ckpt.get("cervrt_version"), "torch_version": ckpt.get("torch_version")}


_READERS = {".pt": checkpoint_info, ".pth": checkpoint_info, ".onnx": onnx_info, ".plan": plan_info}


def artifact_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a model artifact, chosen by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _READERS:
        raise CervrtError(f"cannot describe {path}: expected one of {', '.join(sorted(_READERS))}")
    return _READERS[suffix](path)


def _giga(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 1e9:.2f}G"


def _tensors(values: Any) -> str:
    """``name dtype shape; ...`` of graph inputs or outputs (plain names when that is all there is)."""
    described = [f"{v.get('name')} {v.get('dtype')} {v.get('shape')}" if isinstance(v, dict) else str(v)
                 for v in values or ()]
    return "; ".join(described) or "unknown"


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of an info dict (a key may be missing or None: an adopted model has no MACs)."""
    patch, params = info.get("patch_size"), info.get("params")
    lines = [f"{info.get('kind', 'artifact')}: {info.get('path', info.get('arch'))}",
             f"  arch        {info.get('arch')} {info.get('arch_kwargs') or ''}".rstrip(),
             f"  classes     {', '.join(info.get('classes') or ())}",
             f"  params      {'unknown' if params is None else f'{params / 1e6:.2f}M'}",
             f"  MACs        {_giga(info.get('macs_384'))} at 384x384, {_giga(info.get('macs_patch'))} at "
             f"{patch}x{patch} (patch)",
             f"  patch       {f'{patch}x{patch}' if patch else 'unknown'}"]
    if info.get("mean") is not None and info.get("std") is not None:
        mean, std = (",".join(f"{float(v):g}" for v in info[key]) for key in ("mean", "std"))
        lines.append(f"  normalise   (rgb / 255 - mean) / std, RGB, NCHW; mean {mean}, std {std}")
    if "inputs" in info or "outputs" in info:
        lines += [f"  inputs      {_tensors(info.get('inputs'))}", f"  outputs     {_tensors(info.get('outputs'))}"]
    for key in ("mpp", "epoch", "precision", "io_dtype", "opset"):
        if info.get(key) is not None:
            lines.append(f"  {key:<11} {info[key]}")
    metrics = {k: v for k, v in (info.get("metrics") or {}).items() if v is not None}
    if metrics:
        lines.append("  validation  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return "\n".join(lines)
