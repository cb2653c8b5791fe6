"""ONNX segmentation models that cervrt did not export (no cervrt metadata), built with onnx.helper.

``foreign_model()`` is a small conv net returning raw logits named ``logits`` (N, K, H, W), values a few
tenths either side of 0, like a model trained and exported elsewhere; its options make the variants
``cervrt adopt`` must refuse or repair (channel-last input or output, fixed sides, batch fixed at 1,
a second output, probabilities instead of logits, an old opset).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["foreign_model", "save_foreign_model"]


def foreign_model(classes: int = 5, *, softmax: bool = False, nhwc_output: bool = False, nhwc_input: bool = False,
                  side: int | str = "H", batch: int | str = "N", second_output: bool = False,
                  opset: int = 17) -> onnx.ModelProto:
    """image (N, 3, H, W) -> Conv 3x3 -> Relu -> Conv 1x1 -> logits (N, K, H, W) [-> Softmax -> probs]."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((classes, 8, 1, 1)) * 0.2).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    first = "input_nhwc" if nhwc_input else "pixel_values"
    nodes = []
    if nhwc_input:
        nodes.append(helper.make_node("Transpose", [first], ["pixel_values"], perm=[0, 3, 1, 2]))
    nodes += [helper.make_node("Conv", ["pixel_values", "w1"], ["f1"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["f1"], ["r1"]),
              helper.make_node("Conv", ["r1", "w2"], ["scores"])]
    out = "probs" if softmax else "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["soft"], axis=1))
    last = "soft" if softmax else "scores"
    if nhwc_output:
        nodes.append(helper.make_node("Transpose", [last], [out], perm=[0, 2, 3, 1]))
        out_dims = [batch, side, side if isinstance(side, int) else "W", classes]
    else:
        nodes.append(helper.make_node("Identity", [last], [out]))
        out_dims = [batch, classes, side, side if isinstance(side, int) else "W"]
    w = side if isinstance(side, int) else "W"
    in_dims = [batch, side, w, 3] if nhwc_input else [batch, 3, side, w]
    outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_dims)]
    if second_output:
        nodes.append(helper.make_node("Relu", ["scores"], ["features"]))
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, classes, side, w]))
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info(first, TensorProto.FLOAT, in_dims)],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="elsewhere")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save_foreign_model(path: Path, **options) -> Path:
    onnx.save(foreign_model(**options), path)
    return path
