"""TensorRT's process-wide pieces: the one ``trt.Logger`` that the builder and every runtime share.

TensorRT keeps one global logger pointer: a second ``trt.Logger`` handed to another Builder or
Runtime replaces the first for everybody, and a logger collected while an engine still logs through
it is a use-after-free. So cervrt makes one per ``tensorrt`` module and keeps it for the process.
Nothing here imports tensorrt; callers pass the module they imported.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["shared_logger"]

_loggers: dict[int, tuple[Any, Any]] = {}  # id(tensorrt module) -> (module, its logger)
_lock = threading.Lock()


def shared_logger(trt: Any) -> Any:
    """The process's one ``trt.Logger(trt.Logger.WARNING)`` for the ``tensorrt`` module ``trt``."""
    with _lock:
        entry = _loggers.get(id(trt))
        if entry is None or entry[0] is not trt:
            entry = (trt, trt.Logger(trt.Logger.WARNING))
            _loggers[id(trt)] = entry
        return entry[1]
