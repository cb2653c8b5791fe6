"""resolve_device over cervrt.devices, the model-input normalisation, and the shared optimiser step."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cervrt.errors import CervrtError  # noqa: E402
from cervrt.train.tensors import optimizer_step, resolve_device, to_model_input  # noqa: E402


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


def _setup():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    return weight, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))


@pytest.mark.parametrize("with_scaler", [False, True])
def test_optimizer_step_steps_the_weights_and_the_schedule(with_scaler):
    weight, optimizer, scheduler = _setup()
    scaler = torch.amp.GradScaler("cuda", enabled=False) if with_scaler else None
    assert optimizer_step((weight ** 2).sum(), optimizer, scheduler, scaler) == pytest.approx(5.0)
    assert weight.detach().tolist() == pytest.approx([0.0, 0.0])  # w - 0.5 * 2w
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_optimizer_step_refuses_a_nan_loss_without_stepping():
    weight, optimizer, scheduler = _setup()
    with pytest.raises(CervrtError, match="NaN or infinite: lower the learning rate"):
        optimizer_step(weight.sum() * float("nan"), optimizer, scheduler)
    assert weight.detach().tolist() == [1.0, 2.0] and optimizer.param_groups[0]["lr"] == 0.5
