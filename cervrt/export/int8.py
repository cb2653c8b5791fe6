"""FP32 ONNX -> INT8 ONNX: static post-training quantization in QDQ form, calibrated on tissue patches.

The library is ONNX Runtime's own quantization tools (``onnxruntime.quantization.quantize_static``):
weights int8, symmetric, per output channel; activations int8 (S8S8, the QDQ default), ranges from
MinMax calibration over the calibration patches. The result is a standard QDQ graph
(QuantizeLinear/DequantizeLinear pairs around each quantized operator) that ONNX Runtime's CPU
provider fuses into integer kernels (VNNI where the CPU has it) and that OpenVINO reads as INT8 too.
NNCF (``nncf.quantize``) writes the same QDQ form; it was measured against ORT's tools on the demo's
HSP-Net ResNet-34 (see ``benchmarks/cpu_fastpath.py`` and the report of issue 11): ORT's tools need no
extra package beside onnxruntime-gpu, and NNCF gave no better agreement or speed, so ORT's are used.

What stays in float is chosen by groups of nodes (:data:`FLOAT_GROUPS`), found by measurement on the
demo's trained model (agreement with FP32 on held-out tissue, and speed, for each choice):

- ``tail``: the softmax and everything after it (Ensemble-A's sigmoid, product and renormalisation,
  the outputs). Quantizing probabilities to 8 bits rounds every one of them to a multiple of 1/255
  (or coarser) and ties neighbouring classes; the runtime averages and gates these probabilities.
- ``head``: the classifier -- the last convolution(s) producing the logits and the up-sampling of
  the logits to the input size. Near-tied logits decide the argmax; an 8-bit head flips them.
- ``pooled``: the global pooling of the DS-Block / ASPP pool branches and the 1x1 convolution on the
  pooled vectors (see :func:`cervrt.export.fp16.pooled_path`): C values per image, so it costs
  nothing in float.

The export keeps the groups of :data:`DEFAULT_FLOAT_GROUPS` and records them, with why, in the
metadata (``int8.float_groups``, ``int8.float_ops``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.errors import CervrtError

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_FLOAT_GROUPS",
    "FLOAT_GROUPS",
    "INT8_AGREEMENT",
    "float_nodes",
    "int8_metadata",
    "quantize_int8",
]

#: Argmax agreement with FP32 on held-out tissue an INT8 export needs.
INT8_AGREEMENT = 0.99
#: Node groups that may stay in float, and why (see the module docstring).
FLOAT_GROUPS = {
    "tail": "softmax and what follows: 8-bit probabilities tie neighbouring classes and break the averaging and gate",
    "head": "the classifier convolution and the up-sampling of its logits: near-tied logits decide the argmax",
    "pooled": "the global pooling branch (DS-Block/ASPP pool, 1x1 conv on C values): free in float",
}
#: What the export keeps in float (chosen by measurement: see the module docstring).
DEFAULT_FLOAT_GROUPS = ("tail", "head")
#: Calibration methods of ONNX Runtime's tools that cervrt offers.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
_BATCH = 4
_DATA_MOVEMENT = {"Cast", "Concat", "Expand", "Gather", "Identity", "Reshape", "Shape", "Slice", "Squeeze",
                  "Unsqueeze"}


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _head(graph: Any) -> list[str]:
    """The nodes between the last convolution(s) and the softmax: walk up from each Softmax to a Conv."""
    producers = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    found: dict[str, None] = {}
    stack = [name for node in graph.node if node.op_type in ("Softmax", "Sigmoid") for name in node.input[:1]]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = None
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            continue  # the classifier layer itself: stop above it
        stack.extend(name for name in node.input[:1] if name not in initializers)
    return list(found)


def _pooled(graph: Any) -> list[str]:
    from cervrt.export.fp16 import pooled_path

    pools = [n.name for n in graph.node if n.op_type in ("ReduceMean", "GlobalAveragePool")]
    return pools + pooled_path(graph)


def float_nodes(model: Any, groups: Sequence[str]) -> dict[str, list[str]]:
    """Node names of each of ``groups`` (keys of :data:`FLOAT_GROUPS`) in ``model`` (an FP32 ModelProto)."""
    from cervrt.export.fp16 import _name_nodes, probability_tail

    unknown = [g for g in groups if g not in FLOAT_GROUPS]
    if unknown:
        raise CervrtError(f"unknown float group(s) {', '.join(unknown)}: choose from {', '.join(FLOAT_GROUPS)}")
    _name_nodes(model.graph)
    finders = {"tail": probability_tail, "head": _head, "pooled": _pooled}
    return {group: finders[group](model.graph) for group in groups}


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over normalised float32 patches, in batches."""

    def __init__(self, input_name: str, batches: np.ndarray) -> None:
        self.input_name, self.batches = input_name, batches
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def rewind(self) -> None:
        self._iter = iter([{self.input_name: self.batches[i : i + _BATCH]}
                           for i in range(0, len(self.batches), _BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def __len__(self) -> int:
        return -(-len(self.batches) // _BATCH)


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise CervrtError(f"unknown calibration method {name!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[name]


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ORT's tools log advice to the root logger at WARNING; hold it back for the duration of one call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _strip_cervrt_metadata(model: Any) -> Any:
    work = copy.deepcopy(model)
    del work.metadata_props[:]
    del work.graph.value_info[:]
    return work


def quantize_int8(model: Any, calibration: np.ndarray, float_groups: Sequence[str] = DEFAULT_FLOAT_GROUPS,
                  method: str = "minmax", activations: str = "s8") -> tuple[Any, list[str]]:
    """An INT8 QDQ copy of the FP32 ``model`` and the names of the nodes kept in float.

    ``calibration``: normalised float32 NCHW patches. ``activations``: ``"s8"`` (int8) or ``"u8"`` (uint8).
    The copy carries no cervrt metadata: attach it after (see :func:`int8_metadata`).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if calibration.ndim != 4 or len(calibration) == 0:
        raise CervrtError(f"calibration patches must be a non-empty (n, 3, P, P) array, got {calibration.shape}")
    work = _strip_cervrt_metadata(model)
    kept = [name for names in float_nodes(work, float_groups).values() for name in names]
    activation_type = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}[activations]
    with tempfile.TemporaryDirectory(prefix="cervrt-int8-") as tmp:
        target = Path(tmp) / "model.int8.onnx"
        with _quiet_root_logger():
            try:
                quantize_static(work, target, _Reader(work.graph.input[0].name, calibration),
                                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=activation_type,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(dict.fromkeys(kept)),
                                calibrate_method=_method(method),
                                extra_options={"CalibMaxIntermediateOutputs": 4 * _BATCH})
            except CervrtError:
                raise
            except Exception as exc:  # the tools raise bare ValueError/RuntimeError/...
                raise CervrtError(f"INT8 quantization failed: {type(exc).__name__}: {exc}") from None
        quantized = onnx.load(str(target))
    return quantized, list(dict.fromkeys(kept))


def _float_op_types(model: Any, names: Sequence[str]) -> list[str]:
    wanted = set(names)
    return sorted({n.op_type for n in model.graph.node if n.name in wanted} - _DATA_MOVEMENT)


def int8_metadata(fp32_model: Any, float_groups: Sequence[str], kept: Sequence[str], method: str,
                  calibration_patches: int, holdout_patches: int, sources: Sequence[str]) -> dict[str, Any]:
    """The ``int8`` metadata entry: library, scheme, calibration and what stayed in float (and why)."""
    import onnxruntime

    return {"library": f"onnxruntime.quantization {onnxruntime.__version__}", "format": "QDQ",
            "weights": "int8, symmetric, per output channel", "activations": "int8, per tensor",
            "calibration_method": method, "calibration_patches": int(calibration_patches),
            "holdout_patches": int(holdout_patches), "calibration_sources": list(sources)[:20],
            "float_groups": {g: FLOAT_GROUPS[g] for g in float_groups},
            "float_ops": _float_op_types(fp32_model, kept), "float_nodes": len(kept)}
