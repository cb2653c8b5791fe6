"""``run_bench(config)``: every model x engine x precision measured in one run, then the report written.

For each artifact (checkpoints first, so that the others can be compared with them):

1. open it with ``cervrt.engines.open_engine`` and time ``Engine.run`` per batch size
   (``cervrt.bench.measure``), the peak resident memory of opening plus timing alongside;
2. run the synthetic test set end to end through the Predictor (``cervrt.bench.endtoend``) at the
   largest batch size: seconds per stage and end-to-end / engine time;
3. accuracy: Dice, mIoU, AP, WP against the ground truth, and the argmax agreement with the FP32
   torch model of its checkpoint (``cervrt.bench.models.find_reference``).

Then, on the first FP32 ``.onnx`` among the models (and the first INT8 one), the CPU fast path
(``cervrt.bench.fastpath``: ONNX Runtime FP32 / INT8, OpenVINO FP32 / BF16 / INT8 with patches/s,
agreement and Dice) and Dice and seconds per slide at strides 100, 200 and 400
(``cervrt.bench.strides``). Without ``--models`` the models are a short synthetic training
(``cervrt.bench.trained``), so that every accuracy figure comes from a model predicting several classes.

A model that fails (e.g. a TensorRT plan on a machine without a GPU) is reported with its error and
the others still run. The report (``report.json``, ``report.md``, the plots) is written by
``cervrt.bench.report``; nothing here asserts anything about time.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cervrt.bench.config import BenchConfig
from cervrt.bench.endtoend import SlideRun, SynthSlide, accuracy, agreement, make_test_set, run_slides
from cervrt.bench.machine import machine_info
from cervrt.bench.measure import PeakMemory, time_engine
from cervrt.bench.models import CHECKPOINT_SUFFIXES, BuiltModels, complexity, find_reference
from cervrt.errors import CervrtError

__all__ = ["SHARED_NOTE", "run_bench"]

Echo = Callable[[str], None]

SHARED_NOTE = ("Timings are wall-clock on this machine as it was during the run (other jobs may share it: see the "
               "load averages); compare ratios from one report rather than figures across reports.")


class _Run:
    """One benchmark in progress: the config, the test set and the reference labels seen so far."""

    def __init__(self, config: BenchConfig, echo: Echo) -> None:
        self.config, self.echo = config, echo
        self.slides: list[SynthSlide] = []
        self.labels: dict[Path, SlideRun] = {}

    def slides_for(self, path: Path, tag: str) -> SlideRun:
        key = path.resolve()
        if key not in self.labels:
            out = self.config.out / "runs" / tag
            backend = self.config.backend if path.suffix.lower() == ".onnx" else "auto"
            self.labels[key] = run_slides(path, self.slides, out, self.config.device, max(self.config.batch_sizes),
                                          backend)
        return self.labels[key]

    def latency(self, path: Path) -> dict[str, Any]:
        from cervrt.engines import open_engine

        settings = self.config.settings
        backend = self.config.backend if path.suffix.lower() == ".onnx" else None
        with PeakMemory() as peak, open_engine(path, device=self.config.device, backend=backend) as engine:
            row = {"engine": engine.kind, "provider": engine.provider, "precision": engine.precision,
                   "device": engine.device, "fallback": engine.fallback,
                   "num_classes": len(engine.class_names), **complexity(path, engine.metadata), "latency": []}
            metadata = dict(engine.metadata)
            for batch in self.config.batch_sizes:
                if engine.max_batch is not None and batch > engine.max_batch:
                    row["latency"].append({"batch": batch, "skipped": f"over the max batch {engine.max_batch}"})
                    continue
                self.echo(f"  timing batch {batch}: {settings.warmup} warm-up + {settings.repeats} timed runs")
                row["latency"].append(time_engine(engine, batch, settings.warmup, settings.repeats, settings.seed))
        row["memory"] = peak.result()
        return {**row, "_metadata": metadata}

    def model(self, path: Path, index: int, candidates: tuple[Path, ...]) -> dict[str, Any]:
        tag = f"{index:02d}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name)
        self.echo(f"[{index + 1}/{len(candidates)}] {path}")
        row = self.latency(path)
        metadata = row.pop("_metadata")
        self.echo(f"  end to end over {len(self.slides)} synthetic slide(s)")
        run = self.slides_for(path, tag)
        row["end_to_end"] = run.summary
        row["accuracy"] = accuracy(run.labels, self.slides, row["num_classes"])
        reference = find_reference(path, metadata, candidates)
        row["reference"] = None if reference is None else str(reference)
        if reference is not None:
            ref_run = self.slides_for(reference, f"ref-{index:02d}")
            row["agreement"] = agreement(run.labels, ref_run.labels, self.slides)
        else:
            row["agreement"] = None
        return row


def _ordered(models: tuple[Path, ...]) -> tuple[Path, ...]:
    first = [m for m in models if m.suffix.lower() in CHECKPOINT_SUFFIXES]
    return tuple(first + [m for m in models if m not in first])


def _label(path: Path, row: dict[str, Any]) -> str:
    if "error" in row:
        return path.name
    arch = row.get("arch") or path.stem
    encoder = f"-{row['encoder']}" if row.get("encoder") else ""
    return f"{arch}{encoder} {row.get('engine', '?')} {row.get('precision', '?')}"


def _measure(run: _Run, models: tuple[Path, ...]) -> list[dict[str, Any]]:
    rows = []
    for index, path in enumerate(models):
        try:
            row = run.model(path, index, models)
        except CervrtError as exc:
            run.echo(f"  failed: {exc}")
            row = {"error": str(exc)}
        rows.append({"path": str(path), "label": _label(path, row), **row})
    return rows


def _graphs(models: tuple[Path, ...]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The first FP32 and the first INT8 ``.onnx`` among ``models``, with their metadata."""
    from cervrt.artifact import read_metadata

    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in models:
        if path.suffix.lower() != ".onnx":
            continue
        try:
            meta = read_metadata(path)
        except CervrtError:
            continue
        found.setdefault(str(meta.get("precision")), (path, meta))
    return found


def _cpu_sections(run: _Run, models: tuple[Path, ...], built: BuiltModels | None) -> dict[str, Any]:
    """The CPU fast path rows and the stride rows (None, with why, without an FP32 ``.onnx``)."""
    from cervrt.bench.fastpath import fastpath_rows
    from cervrt.bench.strides import stride_rows

    graphs = _graphs(models)
    if "fp32" not in graphs:
        reason = "no FP32 .onnx among the models"
        return {"cpu_fastpath": {"absent": reason}, "strides": {"absent": reason}}
    fp32, meta = graphs["fp32"]
    int8 = graphs.get("int8", (None, None))[0]
    absent = (built.int8_absent if built else None) or "no INT8 .onnx among the models"
    config, classes = run.config, len(meta["class_names"])
    batch, out = max(config.batch_sizes), config.out / "runs"
    fast = fastpath_rows(fp32, int8, run.slides, out / "fastpath", batch, max(1, config.settings.repeats), classes,
                         absent, run.echo)
    run.echo(f"  strides 100, 200, 400 (scaled to {meta['patch_size']} px patches where smaller) with {fp32.name}")
    strides = stride_rows(fp32, meta["patch_size"], run.slides, out / "strides", config.device, batch,
                          config.backend, classes)
    return {"cpu_fastpath": {"model": str(fp32), "rows": fast}, "strides": {"model": str(fp32), "rows": strides}}


def run_bench(config: BenchConfig, echo: Echo | None = None) -> dict[str, Any]:
    """Measure ``config``'s models, write the report into ``config.out`` and return it."""
    from cervrt._io import ensure_writable_dir
    from cervrt.bench.report import write_report

    echo = echo or (lambda _message: None)
    out = ensure_writable_dir(config.out)
    machine = machine_info()
    note, built = None, None
    models = config.models
    if not models:
        from cervrt.bench.trained import build_trained_models

        built = build_trained_models(out / "models", config.settings.model, echo)
        models, note = built.paths, built.note
    run = _Run(config, echo)
    settings = config.settings
    echo(f"writing {settings.slides} synthetic test slide(s) of {settings.slide_size[0]}x{settings.slide_size[1]}")
    run.slides = make_test_set(out / "slides", settings.slides, settings.slide_size, settings.seed)
    rows = _measure(run, _ordered(models))
    sections = _cpu_sections(run, models, built)
    machine["load_avg_end"] = machine_info()["load_avg"]
    report = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine,
              "settings": {**asdict(settings), "batch_sizes": list(config.batch_sizes), "device": config.device,
                           "backend": config.backend},
              "note": note, "shared_machine": SHARED_NOTE, "models": rows, **sections}
    write_report(report, out)
    return report
