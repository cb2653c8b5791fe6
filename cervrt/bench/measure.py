"""Timing and memory primitives: engine latency per batch size, and the process's peak RSS.

Latency: ``warmup`` untimed runs, then ``repeats`` timed ``Engine.run`` calls on one random
normalised batch; reported as p50 / p90 (numpy's linear percentiles), min, max and the spread
``(max - min) / p50``; throughput is ``batch / p50`` patches/s and that times P^2 / 1e6 Mpx/s.

Peak memory: on Linux ``PeakMemory`` resets the kernel's high-water mark of resident memory
(writing 5 to /proc/self/clear_refs) when entered and reads ``VmHWM`` from /proc/self/status when
left, so each measured block gets its own peak. Where that is not possible it falls back to
``ru_maxrss``, the peak of the whole process so far, and says so (``scope``).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PeakMemory", "current_rss", "time_engine"]

_MIB = 2**20


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / _MIB, 1)


def current_rss() -> int | None:
    """Resident memory of this process in bytes (None where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.result()``: peak RSS of the block (MiB) and its scope."""

    def __init__(self) -> None:
        self.scope = "block"
        self.start: int | None = None
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.scope = "process"
        self.start = current_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        kib = _status_kib("VmHWM") if self.scope == "block" else None
        if kib is None:
            self.scope = "process"
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak = kib * 1024

    def result(self) -> dict[str, Any]:
        """``peak_rss_mib``, ``start_rss_mib`` and ``scope`` ("block": this block's own peak; "process": lifetime)."""
        return {"peak_rss_mib": _mib(self.peak), "start_rss_mib": _mib(self.start), "scope": self.scope}


def _summary(seconds: list[float], batch: int, patch: int) -> dict[str, Any]:
    times = np.asarray(seconds, dtype=np.float64)
    p50, p90 = (float(v) for v in np.percentile(times, [50, 90]))
    per_second = batch / p50
    return {"batch": batch, "repeats": len(seconds), "p50_ms": 1e3 * p50, "p90_ms": 1e3 * p90,
            "min_ms": 1e3 * float(times.min()), "max_ms": 1e3 * float(times.max()),
            "spread": float((times.max() - times.min()) / p50), "patches_per_s": per_second,
            "mpx_per_s": per_second * patch * patch / 1e6, "seconds": [float(v) for v in times]}


def time_engine(engine: Any, batch: int, warmup: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Latency and throughput of ``engine.run`` on a (batch, 3, P, P) random normalised batch."""
    p = engine.patch_size
    data = np.random.default_rng(seed).standard_normal((batch, 3, p, p), dtype=np.float32)
    for _ in range(warmup):
        engine.run(data)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(data)
        seconds.append(time.perf_counter() - start)
    return _summary(seconds, batch, p)
