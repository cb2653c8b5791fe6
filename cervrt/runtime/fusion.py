"""Choose the fusion backend: the C extension ``cervrt._fusion`` or its numpy reference.

Both provide ``gather``, ``accumulate`` and ``argmax`` with the same signatures and results (see
``cervrt.runtime.reference``). ``get_backend("auto")`` takes the C extension when it was built and
falls back to the reference with a RuntimeWarning otherwise; ``"c"`` insists on the extension and
``"numpy"`` on the reference. The only state kept is the cached import of the extension.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

from cervrt.errors import CervrtError

__all__ = ["BUILD_HINT", "FusionBackend", "available_backends", "get_backend"]

#: How to build the C extension, for messages.
BUILD_HINT = (
    "build it with `pip install -e .` (or `python setup.py build_ext --inplace`) on a machine with a C compiler"
)


@dataclass(frozen=True)
class FusionBackend:
    """The three fusion operations of one implementation, and its name (``"c"`` or ``"numpy"``)."""

    name: str
    gather: Callable[..., None]
    accumulate: Callable[..., None]
    argmax: Callable[..., None]
    openmp: bool = False


@lru_cache(maxsize=1)
def _import_extension() -> tuple[ModuleType | None, str]:
    """The imported extension (or None) and the reason it could not be imported."""
    try:
        return importlib.import_module("cervrt._fusion"), ""
    except ImportError as exc:
        return None, str(exc)


def _from_module(name: str, module: ModuleType) -> FusionBackend:
    return FusionBackend(name, module.gather, module.accumulate, module.argmax, bool(getattr(module, "OPENMP", 0)))


def _c_backend() -> FusionBackend:
    module, reason = _import_extension()
    if module is None:
        raise CervrtError(f"the C fusion extension cervrt._fusion is not available ({reason}): {BUILD_HINT}")
    return _from_module("c", module)


def _numpy_backend() -> FusionBackend:
    from cervrt.runtime import reference

    return _from_module("numpy", reference)


def _auto_backend() -> FusionBackend:
    module, reason = _import_extension()
    if module is not None:
        return _from_module("c", module)
    warnings.warn(
        f"cervrt's C fusion extension is not built ({reason}); using the much slower numpy reference: {BUILD_HINT}",
        RuntimeWarning,
        stacklevel=3,
    )
    return _numpy_backend()


_BACKENDS: dict[str, Callable[[], FusionBackend]] = {
    "auto": _auto_backend,
    "c": _c_backend,
    "numpy": _numpy_backend,
}


def available_backends() -> tuple[str, ...]:
    """The names ``get_backend`` accepts."""
    return tuple(_BACKENDS)


def get_backend(name: str = "auto") -> FusionBackend:
    """The fusion backend called ``name``: ``"auto"`` (C if built, else numpy with a warning), ``"c"``, ``"numpy"``."""
    try:
        factory = _BACKENDS[name]
    except (KeyError, TypeError):
        raise CervrtError(f"unknown fusion backend {name!r}: choose one of {', '.join(_BACKENDS)}") from None
    return factory()
