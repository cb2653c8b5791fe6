"""The end-to-end part of a benchmark: synthetic slides with ground truth, run through the Predictor.

``make_test_set`` writes ``count`` synthetic slides (``cervrt.synth.synthesize_slide``: tissue
pieces on glass, classes 0..4) as PNG files and keeps their masks. ``run_slides`` streams every
slide through ``Predictor.predict_slide`` (mask, overlay and report written as ``cervrt infer``
does), sums the seconds of its stages (read, tissue, preprocess, engine, fuse, write) over the set,
and reads the label masks back for the accuracy figures: Dice, mIoU, AP and WP against the ground
truth (``cervrt.metrics``), and the argmax agreement with a reference model's labels, counted over
the tissue pixels (ground truth != 0) and over all pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.bench.measure import PeakMemory

__all__ = ["SlideRun", "SynthSlide", "accuracy", "agreement", "make_test_set", "run_slides"]


@dataclass(frozen=True)
class SynthSlide:
    """A synthetic slide on disk and its ground-truth mask (uint8, 0..4)."""

    path: Path
    mask: np.ndarray


@dataclass(frozen=True)
class SlideRun:
    """One model over the test set: the summed report figures and the label masks, in slide order."""

    summary: dict[str, Any]
    labels: tuple[np.ndarray, ...]


def make_test_set(directory: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[SynthSlide]:
    """``count`` synthetic slides of ``size`` (height, width) as PNG files in ``directory``."""
    from cervrt.imageio import write_png
    from cervrt.synth import synthesize_slide

    directory.mkdir(parents=True, exist_ok=True)
    slides = []
    for index in range(count):
        rgb, mask = synthesize_slide(np.random.default_rng([seed, index]), size)
        path = directory / f"synthetic_{index:02d}.png"
        write_png(path, rgb)
        slides.append(SynthSlide(path, mask))
    return slides


def _read_mask(path: Path) -> np.ndarray:
    from cervrt._cv import cv2

    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise OSError(f"cannot read the mask {path}")
    return labels


def _summarise(reports: list[dict[str, Any]], wall: float, peak: dict[str, Any]) -> dict[str, Any]:
    stages = {key: sum(r["seconds"][key] for r in reports) for key in reports[0]["seconds"]}
    run = sum(r["patches"]["run"] for r in reports)
    pixels = sum(r["width"] * r["height"] for r in reports)
    engine = stages.get("engine", 0.0)
    return {"slides": len(reports), "pixels": pixels, "patches_run": run,
            "patches_skipped": sum(r["patches"]["skipped"] for r in reports), "seconds": stages, "wall_seconds": wall,
            "end_to_end_over_engine": wall / engine if engine > 0 else None,
            "patches_per_s": run / wall if wall > 0 else None, "mpx_per_s": pixels / 1e6 / wall if wall > 0 else None,
            "fusion": reports[0].get("fusion"), "batch_size": reports[0]["settings"]["batch_size"], **peak}


def run_slides(model: Path, slides: list[SynthSlide], out_dir: Path, device: str, batch_size: int,
               backend: str = "auto", **options: Any) -> SlideRun:
    """Every slide through a Predictor on ``model`` (run by ``backend``); seconds per stage summed, labels read back.

    ``options`` are further Predictor settings (``stride``, ``bf16``).
    """
    from cervrt.runtime.predictor import Predictor

    reports, labels = [], []
    with PeakMemory() as peak, Predictor(model, device=device, batch_size=batch_size, backend=backend,
                                         **options) as predictor:
        start = time.perf_counter()
        for slide in slides:
            result = predictor.predict_slide(slide.path, out_dir)
            reports.append(result.report)
            labels.append(_read_mask(result.paths["mask"]))
        wall = time.perf_counter() - start
    return SlideRun(_summarise(reports, wall, peak.result()), tuple(labels))


def accuracy(labels: tuple[np.ndarray, ...], slides: list[SynthSlide], num_classes: int) -> dict[str, Any]:
    """Dice, mIoU, AP, WP (and FwIoU) of ``labels`` against the slides' ground truth."""
    from cervrt.metrics import MetricAccumulator

    acc = MetricAccumulator(num_classes)
    for pred, slide in zip(labels, slides, strict=True):
        acc.update(pred, slide.mask)
    metrics = acc.compute()
    return {key: metrics[key] for key in ("dice", "miou", "ap", "wp", "fwiou", "pixels")}


def agreement(labels: tuple[np.ndarray, ...], reference: tuple[np.ndarray, ...],
              slides: list[SynthSlide]) -> dict[str, float]:
    """Share of equal labels: over tissue pixels (ground truth != 0) and over all pixels."""
    same_tissue = tissue = same = total = 0
    for pred, ref, slide in zip(labels, reference, slides, strict=True):
        equal = pred == ref
        on_tissue = slide.mask != 0
        same_tissue += int(np.count_nonzero(equal & on_tissue))
        tissue += int(np.count_nonzero(on_tissue))
        same += int(np.count_nonzero(equal))
        total += equal.size
    return {"tissue": same_tissue / tissue if tissue else float("nan"), "all": same / total if total else float("nan")}
