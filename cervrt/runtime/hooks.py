"""Per-call hooks of the Predictor: progress, cancellation and streamed label rows, put together once.

``call_progress(progress, cancel, what)`` is the one ``progress(done, total)`` a call hands to the
pipeline: it raises :class:`~cervrt.errors.Cancelled` when ``cancel`` is set (checked before the
call starts, before the first batch and after every batch), then calls the caller's ``progress``.
``rows_sink(sink, on_rows)`` also hands every finished band of label rows to ``on_rows(y0, labels)``
(``labels`` a read-only uint8 (rows, width) array; copy it to keep it) after ``sink`` has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from cervrt.cancel import check_token, raise_if_cancelled
from cervrt.errors import InputError

__all__ = ["OnRows", "call_progress", "rows_sink"]

#: ``on_rows(y0, labels)``: label rows y0 .. y0 + len(labels) are final.
OnRows = Callable[[int, np.ndarray], None]


def call_progress(progress: Callable[[int, int], None] | None, cancel: Any,
                  what: str = "the call") -> Callable[[int, int], None] | None:
    """The progress callback for one call (see the module docstring); Cancelled at once if already set."""
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable progress(done, total), got {type(progress).__name__}")
    check_token(cancel)
    raise_if_cancelled(cancel, what)
    if cancel is None:
        return progress

    def hook(done: int, total: int) -> None:
        raise_if_cancelled(cancel, what)
        if progress is not None:
            progress(done, total)

    return hook


def rows_sink(sink: Callable[[list[Any]], None], on_rows: OnRows | None) -> Callable[[list[Any]], None]:
    """``sink``, then ``on_rows(first, block)`` for each finished (first row, labels) chunk."""
    if on_rows is None:
        return sink
    if not callable(on_rows):
        raise InputError(f"on_rows must be a callable on_rows(y0, labels), got {type(on_rows).__name__}")

    def both(chunks: list[Any]) -> None:
        sink(chunks)
        for first, block in chunks:
            view = block.view()
            view.flags.writeable = False
            on_rows(int(first), view)

    return both
