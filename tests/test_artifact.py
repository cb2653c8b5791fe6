"""The typed artifact metadata: same on-disk keys as before, validation, torch-free import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cervrt.artifact import REQUIRED_KEYS, ArtifactMetadata, plan_json_path, read_plan_metadata, write_plan_metadata
from cervrt.errors import CervrtError
from tests.support.tiny_models import tiny_metadata

#: An exported file's metadata as cervrt 0.x wrote it (a literal, so a renamed key fails here).
_ON_DISK = {"format": "cervrt.onnx", "format_version": 1, "arch": "wsss_seg",
            "arch_kwargs": {"encoder": "resnet34", "cls_encoder": "resnet34"},
            "class_names": ["background", "normal", "CIN 1", "CIN 2", "CIN 3"], "palette": [[0, 0, 0]] * 5,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "mpp": 0.904, "patch_size": 64,
            "gate_epsilon": 0.1, "has_classifier": True, "size_multiple": 32, "params": 1, "macs_384": 2,
            "macs_patch": 3, "precision": "fp16", "io_dtype": "float32", "opset": 18, "input": "image",
            "outputs": ["probs", "class_probs"], "fp32_ops": ["Softmax"], "fp32_pooled_path": [],
            "normalization": "image = (rgb / 255 - mean) / std, RGB, NCHW", "source_checkpoint": "w.pt",
            "source_sha256": "ab", "cervrt_version": "0.1", "torch_version": "2", "onnx_version": "1",
            "tools": {"onnxslim": "0.1"}, "some_future_key": {"kept": [1, 2]}}


def test_the_on_disk_form_round_trips_unchanged():
    meta = ArtifactMetadata.from_dict(_ON_DISK)
    assert meta.to_dict() == _ON_DISK
    assert meta.gate_epsilon == 0.1 and meta.class_names[2] == "CIN 1" and meta.extra == {"some_future_key":
                                                                                          {"kept": [1, 2]}}
    assert json.loads(json.dumps(meta.to_dict())) == _ON_DISK


def test_it_is_frozen_and_replace_keeps_unknown_keys_in_extra():
    meta = tiny_metadata()
    with pytest.raises(AttributeError):
        meta.arch = "other"  # type: ignore[misc]
    changed = meta.replace(precision="fp16", tensorrt_version="10.13")
    assert changed.precision == "fp16" and changed.to_dict()["tensorrt_version"] == "10.13"
    assert meta.precision == "fp32" and "tensorrt_version" not in meta.to_dict()


def test_required_keys_stay_even_when_none_and_optional_none_keys_are_left_out():
    data = tiny_metadata(opset=None).to_dict()
    assert "opset" in data and data["opset"] is None and "gate_epsilon" not in data
    assert set(REQUIRED_KEYS) <= set(data)


@pytest.mark.parametrize("key", ["class_names", "patch_size", "outputs"])
def test_a_missing_key_is_named(key):
    data = {k: v for k, v in _ON_DISK.items() if k != key}
    with pytest.raises(CervrtError, match=rf"^x.onnx: the cervrt metadata lacks {key}; export it again"):
        ArtifactMetadata.from_dict(data, "x.onnx")


def test_not_an_object_is_refused():
    with pytest.raises(CervrtError, match="not a JSON object"):
        ArtifactMetadata.from_dict([1, 2], "x.onnx")


def test_plan_json_is_written_beside_the_plan_and_read_back(tmp_path):
    plan = tmp_path / "m.plan"
    written = write_plan_metadata(plan, tiny_metadata(format="cervrt.tensorrt", gpu_name="H200"))
    assert written == plan_json_path(plan) == tmp_path / "m.plan.json"
    assert read_plan_metadata(plan)["gpu_name"] == "H200"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan.json"]


def test_importing_artifact_imports_no_torch_numpy_or_onnx():
    code = ("import sys, cervrt.artifact; bad = [m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', "
            "'cervrt.export', 'cervrt.models') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
