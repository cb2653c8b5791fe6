"""cervrt: segment cervical precancer (normal, CIN 1-3) on H&E whole-slide images, from training to the scanner.

Importing cervrt is cheap: torch, onnxruntime, tensorrt and cuda are imported only by the parts that
need them, when they are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cervrt.cancel import CancelToken
from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import CervrtError

__version__ = "0.1.0"

__all__ = ["CLASS_NAMES", "PALETTE", "CancelToken", "CervrtError", "Predictor", "__version__", "create_model",
           "list_models"]

if TYPE_CHECKING:
    from cervrt.models import create_model, list_models
    from cervrt.runtime.predictor import Predictor

_LAZY = {
    "Predictor": "cervrt.runtime.predictor",
    "create_model": "cervrt.models",
    "list_models": "cervrt.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cervrt' has no attribute {name!r}")
