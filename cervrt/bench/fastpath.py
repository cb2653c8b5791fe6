"""The CPU fast path side by side: ONNX Runtime and OpenVINO at FP32, BF16 and INT8, speed beside accuracy.

``open_cpu_engines(fp32, int8)`` opens the five CPU engines (``FASTPATH_ENGINES``: ONNX Runtime FP32,
today's default; OpenVINO FP32 and BF16; ONNX Runtime INT8 and OpenVINO INT8) and says, for each one it cannot open, why
(no INT8 graph, no BF16 on this CPU, the ``openvino`` extra missing). ``cervrt.timing.time_interleaved``
times them on one batch of synthetic tissue in interleaved rounds (one warm-up each, then one run of every
engine per round, median), so that the ratios to ONNX Runtime FP32 come from the same minutes of
the same run and load on a shared machine hits every engine alike.

``fastpath_rows`` is what ``cervrt bench`` reports: per engine, patches/s and the ratio to ONNX
Runtime FP32, and -- through the Predictor on the synthetic test slide(s) -- the label agreement with
ONNX Runtime FP32 (over tissue pixels) and Dice against the ground truth. ``benchmarks/cpu_fastpath.py``
uses the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.bench.endtoend import SynthSlide, accuracy, agreement, run_slides
from cervrt.errors import CervrtError
from cervrt.timing import time_interleaved, tissue_batch

__all__ = ["FASTPATH_ENGINES", "REFERENCE", "fastpath_rows", "open_cpu_engines"]

#: name -> (graph: "fp32" or "int8", backend, bf16)
FASTPATH_ENGINES = {"ORT FP32": ("fp32", "onnxruntime", False), "OV FP32": ("fp32", "openvino", False),
                    "OV BF16": ("fp32", "openvino", True), "ORT INT8": ("int8", "onnxruntime", False),
                    "OV INT8": ("int8", "openvino", False)}
#: The row every other is compared with.
REFERENCE = "ORT FP32"


def _open(name: str, path: Path) -> Any:
    _, backend, bf16 = FASTPATH_ENGINES[name]
    if backend == "onnxruntime":
        from cervrt.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, "cpu")
    from cervrt.engines.openvino import OpenVinoEngine, cpu_has_bf16, require_openvino

    require_openvino()
    if bf16 and not cpu_has_bf16():
        raise CervrtError("this CPU has neither AVX-512 BF16 nor AMX, so OpenVINO cannot run BF16 here")
    return OpenVinoEngine(path, "cpu", bf16=bf16)


def open_cpu_engines(fp32: Path, int8: Path | None,
                     int8_absent: str = "no INT8 graph") -> tuple[dict[str, Any], dict[str, str]]:
    """The open engines by name (``FASTPATH_ENGINES`` order) and, for the others, why each is absent."""
    engines: dict[str, Any] = {}
    absent: dict[str, str] = {}
    for name, (graph, _, _) in FASTPATH_ENGINES.items():
        path = fp32 if graph == "fp32" else int8
        if path is None:
            absent[name] = int8_absent
            continue
        try:
            engines[name] = _open(name, path)
        except CervrtError as exc:
            if name == REFERENCE:
                _close(engines)
                raise
            absent[name] = str(exc)
    return engines, absent


def _close(engines: dict[str, Any]) -> None:
    for engine in engines.values():
        engine.close()


def _speeds(fp32: Path, int8: Path | None, int8_absent: str, batch: int,
            rounds: int) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    engines, absent = open_cpu_engines(fp32, int8, int8_absent)
    try:
        ref = engines[REFERENCE]
        speed = time_interleaved(engines, tissue_batch(ref.patch_size, batch, ref.mean, ref.std), rounds)
        runs = {name: f"{e.provider}, {e.precision}" for name, e in engines.items()}
    finally:
        _close(engines)
    return speed, runs, absent


def _classes(labels: tuple[np.ndarray, ...]) -> list[int]:
    return sorted(int(c) for c in np.unique(np.concatenate([m.ravel() for m in labels])))


def fastpath_rows(fp32: Path, int8: Path | None, slides: list[SynthSlide], out_dir: Path, batch: int, rounds: int,
                  num_classes: int, int8_absent: str = "no INT8 graph",
                  echo: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """One row per ``FASTPATH_ENGINES`` entry: patches/s, ratio, agreement and Dice, or why it is absent."""
    echo(f"  CPU fast path: timing {len(FASTPATH_ENGINES)} engines in {rounds} interleaved rounds at batch {batch}")
    speed, runs, absent = _speeds(fp32, int8, int8_absent, batch, rounds)
    rows, reference = [], None
    for name, (graph, backend, bf16) in FASTPATH_ENGINES.items():
        if name in absent:
            rows.append({"engine": name, "absent": absent[name]})
            continue
        echo(f"  CPU fast path: {name} over {len(slides)} synthetic slide(s)")
        path = fp32 if graph == "fp32" else int8
        run = run_slides(path, slides, out_dir / name.replace(" ", "-").lower(), "cpu", batch, backend, bf16=bf16)
        reference = reference or run.labels
        rows.append({"engine": name, "file": str(path), "runs": runs[name], "patches_per_s": speed[name],
                     "ratio": speed[name] / speed[REFERENCE],
                     "agreement": agreement(run.labels, reference, slides)["tissue"],
                     "dice": accuracy(run.labels, slides, num_classes)["dice"],
                     "seconds_per_slide": run.summary["wall_seconds"] / len(slides),
                     "classes_predicted": _classes(run.labels)})
    return rows
