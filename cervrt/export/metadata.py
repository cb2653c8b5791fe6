"""Kept for old imports: the artifact metadata's reading and writing lives in :mod:`cervrt.artifact`.

New code imports ``cervrt.artifact`` (the deploy side must never import ``cervrt.export``).
"""

from __future__ import annotations

from cervrt.artifact import (
    FORMAT_VERSION,
    METADATA_KEY,
    ONNX_FORMAT,
    PLAN_FORMAT,
    REQUIRED_KEYS,
    attach_metadata,
    graph_io,
    metadata_from_model,
    onnx_info,
    plan_info,
    read_metadata,
    read_plan_metadata,
)

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "ONNX_FORMAT",
    "PLAN_FORMAT",
    "REQUIRED_KEYS",
    "attach_metadata",
    "graph_io",
    "metadata_from_model",
    "onnx_info",
    "plan_info",
    "read_metadata",
    "read_plan_metadata",
]
