"""The GPU extras install what the device path needs (issue 13): NVRTC as a package of its own, cuda-python
at 12.6.1 or newer (12.6.0 lacks ``cuda.bindings``) and of the same CUDA major as the TensorRT wheel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

EXTRAS = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
    "optional-dependencies"]


def _spec(extra: str, name: str) -> str:
    found = [r for r in EXTRAS[extra] if re.match(rf"{re.escape(name)}(\[|[<>=!~ ]|$)", r)]
    assert found, f"{extra} has no {name}"
    return found[0]


def _bounds(spec: str) -> tuple[tuple[int, ...], int]:
    low = re.search(r">=\s*([\d.]+)", spec)
    high = re.search(r"<\s*(\d+)", spec)
    assert low and high, f"{spec} needs a floor and a major ceiling"
    return tuple(int(p) for p in low.group(1).split(".")), int(high.group(1))


@pytest.mark.parametrize(("extra", "major", "nvrtc"), [("gpu", 12, "nvidia-cuda-nvrtc-cu12"),
                                                       ("tensorrt", 12, "nvidia-cuda-nvrtc-cu12"),
                                                       ("gpu-cu13", 13, "nvidia-cuda-nvrtc"),
                                                       ("tensorrt-cu13", 13, "nvidia-cuda-nvrtc")])
def test_gpu_extras_pin_one_cuda_major_and_bring_nvrtc(extra, major, nvrtc):
    low, ceiling = _bounds(_spec(extra, "cuda-python"))
    assert low >= (12, 6, 1) and low[0] == major and ceiling == major + 1
    _spec(extra, nvrtc)
    if extra.startswith("tensorrt"):
        assert _spec(extra, f"tensorrt-cu{major}")
