"""The CUDA path: NVRTC and nvcc compile the kernels on this CPU machine; an emulated driver runs
CudaFusion end to end on the host with the kernels compiled for the CPU; tests marked ``gpu`` run
the same pipeline on a real device."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cervrt import cuda
from cervrt.errors import CervrtError
from cervrt.runtime import reference
from cervrt.runtime.gpu import (
    KERNEL_NAMES,
    CudaFusion,
    accumulate_box,
    compile_kernels,
    crop_patches,
    device_arch,
    nvcc_compile,
    nvrtc_version,
)
from cervrt.runtime.stitcher import BandStitcher
from cervrt.runtime.tiling import window_starts
from tests.support.cuda_emulation import EMULATED_PTX

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _nvrtc_or_skip() -> None:
    try:
        nvrtc_version()
    except CervrtError as exc:
        pytest.skip(f"NVRTC cannot be loaded: {exc}")


def _assert_entries(ptx: str) -> None:
    for name in KERNEL_NAMES:
        assert f".entry {name}(" in ptx


# ---- compiling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["compute_75", "compute_90"])
def test_nvrtc_compiles_the_kernels(arch: str) -> None:
    _nvrtc_or_skip()
    ptx = compile_kernels(arch).decode()
    _assert_entries(ptx)
    assert f".target sm_{arch.split('_')[1]}" in ptx


def test_nvrtc_picks_a_default_architecture_without_a_device() -> None:
    _nvrtc_or_skip()
    if device_arch() is not None:
        pytest.skip("a CUDA device is present: its own architecture is used")
    assert ".target sm_75" in compile_kernels().decode()


def test_nvrtc_reports_a_bad_architecture() -> None:
    _nvrtc_or_skip()
    with pytest.raises(cuda.CudaError, match="compute_1"):
        compile_kernels("compute_10")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_nvcc_compiles_ptx(tmp_path) -> None:
    _assert_entries(nvcc_compile(tmp_path / "fusion_kernels.ptx").read_text())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_nvcc_compiles_a_cubin(tmp_path) -> None:
    assert nvcc_compile(tmp_path / "fusion_kernels.cubin", "sm_75").read_bytes().startswith(b"\x7fELF")


def test_no_device_is_a_clear_error() -> None:
    pytest.importorskip("cuda.bindings.driver")
    if device_arch() is not None:
        pytest.skip("a CUDA device is present")
    with pytest.raises(CervrtError, match=r"^no CUDA device: "):
        CudaFusion()


# ---- host helpers -----------------------------------------------------------------------------------


def test_crop_patches_pads_with_glass() -> None:
    image = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
    out = np.zeros((2, 3, 3, 3), np.uint8)
    crop_patches(image, np.array([0, 3]), np.array([0, 2]), 3, out)
    np.testing.assert_array_equal(out[0], image[:3, :3])
    np.testing.assert_array_equal(out[1, :2, :2], image[3:5, 2:4])
    assert (out[1, 2] == 255).all() and (out[1, :, 2] == 255).all()


def test_accumulate_box_is_clipped_to_the_band() -> None:
    assert accumulate_box(np.array([-3, 4]), np.array([10, 2]), 5, 8, 12) == (0, 2, 8, 10)
    assert accumulate_box(np.array([0]), np.array([0]), 5, 8, 12) == (0, 0, 5, 5)


# ---- the pipeline, on the emulated driver and on a real GPU ----------------------------------------


class ReplayEngine:
    """Stands in for an engine: reads back the normalised batch and uploads precomputed probabilities."""

    def __init__(self, gpu: CudaFusion, probs: np.ndarray) -> None:
        self.gpu, self.probs = gpu, probs
        b, (c, p) = gpu.batch_size, probs.shape[1:3]
        with gpu.active():
            self.device = gpu.alloc(b * c * p * p * 4)
            self.host_probs = gpu.pinned(b * c * p * p * 4, np.float32).reshape(b, c, p, p)
            self.host_inputs = gpu.pinned(b * 3 * p * p * 4, np.float32).reshape(b, 3, p, p)
        self.inputs: list[np.ndarray] = []

    def __call__(self, inputs: int, indices: np.ndarray) -> int:
        cu, check, n = cuda.driver(), cuda.check, len(indices)
        with self.gpu.active():
            check(cu.cuMemcpyDtoHAsync(self.host_inputs.ctypes.data, inputs, self.host_inputs[:n].nbytes,
                                       self.gpu.compute_stream), "cuMemcpyDtoHAsync")
            check(cu.cuStreamSynchronize(self.gpu.compute_stream), "cuStreamSynchronize")
            self.inputs.append(self.host_inputs[:n].copy())
            self.host_probs[:n] = self.probs[indices]
            check(cu.cuMemcpyHtoDAsync(self.device, self.host_probs.ctypes.data, self.host_probs[:n].nbytes,
                                       self.gpu.compute_stream), "cuMemcpyHtoDAsync")
        return self.device


def _scene(height: int, width: int, patch: int, stride: int, classes: int, seed: int):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    windows = [(y, x) for y in window_starts(height, patch, stride) for x in window_starts(width, patch, stride)
               if rng.random() > 0.2]
    ys, xs = (np.array(v, np.int64) for v in zip(*windows, strict=True))
    probs = rng.dirichlet(np.ones(classes), size=(len(windows), patch, patch)).astype(np.float32)
    gate = (rng.random((len(windows), classes)) > 0.2).astype(np.float32)
    return image, ys, xs, np.ascontiguousarray(probs.transpose(0, 3, 1, 2)), gate


def _run(gpu: CudaFusion, image, ys, xs, probs, gate, stride: int, blend: str):
    engine = ReplayEngine(gpu, probs)
    band = gpu.image(image.shape[0], image.shape[1], stride, blend)
    chunks = []
    for start in range(0, len(ys), gpu.batch_size):
        part = slice(start, start + gpu.batch_size)
        staged = gpu.stage(image, ys[part], xs[part])
        outputs = engine(gpu.normalize(staged), np.arange(len(ys))[part])
        chunks += band.add(staged, outputs, None if gate is None else gate[part])
    chunks += band.finish()
    assert [first for first, _ in chunks] == list(np.cumsum([0] + [c.shape[0] for _, c in chunks[:-1]]))
    return np.concatenate([labels for _, labels in chunks]), np.concatenate(engine.inputs)


def _expected(image, ys, xs, probs, gate, patch: int, stride: int, blend: str):
    stitcher = BandStitcher(image.shape[0], image.shape[1], probs.shape[1], patch, stride, blend, backend="numpy")
    labels = np.concatenate([c for _, c in stitcher.add(ys, xs, probs, gate) + stitcher.finish()])
    inputs = np.zeros((len(ys), 3, patch, patch), np.float32)
    reference.gather(image, ys, xs, patch, MEAN, STD, inputs)
    return labels, inputs


CASES = [  # height, width, patch, stride, batch, blend, gated
    (150, 120, 32, 12, 5, "gaussian", True),
    (150, 120, 32, 12, 16, "mean", False),
    (20, 90, 32, 16, 3, "gaussian", False),  # shorter than a patch
    (300, 40, 24, 8, 7, "gaussian", True),  # narrow: a batch spans several window rows
]


@pytest.mark.parametrize(("height", "width", "patch", "stride", "batch", "blend", "gated"), CASES)
def test_emulated_pipeline_matches_reference(emulated, height, width, patch, stride, batch, blend, gated) -> None:
    image, ys, xs, probs, gate = _scene(height, width, patch, stride, 5, height + batch)
    gate = gate if gated else None
    with CudaFusion(patch, 5, batch_size=batch, mean=MEAN, std=STD, kernels=EMULATED_PTX) as gpu:
        labels, inputs = _run(gpu, image, ys, xs, probs, gate, stride, blend)
    expected_labels, expected_inputs = _expected(image, ys, xs, probs, gate, patch, stride, blend)
    np.testing.assert_allclose(inputs, expected_inputs, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, expected_labels)
    assert {"cervrt_gather_normalize", "cervrt_accumulate", "cervrt_argmax"} <= set(emulated.launches)
    assert emulated.buffers == {} and emulated.context_depth == 0  # close() freed everything


def test_emulated_band_moves_use_the_shift_kernel(emulated) -> None:
    image, ys, xs, probs, _ = _scene(400, 50, 20, 10, 3, 1)
    with CudaFusion(20, 3, batch_size=8, kernels=EMULATED_PTX) as gpu:
        labels, _ = _run(gpu, image, ys, xs, probs, None, 10, "gaussian")
    assert "cervrt_shift_band" in emulated.launches
    np.testing.assert_array_equal(labels, _expected(image, ys, xs, probs, None, 20, 10, "gaussian")[0])


def test_emulated_stale_batches_and_bad_arguments_are_refused(emulated) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with CudaFusion(16, 3, batch_size=4, kernels=EMULATED_PTX) as gpu:
        first = gpu.stage(image, [0], [0])
        gpu.stage(image, [0], [16])
        gpu.stage(image, [0], [32])  # two slots: the first batch's slot is reused now
        with pytest.raises(CervrtError, match="reused"):
            gpu.normalize(first)
        with pytest.raises(CervrtError, match="1 to 4 windows"):
            gpu.stage(image, list(range(0, 80, 16)), [0] * 5)
        with pytest.raises(CervrtError, match="uint8"):
            gpu.stage(image.astype(np.float32), [0], [0])
        band = gpu.image(64, 64, 16)
        with pytest.raises(CervrtError, match="device pointer"):
            band.add(gpu.stage(image, [0], [0]), 0)
    with pytest.raises(CervrtError, match="closed"):
        gpu.stage(image, [0], [0])


def test_emulated_bands_free_their_memory_image_by_image(emulated) -> None:
    image, ys, xs, probs, _ = _scene(100, 80, 16, 8, 3, 2)
    expected = _expected(image, ys, xs, probs, None, 16, 8, "gaussian")[0]
    with CudaFusion(16, 3, batch_size=6, kernels=EMULATED_PTX) as gpu:
        engine = ReplayEngine(gpu, probs)
        baseline = len(emulated.buffers)
        for _ in range(3):  # several images through one CudaFusion
            with gpu.image(100, 80, 8) as band:
                chunks = []
                for start in range(0, len(ys), 6):
                    staged = gpu.stage(image, ys[start : start + 6], xs[start : start + 6])
                    outputs = engine(gpu.normalize(staged), np.arange(len(ys))[start : start + 6])
                    chunks += band.add(staged, outputs)
                chunks += band.finish()
            np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), expected)
            assert len(emulated.buffers) == baseline
        with pytest.raises(CervrtError, match="closed"):
            band.add(gpu.stage(image, ys[:1], xs[:1]), engine.device)
    assert emulated.buffers == {}


@pytest.mark.gpu
@pytest.mark.parametrize(("height", "width", "patch", "stride", "batch", "blend", "gated"), CASES)
def test_gpu_pipeline_matches_reference(height, width, patch, stride, batch, blend, gated) -> None:
    image, ys, xs, probs, gate = _scene(height, width, patch, stride, 5, height + batch)
    gate = gate if gated else None
    with CudaFusion(patch, 5, batch_size=batch, mean=MEAN, std=STD) as gpu:
        labels, inputs = _run(gpu, image, ys, xs, probs, gate, stride, blend)
    expected_labels, expected_inputs = _expected(image, ys, xs, probs, gate, patch, stride, blend)
    np.testing.assert_allclose(inputs, expected_inputs, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(labels, expected_labels)
