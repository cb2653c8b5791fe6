"""Tiny hand-made ONNX graphs (no torch) with the shapes of cervrt's exports, for fast unit tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weight(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.5, name)


def segmentation_graph(with_classifier: bool = False, opset: int = 18) -> onnx.ModelProto:
    """image (N,3,H,W) -> Conv -> ReduceMean pool branch -> Add -> Softmax -> probs (N,5,H,W) [+ class_probs].

    With the classifier it mimics Ensemble-A's tail: class_probs = Sigmoid(...) is both a graph output
    and consumed inside the graph (Concat with ones -> Mul with the probabilities -> renormalise).
    """
    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["feat"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["feat"], ["relu"], name="relu1"),
        helper.make_node("ReduceMean", ["relu", "axes"], ["pooled"], name="pool", keepdims=1),
        helper.make_node("Add", ["relu", "pooled"], ["mixed"], name="add1"),
        helper.make_node("Conv", ["mixed", "w2"], ["logits"], name="conv2"),
        helper.make_node("Softmax", ["logits"], ["softmax" if with_classifier else "probs"], name="softmax", axis=1),
    ]
    inits = [_weight("w1", (8, 3, 3, 3), 0), _weight("w2", (5, 8, 1, 1), 1),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5, "H", "W"])]
    if with_classifier:
        nodes += [
            helper.make_node("ReduceMean", ["relu", "axes"], ["gap"], name="gap", keepdims=0),
            helper.make_node("Gemm", ["gap", "fc"], ["class_logits"], name="fc", transB=1),
            helper.make_node("Sigmoid", ["class_logits"], ["class_probs"], name="sigmoid"),
            helper.make_node("Concat", ["ones", "class_probs"], ["scale"], name="cat", axis=1),
            helper.make_node("Unsqueeze", ["scale", "hw"], ["scale4"], name="unsq"),
            helper.make_node("Mul", ["softmax", "scale4"], ["scaled"], name="mul"),
            helper.make_node("ReduceSum", ["scaled", "one_axis"], ["total"], name="sum", keepdims=1),
            helper.make_node("Div", ["scaled", "total"], ["probs"], name="div"),
        ]
        inits += [_weight("fc", (4, 8), 2), numpy_helper.from_array(np.ones((1, 1), np.float32), "ones"),
                  numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
                  numpy_helper.from_array(np.array([1], np.int64), "one_axis")]
        outputs.append(helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, ["N", 4]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["N", 3, "H", "W"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model
