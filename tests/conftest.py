"""Shared pytest set-up: tests marked ``gpu`` or ``tensorrt`` skip themselves where the hardware or the
package is missing, with the reason."""

from __future__ import annotations

import functools

import pytest


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@functools.lru_cache(maxsize=1)
def _no_cuda_device() -> str | None:
    """None when cuda-python sees at least one CUDA device (cervrt.cuda's probe), else the reason it does not."""
    from cervrt import cuda
    from cervrt.errors import MissingDependencyError

    try:
        cuda.driver()
    except MissingDependencyError as exc:
        return f"cuda-python is not installed ({exc})"
    count, reason = cuda.device_count()
    return None if count else f"no CUDA device: {reason}"


@functools.lru_cache(maxsize=1)
def _no_tensorrt() -> str | None:
    """None when tensorrt imports and a CUDA device exists, else the reason."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return f"tensorrt is not importable ({_first_line(exc)})"
    return _no_cuda_device()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords and (reason := _no_cuda_device()):
            item.add_marker(pytest.mark.skip(reason=reason))
        if "tensorrt" in item.keywords and (reason := _no_tensorrt()):
            item.add_marker(pytest.mark.skip(reason=reason))
