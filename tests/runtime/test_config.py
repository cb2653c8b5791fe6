"""PredictorConfig: defaults, enums from strings, checks that name the setting, resolve() and replace()."""

from __future__ import annotations

import pytest

from cervrt.errors import CervrtError
from cervrt.runtime.config import Blend, Fusion, PredictorConfig, default_stride


def test_defaults_and_strings_become_enums():
    config = PredictorConfig()
    assert (config.device, config.batch_size, config.stride, config.tissue_threshold, config.mpp) == (
        "auto", 8, None, 0.1, None)
    assert config.blend is Blend.GAUSSIAN and config.fusion is Fusion.AUTO
    parsed = PredictorConfig(blend="mean", fusion="numpy", tissue_threshold=0, mpp=1)
    assert parsed.blend is Blend.MEAN and parsed.fusion is Fusion.NUMPY
    assert isinstance(parsed.tissue_threshold, float) and parsed.mpp == 1.0
    assert parsed.as_dict()["blend"] == "mean" and parsed.as_dict()["fusion"] == "numpy"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"stride": 0}, "stride"),
        ({"tissue_threshold": 1.5}, "tissue_threshold must be between 0 and 1"),
        ({"tissue_threshold": "high"}, "tissue_threshold must be a number"),
        ({"mpp": 0}, "mpp must be positive"),
        ({"blend": "max"}, "unknown blend 'max': choose one of mean, gaussian"),
        ({"fusion": "gpu"}, "unknown fusion 'gpu': choose one of auto, c, numpy, cuda"),
        ({"device": ""}, "device"),
    ],
)
def test_bad_settings_name_the_setting(changes, message):
    with pytest.raises(CervrtError, match=message) as info:
        PredictorConfig(**changes)
    assert "--" not in str(info.value)  # the library does not speak in CLI flags


def test_resolve_fills_the_stride_from_the_patch_and_checks_it():
    assert PredictorConfig().resolve(64).stride == 16 == default_stride(64)
    assert PredictorConfig(stride=32).resolve(64).stride == 32
    assert default_stride(2) == 1
    with pytest.raises(CervrtError, match="stride must be between 1 and the patch size 64"):
        PredictorConfig(stride=65).resolve(64)


def test_replace_checks_names_and_values_and_leaves_the_original():
    config = PredictorConfig(batch_size=4)
    changed = config.replace(stride=8, blend="mean")
    assert (changed.batch_size, changed.stride, changed.blend) == (4, 8, Blend.MEAN)
    assert config.stride is None
    with pytest.raises(CervrtError, match="unknown Predictor setting 'strde'"):
        config.replace(strde=8)
    with pytest.raises(CervrtError, match="batch_size"):
        config.replace(batch_size=-1)
    with pytest.raises(AttributeError):
        config.stride = 3  # type: ignore[misc]
