"""Which models a benchmark runs, what they cost, and which FP32 torch model each is compared with.

Without ``--models`` the benchmark trains its own short synthetic model (``cervrt.bench.trained``);
``BuiltModels`` is what that made.

The agreement reference of an artifact is the FP32 torch model of its checkpoint: a ``.pt`` is its
own; an ``.onnx`` or ``.plan`` uses a checkpoint among the benchmarked models, or the file named in
its ``source_checkpoint`` metadata beside it, whose SHA-256 is its ``source_sha256``. Without one
the agreement is not measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cervrt.errors import CervrtError

__all__ = ["CHECKPOINT_SUFFIXES", "BuiltModels", "complexity", "find_reference"]

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class BuiltModels:
    """What the benchmark built itself: the artifacts to benchmark, a note for the report, why INT8 is missing."""

    paths: tuple[Path, ...]
    note: str
    int8_absent: str | None = None


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
