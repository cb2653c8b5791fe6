"""Fixtures of the runtime tests: every fusion test runs on the C extension and on the numpy reference."""

from __future__ import annotations

import pytest

from cervrt.errors import CervrtError
from cervrt.runtime.fusion import FusionBackend, get_backend


def _backend_or_skip(name: str) -> FusionBackend:
    try:
        return get_backend(name)
    except CervrtError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["c", "numpy"])
def backend(request: pytest.FixtureRequest) -> FusionBackend:
    """Each fusion backend in turn; the C one is skipped (with the reason) when it is not built."""
    return _backend_or_skip(request.param)


@pytest.fixture
def c_backend() -> FusionBackend:
    return _backend_or_skip("c")


@pytest.fixture
def numpy_backend() -> FusionBackend:
    return get_backend("numpy")
