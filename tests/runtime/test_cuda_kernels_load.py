"""Which kernel image the device path loads, checked by the strict emulated driver (the PTX ISA against
the driver's CUDA version, a CUBIN's SM against the device), NVRTC's output buffers, and the band's own
wait for its batch's upload (issue 13, section 1)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from cervrt import cuda
from cervrt.cuda import nvrtc as nvrtc_layer
from cervrt.errors import CervrtError
from cervrt.runtime.gpu import CudaFusion, build_kernels, compile_kernels, nvrtc_version
from cervrt.runtime.stitcher import BandStitcher
from tests.support.cuda_emulation import EMULATED_PTX, cubin_arch, emulated_cuda


@pytest.fixture
def nvrtc():
    try:
        nvrtc_version()
    except CervrtError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")


def _strict(emulated, driver_version):
    """The conftest's emulated driver (host kernels), re-entered with another driver version."""
    real = pytest.importorskip("cuda.bindings.driver")
    return emulated_cuda(real, emulated._kernels, (emulated.gpu_name, emulated.capability), driver_version)


def test_the_device_path_loads_a_cubin_for_the_device_so_a_newer_nvrtc_does_not_matter(emulated, nvrtc):
    with _strict(emulated, 13000) as driver, CudaFusion(16, 3, batch_size=2) as gpu:
        assert gpu.is_open
    assert driver.modules == ["cubin sm_75"]
    image, what = None, None
    with _strict(emulated, 13000):
        image, what = build_kernels(0)
    assert what == "cubin sm_75" and cubin_arch(image) == (7, 5)


def test_ptx_newer_than_the_driver_is_named_before_the_driver_refuses_it(emulated, nvrtc):
    ptx = compile_kernels("compute_75")
    isa = nvrtc_layer.ptx_version(ptx)
    need = nvrtc_layer.ptx_cuda_version(isa)
    old_driver = need[0] * 1000 + need[1] * 10 - 10 if need[1] else (need[0] - 1) * 1000 + 90
    with pytest.raises(cuda.CudaError, match=f"ISA {isa[0]}.{isa[1]}.*this driver is CUDA"):
        nvrtc_layer.check_ptx(ptx, old_driver)
    nvrtc_layer.check_ptx(ptx, need[0] * 1000 + need[1] * 10)
    with _strict(emulated, old_driver), pytest.raises(cuda.CudaError, match="UNSUPPORTED_PTX_VERSION"):
        CudaFusion(16, 3, batch_size=2, kernels=ptx)
    with _strict(emulated, need[0] * 1000 + need[1] * 10) as driver, CudaFusion(16, 3, batch_size=2, kernels=ptx):
        assert driver.modules == [f"ptx {isa[0]}.{isa[1]}"]


def test_a_cubin_for_another_architecture_is_refused(emulated, nvrtc):
    cubin = compile_kernels("sm_90")
    with _strict(emulated, 13000), pytest.raises(cuda.CudaError, match="NO_BINARY_FOR_GPU"):
        CudaFusion(16, 3, batch_size=2, kernels=cubin)


def test_nvrtc_writes_into_a_mutable_buffer_of_its_own(monkeypatch):
    written = []

    class FakeNvrtc:
        nvrtcResult = types.SimpleNamespace(NVRTC_SUCCESS=0)

        @staticmethod
        def nvrtcGetPTXSize(prog):
            return 0, 1  # one byte: b" " * 1 is the interpreter's shared b" "

        @staticmethod
        def nvrtcGetPTX(prog, buffer):
            buffer[:] = b"X"  # NVRTC fills the buffer it is given
            written.append(type(buffer))
            return (0,)

    monkeypatch.setattr(nvrtc_layer, "nvrtc_module", lambda: FakeNvrtc)
    assert nvrtc_layer._read(object(), "PTX") == b"X"
    assert written == [bytearray] and b" " == bytes([32])


def test_the_band_waits_for_its_batch_upload_itself(emulated):
    """``add`` without ``normalize`` first (an engine that reads the uint8 patches itself): the window
    origins the accumulate kernel reads come up on the copy stream, which runs only when waited for."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    ys, xs = np.array([0, 0, 8, 8]), np.array([0, 8, 0, 8])
    probs = rng.dirichlet(np.ones(3), size=(4, 16, 16)).astype(np.float32).transpose(0, 3, 1, 2).copy()
    with CudaFusion(16, 3, batch_size=4, kernels=EMULATED_PTX) as gpu, gpu.image(40, 40, 8) as band:
        with gpu.active():
            device = gpu.alloc(probs.nbytes)
            cuda.check(cuda.driver().cuMemcpyHtoD(device, probs.ctypes.data, probs.nbytes), "cuMemcpyHtoD")
        staged = gpu.stage(image, ys, xs)
        chunks = band.add(staged, device) + band.finish()
    expected = BandStitcher(40, 40, 3, 16, 8, "gaussian", backend="numpy")
    want = np.concatenate([c for _, c in expected.add(ys, xs, probs, None) + expected.finish()])
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), want)


def test_ptx_is_the_checked_fallback_when_nvrtc_cannot_build_a_cubin(emulated, nvrtc, monkeypatch):
    from cervrt.runtime.gpu import kernels

    real_compile = kernels.compile_program

    def no_cubin(source, arch, include_dirs=()):
        if arch.startswith("sm_"):
            raise cuda.CudaError(f"NVRTC could not compile {source.name} for {arch}: unsupported architecture")
        return real_compile(source, arch, include_dirs)

    monkeypatch.setattr(kernels, "compile_program", no_cubin)
    isa = nvrtc_layer.ptx_version(real_compile(kernels.KERNEL_SOURCE, "compute_75", [kernels.CSRC_DIR]))
    need = nvrtc_layer.ptx_cuda_version(isa)
    with _strict(emulated, need[0] * 1000 + need[1] * 10):
        image, what = build_kernels(0)
        assert what == "ptx compute_75" and nvrtc_layer.ptx_version(image) == isa
    with _strict(emulated, 12000), pytest.raises(cuda.CudaError, match=r"unsupported architecture.*ISA"):
        build_kernels(0)
