"""ONNX Runtime engine for cervrt ``.onnx`` exports (FP32, or FP16 with float16 or float32 inputs).

Providers: ``cpu`` -> CPUExecutionProvider; ``cuda`` / ``cuda:N`` -> CUDAExecutionProvider on
device N, then the CPU for any operator CUDA lacks; ``auto`` -> CUDA when onnxruntime offers it
*and* the NVIDIA driver reports a GPU, else the CPU.

ONNX Runtime does not fail when a GPU provider cannot be loaded (missing CUDA or cuDNN libraries, a
driver too old): it logs the problem and silently runs the session on the CPU. So the engine reads
``session.get_providers()`` after creating the session and reports what really runs in
``provider`` and ``device``. When ``cuda`` was asked for explicitly and the CPU is what came, it
refuses with a CervrtError; under ``auto`` it keeps the CPU session and says why in ``fallback``.

``cuda_options`` go to the CUDA provider as they are (its documented provider options), for example
``{"user_compute_stream": str(stream_handle)}`` to run on a caller's CUDA stream (ORT then also sets
``has_user_compute_stream``), or ``{"gpu_mem_limit": str(bytes)}``. ``device_id`` comes from the
device string.

CPU threads: ONNX Runtime's intra-op threads spin for a while after each ``run`` by default. In a
slide run the engine alternates with the gather and fusion stages, whose C/OpenMP threads those
spinning threads would steal the cores from, so spinning is turned off
(``session.intra_op.allow_spinning = 0``).

Thread safety: ``InferenceSession.run`` may be called from several threads at once on one session
(ONNX Runtime guarantees it), so ``thread_safe`` is True and no lock is needed around ``run``.

Device IO (the Predictor's GPU pipeline, ``cervrt.runtime.cuda_path``): on the CUDA provider with a
float32 input, ``supports_device_io`` is True and ``run_device(input_ptr, n, stream)`` binds the
caller's device buffer as the input through IO binding (``bind_input(..., "cuda", ...)``), lets ONNX
Runtime allocate the outputs on the device and returns their addresses, valid until the next call on
the same stream. ONNX Runtime runs on its own stream, so the caller's stream is synchronised first
(the input is written there) and ``run_with_iobinding`` returns once the outputs are complete.
Status: compiled, unexecuted here (no onnxruntime-gpu with a GPU on the machine it was written on).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.artifact import read_metadata
from cervrt.cuda import device_count as cuda_device_count
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import DeviceError, ModelError

__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "OnnxRuntimeEngine", "choose_providers"]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_NP_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def choose_providers(device: Device, available: list[str], gpu_count: int, gpu_reason: str,
                     cuda_options: Mapping[str, str] | None = None) -> list[Any]:
    """The ``providers=`` list for an InferenceSession on ``device``; CervrtError when cuda cannot be had."""
    if device.kind == "cpu":
        return [CPU_PROVIDER]
    wants_cuda = device.kind == "cuda"
    if CUDA_PROVIDER not in available:
        if wants_cuda:
            raise DeviceError(f"device {device} was asked for but this onnxruntime has no {CUDA_PROVIDER} (it offers "
                              f"{', '.join(available)}): install onnxruntime-gpu (pip install \"cervrt[gpu]\") "
                              "or use device cpu")
        return [CPU_PROVIDER]
    if device.ordinal >= gpu_count:
        if wants_cuda:
            seen = f"{gpu_count} CUDA GPU(s) are present" if gpu_count else f"no CUDA GPU is visible: {gpu_reason}"
            raise DeviceError(f"device {device} was asked for but {seen}; use device cpu or auto")
        return [CPU_PROVIDER]
    options = {"device_id": str(device.ordinal), **{str(k): str(v) for k, v in (cuda_options or {}).items()}}
    if "user_compute_stream" in options:
        options.setdefault("has_user_compute_stream", "1")
    return [(CUDA_PROVIDER, options), CPU_PROVIDER]


class OnnxRuntimeEngine(Engine):
    """A cervrt ONNX model in an ONNX Runtime session (see the module docstring)."""

    kind = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, device: str | Device = "auto", batch_size: int | None = None, *,
                 cuda_options: Mapping[str, str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.precision = str(self.metadata["precision"])
        self.batch_size = batch_size
        self.threads = threads
        requested = parse_device(device)
        count, reason = (0, "") if requested.kind == "cpu" else cuda_device_count()
        providers = choose_providers(requested, ort.get_available_providers(), count, reason, cuda_options)
        self._session = self._create_session(ort, providers)
        self._check_providers(requested, providers)
        self._bind_io()
        self.supports_device_io = self.provider == CUDA_PROVIDER and self.input_dtype == np.float32
        self._device_outputs: dict[int, Any] = {}  # stream -> the IO binding whose outputs were handed out
        self._device_lock = threading.Lock()

    def _create_session(self, ort: Any, providers: list[Any]) -> Any:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for graphs it cannot load
            raise ModelError(f"ONNX Runtime cannot load {self.path}: {_first_line(exc)}") from None

    def _check_providers(self, requested: Device, providers: list[Any]) -> None:
        """Report what runs; refuse a silent CPU fallback when cuda was asked for explicitly."""
        running = self._session.get_providers()
        self.provider = running[0]
        tried_cuda = isinstance(providers[0], tuple)
        ordinal = int(providers[0][1]["device_id"]) if tried_cuda else 0
        self.device = f"cuda:{ordinal}" if self.provider == CUDA_PROVIDER else "cpu"
        if tried_cuda and self.provider != CUDA_PROVIDER:
            why = (f"ONNX Runtime could not load its {CUDA_PROVIDER} (missing CUDA/cuDNN libraries or an old "
                   "driver: see its log above) and fell back to the CPU")
            if requested.kind == "cuda":
                self._session = None
                raise DeviceError(f"device {requested} was asked for but {why}; fix the CUDA install or use device cpu")
            self.fallback = why

    def _bind_io(self) -> None:
        inputs = self._session.get_inputs()
        outputs = {o.name for o in self._session.get_outputs()}
        wanted_input = self.metadata["input"]
        wanted_outputs = list(self.metadata["outputs"])
        names = [i.name for i in inputs]
        if names != [wanted_input] or not set(wanted_outputs) <= outputs:
            raise ModelError(f"{self.path}: the graph's inputs/outputs ({names}, {sorted(outputs)}) "
                              f"do not match its cervrt metadata ({wanted_input}, {wanted_outputs}); export it again")
        if inputs[0].type not in _NP_TYPES:
            raise ModelError(f"{self.path}: its input is {inputs[0].type}; cervrt graphs take float or float16")
        self.input_dtype = _NP_TYPES[inputs[0].type]
        self._input_name = wanted_input
        self._output_names = wanted_outputs

    @property
    def providers(self) -> list[str]:
        """Every provider of the session, in priority order (the first one runs the graph)."""
        return list(self._session.get_providers()) if self._session is not None else []

    def _run(self, batch: np.ndarray) -> EngineOutput:
        try:
            results = self._session.run(self._output_names, {self._input_name: batch})
        except Exception as exc:  # ORT's own exception types: a graph that cannot take this batch
            raise ModelError(f"ONNX Runtime failed on a batch of shape {batch.shape}: {_first_line(exc)}") from exc
        return EngineOutput(results[0], results[1] if len(results) > 1 else None)

    def run_device(self, input_ptr: int, n: int, stream: Any) -> tuple[int, int | None]:
        """The session over ``n`` float32 (n, 3, P, P) patches at device address ``input_ptr`` (written on
        ``stream``): device addresses of float32 ``probs`` and ``class_probs`` (or None), valid until the
        next call on ``stream``. Compiled, unexecuted here."""
        if self._session is None:
            raise ModelError("this onnxruntime engine is closed: open the model again")
        if not self.supports_device_io:
            raise DeviceError(f"run_device needs the {CUDA_PROVIDER} and a float32 input; this session runs "
                              f"{self.provider} with {self.input_dtype} input")
        from cervrt.cuda import native_handle
        from cervrt.cuda.memory import synchronize_stream

        key = native_handle(stream)
        synchronize_stream(stream)  # ORT reads the input on its own stream
        ordinal = int(self.device.partition(":")[2] or 0)
        binding = self._session.io_binding()
        shape = [int(n), 3, self.patch_size, self.patch_size]
        binding.bind_input(self._input_name, "cuda", ordinal, np.float32, shape, int(input_ptr))
        for name in self._output_names:
            binding.bind_output(name, "cuda", ordinal)
        try:
            self._session.run_with_iobinding(binding)
        except Exception as exc:  # ORT's own exception types
            raise DeviceError(f"ONNX Runtime failed on a device batch of {n}: {_first_line(exc)}") from exc
        outputs = binding.get_outputs()
        with self._device_lock:
            self._device_outputs[key] = (binding, outputs)  # kept alive until the next call on this stream
        pointers = [int(value.data_ptr()) for value in outputs]
        return pointers[0], pointers[1] if len(pointers) > 1 else None

    def _close(self) -> None:
        self._device_outputs = {}
        self._session = None  # ORT frees the session (and its device memory) when the last reference goes
