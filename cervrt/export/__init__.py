"""Checkpoint -> ONNX (FP32, FP16) -> TensorRT plan, with the metadata that lets artifacts describe themselves.

``export(ExportConfig(...))`` does the whole job (see ``cervrt.export.exporter``); ``read_metadata``
reads an exported ONNX file's ``cervrt`` metadata (it lives in :mod:`cervrt.artifact`, re-exported
here; the deploy side imports it from there). Importing this package is cheap: the settings
(``cervrt.export.config``) load at once; torch, onnxruntime and tensorrt only when an export runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cervrt.artifact import read_metadata, read_plan_metadata
from cervrt.export.config import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    BatchProfile,
    EngineConfig,
    ExportConfig,
    Precision,
    default_onnx_path,
)

__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED_OPSETS",
    "BatchProfile",
    "EngineConfig",
    "ExportConfig",
    "ExportResult",
    "ParityCheck",
    "Precision",
    "default_onnx_path",
    "export",
    "read_metadata",
    "read_plan_metadata",
]

if TYPE_CHECKING:
    from cervrt.export.exporter import ExportResult, export
    from cervrt.export.parity import ParityCheck

_LAZY = {"export": "cervrt.export.exporter", "ExportResult": "cervrt.export.exporter",
         "ParityCheck": "cervrt.export.parity"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cervrt.export' has no attribute {name!r}")
