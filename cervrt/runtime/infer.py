"""``cervrt infer``: a list of slides through a SlideRunner, a progress bar per slide, a line per result.

One bad slide does not stop the others: its error is reported as one line and the run goes on;
``InferSummary.failed`` lists the slides that failed (the command exits non-zero if any did). A
problem with the model or the output directory stops the run before any slide is read. The loop
itself is ``cervrt.runtime.runner``'s; this module adds the terminal progress bars.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.runner import InferSummary, OutputOptions, SerialRunner, SlideRunner

__all__ = ["infer_slides", "progress_bar"]


def progress_bar(name: str) -> Callable[[int, int], None] | Any:
    """A tqdm bar on stderr (shown on a terminal only) fed by ``progress(done, total)``; ``close()`` ends it."""
    from tqdm import tqdm

    bar = tqdm(desc=name, unit="patch", leave=True, disable=None, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


def infer_slides(model: str | os.PathLike[str], slides: Sequence[str | os.PathLike[str]],
                 out: str | os.PathLike[str], config: PredictorConfig | None = None,
                 outputs: OutputOptions | None = None, *, runner: SlideRunner | None = None,
                 echo: Callable[[str], None] = print, error: Callable[[str], None] = print) -> InferSummary:
    """Segment ``slides`` with ``model`` into ``out`` (by default serially, with a progress bar per slide)."""
    runner = runner or SerialRunner(progress=progress_bar)
    return runner.run(model, slides, out, config, outputs or OutputOptions(), echo=echo, error=error)
