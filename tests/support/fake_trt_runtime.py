"""A stand-in for the ``tensorrt`` runtime API (deserialise, named tensors, execute_async_v3) and a plan
description, for testing cervrt's TensorRT engine without TensorRT or a GPU.

The fake engine "runs" on the host: ``execute_async_v3`` queues, on the emulated CUDA driver's stream
(``tests/support/cuda_emulation.py``: it runs when that stream's work is waited for), a read of the
input at the address bound with ``set_tensor_address`` and a write of a known function of it to the
output addresses:
``probs = softmax_c(sum_k W[c, k] x[k])`` per pixel and ``class_probs = sigmoid(V @ mean_xy(x))``.
It asserts what TensorRT documents: shapes within the profile, every I/O address set, only known
tensor names. It cannot tell whether real TensorRT would accept the plan.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.artifact import PLAN_FORMAT
from tests.support.tiny_models import tiny_metadata

NUM_CLASSES = 5
PATCH = 32
GPU = ("NVIDIA Fake GPU", "8.9")
W = np.random.default_rng(1).standard_normal((NUM_CLASSES, 3)).astype(np.float32)
V = np.random.default_rng(2).standard_normal((NUM_CLASSES - 1, 3)).astype(np.float32)


def reference(batch: np.ndarray, with_classifier: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """What the fake engine computes, in float32 numpy."""
    x = batch.astype(np.float32)
    logits = np.einsum("ck,nkhw->nchw", W, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
    class_probs = 1 / (1 + np.exp(-(x.mean(axis=(2, 3)) @ V.T))) if with_classifier else None
    return probs.astype(np.float32), None if class_probs is None else class_probs.astype(np.float32)


def plan_metadata(*, version: str = "10.13.3.9", gpu: tuple[str, str] = GPU, max_batch: int = 4, min_batch: int = 1,
                  with_classifier: bool = False, precision: str = "fp32") -> dict[str, Any]:
    outputs = ["probs", "class_probs"] if with_classifier else ["probs"]
    metadata = tiny_metadata(
        format=PLAN_FORMAT, format_version=1, arch_kwargs={}, mean=[0.5] * 3, std=[0.25] * 3, patch_size=PATCH,
        precision=precision, outputs=outputs, has_classifier=with_classifier, params=None, macs_384=None,
        macs_patch=None, tensorrt_version=version, gpu_name=gpu[0], compute_capability=gpu[1],
        profile={"input": "image", "min": [min_batch, 3, PATCH, PATCH], "opt": [2, 3, PATCH, PATCH],
                 "max": [max_batch, 3, PATCH, PATCH]})
    return metadata.to_dict()


def write_plan(directory: Path, metadata: dict[str, Any] | None = None, *, plan: bytes = b"FAKEPLAN",
               name: str = "m.plan") -> Path:
    path = directory / name
    path.write_bytes(plan)
    if metadata is not None:
        path.with_name(name + ".json").write_text(json.dumps(metadata))
    return path


def _view(address: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(address), dtype=dtype).reshape(shape)


def make_fake_trt_runtime(version: str = "10.13.3.9", *, with_classifier: bool = False, input_name: str = "image",
                          io_dtype: type = np.float32, max_batch: int = 4, min_batch: int = 1) -> types.ModuleType:
    """A fake ``tensorrt`` module; ``module.events`` lists creations, executions and destructions in order."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.events = events = []
    trt.loggers = loggers = []  # every trt.Logger made
    trt.runtime_loggers = runtime_loggers = []  # the logger each Runtime was given
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    trt.DataType = enum.Enum("DataType", ["FLOAT", "HALF"])
    to_numpy = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16}
    trt.nptype = lambda dtype: to_numpy[dtype]
    io_type = trt.DataType.HALF if io_dtype == np.float16 else trt.DataType.FLOAT
    tensors = {input_name: trt.TensorIOMode.INPUT, "probs": trt.TensorIOMode.OUTPUT}
    if with_classifier:
        tensors["class_probs"] = trt.TensorIOMode.OUTPUT

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity
            loggers.append(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine  # a context keeps its engine alive, as in TensorRT
            self.shape: tuple[int, ...] | None = None
            self.addresses: dict[str, int] = {}
            events.append("create Context")

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            assert tensors[name] is trt.TensorIOMode.INPUT, f"set_input_shape on output {name}"
            shape = tuple(shape)
            if len(shape) != 4 or not min_batch <= shape[0] <= max_batch or shape[1:] != (3, PATCH, PATCH):
                return False
            self.shape = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            n = self.shape[0] if self.shape else -1
            return {input_name: self.shape or (-1, 3, PATCH, PATCH), "probs": (n, NUM_CLASSES, PATCH, PATCH),
                    "class_probs": (n, NUM_CLASSES - 1)}[name]

        def set_tensor_address(self, name: str, address: int) -> bool:
            assert name in tensors and isinstance(address, int) and address > 0
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            assert isinstance(stream_handle, int)
            assert set(self.addresses) == set(tensors), "every I/O tensor needs an address before execution"
            n, addresses = self.shape[0], dict(self.addresses)  # what execute_async_v3 captures

            def work() -> None:
                x = _view(addresses[input_name], io_dtype, (n, 3, PATCH, PATCH))
                probs, class_probs = reference(x, with_classifier)
                _view(addresses["probs"], io_dtype, probs.shape)[:] = probs
                if with_classifier:
                    _view(addresses["class_probs"], io_dtype, class_probs.shape)[:] = class_probs

            from cervrt import cuda

            enqueue = getattr(cuda.driver(), "enqueue", None)
            work() if enqueue is None else enqueue(stream_handle, work)
            events.append(f"execute {n} on {stream_handle}")
            return True

        def __del__(self) -> None:
            events.append("del Context")

    class Engine:
        num_io_tensors = len(tensors)

        def __init__(self) -> None:
            events.append("create Engine")

        def get_tensor_name(self, index: int) -> str:
            return list(tensors)[index]

        def get_tensor_mode(self, name: str) -> Any:
            return tensors[name]

        def get_tensor_dtype(self, name: str) -> Any:
            return io_type

        def create_execution_context(self) -> Context:
            return Context(self)

        def __del__(self) -> None:
            events.append("del Engine")

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            runtime_loggers.append(logger)
            events.append("create Runtime")

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> Engine | None:
            return Engine() if bytes(serialized_engine).startswith(b"FAKEPLAN") else None

        def __del__(self) -> None:
            events.append("del Runtime")

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt
