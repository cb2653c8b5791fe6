"""FP32 ONNX -> FP16 ONNX with onnxconverter-common, keeping the numerically sensitive parts in FP32.

Weights and activations become float16 except for these, which stay float32 (the converter wraps
them in Casts):

- ``Softmax`` and everything after it -- the *probability tail*: the softmax itself, and for
  Ensemble-A the ``Sigmoid`` of the class scores, the multiplication of the foreground
  probabilities and the per-pixel renormalisation (``ReduceSum`` / ``Clip`` / ``Div``). The outputs
  are probabilities that the runtime averages across overlapping windows and thresholds at 0.1 in
  the classification gate; FP16 keeps only ~3 significant digits, flushes values under 6e-8 to zero
  (small probabilities; the renormalisation's 1e-12 clamp would become a division by zero) and
  makes the sum over classes drift from 1.
- ``ReduceMean`` / ``GlobalAveragePool`` -- the global average pooling of the DS-Block / ASPP pool
  branches and of Ensemble-A's assisted block. A mean over H x W activations accumulates tens of
  thousands of values (10,000 at x/4 of a 400 px patch; more for larger inputs): an FP16
  accumulator loses precision past 2048 and overflows past 65504, and the runtime is not bound to
  accumulate in FP32. It is cheap (one pass over a feature map).
- the *pooled path*: what runs on the pooled (N, C, 1, 1) vectors before they are broadcast back --
  the pool branch's 1x1 convolution and ReLU, Ensemble-A's fully connected layer. BatchNorm folded
  into that 1x1 convolution divides by the standard deviation of pooled features across images,
  which is small, so the folded weights and bias are large and the output is a difference of large
  numbers (a folded bias of 34 on a BatchNorm-calibrated HSP-Net: FP16's spacing there is 0.03). It
  computes on C values per image, so FP32 costs nothing.
- ``BatchNormalization`` -- any not folded into a convolution: (x - mean) / sqrt(var + eps) with
  eps = 1e-5, below FP16's smallest normal number (6.1e-5). The torch.export graph folds all of them
  today; this keeps a future unfolded one safe.
- ``ReduceSum``, and the converter's own default list (ops with no FP16 kernels or FP32-only inputs
  such as ``Range``, ``TopK``, ``NonMaxSuppression``) -- except ``Resize``.

``Resize`` (the bilinear up-samplings) is taken off the converter's default list: it is a convex
combination of four neighbours, so it cannot overflow and its error is FP16 rounding; the default
keeps it in FP32 only because a Resize with float ``scales``/``roi`` inputs must keep those inputs
float32. Our graphs resize to integer ``sizes``; a Resize node that does carry float ``scales`` or
``roi`` is kept in FP32 by name. Keeping all nine HSP-Net up-samplings in FP32 would cost 18 Casts
and made ONNX Runtime's CPU run 2.4x slower for no change in agreement.

Inputs and outputs stay float32 unless ``fp16_io``. Three converter quirks are handled here: the
``value_info`` left by the exporter contradicts the Casts added around blocked nodes (cleared before
converting); with ``keep_io_types`` an output produced by a blocked node gets a Cast *to* float16
(removed, so that the FP32 probabilities leave the graph as computed); and without
``keep_io_types`` a graph output that is also consumed inside the graph (Ensemble-A's
``class_probs``) is fed to its FP32 consumers as float16, an invalid graph. So the conversion always
keeps float32 I/O, and ``fp16_io`` then adds one Cast at the input (float16 -> float32, exact; the
converter's own Cast back to float16 is exact too) and one at each output (float32 -> float16).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

from cervrt.errors import CervrtError

__all__ = ["FP32_OPS", "TAIL_START_OPS", "convert_to_fp16", "fp32_op_types", "pooled_path", "probability_tail"]

#: Operator types always kept in float32 (see the module docstring for why).
FP32_OPS = ("Softmax", "Sigmoid", "ReduceMean", "GlobalAveragePool", "BatchNormalization", "ReduceSum")
#: Operators that start the probability tail: they and every node downstream stay float32.
TAIL_START_OPS = ("Softmax", "Sigmoid")
_FLOAT, _FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
_POOL_OPS = ("ReduceMean", "GlobalAveragePool")
_BROADCAST_OPS = ("Resize", "Upsample", "Expand")
#: Ops whose inputs after the first are shapes, axes or indices, not data.
_SHAPE_ARGUMENT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Transpose")
#: Ops that only move or reshape data: left out of the reported ``fp32_ops``.
_DATA_MOVEMENT = {"Cast", "Concat", "Expand", "Gather", "Identity", "Reshape", "Shape", "Slice", "Squeeze",
                  "Unsqueeze"}


def _name_nodes(graph: Any) -> None:
    """The converter blocks nodes by name: give every unnamed node a unique one."""
    taken = {n.name for n in graph.node if n.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"cervrt_{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def probability_tail(graph: Any) -> list[str]:
    """Names of the Softmax/Sigmoid nodes and of every node that (transitively) consumes their outputs."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    stack = [n for n in graph.node if n.op_type in TAIL_START_OPS]
    tail: dict[str, None] = {}
    while stack:
        node = stack.pop()
        if node.name in tail:
            continue
        tail[node.name] = None
        for tensor in node.output:
            stack.extend(consumers.get(tensor, []))
    return list(tail)


def pooled_path(graph: Any) -> list[str]:
    """Names of the nodes that compute on globally pooled (N, C, 1, 1) vectors, up to their broadcast back.

    Starting from each ReduceMean / GlobalAveragePool output, a node joins when all its data inputs
    (initializers and shape arguments aside) come from the path; Resize / Upsample / Expand (the
    broadcast back to full resolution) end it.
    """
    initializers = {t.name for t in graph.initializer}
    pooled: set[str] = set()
    names = []
    for node in graph.node:  # ONNX keeps nodes in topological order
        if node.op_type in _POOL_OPS:
            pooled.update(node.output)
            continue
        if node.op_type in _BROADCAST_OPS:
            continue
        data = node.input[:1] if node.op_type in _SHAPE_ARGUMENT_OPS else node.input
        data = [name for name in data if name and name not in initializers]
        if data and all(name in pooled for name in data):
            pooled.update(node.output)
            names.append(node.name)
    return names


def _resizes_with_float_params(graph: Any) -> list[str]:
    """Resize nodes whose ``roi`` or ``scales`` input is given: those inputs must stay float32."""
    return [n.name for n in graph.node if n.op_type == "Resize" and any(n.input[1:3])]


def _op_block_list() -> list[str]:
    from onnxconverter_common import float16

    return sorted((set(float16.DEFAULT_OP_BLOCK_LIST) - {"Resize"}) | set(FP32_OPS))


def _rewire(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


def _restore_float32_outputs(graph: Any) -> None:
    """Drop the Cast-to-float16 the converter puts after a blocked node that produces a graph output."""
    producers = {out: node for node in graph.node for out in node.output}
    for output in graph.output:
        if output.type.tensor_type.elem_type == _FLOAT:
            continue
        cast = producers.get(output.name)
        to = next((a.i for a in cast.attribute if a.name == "to"), None) if cast is not None else None
        if cast is None or cast.op_type != "Cast" or to != _FLOAT16:
            raise CervrtError(f"FP16 conversion left output {output.name!r} in a type cervrt cannot restore")
        source = cast.input[0]
        graph.node.remove(cast)
        _rewire(graph, source, output.name)
        output.type.tensor_type.elem_type = _FLOAT


def fp32_op_types(model: Any, pooled: bool = False) -> list[str]:
    """The computing operator types the FP16 conversion keeps in float32 everywhere (by type and in the
    probability tail) or, with ``pooled``, only on the pooled path."""
    if pooled:
        names = set(pooled_path(model.graph))
        return sorted({n.op_type for n in model.graph.node if n.name in names} - _DATA_MOVEMENT)
    present = {n.op_type for n in model.graph.node}
    tail = set(probability_tail(model.graph))
    kept = {n.op_type for n in model.graph.node if n.name in tail}
    return sorted(((present & set(_op_block_list())) | kept) - _DATA_MOVEMENT)


def _converted(model: Any, keep_io_types: bool, node_block_list: Iterable[str]) -> Any:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one UserWarning per weight clipped to FP16's range
        try:
            return float16.convert_float_to_float16(model, keep_io_types=keep_io_types,
                                                    op_block_list=_op_block_list(),
                                                    node_block_list=list(node_block_list))
        except Exception as exc:  # the converter raises bare ValueError/KeyError/...
            raise CervrtError(f"FP16 conversion failed: {type(exc).__name__}: {exc}") from None


def _float16_io(graph: Any) -> None:
    """Make the graph's input and outputs float16 with one Cast each at the edges (see the docstring)."""
    from onnx import helper

    for value in graph.input:
        inner = f"{value.name}_fp32"
        _rewire(graph, value.name, inner)
        graph.node.insert(0, helper.make_node("Cast", [value.name], [inner], name=f"cervrt_cast_{inner}", to=_FLOAT))
        value.type.tensor_type.elem_type = _FLOAT16
    for value in graph.output:
        inner = f"{value.name}_fp32"
        _rewire(graph, value.name, inner)
        graph.node.append(helper.make_node("Cast", [inner], [value.name], name=f"cervrt_cast_{value.name}",
                                           to=_FLOAT16))
        value.type.tensor_type.elem_type = _FLOAT16


def convert_to_fp16(model: Any, fp16_io: bool = False) -> Any:
    """A float16 copy of the FP32 ``model`` (its metadata copied as is: update its precision after)."""
    work = copy.deepcopy(model)
    del work.graph.value_info[:]  # re-inferred by the converter; stale entries contradict its Casts
    _name_nodes(work.graph)
    blocked = probability_tail(work.graph) + pooled_path(work.graph) + _resizes_with_float_params(work.graph)
    converted = _converted(work, keep_io_types=True, node_block_list=blocked)
    _restore_float32_outputs(converted.graph)
    if fp16_io:
        _float16_io(converted.graph)
    return converted
