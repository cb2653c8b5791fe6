"""The progress of a many-slide run on stderr: one bar across slides, or plain lines for a log file.

``RunProgress(total, mode)``: ``mode`` ``"auto"`` is a tqdm bar on a terminal (slides done/total,
aggregate patches/s, ETA) and plain lines elsewhere; ``"bar"``, ``"plain"`` (a line every
``interval`` seconds and at the end: ``progress: 3/12 slides (1 failed), 540 patches/s, ETA 0:02:10``),
``"json"`` (one JSON object per finished slide and at the end) or ``"none"``. ``slide_done`` is called
per finished slide, ``patches(name, done, total)`` while a slide runs (the serial runner reports its
batches; a distributed one reports each slide when it ends).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from cervrt._io import nan_to_none
from cervrt.errors import InputError

__all__ = ["PROGRESS_MODES", "RunProgress"]

PROGRESS_MODES = ("auto", "bar", "plain", "json", "none")


def _eta(seconds: float | None) -> str:
    return "?" if seconds is None else str(_dt.timedelta(seconds=round(seconds)))


class RunProgress:
    """Slides done of ``total`` (``skipped`` already done before), patches/s and ETA, on ``stream``."""

    def __init__(self, total: int, mode: str = "auto", skipped: int = 0, interval: float = 30.0,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in PROGRESS_MODES:
            raise InputError(f"unknown progress mode {mode!r}: choose one of {', '.join(PROGRESS_MODES)}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "plain"
        self.mode, self.total, self.interval, self._clock = mode, total, interval, clock
        self.done, self.failed, self.skipped = skipped, 0, skipped
        self._finished_patches = 0
        self._live: dict[str, int] = {}
        self._start = self._last = clock()
        self._bar = self._make_bar() if mode == "bar" else None

    def _make_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.total, initial=self.done, unit="slide", file=self.stream, dynamic_ncols=True,
                    desc="slides")

    # -- what the run reports -----------------------------------------------------------------------------

    def patches(self, name: str, done: int, total: int) -> None:
        """A running slide has run ``done`` of its ``total`` patches."""
        self._live[name] = done
        self._tick()

    def slide_done(self, name: str, patches: int, failed: bool = False) -> None:
        """A slide ended (``patches`` run); ``failed`` if it has no outputs."""
        self._live.pop(name, None)
        self.done += 1
        self.failed += int(failed)
        self._finished_patches += patches
        if self._bar is not None:
            self._bar.update(1)
        if self.mode == "json":
            self._json("slide", slide=name, ok=not failed, patches=patches)
        self._tick()

    def close(self) -> None:
        """End the bar, or write the last line (none when no slide ended: the run stopped before one)."""
        if self._bar is not None:
            self._bar.close()
        elif self.done and self.mode == "plain":
            self._line()
        elif self.done and self.mode == "json":
            self._json("end")

    # -- figures -------------------------------------------------------------------------------------------

    def rate(self) -> float:
        """Patches per second over the run so far (all workers together)."""
        elapsed = self._clock() - self._start
        return (self._finished_patches + sum(self._live.values())) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        """Seconds left, from the slides that ran in this run so far."""
        ran = self.done - self.skipped
        if ran <= 0:
            return None
        return (self._clock() - self._start) / ran * (self.total - self.done)

    def _tick(self) -> None:
        now = self._clock()
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.rate():.0f} patches/s, {self.failed} failed", refresh=False)
        elif self.mode == "plain" and now - self._last >= self.interval:
            self._line()
        else:
            return
        self._last = now

    def _line(self) -> None:
        failed = f" ({self.failed} failed)" if self.failed else ""
        print(f"progress: {self.done}/{self.total} slides{failed}, {self.rate():.0f} patches/s, "
              f"ETA {_eta(self.eta())}", file=self.stream, flush=True)

    def _json(self, event: str, **fields: Any) -> None:
        eta = self.eta()
        record = {"event": event, **fields, "done": self.done, "total": self.total, "failed": self.failed,
                  "patches_per_s": round(self.rate(), 2), "eta_s": None if eta is None else round(eta, 1)}
        print(json.dumps(nan_to_none(record), allow_nan=False), file=self.stream, flush=True)
