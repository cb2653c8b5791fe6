"""Trace a segmentation model into an FP32 ONNX graph that computes probabilities, then simplify and check it.

The graph is the model's ``predict_proba``: input ``image`` float32 (N, 3, H, W), normalised as the
metadata says; output ``probs`` (N, classes, H, W), the softmax probabilities (for Ensemble-A after
its assisted multiplication), and, for models with a patch classifier, ``class_probs`` (N, classes - 1).
N, H and W are dynamic: the encoders down-sample by 32 and the heads resize back to the input size,
so any side of at least 32 px works (the deployment patch, 400 px, is not a multiple of 32).

Exporter: torch 2.13's ``torch.onnx.export(..., dynamo=True)`` (torch.export-based). The TorchScript
exporter (``dynamo=False``) also gives a correct graph here and is about 7x faster to run, but it is
deprecated since torch 2.9 and warns on every call, names the output's class axis symbolically, and
will be removed; the torch.export route is the maintained one and keeps the class axis static. Its
floor is opset 18 (asked for 17 it writes 18 after a failed down-conversion), hence ``DEFAULT_OPSET``.
Weights are kept inside the file (``external_data=False``): one file, refused above protobuf's 2 GB.
The graph is then simplified by onnxslim (constant folding, shape-arithmetic clean-up), which must
leave the inputs' and outputs' names, types and dynamic axes exactly as exported, and checked by
``onnx.checker`` with ``full_check`` (strict shape inference).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cervrt.artifact import graph_io
from cervrt.errors import CervrtError

__all__ = ["INPUT_NAME", "MAX_PROTO_BYTES", "ProbabilityGraph", "check_graph", "export_fp32", "output_names",
           "simplify", "trace_to_onnx"]

INPUT_NAME = "image"
#: Protobuf's hard limit for one serialised message: larger models would need external data.
MAX_PROTO_BYTES = 2**31 - 1
_MIN_SIDE = 32


class ProbabilityGraph(nn.Module):
    """Wraps a SegmentationModel so that ``forward`` is its ``predict_proba`` (what the ONNX graph computes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        probs, class_probs = self.model.predict_proba(image)
        return probs if class_probs is None else (probs, class_probs)


def output_names(model: nn.Module) -> list[str]:
    """``["probs"]``, plus ``"class_probs"`` for models with a patch classifier."""
    return ["probs", "class_probs"] if model.has_classifier else ["probs"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress lines, warnings and log records for the duration of one call."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("N", min=1)
    height = torch.export.Dim("H", min=_MIN_SIDE)
    width = torch.export.Dim("W", min=_MIN_SIDE)
    return {"image": {0: batch, 2: height, 3: width}}


def trace_to_onnx(model: nn.Module, example_side: int, opset: int) -> Any:
    """The raw exported ModelProto of ``ProbabilityGraph(model)`` (dynamic N, H, W)."""
    graph = ProbabilityGraph(model).eval()
    side = max(int(example_side), 64)  # an example axis of 1 would be specialised; 64 keeps x/32 >= 2
    example = torch.zeros(2, 3, side, side)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(graph, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=output_names(model),
                                        dynamic_shapes=_dynamic_shapes(), external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user needs one line
        raise CervrtError(f"torch.onnx could not export the model: {_first_line(exc)}") from None
    return program.model_proto


def simplify(model: Any) -> Any:
    """onnxslim's simplification; CervrtError if it changed the graph's interface (names, types, axes)."""
    import onnxslim

    before = graph_io(model)
    with _quiet():
        slimmed = onnxslim.slim(model)
    if graph_io(slimmed) != before:
        raise CervrtError(f"onnxslim changed the graph's inputs/outputs ({graph_io(slimmed)} instead of {before}): "
                          "this is a bug, please report it")
    return slimmed


def check_graph(model: Any) -> None:
    """``onnx.checker`` with strict shape inference; refuses a graph over the 2 GB single-file limit."""
    import onnx

    size = model.ByteSize()
    if size > MAX_PROTO_BYTES:
        raise CervrtError(f"the graph is {size / 2**30:.2f} GB, over ONNX's 2 GB single-file limit")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CervrtError(f"the exported graph is not valid ONNX: {_first_line(exc)}") from None


def export_fp32(model: nn.Module, example_side: int, opset: int) -> Any:
    """Trace, simplify and check: the FP32 ModelProto of ``model.predict_proba`` (no metadata yet)."""
    proto = simplify(trace_to_onnx(model, example_side, opset))
    check_graph(proto)
    return proto
