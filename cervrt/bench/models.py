"""Which models a benchmark runs, what they cost, and which FP32 torch model each is compared with.

Without ``--models`` the benchmark builds what it can itself: an *untrained* HSP-Net ResNet-34
(cervrt's default initialisation, torch seed 0, 400 px patches) saved as a checkpoint and exported
to FP32 and FP16 ONNX with ``cervrt.export`` (the FP16 graph passes the export's parity gate against
FP32 before it is written). Untrained weights time like trained ones, but their accuracy figures
only show that the pipeline runs, and the report says so.

The agreement reference of an artifact is the FP32 torch model of its checkpoint: a ``.pt`` is its
own; an ``.onnx`` or ``.plan`` uses a checkpoint among the benchmarked models, or the file named in
its ``source_checkpoint`` metadata beside it, whose SHA-256 is its ``source_sha256``. Without one
the agreement is not measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cervrt.errors import CervrtError

__all__ = ["CHECKPOINT_SUFFIXES", "BuiltModels", "build_default_models", "complexity", "find_reference"]

CHECKPOINT_SUFFIXES = (".pt", ".pth")
_ARCH, _ENCODER, _PATCH = "hspnet", "resnet34", 400


@dataclass(frozen=True)
class BuiltModels:
    """What ``build_default_models`` made: the artifacts to benchmark and a note for the report."""

    paths: tuple[Path, ...]
    note: str


def build_default_models(directory: Path, echo: Callable[[str], None]) -> BuiltModels:
    """Untrained HSP-Net ResNet-34: checkpoint, FP32 ONNX and FP16 ONNX in ``directory``."""
    import torch

    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.export import ExportConfig, export
    from cervrt.models import create_model

    directory.mkdir(parents=True, exist_ok=True)
    ckpt = directory / f"{_ARCH}-{_ENCODER}.pt"
    torch.manual_seed(0)
    model = create_model(_ARCH, encoder=_ENCODER)
    save_checkpoint(ckpt, build_checkpoint(model, _ARCH, {"encoder": _ENCODER}, patch_size=_PATCH))
    fp32, fp16 = directory / f"{_ARCH}-{_ENCODER}.onnx", directory / f"{_ARCH}-{_ENCODER}.fp16.onnx"
    echo(f"no --models given: exporting an untrained HSP-Net ResNet-34 ({_PATCH} px) to {fp32.name} and {fp16.name}")
    export(ExportConfig(ckpt, output=fp16, precision="fp16", fp32_output=fp32), echo=lambda m: echo("  " + m))
    note = (f"No --models given: cervrt bench built an untrained HSP-Net ResNet-34 ({_PATCH} px patches, torch seed 0) "
            "and exported it to FP32 and FP16 ONNX. Its timings hold for trained weights; its accuracy figures "
            "(near-uniform probabilities) only show that the pipeline runs.")
    return BuiltModels((ckpt, fp32, fp16), note)


def _sha256(path: Path) -> str:
    from cervrt.checkpoint import file_sha256

    return file_sha256(path)


def find_reference(path: Path, metadata: dict[str, Any], candidates: Sequence[Path]) -> Path | None:
    """The FP32 torch checkpoint ``path`` is compared with (see the module docstring), or None."""
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return path
    sha = metadata.get("source_sha256")
    if not sha:
        return None
    options = [c for c in candidates if c.suffix.lower() in CHECKPOINT_SUFFIXES]
    if metadata.get("source_checkpoint"):
        options.append(path.with_name(str(metadata["source_checkpoint"])))
    for option in options:
        if option.is_file() and _sha256(option) == sha:
            return option
    return None


def complexity(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """``arch``, ``encoder``, ``params``, ``macs_384``, ``macs_patch``, ``patch_size`` (None where unknown)."""
    info = {key: metadata.get(key) for key in ("arch", "params", "macs_384", "macs_patch", "patch_size")}
    info["encoder"] = (metadata.get("arch_kwargs") or {}).get("encoder")
    if info["macs_patch"] is None and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from cervrt.model_info import checkpoint_info

        try:
            counted = checkpoint_info(path)
        except CervrtError:
            return info
        info.update({key: counted.get(key) for key in ("params", "macs_384", "macs_patch", "patch_size")})
    return info
