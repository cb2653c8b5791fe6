"""Whole-region prediction by sliding window in plain torch, and evaluation against masks.

This is the training sub-package's evaluator: it holds a full (classes, H, W) accumulator, which is
fine for MTCHI-sized regions. The runtime's band stitcher replaces it for whole slides. Windows and
weights come from :mod:`cervrt.runtime.tiling`, so both paths tile identically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cervrt._io import write_json
from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD
from cervrt.metrics import MetricAccumulator, format_metrics_table
from cervrt.runtime.tiling import BlendMode, blend_weights, window_starts
from cervrt.train.data import pad_to_patch
from cervrt.train.tensors import resolve_device, to_model_input

__all__ = ["SlidingWindow", "evaluate_checkpoint", "evaluate_regions", "predict_region", "predict_region_proba"]


@dataclass(frozen=True)
class SlidingWindow:
    """Tiling and normalisation settings for whole-region prediction."""

    patch: int
    stride: int
    blend: BlendMode = BlendMode.GAUSSIAN
    batch_size: int = 8
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD


def _windows(height: int, width: int, sw: SlidingWindow) -> list[tuple[int, int]]:
    xs = window_starts(width, sw.patch, sw.stride)
    return [(y, x) for y in window_starts(height, sw.patch, sw.stride) for x in xs]


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _to_tensor(image: np.ndarray, corners: list[tuple[int, int]], sw: SlidingWindow,
               device: torch.device) -> torch.Tensor:
    p = sw.patch
    return to_model_input(np.stack([image[y : y + p, x : x + p] for y, x in corners]), sw.mean, sw.std, device)


@torch.no_grad()
def predict_region_proba(model: nn.Module, image: np.ndarray, sw: SlidingWindow,
                         device: torch.device | str = "cpu") -> np.ndarray:
    """Fused probabilities (classes, H, W) float32 of an RGB uint8 image."""
    device = torch.device(device)
    h, w = image.shape[:2]
    padded = pad_to_patch(image, sw.patch, 255)
    weights = torch.from_numpy(np.array(blend_weights(sw.blend, sw.patch))).to(device)
    acc: torch.Tensor | None = None
    wsum = torch.zeros(padded.shape[:2], device=device)
    p = sw.patch
    for corners in _batches(_windows(*padded.shape[:2], sw), sw.batch_size):
        probs, _ = model.predict_proba(_to_tensor(padded, corners, sw, device))
        if acc is None:
            acc = torch.zeros((probs.shape[1], *padded.shape[:2]), device=device)
        for (y, x), prob in zip(corners, probs, strict=True):
            acc[:, y : y + p, x : x + p] += prob * weights
            wsum[y : y + p, x : x + p] += weights
    fused = acc / wsum.clamp_min(1e-12)
    return fused[:, :h, :w].float().cpu().numpy()


def predict_region(model: nn.Module, image: np.ndarray, sw: SlidingWindow,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Labels (H, W) uint8 of an RGB uint8 image."""
    return predict_region_proba(model, image, sw, device).argmax(axis=0).astype(np.uint8)


def evaluate_regions(model: nn.Module, regions: Iterable[tuple[str, np.ndarray, np.ndarray]], sw: SlidingWindow,
                     device: torch.device | str = "cpu", num_classes: int = 5, progress: bool = True,
                     total: int | None = None) -> tuple[dict, dict[str, dict]]:
    """Metrics over all regions (one confusion matrix) and per region: ``(overall, {name: metrics})``."""
    was_training = model.training
    model.eval()
    overall = MetricAccumulator(num_classes)
    per_region: dict[str, dict] = {}
    for name, image, mask in tqdm(regions, total=total, desc="evaluate", unit="region", disable=not progress,
                                  leave=False):
        pred = predict_region(model, image, sw, device)
        single = MetricAccumulator(num_classes)
        single.update(pred, mask)
        overall.update(pred, mask)
        per_region[name] = single.compute()
    model.train(was_training)
    return overall.compute(), per_region


def evaluate_checkpoint(model_path: str | os.PathLike[str], data: str | os.PathLike[str], *, stride: int | None = None,
                        blend: str = "gaussian", batch_size: int = 8, device: str = "auto",
                        json_out: str | os.PathLike[str] | None = None,
                        echo: Callable[[str], None] = print) -> dict:
    """Evaluate a checkpoint on every annotated region of ``data``; print the table, optionally save JSON.

    The default stride is a quarter of the patch (the papers' 75% overlap).
    """
    from cervrt.checkpoint import load_checkpoint
    from cervrt.models import model_from_checkpoint
    from cervrt.train.data import list_regions, load_region

    ckpt = load_checkpoint(model_path)
    patch = int(ckpt["patch_size"])
    sw = SlidingWindow(patch=patch, stride=stride or max(1, patch // 4), blend=BlendMode.parse(blend),
                       batch_size=batch_size, mean=ckpt["mean"], std=ckpt["std"])
    regions = list_regions(data)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    overall, per_region = evaluate_regions(model, ((r.name, *load_region(r)) for r in regions), sw, dev,
                                           num_classes=len(ckpt["class_names"]), total=len(regions))
    echo(f"{len(regions)} regions, patch {patch}, stride {sw.stride}, blend {sw.blend.value}")
    echo(format_metrics_table(overall))
    result = {"model": str(model_path), "data": str(data), "patch_size": patch, "stride": sw.stride,
              "blend": sw.blend.value, "metrics": overall, "regions": per_region}
    if json_out:
        write_json(json_out, result)
        echo(f"metrics written to {json_out}")
    return result
