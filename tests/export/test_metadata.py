"""Artifact metadata: written into ONNX files and beside plans, read back, refused when absent or damaged."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from cervrt.artifact import (
    METADATA_KEY,
    PLAN_FORMAT,
    attach_metadata,
    graph_io,
    read_metadata,
    read_plan_metadata,
)
from cervrt.errors import CervrtError
from cervrt.model_info import artifact_info, format_info
from tests.support.onnx_graphs import segmentation_graph
from tests.support.tiny_models import tiny_metadata

_META = tiny_metadata().to_dict()


def _save(tmp_path, metadata=None, name="m.onnx"):
    model = segmentation_graph()
    if metadata is not None:
        attach_metadata(model, metadata)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _garbage(path):
    path.write_bytes(b"\x08\x07\x12\xff\xff")  # a truncated protobuf
    return path


def test_metadata_round_trips_and_replaces_an_earlier_entry(tmp_path):
    model = segmentation_graph()
    attach_metadata(model, {**_META, "opset": 1})
    attach_metadata(model, _META)
    assert [p.key for p in model.metadata_props] == [METADATA_KEY]
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert read_metadata(path) == _META


def test_graph_io_reports_names_types_and_dynamic_axes():
    io = graph_io(segmentation_graph(True))
    assert io["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 3, "H", "W"]}]
    assert [o["name"] for o in io["outputs"]] == ["probs", "class_probs"]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: _save(p), "has no cervrt metadata: export it with `cervrt export CHECKPOINT`"),
        (lambda p: _save(p, {"arch": "hspnet"}), "the cervrt metadata lacks"),
        (lambda p: p / "missing.onnx", "does not exist"),
        (lambda p: _garbage(p / "bad.onnx"), "not a readable ONNX"),
    ],
)
def test_read_metadata_refuses_foreign_or_damaged_files(tmp_path, make, fragment):
    with pytest.raises(CervrtError, match=None) as info:
        read_metadata(make(tmp_path))
    assert fragment in str(info.value)


def test_onnx_info_and_cli_json(tmp_path):
    path = _save(tmp_path, _META)
    info = artifact_info(path)
    assert info["kind"] == "onnx" and info["classes"][4] == "CIN 3" and info["precision"] == "fp32"
    assert info["inputs"][0]["shape"] == ["N", 3, "H", "W"] and info["outputs"][0]["name"] == "probs"
    assert "precision   fp32" in format_info(info)
    result = subprocess.run([sys.executable, "-m", "cervrt", "info", str(path), "--json"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["shape"] == ["N", 5, "H", "W"]


def test_plan_info_reads_the_json_beside_the_plan(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    sidecar = {**_META, "format": PLAN_FORMAT, "precision": "fp16", "tensorrt_version": "10.13.3.9",
               "gpu_name": "NVIDIA L4", "compute_capability": "8.9",
               "profile": {"input": "image", "min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]},
               "inputs": [{"name": "image", "dtype": "float32", "shape": ["N", 3, "H", "W"]}], "outputs": []}
    (tmp_path / "m.plan.json").write_text(json.dumps(sidecar))
    info = artifact_info(plan)
    assert info["kind"] == "tensorrt" and info["gpu_name"] == "NVIDIA L4" and info["profile"]["opt"][0] == 8
    assert info["size_bytes"] == 6 and info["params"] == 123


@pytest.mark.parametrize(("content", "fragment"), [(None, "does not exist"), ("{", "not valid JSON"),
                                                   ('{"format": "other"}', "not a cervrt engine description")])
def test_plan_without_a_valid_description_is_refused(tmp_path, content, fragment):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    if content is not None:
        (tmp_path / "m.plan.json").write_text(content)
    with pytest.raises(CervrtError, match=fragment):
        read_plan_metadata(plan)
