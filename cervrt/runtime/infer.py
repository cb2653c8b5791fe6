"""``cervrt infer``: a list of slides through one Predictor, a progress bar per slide, a line per result.

One bad slide does not stop the others: its error is reported as one line and the run goes on;
``InferSummary.failed`` lists the slides that failed (the command exits non-zero if any did). A
problem with the model or the output directory stops the run before any slide is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt._io import ensure_writable_dir
from cervrt.errors import CervrtError

__all__ = ["InferOptions", "InferSummary", "infer_slides", "summary_line"]


@dataclass(frozen=True)
class InferOptions:
    """``cervrt infer``'s options (see ``Predictor`` for their meaning)."""

    device: str = "auto"
    batch_size: int = 8
    stride: int | None = None
    blend: str = "gaussian"
    tissue_threshold: float = 0.1
    mpp: float | None = None
    fmt: str = "png"
    geojson: bool = False
    fusion: str = "auto"


@dataclass
class InferSummary:
    """The reports of the slides that ran, and ``(slide, message)`` for those that failed."""

    results: list[Any] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def summary_line(result: Any) -> str:
    """One line about a finished slide."""
    r = result.report
    patches = r["patches"]
    head = f"{result.name}: {r['width']}x{r['height']} px, {patches['run']} patches run, {patches['skipped']} skipped"
    if r["no_tissue"]:
        verdict = "no tissue found: the mask is all background"
    else:
        verdict = f"worst grade {r['worst_grade'] or 'none (all background)'}"
    rate, mpx = r["patches_per_s"] or 0.0, r["mpx_per_s"] or 0.0
    speed = f"{r['seconds']['total']:.1f} s ({rate:.1f} patches/s, {mpx:.2f} Mpx/s)"
    return f"{head}; {verdict}; {speed} -> {result.paths['mask']}"


def _bar(name: str) -> Callable[[int, int], None] | Any:
    """A tqdm bar on stderr (shown on a terminal only) fed by ``progress(done, total)``."""
    from tqdm import tqdm

    bar = tqdm(desc=name, unit="patch", leave=True, disable=None, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


def _one_slide(predictor: Any, slide: str | os.PathLike[str], out_dir: Path,
               options: InferOptions) -> tuple[Any, str]:
    """(SlideResult, "") or (None, the reason it failed in one line)."""
    progress = _bar(Path(slide).name)
    try:
        return predictor.predict_slide(slide, out_dir, fmt=options.fmt, geojson=options.geojson,
                                       progress=progress), ""
    except CervrtError as exc:
        return None, str(exc)
    except OSError as exc:  # e.g. the disk filled up while writing
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        progress.close()


def infer_slides(model: str | os.PathLike[str], slides: Sequence[str | os.PathLike[str]],
                 out: str | os.PathLike[str], options: InferOptions = InferOptions(),
                 echo: Callable[[str], None] = print, error: Callable[[str], None] = print) -> InferSummary:
    """Segment ``slides`` with ``model`` into ``out``; ``echo`` gets a line per slide, ``error`` a line per failure."""
    from cervrt.runtime.predictor import Predictor

    if not slides:
        raise CervrtError("no slides given: pass one or more slide files after the options")
    out_dir = ensure_writable_dir(out)
    summary = InferSummary()
    with Predictor(model, device=options.device, batch_size=options.batch_size, stride=options.stride,
                   blend=options.blend, tissue_threshold=options.tissue_threshold, fusion=options.fusion,
                   mpp=options.mpp) as predictor:
        for slide in slides:
            result, message = _one_slide(predictor, slide, out_dir, options)
            if result is None:
                summary.failed.append((str(slide), message))
                error(f"error: {slide}: {message}")
            else:
                summary.results.append(result)
                echo(summary_line(result))
    return summary
