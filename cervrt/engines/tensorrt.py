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

Refused at load as well: a plan whose bytes do not match the ``plan_sha256`` its ``.json`` records.

Memory: one *lane* per CUDA stream: an IExecutionContext with its own device buffers (``cuMemAlloc``)
for the input and every output, all in the device's primary context (the one the CUDA runtime, and
so TensorRT, uses). ``run`` uses the engine's own stream and lane, with pinned host buffers
(``cuMemHostAlloc``) for the copies and one event it waits on. ``run_device(input_ptr, n, stream)``
is the device path: it reads a float32 input already on the device and leaves the outputs in the
buffers of ``stream``'s lane, enqueued on that stream; they stay valid until the next call *on the
same stream*. So two threads, each with its own stream (one CudaFusion each), never share a context
or an output buffer, and ``run()`` after ``run_device()`` does not touch what the fusion still
reads. A batch under the profile's minimum is padded on the device (``run_device``; ``run`` refuses
it). Plans with float16 I/O (``--fp16-io``) have ``supports_device_io = False`` (the device path
takes float32) and run on the host path.

The runtime logs through the process's one ``trt.Logger`` (``cervrt.cuda.trt.shared_logger``).
``close`` releases each resource in its own guard (one failing CUDA call does not leave the rest),
TensorRT's objects (contexts, engine, runtime) before the CUDA context, the context last.

Not thread-safe: the host side (binding shapes and addresses) is not locked (``thread_safe = False``);
the Predictor serialises calls, and the lanes keep the device side apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.artifact import read_plan_metadata
from cervrt.cuda import PrimaryContext, driver, gpu_info, native_handle
from cervrt.cuda import memory as mem
from cervrt.cuda.trt import shared_logger
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import DeviceError, InputError, ModelError

__all__ = ["TensorBinding", "TensorRTEngine", "check_gpu", "check_plan_sha256", "check_version", "read_bindings",
           "version_triple"]


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
        raise ModelError(f"cannot read the TensorRT version {version!r}")
    return tuple(int(p) for p in parts[:3])


def check_version(metadata: dict[str, Any], installed: str, path: Path) -> None:
    """CervrtError unless the installed TensorRT is the one the plan was built with (major.minor.patch)."""
    recorded = metadata.get("tensorrt_version")
    if recorded is None:
        raise ModelError(f"{path}.json does not record the TensorRT version it was built with: build it again")
    want, have = version_triple(recorded), version_triple(installed)
    if have[: len(want)] != want:
        raise ModelError(f"{path} was built with TensorRT {recorded} but TensorRT {installed} is installed: a plan "
                          f"runs only with the TensorRT that built it; install tensorrt=={recorded} or build it again")


def check_gpu(metadata: dict[str, Any], gpu_name: str, capability: str, device: Device, path: Path) -> None:
    """CervrtError unless ``device`` is the GPU model (name and compute capability) the plan was built on."""
    want = (str(metadata.get("gpu_name")), str(metadata.get("compute_capability")))
    if (gpu_name, capability) != want:
        raise DeviceError(f"{path} was built on a {want[0]} (compute {want[1]}) but cuda:{device.ordinal} is a "
                          f"{gpu_name} (compute {capability}): a TensorRT plan only runs on the GPU model it was "
                          "built on; build it again on this machine with `cervrt export CHECKPOINT --engine PATH.plan`")


def check_plan_sha256(metadata: dict[str, Any], plan: bytes, path: Path) -> None:
    """CervrtError when the plan's bytes are not the ones its ``.json`` describes (``plan_sha256``)."""
    recorded = metadata.get("plan_sha256")
    if recorded is not None and hashlib.sha256(plan).hexdigest() != str(recorded):
        raise ModelError(f"{path} does not match the plan_sha256 in {path.name}.json (the plan was replaced or "
                          "truncated after export): export it again")


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
        raise ModelError(f"{path}.json has no usable optimisation profile (min/max shapes): build it again") from None


def _ok(result: bool, what: str) -> None:
    if not result:
        raise ModelError(f"TensorRT refused {what} (its log above says why)")


@dataclass
class _Lane:
    """One stream's execution context and device buffers (input and outputs, ``capacity`` patches)."""

    context: Any
    device: dict[str, int] = field(default_factory=dict)
    capacity: int = 0


def _attempt(step: Callable[[], Any]) -> None:
    """Run one release step; a failure (a CUDA error while closing) does not stop the others."""
    with contextlib.suppress(Exception):
        step()


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
            raise DeviceError(f"{self.path} is a TensorRT plan, which runs on a CUDA GPU only: use device auto or "
                              "cuda[:N], or open the .onnx export for the CPU")
        self._min_batch, self.max_batch = _profile_batch(self.metadata, self.path)
        if batch_size is not None and batch_size > self.max_batch:
            raise InputError(f"batch size {batch_size} is above the plan's profile maximum of {self.max_batch}: "
                              f"use --batch-size {self.max_batch} or less, or build the plan with a larger profile")
        trt = optional_import("tensorrt", "tensorrt")
        check_version(self.metadata, str(trt.__version__), self.path)
        gpu = gpu_info(requested.ordinal, extra="tensorrt")
        check_gpu(self.metadata, gpu.name, gpu.capability, requested, self.path)
        plan = self.path.read_bytes()
        check_plan_sha256(self.metadata, plan, self.path)
        self.precision = str(self.metadata["precision"])
        self.provider = f"TensorRT {trt.__version__}"
        self.device = f"cuda:{requested.ordinal}"
        self.batch_size = batch_size
        self._cuda: PrimaryContext | None = None
        self._runtime = self._engine = self._stream = self._done = None
        self._lanes: dict[int, _Lane] = {}
        self._host: dict[str, np.ndarray] = {}
        self._pinned: list[int] = []
        self._capacity = max(batch_size or self.max_batch, self._min_batch)
        self._open(trt, requested.ordinal, plan)

    # -- set-up --------------------------------------------------------------------------------

    def _open(self, trt: Any, ordinal: int, plan: bytes) -> None:
        self._cuda = PrimaryContext(ordinal)
        try:
            with self._active():
                self._deserialize(trt, plan)
                self._stream = mem.create_stream()
                self._done = mem.create_event()
                self._allocate_host(self._lane(self._stream, self._capacity))
        except BaseException:
            self._close()
            raise

    def _deserialize(self, trt: Any, plan: bytes) -> None:
        self._runtime = trt.Runtime(shared_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise ModelError(f"TensorRT could not deserialise {self.path} (truncated, or built by another TensorRT "
                              "or for another GPU): build it again")
        self._bind(read_bindings(trt, self._engine))

    def _bind(self, bindings: list[TensorBinding]) -> None:
        """Match the engine's tensors with the metadata: one float input, every named output present."""
        inputs = [b for b in bindings if b.is_input]
        outputs = {b.name: b for b in bindings if not b.is_input}
        wanted = list(self.metadata["outputs"])
        if [b.name for b in inputs] != [self.metadata["input"]] or not set(wanted) <= set(outputs):
            raise ModelError(f"{self.path}: the engine's tensors ({[b.name for b in bindings]}) do not match its "
                              f"description ({self.metadata['input']} -> {wanted}); build it again")
        if inputs[0].dtype not in (np.float32, np.float16):
            raise ModelError(f"{self.path}: its input is {inputs[0].dtype}; cervrt plans take float32 or float16")
        self._input = inputs[0]
        self._outputs = [outputs[name] for name in wanted]
        self.input_dtype = inputs[0].dtype
        # The device path hands over float32 buffers: an FP16-I/O plan runs on the host path instead.
        self.supports_device_io = all(b.dtype == np.float32 for b in (self._input, *self._outputs))

    def _input_shape(self, n: int) -> tuple[int, int, int, int]:
        return (n, 3, self.patch_size, self.patch_size)

    def _lane(self, stream: Any, capacity: int) -> _Lane:
        """``stream``'s lane, created (a new execution context) or grown to ``capacity`` patches."""
        key = native_handle(stream)
        lane = self._lanes.get(key)
        if lane is None:
            context = self._engine.create_execution_context()
            if context is None:
                raise DeviceError(f"TensorRT could not create an execution context for {self.path} "
                                  "(out of GPU memory?)")
            lane = self._lanes[key] = _Lane(context)
        if capacity > lane.capacity:
            self._allocate(lane, capacity, stream)
        return lane

    def _allocate(self, lane: _Lane, capacity: int, stream: Any) -> None:
        """Device buffers of ``lane`` for ``capacity`` patches; binds every output's address."""
        shape = self._input_shape(capacity)
        _ok(lane.context.set_input_shape(self._input.name, shape), f"the input shape {shape}")
        shapes = {self._input.name: shape}
        for binding in self._outputs:
            shapes[binding.name] = tuple(int(d) for d in lane.context.get_tensor_shape(binding.name))
            if min(shapes[binding.name]) < 0:
                raise ModelError(f"TensorRT left the shape of {binding.name} unresolved: {shapes[binding.name]}")
        if lane.device:
            mem.synchronize_stream(stream)  # the old buffers' last readers are on this lane's stream
            for ptr in lane.device.values():
                mem.free_device(ptr)
            lane.device = {}
        for binding in (self._input, *self._outputs):
            nbytes = math.prod(shapes[binding.name]) * binding.dtype.itemsize
            lane.device[binding.name] = mem.malloc_device(nbytes)
            _ok(lane.context.set_tensor_address(binding.name, lane.device[binding.name]),
                f"the address of {binding.name}")
        lane.capacity = capacity

    def _allocate_host(self, lane: _Lane) -> None:
        """Pinned host buffers of ``run``'s lane for its capacity."""
        mem.synchronize_stream(self._stream)
        self._host = {}  # drop the views before the memory under them
        for ptr in self._pinned:
            mem.free_pinned(ptr)
        self._pinned = []
        for binding in (self._input, *self._outputs):
            shape = (lane.capacity, *self._tensor_shape(lane, binding)[1:])
            ptr, array = mem.malloc_pinned(math.prod(shape) * binding.dtype.itemsize, binding.dtype)
            self._pinned.append(ptr)
            self._host[binding.name] = array.reshape(shape)

    def _tensor_shape(self, lane: _Lane, binding: TensorBinding) -> tuple[int, ...]:
        if binding.is_input:
            return self._input_shape(lane.capacity)
        return tuple(int(d) for d in lane.context.get_tensor_shape(binding.name))

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        """Make the engine's (primary) CUDA context current on the calling thread for the block."""
        with self._cuda.active():
            yield

    # -- running -------------------------------------------------------------------------------

    def _enqueue(self, lane: _Lane, n: int, input_ptr: int, stream: Any) -> None:
        """Set the batch's shape and input address on ``lane``, then enqueue the engine on ``stream``."""
        if n < self._min_batch:
            raise InputError(f"the plan's profile takes batches of {self._min_batch} to {self.max_batch} patches, "
                              f"got {n}: pad the batch or build the plan with a smaller minimum")
        context = lane.context
        _ok(context.set_input_shape(self._input.name, self._input_shape(n)), f"the input shape of {n} patches")
        _ok(context.set_tensor_address(self._input.name, int(input_ptr)), "the input address")
        _ok(context.execute_async_v3(native_handle(stream)), "to enqueue the engine (execute_async_v3)")

    def _run(self, batch: np.ndarray) -> EngineOutput:
        n = batch.shape[0]
        with self._active():
            lane = self._lanes[native_handle(self._stream)]
            if n > lane.capacity:
                self._allocate(lane, n, self._stream)
                self._allocate_host(lane)
            host_in = self._host[self._input.name]
            mem.synchronize_event(self._done)  # the last run's copies have left the pinned buffers
            host_in[:n] = batch
            mem.copy_htod_async(lane.device[self._input.name], host_in.ctypes.data, batch.nbytes, self._stream)
            self._enqueue(lane, n, lane.device[self._input.name], self._stream)
            for binding in self._outputs:
                host = self._host[binding.name]
                mem.copy_dtoh_async(host.ctypes.data, lane.device[binding.name], host[:n].nbytes, self._stream)
            mem.record_event(self._done, self._stream)
            mem.synchronize_event(self._done)
            results = [self._host[b.name][:n].copy() for b in self._outputs]
        return EngineOutput(results[0], results[1] if len(results) > 1 else None)

    def run_device(self, input_ptr: int, n: int, stream: Any) -> tuple[int, int | None]:
        """Enqueue the engine on ``stream`` for ``n`` float32 (n, 3, P, P) patches at device address
        ``input_ptr``; returns the device addresses of float32 ``probs`` (n, C, P, P) and ``class_probs``
        (n, C - 1) or None, written on ``stream`` and valid until the next call on ``stream``. A batch
        under the profile's minimum is copied into the lane's input buffer and padded with zeros."""
        if self._closed:
            raise InputError("this tensorrt engine is closed: open the model again")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= self.max_batch:
            raise InputError(f"n must be an integer from 1 to {self.max_batch} (the plan's profile), got {n!r}")
        if int(input_ptr) <= 0:
            raise InputError("input_ptr must be a device pointer to float32 (n, 3, P, P)")
        if not self.supports_device_io:
            dtypes = {b.name: str(b.dtype) for b in (self._input, *self._outputs)}
            raise ModelError(f"run_device needs a plan with float32 input and outputs, this one has {dtypes}; "
                              "build it from an export without --fp16-io, or use run()")
        n = int(n)
        with self._active():
            lane = self._lane(stream, max(n, self._min_batch, min(self._capacity, self.max_batch)))
            if n < self._min_batch:
                input_ptr = self._pad(lane, int(input_ptr), n, stream)
            self._enqueue(lane, max(n, self._min_batch), int(input_ptr), stream)
        pointers = [lane.device[b.name] for b in self._outputs]
        return pointers[0], pointers[1] if len(pointers) > 1 else None

    def _pad(self, lane: _Lane, input_ptr: int, n: int, stream: Any) -> int:
        """The lane's input buffer holding the ``n`` patches at ``input_ptr`` then zeros up to the profile minimum."""
        per_patch = 3 * self.patch_size * self.patch_size
        target = lane.device[self._input.name]
        mem.copy_dtod_async(target, input_ptr, n * per_patch * 4, stream)
        mem.memset_d32_async(target + n * per_patch * 4, 0, (self._min_batch - n) * per_patch, stream)
        return target

    # -- lifetime ------------------------------------------------------------------------------

    def _close(self) -> None:
        if self._cuda is None:
            return
        cu = driver()
        pushed = False
        with contextlib.suppress(Exception):
            with contextlib.ExitStack() as stack:
                stack.enter_context(self._active())
                pushed = True
                self._release(cu)
        if not pushed:  # the context could not be made current: TensorRT's objects still go before it
            self._drop_tensorrt()
        self._done = self._stream = None
        _attempt(self._cuda.release)  # last
        self._cuda = None

    def _release(self, cu: Any) -> None:
        """Every resource, each in its own guard, in an order that is safe at each step."""
        if self._stream is not None:
            _attempt(lambda: cu.cuStreamSynchronize(self._stream))
        _attempt(cu.cuCtxSynchronize)  # run_device work on callers' streams
        self._host = {}  # drop the views before the memory under them
        for ptr in [p for lane in self._lanes.values() for p in lane.device.values()]:
            _attempt(lambda ptr=ptr: cu.cuMemFree(ptr))
        for ptr in self._pinned:
            _attempt(lambda ptr=ptr: cu.cuMemFreeHost(ptr))
        self._pinned = []
        if self._done is not None:
            _attempt(lambda: cu.cuEventDestroy(self._done))
        if self._stream is not None:
            _attempt(lambda: cu.cuStreamDestroy(self._stream))
        self._drop_tensorrt()

    def _drop_tensorrt(self) -> None:
        """Contexts before the engine before the runtime (see the module docstring)."""
        for lane in self._lanes.values():
            lane.context = None
        self._lanes = {}
        self._engine = None
        self._runtime = None
