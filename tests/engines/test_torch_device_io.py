"""The torch engine's device-IO options (issue 13, section 3). On the CPU: what is refused and what
channels-last changes (nothing in the numbers); the CUDA side (autocast, graphs, run_device on a
caller's stream, the whole slide on the GPU) runs in the tests marked ``gpu``."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import CervrtError

torch = pytest.importorskip("torch")

from cervrt.engines.torch import TorchEngine  # noqa: E402


def _batch(n, size=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), dtype=np.float32)


def test_on_the_cpu_there_is_no_device_io_and_no_autocast(tiny_checkpoint):
    with TorchEngine(tiny_checkpoint, "cpu") as engine:
        assert engine.supports_device_io is False and engine.precision == "fp32"
        with pytest.raises(CervrtError, match="run_device needs the torch engine on a CUDA device"):
            engine.run_device(1, 1, 0)
    with pytest.raises(CervrtError, match="precision fp16 needs a CUDA device"):
        TorchEngine(tiny_checkpoint, "cpu", precision="fp16")
    with pytest.raises(CervrtError, match="precision must be one of fp32, fp16, bf16"):
        TorchEngine(tiny_checkpoint, "cpu", precision="int4")
    with pytest.raises(CervrtError, match="cuda_graphs needs a CUDA device"):
        TorchEngine(tiny_checkpoint, "cpu", batch_size=2, cuda_graphs=True)


def test_channels_last_gives_the_same_probabilities(tiny_checkpoint):
    batch = _batch(2)
    with TorchEngine(tiny_checkpoint, "cpu") as plain, TorchEngine(tiny_checkpoint, "cpu", channels_last=True) as nhwc:
        np.testing.assert_allclose(nhwc.run(batch).probs, plain.run(batch).probs, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_run_device_on_a_callers_stream_matches_run(tiny_checkpoint, precision):
    from cervrt.runtime.gpu import CudaFusion

    batch = _batch(3, seed=1)
    with TorchEngine(tiny_checkpoint, "cuda", batch_size=4, precision=precision, channels_last=True) as engine, \
            CudaFusion(64, engine.num_classes, batch_size=4, mean=engine.mean, std=engine.std) as gpu:
        expected = engine.run(batch).probs
        source = torch.from_numpy(batch).cuda()
        probs_ptr, _ = engine.run_device(source.data_ptr(), 3, gpu.stream)
        gpu.synchronize()
        view = torch.as_tensor(_Interface(probs_ptr, expected.shape), device="cuda")
        np.testing.assert_allclose(view.cpu().numpy(), expected, atol=1e-5 if precision == "fp32" else 1e-2)


class _Interface:
    def __init__(self, pointer, shape):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (int(pointer), True),
                                         "version": 3, "strides": None, "stream": None}
