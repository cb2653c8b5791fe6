"""Export settings: batch profiles, default paths and option checks fail before any work, in one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from cervrt.errors import CervrtError
from cervrt.export.config import (
    BatchProfile,
    EngineConfig,
    ExportConfig,
    Precision,
    default_onnx_path,
    timing_cache_path,
)


@pytest.mark.parametrize(("text", "expected"),
                         [("1:8:32", (1, 8, 32)), ("4:4:4", (4, 4, 4)), (" 1 : 2 : 3 ", (1, 2, 3))])
def test_batch_profile_parses(text, expected):
    profile = BatchProfile.parse(text)
    assert (profile.min, profile.opt, profile.max) == expected
    assert str(profile) == ":".join(map(str, expected))


@pytest.mark.parametrize("text", ["8:1:32", "a:b:c", "0:1:2", "1:8", "1:2:3:4", "", "-1:2:3", "1.5:2:3", "32:16:8"])
def test_bad_batch_profiles_are_refused_with_the_expected_form(text):
    with pytest.raises(CervrtError, match=r"--batch must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX, e\.g\. 1:8:32"):
        BatchProfile.parse(text)


def test_batch_profile_checks_direct_construction():
    with pytest.raises(CervrtError, match="1 <= MIN <= OPT <= MAX"):
        BatchProfile(4, 2, 8)


def test_default_paths_sit_beside_the_checkpoint():
    assert default_onnx_path("run/hspnet.pt") == Path("run/hspnet.onnx")
    assert default_onnx_path("run/hspnet.pt", "fp16") == Path("run/hspnet.fp16.onnx")
    assert ExportConfig(Path("a/b.pt")).output == Path("a/b.onnx")
    assert ExportConfig(Path("a/b.pt"), precision=Precision.FP16).output == Path("a/b.fp16.onnx")
    assert timing_cache_path("e/hspnet.plan") == Path("e/hspnet.timing.cache")
    assert EngineConfig(Path("e/hspnet.plan")).json_path == Path("e/hspnet.plan.json")


def test_from_options_builds_the_engine_config():
    config = ExportConfig.from_options("m.pt", precision="fp16", engine="m.plan", batch="2:4:8", workspace=1.5)
    assert config.precision is Precision.FP16 and config.opset == 18
    assert config.engine == EngineConfig(Path("m.plan"), BatchProfile(2, 4, 8), 1.5)
    assert ExportConfig.from_options("m.pt", engine="m.plan").engine.batch == BatchProfile(1, 8, 32)
    assert set(config.destinations) == {Path("m.fp16.onnx"), Path("m.plan"), Path("m.plan.json"),
                                        Path("m.timing.cache")}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"batch": "1:2:3"}, "add --engine"),
        ({"workspace": 2.0}, "add --engine"),
        ({"fp16_io": True}, "--fp16-io needs --precision fp16"),
        ({"opset": 17}, "--opset 17 is not supported: choose 18..24"),
        ({"opset": 99}, "--opset 99 is not supported"),
        ({"output": "model.bin"}, "must end in .onnx"),
        ({"engine": "model.engine"}, "must end in .plan"),
        ({"engine": "m.plan", "workspace": 0.0}, "--workspace must be a positive number"),
        ({"engine": "m.plan", "batch": "a:b:c"}, "--batch must be MIN:OPT:MAX"),
        ({"precision": "int4"}, "unknown precision 'int4': choose one of fp32, fp16, int8"),
    ],
)
def test_bad_options_are_one_clear_sentence(kwargs, fragment):
    with pytest.raises(CervrtError, match=None) as info:
        ExportConfig.from_options("m.pt", **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_fp32_output_is_only_for_fp16_and_not_the_same_file():
    with pytest.raises(CervrtError, match="only for FP16"):
        ExportConfig(Path("m.pt"), fp32_output=Path("x.onnx"))
    with pytest.raises(CervrtError, match="same file"):
        ExportConfig(Path("m.pt"), output=Path("x.onnx"), precision=Precision.FP16, fp32_output=Path("x.onnx"))
