"""Accuracy beside cost: Dice and seconds per slide at the papers' stride and cheaper ones.

The papers tile 400 px patches at stride 100 (16x overlap); strides 200 (4x) and 400 (none) cost
less. ``stride_rows`` runs one model through the Predictor on the synthetic test slide(s) at each
stride and reports Dice against the ground truth, the windows run and the seconds per slide. For a
model whose patch is smaller than 400 px the strides are scaled to its patch (stride * patch / 400,
the same overlaps) and every row says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cervrt.bench.endtoend import SynthSlide, accuracy, run_slides

__all__ = ["PAPER_PATCH", "PAPER_STRIDES", "scaled_strides", "stride_rows"]

PAPER_PATCH = 400
PAPER_STRIDES = (100, 200, 400)


def scaled_strides(patch: int) -> dict[int, int]:
    """Paper stride -> the stride used for ``patch`` px patches (scaled down when the patch is under 400 px)."""
    if patch >= PAPER_PATCH:
        return {s: s for s in PAPER_STRIDES}
    return {s: max(1, round(s * patch / PAPER_PATCH)) for s in PAPER_STRIDES}


def stride_rows(model: Path, patch: int, slides: list[SynthSlide], out_dir: Path, device: str, batch: int,
                backend: str, num_classes: int) -> list[dict[str, Any]]:
    """One row per paper stride: the stride used, Dice, windows run and seconds per slide."""
    rows = []
    for paper, stride in scaled_strides(patch).items():
        run = run_slides(model, slides, out_dir / f"stride-{stride}", device, batch, backend, stride=stride)
        note = None if stride == paper else f"scaled from {paper} to the model's {patch} px patch"
        rows.append({"paper_stride": paper, "stride": stride, "patch_size": patch, "scaled": note,
                     "overlap": (patch / stride) ** 2, "dice": accuracy(run.labels, slides, num_classes)["dice"],
                     "patches_run": run.summary["patches_run"],
                     "seconds_per_slide": run.summary["wall_seconds"] / len(slides)})
    return rows
