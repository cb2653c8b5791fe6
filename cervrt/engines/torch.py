"""torch engine for cervrt checkpoints (``.pt`` / ``.pth``): the only engine that imports torch, and only
when a checkpoint is opened.

The checkpoint is loaded safely (``torch.load(weights_only=True)`` through ``cervrt.checkpoint``), its
model rebuilt and put in eval mode, and its metadata built the way the exporter builds an ONNX
file's (``cervrt.models.describe_model``; precision fp32, outputs ``probs`` and, with a patch
classifier, ``class_probs``; ``gate_epsilon`` when the checkpoint carries one). ``run`` calls the
model's ``predict_proba`` under ``torch.inference_mode`` on the CPU or a CUDA GPU.

Devices: ``cpu``; ``cuda`` / ``cuda:N`` (CervrtError when this torch has no CUDA or the GPU is
absent); ``auto`` -> ``cuda:0`` when ``torch.cuda.is_available()``, else the CPU.

On CUDA the engine keeps its outputs on the device (``supports_device_io``), so the Predictor runs the
whole pipeline there (``cervrt.runtime.cuda_path``: uint8 patches up, uint8 labels down):
``run_device(input_ptr, n, stream)`` wraps the caller's float32 (n, 3, P, P) device buffer as a
tensor (``__cuda_array_interface__``, no copy), runs the model on the caller's stream
(``torch.cuda.ExternalStream``) and returns the data pointers of float32 outputs that stay valid
until the next call on the same stream (one set of outputs per stream, so threads with their own
streams never share them). Options: ``precision`` ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``
(``torch.autocast``; outputs are float32), ``channels_last`` (NHWC memory format for the model and
its input) and ``cuda_graphs`` (capture the forward once per stream for batches of exactly
``batch_size`` and replay it; other batch sizes run eagerly). Status of the CUDA side: compiled,
unexecuted here (no GPU on the machine it was written on); ``benchmarks/gpu_acceptance.sh`` runs it.

Thread safety: ``thread_safe`` is False. An eval-mode forward does not write to the module, but
cervrt has not verified concurrent calls on one model (cuDNN autotuning, the CUDA caching
allocator and torch's intra-op pool all share state), so callers serialise ``run`` (the Predictor
holds a lock for engines that are not thread-safe).
"""

from __future__ import annotations

import contextlib
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import CervrtError, DeviceError

__all__ = ["PRECISIONS", "TorchEngine", "checkpoint_metadata"]

#: What ``precision=`` takes: the autocast dtype's name, or None for float32.
PRECISIONS = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


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
        raise DeviceError(f"device {requested} was asked for but {why}; use device cpu or auto")
    count = torch.cuda.device_count()
    if requested.ordinal >= count:
        raise DeviceError(f"device {requested} was asked for but {count} CUDA GPU(s) are present")
    return f"cuda:{requested.ordinal}"


class TorchEngine(Engine):
    """A cervrt checkpoint run by torch (see the module docstring)."""

    kind = "torch"
    thread_safe = False

    def __init__(self, path: str | Path, device: str | Device = "auto", batch_size: int | None = None, *,
                 precision: str = "fp32", channels_last: bool = False, cuda_graphs: bool = False) -> None:
        from cervrt.checkpoint import load_checkpoint
        from cervrt.models import model_from_checkpoint

        if precision not in PRECISIONS:
            raise CervrtError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self._torch = optional_import("torch", "train")
        self.path = Path(path)
        self.batch_size = batch_size
        self.device = _torch_device(self._torch, parse_device(device))
        on_cuda = self.device.startswith("cuda")
        if precision != "fp32" and not on_cuda:
            raise DeviceError(f"precision {precision} needs a CUDA device (autocast on the GPU); the CPU runs fp32")
        if cuda_graphs and not (on_cuda and batch_size):
            raise DeviceError("cuda_graphs needs a CUDA device and a fixed batch_size")
        checkpoint = load_checkpoint(self.path)
        model = model_from_checkpoint(checkpoint)
        self.metadata = checkpoint_metadata(checkpoint, model, self.path)
        self._model = model.to(self.device)
        if channels_last:
            self._model = self._model.to(memory_format=self._torch.channels_last)
        self.precision = precision
        self.provider = "torch" + (f" ({precision} autocast)" if precision != "fp32" else "")
        self.supports_device_io = on_cuda
        self._channels_last, self._cuda_graphs = channels_last, cuda_graphs
        self._outputs: dict[int, Any] = {}  # stream -> the outputs handed out last on it (kept alive)
        self._graphs: dict[int, Any] = {}  # stream -> (graph, static input, static outputs)
        self._outputs_lock = threading.Lock()

    def _autocast(self) -> Any:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return self._torch.autocast("cuda", dtype=getattr(self._torch, dtype))

    def _forward(self, x: Any) -> tuple[Any, Any]:
        if self._channels_last:
            x = x.contiguous(memory_format=self._torch.channels_last)
        with self._autocast():
            probs, class_probs = self._model.predict_proba(x)
        return probs.float().contiguous(), None if class_probs is None else class_probs.float().contiguous()

    def _run(self, batch: np.ndarray) -> EngineOutput:
        torch = self._torch
        with torch.inference_mode():
            probs, class_probs = self._forward(torch.from_numpy(batch).to(self.device))
            return EngineOutput(probs.cpu().numpy(), None if class_probs is None else class_probs.cpu().numpy())

    # -- device IO (compiled, unexecuted here: see the module docstring) ---------------------------

    def _wrap(self, pointer: int, n: int) -> Any:
        """The caller's float32 (n, 3, P, P) device buffer as a tensor on this device (no copy)."""
        shape = (n, 3, self.patch_size, self.patch_size)
        buffer = types.SimpleNamespace(__cuda_array_interface__={
            "shape": shape, "typestr": "<f4", "data": (int(pointer), False), "version": 3, "strides": None,
            "stream": None})  # no stream: the caller's stream, which the forward runs on, orders it
        return self._torch.as_tensor(buffer, device=self.device)

    def _replay(self, key: int, x: Any) -> tuple[Any, Any]:
        """The forward as a CUDA graph captured for this stream (batches of exactly batch_size)."""
        torch = self._torch
        entry = self._graphs.get(key)
        if entry is None:
            static = x.clone()
            self._forward(static)  # warm-up (cuDNN picks its algorithms) before the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=torch.cuda.current_stream()):
                outputs = self._forward(static)
            entry = self._graphs[key] = (graph, static, outputs)
        graph, static, outputs = entry
        static.copy_(x)
        graph.replay()
        return outputs

    def run_device(self, input_ptr: int, n: int, stream: Any) -> tuple[int, int | None]:
        """Run the model on ``stream`` over ``n`` float32 (n, 3, P, P) patches at device address
        ``input_ptr``; the device addresses of float32 ``probs`` (n, C, P, P) and ``class_probs``
        (n, C - 1) or None, valid until the next call on ``stream``."""
        if self._closed:
            raise CervrtError("this torch engine is closed: open the model again")
        if not self.supports_device_io:
            raise DeviceError(f"run_device needs the torch engine on a CUDA device, this one is on {self.device}")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise CervrtError(f"n must be a positive integer, got {n!r}")
        from cervrt.cuda import native_handle

        torch, key = self._torch, native_handle(stream)
        external = torch.cuda.ExternalStream(key, device=self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(external), torch.inference_mode():
            x = self._wrap(input_ptr, int(n))
            graphed = self._cuda_graphs and int(n) == self.batch_size
            probs, class_probs = self._replay(key, x) if graphed else self._forward(x)
        with self._outputs_lock:
            self._outputs[key] = (probs, class_probs)  # freed (on that stream) when the next call replaces them
        return int(probs.data_ptr()), None if class_probs is None else int(class_probs.data_ptr())

    def _close(self) -> None:
        self._model = None
        self._outputs, self._graphs = {}, {}
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)
            self._torch.cuda.empty_cache()
