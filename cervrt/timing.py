"""Engine speed compared within one run: synthetic tissue batches and interleaved timing.

``time_interleaved(engines, batch, rounds)`` gives every engine one warm-up, then times ``rounds``
rounds of one run of every engine each and reports the median patches/s. Because the engines
alternate, load on a shared machine hits them alike and their ratios hold even when the absolute
speeds do not. ``tissue_batch`` is the batch: normalised ``cervrt synth`` tissue. ``cervrt bench``,
the demo's INT8 step and ``benchmarks/cpu_fastpath.py`` all time engines this way.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

__all__ = ["time_interleaved", "tissue_batch"]


def tissue_batch(size: int, batch: int, mean: Any, std: Any, seed: int = 7) -> np.ndarray:
    """``batch`` normalised synthetic tissue patches of ``size`` px (NCHW float32)."""
    from cervrt.export.calibration import normalise
    from cervrt.synth import synthesize_region

    rng = np.random.default_rng(seed)
    return normalise(np.stack([synthesize_region(rng, size)[0] for _ in range(batch)]), mean, std)


def time_interleaved(engines: dict[str, Any], batch: np.ndarray, rounds: int) -> dict[str, float]:
    """Patches/s of every engine on ``batch``: one warm-up each, then ``rounds`` interleaved rounds, median."""
    for engine in engines.values():
        engine.run(batch)  # warm-up: OpenVINO compiles its shape, ORT allocates
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            engine.run(batch)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(batch) / statistics.median(values) for name, values in seconds.items()}
