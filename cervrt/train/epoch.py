"""The one epoch loop and the SGD set-up every training run of cervrt shares.

``cervrt train`` (every stage: segmentation, Ensemble-A, ``--arch classifier``) and WSSS phase 1
(``cervrt wsss train-cls``) differ in their loss and what they log per batch, not in how an epoch
runs: :func:`run_epoch` iterates the loader with a progress bar, calls the run's ``step`` on each
batch and stops at the time limit. :func:`sgd` builds the optimiser both use (the encoder at ``lr``,
every other trained block at ``lr * head_lr_mult``), :func:`cosine` and :func:`poly` the two
per-iteration schedules (the HSP-Net paper's and the WSSS authors').
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

__all__ = ["cosine", "poly", "run_epoch", "sgd"]


def sgd(model: nn.Module, lr: float, head_lr_mult: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over the trained parameters: ``encoder.*`` at ``lr`` (first group), the rest at ``lr * head_lr_mult``."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    encoder = [p for n, p in trained if n.startswith("encoder.")]
    rest = [p for n, p in trained if not n.startswith("encoder.")]
    groups = [{"params": encoder, "lr": lr}, {"params": rest, "lr": lr * head_lr_mult}]
    return torch.optim.SGD([g for g in groups if g["params"]], momentum=momentum, weight_decay=weight_decay)


def cosine(total_steps: int) -> Callable[[int], float]:
    """Cosine annealing to zero over ``total_steps`` (a LambdaLR factor)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


def poly(total_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """Polynomial decay ``(1 - step / total) ** power`` (a LambdaLR factor)."""
    return lambda step: (1.0 - min(step, total_steps) / max(1, total_steps)) ** power


def run_epoch(loader: Iterable[Any], step: Callable[[int, Any], float], *, desc: str, deadline: float | None,
              postfix: Callable[[], dict[str, str]] | None = None) -> tuple[list[float], bool]:
    """Call ``step(index, batch)`` (which trains on the batch and returns its loss) on every batch of
    ``loader``; returns the losses and whether the ``deadline`` (``time.monotonic()``) cut the epoch short."""
    losses: list[float] = []
    bar = tqdm(loader, desc=desc, unit="batch", leave=False)
    for index, batch in enumerate(bar):
        losses.append(step(index, batch))
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", **(postfix() if postfix else {}))
        if deadline is not None and time.monotonic() > deadline:
            return losses, True
    return losses, False
