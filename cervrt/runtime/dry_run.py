"""``--dry-run``: plan every slide (the windows left to run after tissue detection) and estimate the time.

Nothing is written. Each slide is opened and its tissue map made exactly as a run would, and its
windows are planned; the seconds per window are measured by a short warm-up on a crop of the first
slide with tissue (one untimed call, then a timed one over about two dozen windows, gather, engine
and fusion included). The estimate is windows x seconds per window / workers: it leaves out Ray's
start-up and each slide's reading of its thumbnail, and assumes every worker is as fast as this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cervrt.errors import CervrtError
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.runner import SlideJob

__all__ = ["DryRun", "dry_run"]

_WARMUP_ROWS, _WARMUP_COLUMNS = 3, 8  # windows of the warm-up crop


@dataclass
class DryRun:
    """Windows to run and skip per slide, the measured seconds per window and the estimate."""

    windows: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds_per_window: float | None = None
    workers: int = 1

    @property
    def total_windows(self) -> int:
        return sum(run for run, _ in self.windows.values())

    @property
    def estimate_s(self) -> float | None:
        if self.seconds_per_window is None:
            return None
        return self.total_windows * self.seconds_per_window / self.workers


def _plan(predictor: Any, slide: Any) -> tuple[int, int]:
    from cervrt.runtime.slide_run import THUMBNAIL_SIDE
    from cervrt.runtime.tissue import TissueMap, tissue_mask

    tissue = None
    if predictor.settings.tissue_threshold > 0:
        mask, threshold = tissue_mask(slide.thumbnail(THUMBNAIL_SIDE))
        tissue = TissueMap(mask, slide.height, slide.width, threshold)
    rows, skipped = predictor.plan_windows(slide.height, slide.width, tissue)
    return sum(len(xs) for _, xs in rows), skipped


def _warm_up(predictor: Any, slide: Any) -> float:
    """Seconds per window of a crop from the top-left of the slide, every window run."""
    patch, stride = predictor.engine.patch_size, predictor.settings.stride
    h = min(slide.height, patch + (_WARMUP_ROWS - 1) * stride)
    w = min(slide.width, patch + (_WARMUP_COLUMNS - 1) * stride)
    crop = slide.read(0, 0, h, w)
    every = predictor.with_settings(tissue_threshold=0.0)
    rows, _ = every.plan_windows(h, w, None)
    every.predict(crop)  # untimed: first-call allocations, the engine's warm-up
    start = time.perf_counter()
    every.predict(crop)
    return (time.perf_counter() - start) / max(1, sum(len(xs) for _, xs in rows))


def dry_run(model: Any, jobs: Sequence[SlideJob], config: PredictorConfig, workers: int = 1,
            echo: Callable[[str], None] = print) -> DryRun:
    """Plan ``jobs`` with ``model`` (a line per slide) and estimate the run's time with ``workers``."""
    from cervrt.runtime.predictor import Predictor
    from cervrt.runtime.readers import open_slide

    result = DryRun(workers=max(1, workers))
    with Predictor(model, config) as predictor:
        for job in jobs:
            name = str(job.name or job.slide.name)
            try:
                if job.error:
                    raise CervrtError(job.error)
                with open_slide(job.slide, predictor.engine.mpp, job.mpp if job.mpp is not None else config.mpp) as s:
                    run, skipped = _plan(predictor, s)
                    if result.seconds_per_window is None and run:
                        result.seconds_per_window = _warm_up(predictor, s)
                    echo(f"{name}: {s.width}x{s.height} px, {run} windows to run, {skipped} skipped (glass)")
                result.windows[name] = (run, skipped)
            except CervrtError as exc:
                result.failed.append((str(job.slide), str(exc)))
                echo(f"{name}: cannot be planned: {exc}")
    echo(_estimate_line(result))
    return result


def _estimate_line(result: DryRun) -> str:
    import datetime

    head = f"dry run: {len(result.windows)} slides, {result.total_windows} windows to run"
    if result.estimate_s is None:
        return f"{head}; no window to run, nothing to estimate"
    per = result.seconds_per_window * 1e3
    eta = datetime.timedelta(seconds=round(result.estimate_s))
    return f"{head}; {per:.2f} ms per window measured here -> about {eta} with {result.workers} worker(s)"
