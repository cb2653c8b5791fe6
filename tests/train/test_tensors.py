"""resolve_device over cervrt.devices, and the model-input normalisation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cervrt.errors import CervrtError  # noqa: E402
from cervrt.train.tensors import resolve_device, to_model_input  # noqa: E402


def test_auto_and_cpu_resolve_to_torch_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("name", ["gpu7", "cuda:x", "cpu:1", ""])
def test_unknown_devices_are_refused_with_the_valid_forms(name):
    with pytest.raises(CervrtError, match=r"unknown device .*auto, cpu, cuda, cuda:N"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_says_to_use_the_cpu():
    with pytest.raises(CervrtError, match=r"no CUDA GPU is available to torch: use device 'cpu'"):
        resolve_device("cuda:0")


def test_to_model_input_normalises_per_channel():
    patches = np.array([[[[0, 51, 255]]]], np.uint8)  # (1, 1, 1, 3)
    x = to_model_input(patches, (0.0, 0.1, 0.5), (1.0, 0.1, 0.5), "cpu")
    assert x.shape == (1, 3, 1, 1) and x.dtype == torch.float32
    assert np.allclose(x.flatten().numpy(), [0.0, 1.0, 1.0])
