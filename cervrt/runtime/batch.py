"""A many-slide run: inputs -> shard -> resume -> a SlideRunner (serial or Ray) -> the run record.

    inputs = collect_inputs(["scans/"], recursive=True)
    run_batch("hspnet.onnx", inputs, "out/", PredictorConfig(stride=128), OutputOptions(),
              BatchOptions(workers=4, min_area=0.05))

Before any slide runs: the output names are checked for collisions (``cervrt.runtime.inputs``), the
``shard`` is taken, and every slide's existing outputs are looked at. A slide whose report carries
this run's stamp (model sha256 and settings) is *skipped* (``overwrite`` redoes it); a slide left
half-done by an interrupted run (the previous run record lists it as not finished) is redone; any
other existing output is refused (nothing a user had is overwritten without ``overwrite``). The run
record (``cervrt.runtime.record``) is rewritten as each slide ends, and a last time with the run's
status (``finished``, or ``interrupted`` on Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cervrt._io import ensure_writable_dir, write_json
from cervrt.errors import CervrtError, InputError
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.inputs import SlideInput, SlideInputs, shard
from cervrt.runtime.progress import RunProgress
from cervrt.runtime.record import (
    RunRecord,
    RunStamp,
    SlideRow,
    model_sha256,
    output_paths,
    read_report,
    remove_partial,
    triage,
)
from cervrt.runtime.runner import InferSummary, OutputOptions, SerialRunner, SlideJob, SlideOutcome, SlideRunner

__all__ = ["BatchOptions", "BatchSummary", "dry_run_batch", "plan_batch", "run_batch"]

#: Settings that do not change a mask (a resumed run may change them freely).
_NOT_IN_STAMP = ("device", "batch_size", "fusion")


@dataclass(frozen=True)
class BatchOptions:
    """How a many-slide run runs: ``workers`` (None: serially in this process; N: N Ray workers),
    ``ray_address`` (join that cluster), ``gpus_per_worker``, ``cpus_per_worker``, ``shard`` (I, N),
    ``overwrite``, ``min_area`` (triage, mm^2 or pixels) and ``progress`` (a RunProgress mode)."""

    workers: int | None = None
    ray_address: str | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: int | None = None
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    min_area: float = 0.01
    progress: str = "auto"

    def __post_init__(self) -> None:
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise InputError(f"workers must be a positive number of slide workers, got {self.workers!r}")
        if not (isinstance(self.min_area, (int, float)) and self.min_area >= 0):
            raise InputError(f"min_area must be 0 or more (mm^2, or pixels without mpp), got {self.min_area!r}")
        if (self.ray_address or self.gpus_per_worker or self.cpus_per_worker) and self.workers is None:
            raise InputError("a Ray address, GPUs or CPUs per worker need workers (a number of Ray workers)")

    @property
    def suffix(self) -> str:
        return "" if self.shard is None else f".{self.shard[0]}-of-{self.shard[1]}"


@dataclass
class BatchSummary(InferSummary):
    """An InferSummary plus the slides skipped as already done and the run record's rows."""

    skipped: list[str] = field(default_factory=list)
    record: RunRecord | None = None


@dataclass
class _Plan:
    jobs: list[SlideJob]
    rows: dict[str, SlideRow]
    skipped: list[str]


def _stamp(model: Path, config: PredictorConfig, outputs: OutputOptions, min_area: float) -> RunStamp:
    settings = {k: v for k, v in config.as_dict().items() if k not in _NOT_IN_STAMP}
    settings |= {"format" if k == "fmt" else k: v for k, v in dataclasses.asdict(outputs).items()}
    settings = json.loads(json.dumps(settings))  # as a report holds it: tuples as lists
    return RunStamp(model_sha256(model), settings, float(min_area))


def _previous_unfinished(out: Path, suffix: str) -> set[str]:
    """Names the previous run record of this OUT (and shard) lists as not finished."""
    try:
        previous = json.loads((out / f"run{suffix}.json").read_text())
    except (OSError, ValueError):
        return set()
    return {name for name, status in (previous.get("slides") or {}).items() if status in ("pending", "running")}


def _job(slide: SlideInput, out: Path, stamp: RunStamp) -> SlideJob:
    name = PurePosixPath(slide.name)
    return SlideJob(slide.path, out.joinpath(*name.parent.parts), name.name, slide.id, slide.mpp, slide.error, stamp)


def _resume(job: SlideJob, outputs: OutputOptions, stamp: RunStamp) -> tuple[str, dict[str, Any] | None, list[Path]]:
    """``("new"|"done"|"other", report, existing paths)`` for a job's outputs."""
    existing = [p for p in output_paths(job.out_dir, job.name or "", outputs) if p.exists()]
    if not existing:
        return "new", None, []
    report = read_report(job.out_dir / f"{job.name}.json")
    if report and report.get("run") == stamp.for_slide(job.mpp) and all(
            Path(p).exists() for p in report["outputs"].values()):
        return "done", report, existing
    return "other", report, existing


def plan_batch(inputs: SlideInputs, out: str | os.PathLike[str], stamp: RunStamp, outputs: OutputOptions,
               options: BatchOptions) -> _Plan:
    """The jobs to run, the rows of every slide, and the slides skipped as done; refuses to overwrite."""
    out_dir = ensure_writable_dir(out)
    slides = inputs.slides if options.shard is None else shard(inputs.slides, *options.shard)
    unfinished = _previous_unfinished(out_dir, options.suffix)
    plan, refused = _Plan([], {}, []), []
    for slide in slides:
        job = _job(slide, out_dir, stamp)
        row = plan.rows.setdefault(slide.name, SlideRow(str(slide.path), slide.id, slide.name))
        state, report, existing = ("new", None, []) if slide.error else _resume(job, outputs, stamp)
        if state == "done" and not options.overwrite:
            row.status, row.report = "skipped", report
            plan.skipped.append(slide.name)
            continue
        if state == "other" and not options.overwrite and slide.name not in unfinished:
            refused.append(existing[0])
        plan.jobs.append(job)
    if refused:
        raise CervrtError(f"{len(refused)} slide(s) already have outputs from another model or other settings "
                          f"(e.g. {refused[0]}): pass --overwrite to redo them, or choose another --out")
    return plan


def _retriage(plan: _Plan, out: Path, stamp: RunStamp) -> None:
    """Skipped slides keep their masks; their triage (in the report too) follows this run's min_area."""
    for row in plan.rows.values():
        if row.status == "skipped" and row.report is not None:
            fresh = triage(row.report, stamp.min_area)
            if row.report.get("triage") != fresh:
                row.report["triage"] = fresh
                write_json(out.joinpath(*PurePosixPath(row.name).parts[:-1]) / f"{PurePosixPath(row.name).name}.json",
                           row.report)


def _runner(options: BatchOptions, progress: RunProgress) -> SlideRunner:
    if options.workers is None:
        return SerialRunner(progress=lambda name: lambda done, total: progress.patches(name, done, total))
    from cervrt.runtime.ray_runner import RayRunner

    return RayRunner(options.workers, address=options.ray_address, gpus_per_worker=options.gpus_per_worker,
                     cpus_per_worker=options.cpus_per_worker)


class _Recorder:
    """Keeps the rows and the run record current as outcomes arrive (the record starts with the first)."""

    def __init__(self, record: RunRecord, progress: RunProgress) -> None:
        self.record, self.progress, self.started = record, progress, False
        self.rows = {row.name: row for row in record.rows}

    def __call__(self, outcome: SlideOutcome) -> None:
        row = self._row(outcome.job)
        if outcome.result is None:
            row.status, row.error = "failed", outcome.message
        else:
            row.status, row.report = "done", outcome.result.report
        patches = 0 if outcome.result is None else int(outcome.result.report["patches"]["run"])
        self.progress.slide_done(row.name, patches, failed=outcome.result is None)
        self.write()

    def _row(self, job: SlideJob) -> SlideRow:
        rel = PurePosixPath(*job.out_dir.relative_to(self.record.out).parts) / (job.name or "")
        return self.rows[str(rel)]

    def write(self, status: str = "running") -> None:
        self.started = True
        self.record.header["slides"] = {r.name: r.status for r in self.record.rows}
        self.record.write(status)


def _check_model(model: str | os.PathLike[str]) -> Path:
    model = Path(model)
    if not model.is_file():
        raise CervrtError(f"the model {model} does not exist" if not model.exists() else f"{model} is not a file")
    return model


def dry_run_batch(model: str | os.PathLike[str], inputs: SlideInputs, out: str | os.PathLike[str],
                  config: PredictorConfig | None = None, outputs: OutputOptions | None = None,
                  options: BatchOptions | None = None, echo: Callable[[str], None] = print) -> Any:
    """Plan the slides of ``inputs`` (this shard) and estimate the run's time; nothing is written."""
    from cervrt.runtime.dry_run import dry_run

    config, outputs, options = config or PredictorConfig(), outputs or OutputOptions(), options or BatchOptions()
    slides = inputs.slides if options.shard is None else shard(inputs.slides, *options.shard)
    stamp = RunStamp("", {}, options.min_area)
    jobs = [_job(slide, Path(out), stamp) for slide in slides]
    return dry_run(_check_model(model), jobs, config, workers=options.workers or 1, echo=echo)


def run_batch(model: str | os.PathLike[str], inputs: SlideInputs, out: str | os.PathLike[str],
              config: PredictorConfig | None = None, outputs: OutputOptions | None = None,
              options: BatchOptions | None = None, echo: Callable[[str], None] = print,
              error: Callable[[str], None] = print) -> BatchSummary:
    """Run ``inputs`` with ``model`` into ``out`` (see the module docstring); a line per slide, one record."""
    config, outputs, options = config or PredictorConfig(), outputs or OutputOptions(), options or BatchOptions()
    model = _check_model(model)
    if options.workers is not None:
        from cervrt.runtime.ray_runner import import_ray

        import_ray()  # a missing extra is named before anything is written
    stamp = _stamp(model, config, outputs, options.min_area)
    plan = plan_batch(inputs, out, stamp, outputs, options)
    out_dir = Path(out)
    _retriage(plan, out_dir, stamp)
    for job in plan.jobs:  # leftovers of a slide an interrupted run was writing
        remove_partial(job.out_dir, job.name or "", [])
    header = {"model": str(model), "model_sha256": stamp.model_sha256, "settings": stamp.settings,
              "min_area": stamp.min_area, "workers": options.workers, "shard": options.shard,
              "unsupported_skipped": inputs.unsupported}
    record = RunRecord(out_dir, header, list(plan.rows.values()), suffix=options.suffix)
    progress = RunProgress(len(plan.rows), options.progress, skipped=len(plan.skipped))
    recorder = _Recorder(record, progress)
    for name in plan.skipped:
        echo(f"{name}: skipped, already done with this model and these settings")
    summary = BatchSummary(skipped=plan.skipped, record=record)
    status = "interrupted"
    try:
        if plan.jobs:
            result = _runner(options, progress).run(model, plan.jobs, out_dir, config, outputs, echo=echo,
                                                    error=error, on_outcome=recorder)
            summary.results, summary.failed = result.results, result.failed
        status = "finished"
    finally:
        progress.close()
        if recorder.started or status == "finished":
            recorder.write(status)
    return summary
