"""Inference engines behind one small protocol, chosen by the model file's suffix.

- ``.onnx``: ONNX Runtime (CPU; CUDA where onnxruntime-gpu finds a GPU), ``cervrt.engines.onnxruntime``;
- ``.plan``: TensorRT with named tensors on a CUDA stream, ``cervrt.engines.tensorrt``;
- ``.pt`` / ``.pth``: a cervrt checkpoint run by torch, ``cervrt.engines.torch``.

``open_engine(path, device="auto", batch_size=None, backend=None)`` returns an ``Engine``; the
registry is keyed by (format, backend) (``register_backend``; ``register_engine`` for a third-party
suffix); each backend is imported only when a file of its kind is opened.
"""

from __future__ import annotations

from cervrt.engines.base import (
    Engine,
    EngineOutput,
    engine_backends,
    engine_suffixes,
    open_engine,
    register_backend,
    register_engine,
)

__all__ = [
    "Engine",
    "EngineOutput",
    "engine_backends",
    "engine_suffixes",
    "open_engine",
    "register_backend",
    "register_engine",
]
