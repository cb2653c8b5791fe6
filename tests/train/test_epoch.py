"""The shared epoch loop and SGD set-up of cervrt train and WSSS phase 1."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cervrt.train.epoch import cosine, poly, run_epoch, sgd  # noqa: E402


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(2, 2)
        self.head = torch.nn.Linear(2, 1)
        self.frozen = torch.nn.Linear(2, 1)
        self.frozen.requires_grad_(False)


def test_sgd_puts_the_encoder_first_at_lr_and_the_other_trained_blocks_at_the_multiple():
    net = _Net()
    optimizer = sgd(net, 0.01, 10.0, 0.9, 5e-4)
    encoder, rest = optimizer.param_groups
    assert [id(p) for p in encoder["params"]] == [id(p) for p in net.encoder.parameters()]
    assert [id(p) for p in rest["params"]] == [id(p) for p in net.head.parameters()]  # frozen left out
    assert (encoder["lr"], rest["lr"], rest["momentum"], rest["weight_decay"]) == pytest.approx((0.01, 0.1, 0.9, 5e-4))


def test_the_schedules_start_at_one_and_end_at_zero():
    assert cosine(10)(0) == pytest.approx(1.0) and cosine(10)(5) == pytest.approx(0.5) and cosine(10)(12) == 0.0
    assert poly(10)(0) == 1.0 and poly(10)(5) == pytest.approx(0.5 ** 0.9) and poly(10)(10) == 0.0


def test_run_epoch_steps_every_batch_in_order_and_returns_the_losses():
    seen = []
    losses, stopped = run_epoch(["a", "b", "c"], lambda i, b: seen.append((i, b)) or float(i), desc="t", deadline=None,
                                postfix=lambda: {"mu": "off"})
    assert seen == [(0, "a"), (1, "b"), (2, "c")] and losses == [0.0, 1.0, 2.0] and not stopped


def test_run_epoch_stops_after_the_batch_that_passes_the_deadline():
    seen = []
    losses, stopped = run_epoch(range(5), lambda i, b: seen.append(b) or 1.0, desc="t", deadline=0.0)
    assert seen == [0] and losses == [1.0] and stopped
