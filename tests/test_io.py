"""Atomic outputs: all or nothing, and with the permissions any new file of the user gets."""

from __future__ import annotations

import os
import stat

import pytest

from cervrt._io import atomic_path, write_json
from cervrt.errors import CervrtError


def test_output_gets_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


def test_failure_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.exists()
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]


def test_success_replaces_the_target(tmp_path):
    target = tmp_path / "m.onnx"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(CervrtError, match="does not exist"), atomic_path(tmp_path / "nowhere" / "x.json"):
        pass


def test_nan_to_none_makes_strict_json():
    import json
    import math

    from cervrt._io import nan_to_none

    value = {"dice": math.nan, "per_class": [0.5, math.nan], "pair": (math.nan, 1), "n": 3, "name": "x"}
    cleaned = nan_to_none(value)
    assert cleaned == {"dice": None, "per_class": [0.5, None], "pair": [None, 1], "n": 3, "name": "x"}
    json.dumps(cleaned, allow_nan=False)  # raises on any NaN left


def test_write_json_is_strict_json_for_numpy_nan_and_inf(tmp_path):
    import json

    import numpy as np

    from cervrt._io import write_json

    write_json(tmp_path / "r.json", {"dice": np.float32("nan"), "wp": np.float64(0.5), "n": np.int64(3),
                                     "ratio": float("inf"), "ok": True, "per_class": [np.nan, 1.0]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert strict == {"dice": None, "wp": 0.5, "n": 3, "ratio": None, "ok": True, "per_class": [None, 1.0]}
