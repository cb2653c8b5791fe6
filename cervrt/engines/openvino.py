"""OpenVINO engine for cervrt ``.onnx`` exports (FP32, FP16, INT8 QDQ) on the CPU; the ``openvino`` extra.

OpenVINO reads the ONNX file directly (``Core.read_model``) and compiles it for its CPU plugin with
the latency hint (one stream, all cores, as a slide run sends one batch at a time). The cervrt
metadata comes from the same file (``read_metadata``), so the engine configures itself like the
ONNX Runtime one.

Inference precision: OpenVINO's CPU plugin picks **bf16 by default** on CPUs that have it (AVX-512
BF16 or AMX), which would silently change an FP32 model's numbers. So the engine always sets
``INFERENCE_PRECISION_HINT`` itself: ``f32`` unless ``bf16=True``, then ``bf16``, which needs the
CPU's ``BF16`` optimisation capability (OpenVINO reports it where the CPU has AVX-512 BF16 or AMX;
elsewhere a CervrtError says so). ``precision`` reports what runs: ``fp32``, ``bf16``, ``int8`` (its
float parts in f32) or ``int8+bf16``; an FP16 file's weights are widened, so it runs as ``fp32``
(or ``bf16``). ``provider`` is ``OpenVINO CPU (f32)`` / ``(bf16)``, read back from the compiled model.

Devices: ``auto`` and ``cpu`` run on OpenVINO's CPU plugin; anything else is refused (cervrt's GPU
path is TensorRT). One infer request, reused; ``run`` from several threads is serialised by a lock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.artifact import read_metadata
from cervrt.devices import Device, parse_device
from cervrt.engines.base import Engine, EngineOutput
from cervrt.errors import DeviceError, InputError, MissingDependencyError, ModelError

__all__ = ["OpenVinoEngine", "cpu_has_bf16", "require_openvino"]

_CPUINFO_BF16 = ("avx512_bf16", "amx_bf16")
_NP_TYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16)}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def require_openvino() -> Any:
    """The ``openvino`` module, or a CervrtError naming the install command."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError("openvino (the OpenVINO backend)", "openvino") from None
    return openvino


def cpu_has_bf16(core: Any | None = None) -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 here (AVX-512 BF16 or AMX); /proc/cpuinfo without it."""
    if core is not None:
        try:
            return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # an old plugin without the property: read the flags
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPUINFO_BF16)


class OpenVinoEngine(Engine):
    """A cervrt ONNX model compiled by OpenVINO for the CPU (see the module docstring)."""

    kind = "openvino"
    thread_safe = True

    def __init__(self, path: str | Path, device: str | Device = "auto", batch_size: int | None = None, *,
                 bf16: bool = False) -> None:
        ov = require_openvino()
        requested = parse_device(device)
        if requested.kind not in ("auto", "cpu"):
            raise InputError(f"the OpenVINO backend runs on the CPU (device cpu or auto), not {requested}: "
                              "use --backend onnxruntime or a TensorRT plan for a GPU")
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.batch_size = batch_size
        self.device = "cpu"
        core = ov.Core()
        if bf16 and not cpu_has_bf16(core):
            raise DeviceError("--bf16 needs a CPU with AVX-512 BF16 or AMX, which this one lacks "
                              f"(OpenVINO reports {_capabilities(core)}): run without --bf16")
        self._compiled = self._compile(core, "bf16" if bf16 else "f32")
        self._bind_io()
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def _compile(self, core: Any, hint: str) -> Any:
        try:
            model = core.read_model(str(self.path))
            return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for graphs it cannot read
            raise ModelError(f"OpenVINO cannot load {self.path}: {_first_line(exc)}") from None

    def _bind_io(self) -> None:
        inputs = [port.get_any_name() for port in self._compiled.inputs]
        outputs = {name for port in self._compiled.outputs for name in port.get_names()}
        wanted_input, wanted_outputs = self.metadata["input"], list(self.metadata["outputs"])
        if inputs != [wanted_input] or not set(wanted_outputs) <= outputs:
            raise ModelError(f"{self.path}: the graph's inputs/outputs ({inputs}, {sorted(outputs)}) "
                              f"do not match its cervrt metadata ({wanted_input}, {wanted_outputs}); export it again")
        element = self._compiled.inputs[0].get_element_type().get_type_name()
        if element not in _NP_TYPES:
            raise ModelError(f"{self.path}: its input is {element}; cervrt graphs take float or float16")
        self.input_dtype = _NP_TYPES[element]
        self._outputs = [self._compiled.output(name) for name in wanted_outputs]
        ran = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.inference_precision = "bf16" if "bf" in ran.lower() else "f32"
        self.provider = f"OpenVINO CPU ({self.inference_precision})"
        self.precision = _precision(str(self.metadata["precision"]), self.inference_precision)

    def _run(self, batch: np.ndarray) -> EngineOutput:
        try:
            with self._lock:
                results = self._request.infer({0: batch})
                arrays = [np.array(results[port], dtype=np.float32, copy=True) for port in self._outputs]
        except Exception as exc:  # OpenVINO's own exception types: a graph that cannot take this batch
            raise ModelError(f"OpenVINO failed on a batch of shape {batch.shape}: {_first_line(exc)}") from exc
        return EngineOutput(arrays[0], arrays[1] if len(arrays) > 1 else None)

    def _close(self) -> None:
        self._request = None
        self._compiled = None


def _capabilities(core: Any) -> str:
    try:
        return ", ".join(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # only for the message
        return "no capabilities"


def _precision(file_precision: str, inference: str) -> str:
    """What runs: the file's int8 parts stay int8; float parts run at the inference precision."""
    floating = "bf16" if inference == "bf16" else "fp32"
    return f"int8+{floating}" if file_precision == "int8" and floating == "bf16" else (
        "int8" if file_precision == "int8" else floating)
