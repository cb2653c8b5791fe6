"""The engine protocol: one small interface in front of ONNX Runtime, TensorRT and torch.

An engine runs batches of normalised patches, float32 (n, 3, P, P) NCHW, and returns the softmax
probabilities (n, C, P, P) and, for models with a patch classifier, the class probabilities
(n, C - 1), both float32. It configures itself from the artifact's cervrt metadata (classes,
palette, mean/std, mpp, patch size, precision) and reports what actually runs (``device``,
``provider``), which may differ from what was asked for when ``device="auto"``.

``Engine.run`` checks the batch (type, dtype, rank, channels, size, batch count) and raises a
CervrtError naming what was expected and what came; the private ``_run`` of each backend does the
work. Engines are context managers: ``close()`` frees device memory, streams and sessions.

``open_engine(path, device, batch_size, backend=None)`` picks the engine from a registry keyed by
(format, backend): the file's suffix names the format (``onnx``, ``plan``, ``pt``), ``backend`` one of
the format's backends (``onnxruntime`` for ONNX by default; ``register_backend`` adds another, e.g.
OpenVINO, with the device kinds it takes); ``register_engine(suffix, factory)`` plugs in a
third-party engine for a suffix. Backends are imported only when a file of theirs is opened, so
that opening an ``.onnx`` never imports torch or tensorrt.
"""

from __future__ import annotations

import abc
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cervrt.devices import Device, parse_device
from cervrt.errors import InputError, ModelError

__all__ = [
    "MIN_SIDE",
    "Engine",
    "EngineOutput",
    "engine_backends",
    "engine_suffixes",
    "open_engine",
    "register_backend",
    "register_engine",
]

#: Smallest patch side the encoders accept (they down-sample by 32).
MIN_SIDE = 32


@dataclass(frozen=True)
class EngineOutput:
    """One batch's results: softmax probabilities and, for models with a classifier, class probabilities."""

    probs: np.ndarray  # float32 (n, C, P, P), C-contiguous
    class_probs: np.ndarray | None  # float32 (n, C - 1), or None


def _describe(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype} array of shape {array.shape}"
    return type(array).__name__


class Engine(abc.ABC):
    """Base class of the backends: ``run`` checks, ``_run`` works; a context manager (``close`` frees).

    Subclasses set ``metadata``, ``device``, ``provider``, ``precision``, ``max_batch`` and
    ``thread_safe`` in their constructor and implement ``_run`` and ``_close``.
    """

    kind: ClassVar[str] = ""
    #: Whether the engine takes and returns device (GPU) buffers as well as numpy arrays (TensorRT does).
    supports_device_io: ClassVar[bool] = False
    #: Whether the engine needs square inputs of exactly ``patch_size`` (TensorRT's profile does).
    fixed_size: ClassVar[bool] = False

    metadata: dict[str, Any]
    device: str
    provider: str
    precision: str
    max_batch: int | None = None
    thread_safe: bool = False
    #: Why the engine runs elsewhere than "auto" would have preferred (e.g. a GPU provider failed), or None.
    fallback: str | None = None
    #: Numpy dtype the graph's input takes (float16 for FP16-io graphs); run() converts to it.
    input_dtype: np.dtype = np.dtype(np.float32)
    _closed: bool = False

    # -- metadata ----------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        return int(self.metadata["patch_size"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.metadata["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.metadata["class_names"])

    @property
    def palette(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(tuple(int(v) for v in color) for color in self.metadata["palette"])

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.metadata["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.metadata["std"])

    @property
    def mpp(self) -> float | None:
        value = self.metadata.get("mpp")
        return None if value is None else float(value)

    @property
    def has_classifier(self) -> bool:
        return bool(self.metadata.get("has_classifier", len(self.metadata.get("outputs", ())) > 1))

    @property
    def gate_epsilon(self) -> float | None:
        """Classification gate threshold (SPEC: a class with probability <= epsilon is zeroed), or None."""
        value = self.metadata.get("gate_epsilon")
        return None if value is None else float(value)

    # -- running -----------------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> EngineOutput:
        """Probabilities of a float32 (n, 3, P, P) normalised batch (see the class docstring)."""
        if self._closed:
            raise InputError(f"this {self.kind} engine is closed: open the model again")
        batch = self._check_batch(batch)
        output = self._run(batch)
        return self._check_output(output, batch.shape)

    def _check_batch(self, batch: object) -> np.ndarray:
        accepted = {np.dtype(np.float32), self.input_dtype}
        names = " or ".join(sorted(d.name for d in accepted))
        if not isinstance(batch, np.ndarray) or batch.dtype not in accepted:
            raise InputError(f"the batch must be a {names} numpy array (n, 3, H, W), got a {_describe(batch)}")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InputError(f"the batch must have shape (n, 3, H, W) with 3 RGB channels, got {batch.shape}")
        n, _, height, width = batch.shape
        limit = f"1 to {self.max_batch}" if self.max_batch is not None else "at least 1"
        if n < 1 or (self.max_batch is not None and n > self.max_batch):
            raise InputError(f"the batch holds {n} patches; this {self.kind} engine takes {limit}")
        self._check_size(height, width)
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def _check_size(self, height: int, width: int) -> None:
        p = self.patch_size
        if self.fixed_size and (height, width) != (p, p):
            raise InputError(f"this {self.kind} engine takes {p}x{p} patches (its profile), got {height}x{width}")
        if min(height, width) < MIN_SIDE:
            raise InputError(f"patches must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {height}x{width}")

    def _check_output(self, output: EngineOutput, shape: tuple[int, ...]) -> EngineOutput:
        n, _, height, width = shape
        c = self.num_classes
        probs = np.ascontiguousarray(output.probs, dtype=np.float32)
        if probs.shape != (n, c, height, width):
            expected = (n, c, height, width)
            raise ModelError(f"the model returned probabilities of shape {probs.shape}, expected {expected}; "
                              "its metadata does not describe it (export it again)")
        class_probs = output.class_probs
        if class_probs is not None:
            class_probs = np.ascontiguousarray(class_probs, dtype=np.float32).reshape(n, -1)
        return EngineOutput(probs, class_probs)

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> EngineOutput:
        """Run a checked, C-contiguous batch of ``input_dtype``."""

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the engine's sessions and device resources; further runs raise CervrtError. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook: engines without resources need nothing
        """Backend-specific release (called once)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        arch = getattr(self, "metadata", {}).get("arch", "?")
        precision, device, provider = (getattr(self, name, "?") for name in ("precision", "device", "provider"))
        where = f"{precision} on {device} ({provider})"
        return f"<{type(self).__name__} {arch} {where}{' closed' if self._closed else ''}>"


# ---- registry ------------------------------------------------------------------------------------

#: ``factory(path, device, batch_size) -> Engine``.
EngineFactory = Callable[..., Engine]


@dataclass(frozen=True)
class _Backend:
    """One way to run a format: the factory (or ``"module:attribute"``) and the extra device kinds it takes."""

    factory: EngineFactory | str
    device_kinds: tuple[str, ...] = ()


#: model file suffix -> format name.
_FORMATS: dict[str, str] = {".onnx": "onnx", ".plan": "plan", ".pt": "pt", ".pth": "pt"}
#: format -> backend name -> backend; the first backend of a format is its default.
_BACKENDS: dict[str, dict[str, _Backend]] = {
    "onnx": {"onnxruntime": _Backend("cervrt.engines.onnxruntime:OnnxRuntimeEngine"),
             "openvino": _Backend("cervrt.engines.openvino:OpenVinoEngine")},
    "plan": {"tensorrt": _Backend("cervrt.engines.tensorrt:TensorRTEngine")},
    "pt": {"torch": _Backend("cervrt.engines.torch:TorchEngine")},
}
#: suffix -> factory registered by ``register_engine``; it opens files of that suffix unless a backend is named.
_REGISTRY: dict[str, EngineFactory | str] = {}


def _check_suffix(suffix: object) -> str:
    if not isinstance(suffix, str) or not suffix.startswith(".") or len(suffix) < 2:
        raise InputError(f"an engine suffix starts with a dot, like '.onnx', got {suffix!r}")
    return suffix.lower()


def register_engine(suffix: str, factory: EngineFactory | str) -> None:
    """Open files ending in ``suffix`` with ``factory(path, device, batch_size)`` (or a ``"module:attr"``).

    The factory takes precedence over the suffix's built-in backends unless ``open_engine`` is given a
    ``backend=``. Use ``register_backend`` to add a second way of running an existing format.
    """
    _REGISTRY[_check_suffix(suffix)] = factory


def register_backend(fmt: str, backend: str, factory: EngineFactory | str, *, suffixes: tuple[str, ...] = (),
                     device_kinds: tuple[str, ...] = (), default: bool = False) -> None:
    """Run format ``fmt`` with ``backend`` (e.g. ``"onnx"``, ``"openvino"``); ``suffixes`` map new files to ``fmt``.

    ``device_kinds``: device kinds the backend takes beyond auto/cpu/cuda (e.g. ``("gpu", "npu")``).
    ``default``: make it the format's default backend (else the first registered stays the default).
    """
    checked = tuple(_check_suffix(suffix) for suffix in suffixes)
    if not fmt or not backend:
        raise InputError(f"a backend needs a format and a name, got format {fmt!r} and backend {backend!r}")
    entry = _Backend(factory, tuple(kind.lower() for kind in device_kinds))
    backends = {k: v for k, v in _BACKENDS.get(fmt, {}).items() if k != backend}
    _BACKENDS[fmt] = {backend: entry, **backends} if default else {**backends, backend: entry}
    for suffix in checked:
        _FORMATS[suffix] = fmt


def engine_suffixes() -> tuple[str, ...]:
    """The registered model suffixes."""
    return tuple(sorted(set(_FORMATS) | set(_REGISTRY)))


def engine_backends(fmt: str) -> tuple[str, ...]:
    """The backends that run format ``fmt``, the default first (empty for an unknown format)."""
    return tuple(_BACKENDS.get(fmt, {}))


def _load(entry: EngineFactory | str) -> EngineFactory:
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return entry


def _check_batch_size(batch_size: object) -> int | None:
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{path} does not exist")
    if not path.is_file():
        raise ModelError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty")


def _check_options(opener: EngineFactory, options: dict[str, Any], path: Path) -> None:
    """InputError for an option the engine's constructor does not take (its keyword-only parameters)."""
    if not options:
        return
    import inspect

    try:
        parameters = inspect.signature(opener).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    taken = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        kind = getattr(opener, "kind", getattr(opener, "__name__", "this"))
        raise InputError(f"the {kind} engine for {path.name} takes no option {', '.join(unknown)}; it takes "
                         f"{', '.join(taken) or 'none'}")


def _choose(path: Path, backend: str | None) -> tuple[EngineFactory | str, tuple[str, ...]]:
    """The factory for ``path`` (and ``backend``) and its extra device kinds; CervrtError listing the valid ones."""
    suffix = path.suffix.lower()
    if backend is None and suffix in _REGISTRY:
        return _REGISTRY[suffix], ()
    fmt = _FORMATS.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown model type {path.suffix or '(no suffix)'!r}; cervrt opens "
                          f"{', '.join(engine_suffixes())}")
    backends = _BACKENDS.get(fmt, {})
    name = backend if backend is not None else next(iter(backends), None)
    if name not in backends:
        valid = ", ".join(backends) or "none registered"
        raise InputError(f"unknown backend {backend!r} for {fmt} models ({path.name}): use one of {valid}")
    return backends[name].factory, backends[name].device_kinds


def open_engine(path: str | os.PathLike[str], device: str | Device = "auto", batch_size: int | None = None, *,
                backend: str | None = None, options: dict[str, Any] | None = None) -> Engine:
    """Open a model for inference: ``.onnx`` (ONNX Runtime), ``.plan`` (TensorRT), ``.pt``/``.pth`` (torch).

    ``device``: ``auto`` (a GPU when one works, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, or a
    kind the backend declares. ``batch_size``: the largest batch the caller will send (TensorRT sizes
    its buffers by it and refuses one above its profile); None for the backend's default.
    ``backend``: which backend runs the file's format (``engine_backends("onnx")``); None or ``"auto"`` for
    the default (ONNX Runtime for ``.onnx``; ``"openvino"`` runs it on OpenVINO's CPU plugin).
    ``options``: keyword arguments of the backend's constructor (ONNX Runtime: ``threads``,
    ``cuda_options``; OpenVINO: ``bf16``); one the backend does not take raises InputError naming those it does.
    """
    path = Path(path)
    backend = None if backend == "auto" else backend
    factory, device_kinds = _choose(path, backend)
    parsed = parse_device(device, device_kinds)
    batch_size = _check_batch_size(batch_size)
    _check_file(path)
    opener = _load(factory)
    _check_options(opener, dict(options or {}), path)
    return opener(path, parsed, batch_size, **dict(options or {}))
