"""FP16 conversion: sensitive ops stay FP32, I/O stays float32 unless asked, the graph stays valid and close."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from cervrt.export.fp16 import convert_to_fp16, fp32_op_types, probability_tail
from cervrt.export.parity import ort_session, run_session
from tests.support.onnx_graphs import segmentation_graph

_FLOAT, _FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def test_probability_tail_follows_softmax_and_sigmoid_downstream():
    assert set(probability_tail(segmentation_graph(True).graph)) == {
        "softmax", "sigmoid", "cat", "unsq", "mul", "sum", "div"}
    assert probability_tail(segmentation_graph(False).graph) == ["softmax"]


@pytest.mark.parametrize("with_classifier", [False, True])
def test_sensitive_ops_compute_in_fp32_and_io_stays_float32(with_classifier):
    fp32 = segmentation_graph(with_classifier)
    fp16 = convert_to_fp16(fp32)
    onnx.checker.check_model(fp16, full_check=True)
    types = _types(fp16)
    assert [types[v.name] for v in (*fp16.graph.input, *fp16.graph.output)] == [_FLOAT] * (2 + with_classifier)
    assert types[_node(fp16, "conv1").input[1]] == _FLOAT16  # the convolutions run in FP16
    for name in ("softmax", "pool") + (("sigmoid", "sum", "div", "gap") if with_classifier else ()):
        node = _node(fp16, name)
        assert types[node.input[0]] == _FLOAT and types[node.output[0]] == _FLOAT, name
    expected = {"ReduceMean", "Softmax"} | ({"Sigmoid", "Mul", "ReduceSum", "Div"} if with_classifier else set())
    assert set(fp32_op_types(fp16)) == expected


@pytest.mark.parametrize("with_classifier", [False, True])
def test_fp16_io_puts_one_cast_at_each_edge_and_runs(with_classifier):
    fp16 = convert_to_fp16(segmentation_graph(with_classifier), fp16_io=True)
    onnx.checker.check_model(fp16, full_check=True)  # Ensemble-A's class_probs is an output *and* consumed inside
    assert {v.type.tensor_type.elem_type for v in (*fp16.graph.input, *fp16.graph.output)} == {_FLOAT16}
    image = np.random.default_rng(0).standard_normal((1, 3, 16, 24), dtype=np.float32)
    expected = run_session(ort_session(segmentation_graph(with_classifier)), image)
    actual = run_session(ort_session(fp16), image)
    for e, a in zip(expected, actual, strict=True):
        assert a.shape == e.shape and np.max(np.abs(a - e)) < 5e-3


def test_fp16_outputs_match_fp32_closely():
    image = np.random.default_rng(1).standard_normal((1, 3, 32, 32), dtype=np.float32)
    fp32 = segmentation_graph(True)
    expected = run_session(ort_session(fp32), image)
    actual = run_session(ort_session(convert_to_fp16(fp32)), image)
    assert np.max(np.abs(expected[0] - actual[0])) < 2e-3
    assert np.allclose(actual[0].sum(axis=1), 1.0, atol=1e-5)  # renormalised in FP32
    assert np.mean(expected[0].argmax(1) == actual[0].argmax(1)) > 0.99


def test_the_input_model_is_left_untouched():
    fp32 = segmentation_graph(True)
    before = fp32.SerializeToString()
    convert_to_fp16(fp32, fp16_io=True)
    assert fp32.SerializeToString() == before


def test_pooled_path_stays_fp32_up_to_the_broadcast():
    from cervrt.export.fp16 import pooled_path

    assert pooled_path(segmentation_graph(False).graph) == []  # pooled + full-size input: not on the path
    model = segmentation_graph(True)
    assert pooled_path(model.graph) == ["fc", "sigmoid", "cat", "unsq"]  # then Mul meets the full-size probs
    fp16 = convert_to_fp16(model)
    types = _types(fp16)
    assert types[_node(fp16, "fc").output[0]] == _FLOAT and types[_node(fp16, "fc").input[1]] == _FLOAT
    assert fp32_op_types(fp16, pooled=True) == ["Gemm", "Sigmoid"]
