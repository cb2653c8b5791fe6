"""torch engine for cervrt checkpoints (``.pt`` / ``.pth``): the only engine that imports torch, and only
when a checkpoint is opened.

The checkpoint is loaded safely (``torch.load(weights_only=True)`` through ``cervrt.checkpoint``), its
model rebuilt and put in eval mode, and its metadata built the way the exporter builds an ONNX
file's (``cervrt.models.describe_model``; precision fp32, outputs ``probs`` and, with a patch
classifier, ``class_probs``; ``gate_epsilon`` when the checkpoint carries one). ``run`` calls the
model's ``predict_proba`` under ``torch.inference_mode`` on the CPU or a CUDA GPU.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (CervrtError when this torch has no CUDA or the GPU is
absent); ``auto`` -> ``cuda:0`` when ``torch.cuda.is_available()``, else the CPU.

Thread safety: ``thread_safe`` is False. An eval-mode forward does not write to the module, but
cervrt has not verified concurrent calls on one model (cuDNN autotuning, the CUDA caching
allocator and torch's intra-op pool all share state), so callers serialise ``run`` (the Predictor
holds a lock for engines that are not thread-safe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import CervrtError

__all__ = ["TorchEngine", "checkpoint_metadata"]


def checkpoint_metadata(checkpoint: dict[str, Any], model: Any, path: Path) -> dict[str, Any]:
    """The cervrt metadata of a checkpoint's model, with the keys and meanings of an exported ONNX file's."""
    from cervrt.models import describe_model

    return describe_model(checkpoint, model, source_checkpoint=path.name, format=checkpoint.get("format")).to_dict()


def _torch_device(torch: Any, requested: Device) -> str:
    """The torch device string for ``requested``; CervrtError when CUDA is asked for and absent."""
    if requested.kind == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if requested.kind == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        why = "this torch is a CPU build" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise CervrtError(f"device {requested} was asked for but {why}; use device cpu or auto")
    count = torch.cuda.device_count()
    if requested.ordinal >= count:
        raise CervrtError(f"device {requested} was asked for but {count} CUDA GPU(s) are present")
    return f"cuda:{requested.ordinal}"


class TorchEngine(Engine):
    """A cervrt checkpoint run by torch (see the module docstring)."""

    kind = "torch"
    thread_safe = False

    def __init__(self, path: str | Path, device: str | Device = "auto", batch_size: int | None = None) -> None:
        from cervrt.checkpoint import load_checkpoint
        from cervrt.models import model_from_checkpoint

        self._torch = optional_import("torch", "train")
        self.path = Path(path)
        self.batch_size = batch_size
        self.device = _torch_device(self._torch, parse_device(device))
        checkpoint = load_checkpoint(self.path)
        model = model_from_checkpoint(checkpoint)
        self.metadata = checkpoint_metadata(checkpoint, model, self.path)
        self._model = model.to(self.device)
        self.precision = "fp32"
        self.provider = "torch"

    def _run(self, batch: np.ndarray) -> EngineOutput:
        torch = self._torch
        with torch.inference_mode():
            probs, class_probs = self._model.predict_proba(torch.from_numpy(batch).to(self.device))
            return EngineOutput(probs.float().cpu().numpy(),
                                None if class_probs is None else class_probs.float().cpu().numpy())

    def _close(self) -> None:
        self._model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
