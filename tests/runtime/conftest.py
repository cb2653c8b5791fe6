"""Fixtures of the runtime tests: every fusion test runs on the C extension and on the numpy reference;
``emulated`` puts cervrt.cuda (and so the GPU fusion) on the host emulation of the driver."""

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


@pytest.fixture
def emulated(tmp_path):
    """cervrt.cuda on the host emulation of the driver (tests/support/cuda_emulation.py), the fusion
    kernels built for the host."""
    real = pytest.importorskip("cuda.bindings.driver")
    from cervrt.runtime.gpu import CSRC_DIR
    from tests.support.cuda_emulation import build_host_kernels, emulated_cuda

    kernels = build_host_kernels(CSRC_DIR, tmp_path)
    if kernels is None:
        pytest.skip("no C++ compiler on PATH to build the kernels for the host")
    with emulated_cuda(real, kernels) as driver:
        yield driver
