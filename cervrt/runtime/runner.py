"""The many-slide loop: plan the jobs, run each slide, collect results and failures, in one place.

``SlideRunner.run(model, slides, out, config, outputs)`` checks its inputs (slides given, the output
directory writable) before any slide is read, hands the jobs to ``_run_jobs`` and turns what comes
back into an ``InferSummary``: a line per finished slide (``echo``), a line per failure (``error``),
``on_outcome(outcome)`` for each (the run record listens there). One bad slide does not stop the
others. ``SerialRunner`` runs the jobs one after the other through one Predictor;
``cervrt.runtime.ray_runner.RayRunner`` implements ``_run_jobs`` with Ray workers that each open the
model once and yields the outcomes as they arrive. Both call ``run_job`` per slide. A job is a path
or a ``SlideJob`` planned by the caller (``cervrt.runtime.batch``: output names, a manifest's mpp, the
run stamp the report records).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt._io import ensure_writable_dir
from cervrt.errors import CervrtError
from cervrt.runtime.config import PredictorConfig

__all__ = [
    "InferSummary",
    "OutputOptions",
    "SerialRunner",
    "SlideJob",
    "SlideOutcome",
    "SlideRunner",
    "plan_jobs",
    "summary_line",
]

#: ``progress(done, total)`` with a ``close()``, made per slide name.
ProgressFactory = Callable[[str], Any]


@dataclass(frozen=True)
class OutputOptions:
    """What each slide run writes beside the overlay and the JSON report: the mask format and GeoJSON."""

    fmt: str = "png"
    geojson: bool = False
    #: Mask formats written beside ``fmt`` (``dicom-seg``, ``ome-zarr``, ...), in one pass over the rows.
    extra_formats: tuple[str, ...] = ()
    #: GeoJSON outlines simplified by this many mask pixels (topology kept); gzip-compressed GeoJSON.
    geojson_simplify: float | None = None
    geojson_gzip: bool = False
    #: Refuse slides that carry no microns per pixel instead of assuming the model's.
    require_mpp: bool = False

    def slide_options(self) -> dict[str, Any]:
        """``predict_slide``'s keyword arguments: ``fmt`` (several when there are extra formats), ``geojson``
        and the options that differ from their defaults."""
        default = OutputOptions()
        extra = {k: getattr(self, k) for k in ("geojson_simplify", "geojson_gzip", "require_mpp")
                 if getattr(self, k) != getattr(default, k)}
        fmt = (self.fmt, *self.extra_formats) if self.extra_formats else self.fmt
        return {"fmt": fmt, "geojson": self.geojson, **extra}


@dataclass(frozen=True)
class SlideJob:
    """One slide to segment into ``out_dir``: outputs named ``name`` (the slide's stem when None), the
    slide's own ``mpp`` (a manifest's; None: the config's), ``error`` (a slide known bad before it runs:
    the outcome without running), ``stamp`` (a ``RunStamp``: the report records it and its triage)."""

    slide: Path
    out_dir: Path
    name: str | None = None
    id: str = ""
    mpp: float | None = None
    error: str = ""
    stamp: Any = None


@dataclass(frozen=True)
class SlideOutcome:
    """What became of a job: its SlideResult, or the reason it failed in one line."""

    job: SlideJob
    result: Any = None
    message: str = ""


@dataclass
class InferSummary:
    """The reports of the slides that ran, and ``(slide, message)`` for those that failed."""

    results: list[Any] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def summary_line(result: Any, name: str | None = None) -> str:
    """One line about a finished slide (called ``name``, by default its report's)."""
    r = result.report
    patches = r["patches"]
    size = f"{r['width']}x{r['height']} px"
    head = f"{name or result.name}: {size}, {patches['run']} patches run, {patches['skipped']} skipped"
    if r["no_tissue"]:
        verdict = "no tissue found: the mask is all background"
    else:
        verdict = f"worst grade {r['worst_grade'] or 'none (all background)'}"
    rate, mpx = r["patches_per_s"] or 0.0, r["mpx_per_s"] or 0.0
    speed = f"{r['seconds']['total']:.1f} s ({rate:.1f} patches/s, {mpx:.2f} Mpx/s)"
    return f"{head}; {verdict}; {speed} -> {result.paths['mask']}"


def plan_jobs(slides: Sequence[str | os.PathLike[str] | SlideJob], out: str | os.PathLike[str]) -> list[SlideJob]:
    """A job per slide into ``out`` (created; a SlideJob is kept as it is); CervrtError for no slides or an
    unwritable ``out``."""
    if not slides:
        raise CervrtError("no slides given: pass one or more slide paths")
    out_dir = ensure_writable_dir(out)
    return [slide if isinstance(slide, SlideJob) else SlideJob(Path(slide), out_dir) for slide in slides]


def run_job(predictor: Any, job: SlideJob, outputs: OutputOptions, progress: Any = None) -> SlideOutcome:
    """Run one job with an open Predictor; a CervrtError or OSError becomes the outcome's message."""
    if job.error:
        return SlideOutcome(job, message=job.error)
    try:
        if job.mpp is not None and job.mpp != predictor.settings.mpp:
            predictor = predictor.with_settings(mpp=job.mpp)
        result = predictor.predict_slide(job.slide, job.out_dir, name=job.name, progress=progress,
                                         **outputs.slide_options())
        if job.stamp is not None:
            from cervrt.runtime.record import stamp_report

            stamp_report(result, job.stamp, job.mpp)
        return SlideOutcome(job, result)
    except CervrtError as exc:
        return SlideOutcome(job, message=str(exc))
    except OSError as exc:  # e.g. the disk filled up while writing
        return SlideOutcome(job, message=f"{type(exc).__name__}: {exc}")


def _display_name(job: SlideJob, root: Path) -> str | None:
    """``a/case1`` for a job named ``case1`` writing into ``root/a`` (None: the report's name)."""
    if job.name is None:
        return None
    try:
        return (job.out_dir / job.name).relative_to(root).as_posix()
    except ValueError:
        return job.name


class SlideRunner(abc.ABC):
    """Runs many slides: ``run`` checks and reports, ``_run_jobs`` does the work (serially, or not)."""

    def run(self, model: str | os.PathLike[str], slides: Sequence[str | os.PathLike[str] | SlideJob],
            out: str | os.PathLike[str], config: PredictorConfig | None = None,
            outputs: OutputOptions = OutputOptions(), echo: Callable[[str], None] = print,
            error: Callable[[str], None] = print,
            on_outcome: Callable[[SlideOutcome], None] | None = None) -> InferSummary:
        """Segment ``slides`` (paths, or SlideJobs planned by the caller) with ``model`` into ``out``: ``echo``
        a line per slide, ``error`` one per failure, ``on_outcome(outcome)`` as each arrives."""
        jobs = plan_jobs(slides, out)
        summary = InferSummary()
        for outcome in self._run_jobs(model, jobs, config or PredictorConfig(), outputs):
            if on_outcome is not None:
                on_outcome(outcome)
            if outcome.result is None:
                summary.failed.append((str(outcome.job.slide), outcome.message))
                error(f"error: {outcome.job.slide}: {outcome.message}")
            else:
                summary.results.append(outcome.result)
                echo(summary_line(outcome.result, _display_name(outcome.job, Path(out))))
                report = outcome.result.report
                if isinstance(report, dict) and report.get("mpp_assumed"):
                    error(f"warning: {outcome.job.slide} carries no microns per pixel: it was taken to be at the "
                          f"model's {report.get('mpp_used')} um/px and no area is in mm^2 (give --mpp, or "
                          "--require-mpp to refuse such slides)")
        return summary

    @abc.abstractmethod
    def _run_jobs(self, model: str | os.PathLike[str], jobs: Iterable[SlideJob], config: PredictorConfig,
                  outputs: OutputOptions) -> Iterator[SlideOutcome]:
        """Yield an outcome per job (in any order); a problem with the model raises before the first."""


class SerialRunner(SlideRunner):
    """One Predictor, the slides one after the other; ``progress(name)`` makes each slide's progress callback."""

    def __init__(self, progress: ProgressFactory | None = None) -> None:
        self._progress = progress

    def _run_jobs(self, model: str | os.PathLike[str], jobs: Iterable[SlideJob], config: PredictorConfig,
                  outputs: OutputOptions) -> Iterator[SlideOutcome]:
        from cervrt.runtime.predictor import Predictor

        with Predictor(model, config) as predictor:
            for job in jobs:
                progress = self._progress(job.name or job.slide.name) if self._progress else None
                try:
                    yield run_job(predictor, job, outputs, progress)
                finally:
                    getattr(progress, "close", lambda: None)()
