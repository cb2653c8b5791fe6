"""TensorRT engine for cervrt plans (``X.plan`` with its description ``X.plan.json``).

Status: written against the documented TensorRT 10/11 Python API and cuda-python's driver API (through
``cervrt.cuda``: the device probe, the primary context, buffers, the stream and the event); no GPU
or TensorRT on the machine it was written on, so it is compiled, unexecuted code until the test marked
``tensorrt`` runs on a GPU. Its refusals, binding, shape and batch logic run in the tests against a
fake ``tensorrt`` module and cervrt's host emulation of the CUDA driver.

Documentation followed (TensorRT Python API, "Core" pages of docs.nvidia.com/deeplearning/tensorrt):
``Runtime.deserialize_cuda_engine(buffer)`` returns the ICudaEngine or None; ``ICudaEngine``:
``num_io_tensors``, ``get_tensor_name(i)``, ``get_tensor_mode(name)`` (``TensorIOMode.INPUT``/
``OUTPUT``), ``get_tensor_dtype(name)`` (mapped to numpy by ``trt.nptype``),
``create_execution_context()``; ``IExecutionContext``: ``set_input_shape(name, shape) -> bool``,
``get_tensor_shape(name)`` (outputs, once every input shape is set), ``set_tensor_address(name, ptr)
-> bool``, ``execute_async_v3(stream_handle) -> bool`` (enqueues on the stream, returns at once).
Lifetime: an execution context must be destroyed before its engine, and the engine before the
runtime that deserialised it (NVIDIA/TensorRT issues #143, #3739 and #4436), so ``close`` drops them in
that order, after the stream has drained.

Refusals, each one line and, where possible, before touching the GPU: a plan without its ``.json``
(``read_plan_metadata``); ``cpu`` as the device; no ``tensorrt`` package (``MissingDependencyError``);
a TensorRT other than the one recorded at build time (major.minor.patch); no CUDA device
(``cervrt.cuda.NoDeviceError``, "no CUDA device: ..."); a GPU whose name or compute
capability differs from the recorded one (plans only run on the GPU model they were built for); a
batch size above the plan's optimisation profile.

Memory: device buffers (``cuMemAlloc``) for the input and every output, pinned host buffers
(``cuMemHostAlloc``) for the copies, one non-blocking stream and one event, all in the device's
primary context (the one the CUDA runtime, and so TensorRT, uses). ``run`` copies the batch up, runs,
copies the outputs back and waits on the event. ``run_device(input_ptr, n, stream)`` is the GPU
fusion path: it reads a float32 input already on the device and leaves the outputs in the engine's
device buffers, enqueued on the caller's stream; they stay valid until the next call.

Not thread-safe: an IExecutionContext may not be used by two threads at once (``thread_safe = False``);
use one engine per thread, or let the Predictor serialise calls.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.artifact import read_plan_metadata
from cervrt.cuda import CudaError, PrimaryContext, check, driver, gpu_info
from cervrt.cuda import memory as mem
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import CervrtError

__all__ = ["TensorBinding", "TensorRTEngine", "check_gpu", "check_version", "read_bindings", "version_triple"]


@dataclass(frozen=True)
class TensorBinding:
    """One I/O tensor of a TensorRT engine: its name, direction and numpy dtype."""

    name: str
    is_input: bool
    dtype: np.dtype


def version_triple(version: str) -> tuple[int, ...]:
    """``"10.13.3.9"`` -> ``(10, 13, 3)``: the part of a TensorRT version a plan is tied to."""
    parts = re.findall(r"\d+", str(version).split("+")[0])
    if not parts:
        raise CervrtError(f"cannot read the TensorRT version {version!r}")
    return tuple(int(p) for p in parts[:3])


def check_version(metadata: dict[str, Any], installed: str, path: Path) -> None:
    """CervrtError unless the installed TensorRT is the one the plan was built with (major.minor.patch)."""
    recorded = metadata.get("tensorrt_version")
    if recorded is None:
        raise CervrtError(f"{path}.json does not record the TensorRT version it was built with: build it again")
    want, have = version_triple(recorded), version_triple(installed)
    if have[: len(want)] != want:
        raise CervrtError(f"{path} was built with TensorRT {recorded} but TensorRT {installed} is installed: a plan "
                          f"runs only with the TensorRT that built it; install tensorrt=={recorded} or build it again")


def check_gpu(metadata: dict[str, Any], gpu_name: str, capability: str, device: Device, path: Path) -> None:
    """CervrtError unless ``device`` is the GPU model (name and compute capability) the plan was built on."""
    want = (str(metadata.get("gpu_name")), str(metadata.get("compute_capability")))
    if (gpu_name, capability) != want:
        raise CervrtError(f"{path} was built on a {want[0]} (compute {want[1]}) but cuda:{device.ordinal} is a "
                          f"{gpu_name} (compute {capability}): a TensorRT plan only runs on the GPU model it was "
                          "built on; build it again on this machine with `cervrt export CHECKPOINT --engine PATH.plan`")


def read_bindings(trt: Any, engine: Any) -> list[TensorBinding]:
    """Every I/O tensor of ``engine`` (TensorRT 10+ named-tensor API)."""
    bindings = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        bindings.append(TensorBinding(name, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
    return bindings


def _profile_batch(metadata: dict[str, Any], path: Path) -> tuple[int, int]:
    try:
        profile = metadata["profile"]
        return int(profile["min"][0]), int(profile["max"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        raise CervrtError(f"{path}.json has no usable optimisation profile (min/max shapes): build it again") from None


def _ok(result: bool, what: str) -> None:
    if not result:
        raise CervrtError(f"TensorRT refused {what} (its log above says why)")


class TensorRTEngine(Engine):
    """A cervrt TensorRT plan on one GPU (see the module docstring)."""

    kind = "tensorrt"
    fixed_size = True
    supports_device_io = True
    thread_safe = False

    def __init__(self, path: str | Path, device: str | Device = "auto", batch_size: int | None = None) -> None:
        self.path = Path(path)
        self.metadata = read_plan_metadata(self.path)
        requested = parse_device(device)
        if requested.kind == "cpu":
            raise CervrtError(f"{self.path} is a TensorRT plan, which runs on a CUDA GPU only: use device auto or "
                              "cuda[:N], or open the .onnx export for the CPU")
        self._min_batch, self.max_batch = _profile_batch(self.metadata, self.path)
        if batch_size is not None and batch_size > self.max_batch:
            raise CervrtError(f"batch size {batch_size} is above the plan's profile maximum of {self.max_batch}: "
                              f"use --batch-size {self.max_batch} or less, or build the plan with a larger profile")
        trt = optional_import("tensorrt", "tensorrt")
        check_version(self.metadata, str(trt.__version__), self.path)
        gpu = gpu_info(requested.ordinal, extra="tensorrt")
        check_gpu(self.metadata, gpu.name, gpu.capability, requested, self.path)
        self.precision = str(self.metadata["precision"])
        self.provider = f"TensorRT {trt.__version__}"
        self.device = f"cuda:{requested.ordinal}"
        self.batch_size = batch_size
        self._cuda: PrimaryContext | None = None
        self._logger = self._runtime = self._engine = self._context = self._stream = self._done = None
        self._device_ptrs: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._pinned: list[int] = []
        self._capacity = 0
        self._open(trt, requested.ordinal, max(batch_size or self.max_batch, self._min_batch))

    # -- set-up --------------------------------------------------------------------------------

    def _open(self, trt: Any, ordinal: int, capacity: int) -> None:
        self._cuda = PrimaryContext(ordinal)
        try:
            with self._active():
                self._deserialize(trt)
                self._stream = mem.create_stream()
                self._done = mem.create_event()
                self._allocate(capacity)
        except BaseException:
            self._close()
            raise

    def _deserialize(self, trt: Any) -> None:
        self._logger = trt.Logger(trt.Logger.WARNING)  # kept: the runtime logs through it as long as it lives
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise CervrtError(f"TensorRT could not deserialise {self.path} (truncated, or built by another TensorRT "
                              "or for another GPU): build it again")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise CervrtError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self._bind(read_bindings(trt, self._engine))

    def _bind(self, bindings: list[TensorBinding]) -> None:
        """Match the engine's tensors with the metadata: one float input, every named output present."""
        inputs = [b for b in bindings if b.is_input]
        outputs = {b.name: b for b in bindings if not b.is_input}
        wanted = list(self.metadata["outputs"])
        if [b.name for b in inputs] != [self.metadata["input"]] or not set(wanted) <= set(outputs):
            raise CervrtError(f"{self.path}: the engine's tensors ({[b.name for b in bindings]}) do not match its "
                              f"description ({self.metadata['input']} -> {wanted}); build it again")
        if inputs[0].dtype not in (np.float32, np.float16):
            raise CervrtError(f"{self.path}: its input is {inputs[0].dtype}; cervrt plans take float32 or float16")
        self._input = inputs[0]
        self._outputs = [outputs[name] for name in wanted]
        self.input_dtype = inputs[0].dtype

    def _input_shape(self, n: int) -> tuple[int, int, int, int]:
        return (n, 3, self.patch_size, self.patch_size)

    def _allocate(self, capacity: int) -> None:
        """Device and pinned host buffers for ``capacity`` patches; binds every tensor's address."""
        _ok(self._context.set_input_shape(self._input.name, self._input_shape(capacity)),
            f"the input shape {self._input_shape(capacity)}")
        shapes = {self._input.name: self._input_shape(capacity)}
        for binding in self._outputs:
            shapes[binding.name] = tuple(int(d) for d in self._context.get_tensor_shape(binding.name))
            if min(shapes[binding.name]) < 0:
                raise CervrtError(f"TensorRT left the shape of {binding.name} unresolved: {shapes[binding.name]}")
        self._free_buffers()
        for binding in (self._input, *self._outputs):
            shape = shapes[binding.name]
            nbytes = math.prod(shape) * binding.dtype.itemsize
            self._device_ptrs[binding.name] = mem.malloc_device(nbytes)
            ptr, array = mem.malloc_pinned(nbytes, binding.dtype)
            self._pinned.append(ptr)
            self._host[binding.name] = array.reshape(shape)
            _ok(self._context.set_tensor_address(binding.name, self._device_ptrs[binding.name]),
                f"the address of {binding.name}")
        self._capacity = capacity

    def _free_buffers(self) -> None:
        cu = driver()
        if self._device_ptrs and self._stream is not None:
            mem.synchronize_stream(self._stream)
            check(cu.cuCtxSynchronize(), "cuCtxSynchronize")  # run_device work on a caller's stream
        self._host = {}  # drop the views before the memory under them
        for ptr in self._device_ptrs.values():
            cu.cuMemFree(ptr)
        for ptr in self._pinned:
            cu.cuMemFreeHost(ptr)
        self._device_ptrs, self._pinned, self._capacity = {}, [], 0

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Make the engine's (primary) CUDA context current on the calling thread for the block."""
        with self._cuda.active():
            yield

    # -- running -------------------------------------------------------------------------------

    def _enqueue(self, n: int, input_ptr: int, stream: Any) -> None:
        """Set the batch's shape and input address, then enqueue the engine on ``stream``."""
        if n < self._min_batch:
            raise CervrtError(f"the plan's profile takes batches of {self._min_batch} to {self.max_batch} patches, "
                              f"got {n}: pad the batch or build the plan with a smaller minimum")
        if n > self._capacity:
            self._allocate(n)
        _ok(self._context.set_input_shape(self._input.name, self._input_shape(n)), f"the input shape of {n} patches")
        _ok(self._context.set_tensor_address(self._input.name, int(input_ptr)), "the input address")
        _ok(self._context.execute_async_v3(int(stream)), "to enqueue the engine (execute_async_v3)")

    def _run(self, batch: np.ndarray) -> EngineOutput:
        n = batch.shape[0]
        with self._active():
            if n > self._capacity:
                self._allocate(n)
            host_in = self._host[self._input.name]
            host_in[:n] = batch
            nbytes = batch.nbytes
            mem.copy_htod_async(self._device_ptrs[self._input.name], host_in.ctypes.data, nbytes, self._stream)
            self._enqueue(n, self._device_ptrs[self._input.name], self._stream)
            for binding in self._outputs:
                host = self._host[binding.name]
                mem.copy_dtoh_async(host.ctypes.data, self._device_ptrs[binding.name], host[:n].nbytes,
                                    self._stream)
            mem.record_event(self._done, self._stream)
            mem.synchronize_event(self._done)
            results = [self._host[b.name][:n].copy() for b in self._outputs]
        return EngineOutput(results[0], results[1] if len(results) > 1 else None)

    def run_device(self, input_ptr: int, n: int, stream: int) -> tuple[int, int | None]:
        """Enqueue the engine on ``stream`` for ``n`` float32 (n, 3, P, P) patches at device address
        ``input_ptr``; returns the device addresses of float32 ``probs`` (n, C, P, P) and ``class_probs``
        (n, C - 1) or None, written on ``stream`` and valid until the next call."""
        if self._closed:
            raise CervrtError("this tensorrt engine is closed: open the model again")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= self.max_batch:
            raise CervrtError(f"n must be an integer from 1 to {self.max_batch} (the plan's profile), got {n!r}")
        if int(input_ptr) <= 0:
            raise CervrtError("input_ptr must be a device pointer to float32 (n, 3, P, P)")
        dtypes = {b.name: b.dtype for b in (self._input, *self._outputs)}
        if any(dtype != np.float32 for dtype in dtypes.values()):
            raise CervrtError(f"run_device needs a plan with float32 input and outputs, this one has {dtypes}; "
                              "build it from an export without --fp16-io")
        with self._active():
            self._enqueue(int(n), int(input_ptr), stream)
        pointers = [self._device_ptrs[b.name] for b in self._outputs]
        return pointers[0], pointers[1] if len(pointers) > 1 else None

    # -- lifetime ------------------------------------------------------------------------------

    def _close(self) -> None:
        if self._cuda is None:
            return
        cu = driver()
        with contextlib.suppress(CudaError), self._active():
            self._free_buffers()
            if self._done is not None:
                cu.cuEventDestroy(self._done)
            if self._stream is not None:
                cu.cuStreamDestroy(self._stream)
            # Context before engine before runtime (see the module docstring).
            self._context = None
            self._engine = None
            self._runtime = self._logger = None
        self._done = self._stream = None
        self._cuda.release()
        self._cuda = None
