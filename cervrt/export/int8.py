"""FP32 ONNX -> INT8 ONNX: static post-training quantization in QDQ form, calibrated on tissue patches.

The library is ONNX Runtime's own quantization tools (``onnxruntime.quantization.quantize_static``):
weights int8, symmetric, per output channel; activations uint8, asymmetric, per tensor (U8S8). The
result is a standard QDQ graph (QuantizeLinear/DequantizeLinear pairs around each quantized
operator) that ONNX Runtime's CPU provider fuses into integer kernels (QLinearConv, VNNI where the
CPU has it) and that OpenVINO reads as INT8 too. U8S8, not the tools' S8S8 default: ONNX Runtime
1.31 fuses U8S8 QDQ convolutions into QLinearConv but leaves most S8S8 ones as float convolutions
between Dequantize/Quantize pairs (on the demo's HSP-Net ResNet-34 at 400x400: S8S8 1.0x the FP32
speed, U8S8 3.3x, same agreement). NNCF 3.4 (``nncf.quantize``, default preset, same 32 calibration
patches, same nodes ignored) writes QDQ too but with int8 activations: on the same model and held-out
patches it agreed 98.91% with FP32 (ORT's tools: 99.02%) and ran at 0.90x the FP32 speed in ONNX
Runtime (ORT's: 2.07x, same run). ORT's tools also need nothing beside onnxruntime-gpu.

What stays in float is chosen by groups of nodes (:data:`FLOAT_GROUPS`):

- ``tail``: the softmax and everything after it (Ensemble-A's sigmoid, product and renormalisation,
  the outputs): 8-bit probabilities would be multiples of 1/255 that the runtime then averages and
  gates. Free: these run once per pixel on C channels.
- ``head``: the classifier -- the last convolution(s) producing the logits and the up-sampling of
  the logits to the input size. Near-tied logits decide the argmax; an 8-bit head flips them.
- ``pooled``: the global pooling of the DS-Block / ASPP pool branches and the 1x1 convolution on the
  pooled vectors (see :func:`cervrt.export.fp16.pooled_path`): C values per image.

Measured on the demo's briefly trained HSP-Net ResNet-34 (its near-ties are many: 1.8% of pixels have
their two top probabilities within 0.02), agreement with FP32 on 48 held-out tissue patches of 128 px:
nothing in float 98.89%, tail 98.89%, tail + head 99.02%, tail + head + pooled 98.98%; with
percentile calibration (99.999th) tail + head 99.18%. So the export tries, in turn
(:data:`LADDER`), MinMax with tail + head, percentile with tail + head, percentile with the pooled
branch too, and keeps the first that passes the gate; the metadata records which (``int8``:
``calibration_method``, ``float_groups`` with why, ``float_ops``, and every try's agreement).
Percentile calibration keeps every activation of its patches in memory (ONNX Runtime's histogram
collector), so it uses at most :data:`_PERCENTILE_PIXELS` pixels of calibration patches.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.errors import CervrtError

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_FLOAT_GROUPS",
    "FLOAT_GROUPS",
    "INT8_AGREEMENT",
    "LADDER",
    "Int8Result",
    "build_int8",
    "float_nodes",
    "int8_metadata",
    "quantize_gated",
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
#: (calibration method, float groups) tried in turn until the parity gate passes (see the module docstring).
LADDER = (("minmax", DEFAULT_FLOAT_GROUPS), ("percentile", DEFAULT_FLOAT_GROUPS),
          ("percentile", ("tail", "head", "pooled")))
#: Most calibration pixels the percentile method takes (it holds all their activations in memory).
_PERCENTILE_PIXELS = 1 << 20
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
    """ORT's tools log advice to the root logger at WARNING and print progress to stdout; hold both back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        root.setLevel(level)


def _strip_cervrt_metadata(model: Any) -> Any:
    work = copy.deepcopy(model)
    del work.metadata_props[:]
    del work.graph.value_info[:]
    return work


def quantize_int8(model: Any, calibration: np.ndarray, float_groups: Sequence[str] = DEFAULT_FLOAT_GROUPS,
                  method: str = "minmax", activations: str = "u8") -> tuple[Any, list[str]]:
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


def int8_metadata(fp32_model: Any, result: Int8Result, holdout_patches: int,
                  sources: Sequence[str]) -> dict[str, Any]:
    """The ``int8`` metadata entry: library, scheme, calibration, what stayed in float (and why), every try."""
    import onnxruntime

    tries = [{"try": c.candidate, "agreement": c.agreement, "max_abs_diff": c.max_abs_diff} for c in result.checks]
    return {"library": f"onnxruntime.quantization {onnxruntime.__version__}", "format": "QDQ",
            "weights": "int8, symmetric, per output channel", "activations": "uint8, asymmetric, per tensor",
            "calibration_method": result.method, "calibration_patches": result.calibration_patches,
            "holdout_patches": int(holdout_patches), "calibration_sources": list(sources)[:20],
            "float_groups": {g: FLOAT_GROUPS[g] for g in result.groups},
            "float_ops": _float_op_types(fp32_model, result.kept), "float_nodes": len(result.kept),
            "agreement": result.checks[-1].agreement, "tries": tries}


@dataclass(frozen=True)
class Int8Result:
    """A quantized graph that passed the gate, how it was calibrated, what it keeps in float, every check tried."""

    model: Any
    method: str
    calibration_patches: int
    groups: tuple[str, ...]
    kept: list[str]
    checks: tuple[Any, ...]
    reference: list[np.ndarray] = field(repr=False, default_factory=list)
    holdout: np.ndarray | None = field(repr=False, default=None)

    def verify(self, session: Any) -> Any:
        """Check a session of the written file against FP32 on the held-out patches again (CervrtError below)."""
        from cervrt.export.parity import Sample, compare, require, run_session

        actual = _batched(run_session, session, self.holdout)
        check = compare("int8 onnx (as written)", "fp32 onnx", Sample("held-out tissue", self.holdout),
                        self.reference, actual, INT8_AGREEMENT)
        require([check])
        return check


def quantize_gated(fp32_model: Any, calibration: np.ndarray, holdout: np.ndarray,
                   echo: Callable[[str], None] = lambda _m: None,
                   ladder: Sequence[tuple[str, Sequence[str]]] = LADDER) -> Int8Result:
    """Quantize with each (method, float groups) of ``ladder`` in turn until the INT8 graph agrees with FP32.

    ``calibration`` / ``holdout``: normalised float32 NCHW tissue patches (disjoint). Each try is
    checked on ``holdout`` (argmax agreement >= :data:`INT8_AGREEMENT`, max |diff| reported) and
    echoed; when none passes, CervrtError names the best agreement (nothing is written).
    """
    from cervrt.export.parity import Sample, compare, ort_session, require, run_session

    sample = Sample("held-out tissue", holdout)
    reference = _batched(run_session, ort_session(fp32_model), holdout)
    checks = []
    for method, groups in ladder:
        used = calibration if method == "minmax" else calibration[: _percentile_count(calibration)]
        quantized, kept = quantize_int8(fp32_model, used, groups, method)
        actual = _batched(run_session, ort_session(quantized), holdout)
        label = f"int8 onnx ({method}, {len(used)} patches, float: {', '.join(groups) or 'nothing'})"
        checks.append(compare(label, "fp32 onnx", sample, reference, actual, INT8_AGREEMENT))
        echo(checks[-1].describe())
        if checks[-1].passed:
            return Int8Result(quantized, method, len(used), tuple(groups), kept, tuple(checks), reference, holdout)
    require([max(checks, key=lambda c: c.agreement)])
    raise AssertionError("unreachable: require raises for a failed check")


def _percentile_count(calibration: np.ndarray) -> int:
    return max(1, min(len(calibration), _PERCENTILE_PIXELS // (calibration.shape[2] * calibration.shape[3])))


def _batched(run: Callable[[Any, np.ndarray], list[np.ndarray]], session: Any, x: np.ndarray) -> list[np.ndarray]:
    parts = [run(session, x[i : i + _BATCH]) for i in range(0, len(x), _BATCH)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def build_int8(fp32_model: Any, fp32_metadata: Any, drawn: Any, echo: Callable[[str], None] = lambda _m: None
               ) -> tuple[Any, Any, Int8Result]:
    """The gated INT8 graph of ``fp32_model`` with its metadata attached, calibrated on ``drawn`` (a CalibrationSet).

    ``fp32_metadata``: the FP32 graph's ArtifactMetadata (or dict); the INT8 one is a copy with
    ``precision`` int8, ``fp32_ops`` (the operator types kept in float) and the ``int8`` entry.
    """
    from cervrt.artifact import attach_metadata, graph_io
    from cervrt.export.calibration import normalise

    meta = fp32_metadata if isinstance(fp32_metadata, dict) else fp32_metadata.to_dict()
    mean, std = meta["mean"], meta["std"]
    echo(drawn.describe())
    result = quantize_gated(fp32_model, normalise(drawn.calibration, mean, std), normalise(drawn.holdout, mean, std),
                            echo)
    changes = {"precision": "int8", "io_dtype": graph_io(result.model)["inputs"][0]["dtype"],
               "fp32_ops": _float_op_types(fp32_model, result.kept), "fp32_pooled_path": [],
               "int8": int8_metadata(fp32_model, result, len(drawn.holdout), drawn.sources)}
    metadata = {**meta, **changes} if isinstance(fp32_metadata, dict) else fp32_metadata.replace(**changes)
    attach_metadata(result.model, metadata)
    return result.model, metadata, result
