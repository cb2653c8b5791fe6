"""cervrt.cuda without a GPU: the error check, the driver seam, the device probe and the primary
context, on the host-emulated driver (tests/support/cuda_emulation.py) and on this machine's own."""

from __future__ import annotations

import sys

import pytest

from cervrt import cuda
from cervrt.cuda import memory
from cervrt.errors import CervrtError, MissingDependencyError
from tests.support.cuda_emulation import emulated_cuda


@pytest.fixture
def real():
    return pytest.importorskip("cuda.bindings.driver")


def test_check_unpacks_values_and_names_the_curesult(real):
    ok, bad = real.CUresult.CUDA_SUCCESS, real.CUresult.CUDA_ERROR_INVALID_VALUE
    with emulated_cuda(real):
        assert cuda.check((ok,)) is None and cuda.check((ok, 7)) == 7 and cuda.check((ok, 1, 2)) == (1, 2)
        with pytest.raises(cuda.CudaError, match=r"^cuMemAlloc failed: CUDA_ERROR_INVALID_VALUE$") as info:
            cuda.check((bad, 0), "cuMemAlloc")
    assert isinstance(info.value, CervrtError)  # one line at the CLI, no traceback


def test_use_driver_routes_every_call_and_restores_the_real_one(real):
    with emulated_cuda(real) as driver:
        assert cuda.driver() is driver
        with emulated_cuda(real) as inner:
            assert cuda.driver() is inner
        assert cuda.driver() is driver
    assert cuda.driver() is real


def test_the_probe_on_the_emulated_driver(real):
    with emulated_cuda(real, gpu=("NVIDIA Fake GPU", "8.9")) as driver:
        assert cuda.device_count() == (1, "")
        assert cuda.gpu_info(0) == cuda.GpuInfo("NVIDIA Fake GPU", "8.9")
        assert cuda.device_arch(0) == "compute_89" and driver.names_asked == [0, 0]
        assert cuda.device_arch(1) is None
        with pytest.raises(cuda.NoDeviceError, match=r"^no CUDA device: ordinal 3 requested, 1 present$") as info:
            cuda.gpu_info(3)
    assert info.value.reason == "CUDA_ERROR_INVALID_DEVICE"


def test_the_primary_context_is_pushed_and_popped_around_work(real):
    with emulated_cuda(real) as driver:
        context = cuda.PrimaryContext(0)
        with context.active():
            assert driver.context_depth == 1
            ptr = memory.malloc_device(16)
            host, view = memory.malloc_pinned(8)
            assert view.nbytes == 8 and set(driver.buffers) == {ptr, host}
            memory.free_device(ptr)
            memory.free_pinned(host)
        assert driver.context_depth == 0 and driver.buffers == {}
        context.release()
        context.release()
        assert not context.is_open


def test_without_a_gpu_the_probe_says_why(real):
    count, reason = cuda.device_count()
    if count:
        pytest.skip("this machine has a CUDA GPU")
    assert reason and "\n" not in reason
    with pytest.raises(cuda.NoDeviceError, match=r"^no CUDA device: "):
        cuda.gpu_info(0)


def test_without_cuda_python_the_probe_asks_libcuda_and_the_rest_names_the_extra(real, monkeypatch):
    expected = cuda.device_count()[0]
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
    count, reason = cuda.device_count()  # the ctypes route: never raises, sees the same devices
    assert count == expected and (count > 0) != bool(reason)
    extra = r'^cuda-python is not installed: run pip install "cervrt\[gpu\]"$'
    with pytest.raises(MissingDependencyError, match=extra):
        cuda.gpu_info(0)


def test_importing_cervrt_cuda_loads_no_cuda_library():
    import subprocess

    code = "import sys, cervrt.cuda, cervrt.runtime.gpu; print(any(m.split('.')[0] == 'cuda' for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
