"""Per-call hooks: cancel before the start and between batches, progress passed on, rows streamed read-only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cervrt.cancel import CancelToken
from cervrt.errors import Cancelled, InputError
from cervrt.runtime.hooks import call_progress, rows_sink


def test_without_a_token_progress_is_passed_as_it_is():
    def progress(done, total):
        return None

    assert call_progress(progress, None) is progress and call_progress(None, None) is None


def test_a_token_set_before_the_call_cancels_it_at_once():
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled, match="predict was cancelled"):
        call_progress(None, token, "predict")


def test_a_token_set_during_the_call_stops_it_at_the_next_batch():
    seen, event = [], threading.Event()
    hook = call_progress(lambda done, total: seen.append((done, total)), event)
    hook(0, 4)
    hook(2, 4)
    event.set()
    with pytest.raises(Cancelled):
        hook(4, 4)
    assert seen == [(0, 4), (2, 4)]


def test_bad_hooks_are_input_errors():
    with pytest.raises(InputError, match="progress must be a callable"):
        call_progress(3, None)
    with pytest.raises(InputError, match="cancel must be"):
        call_progress(None, "stop")
    with pytest.raises(InputError, match="on_rows must be a callable"):
        rows_sink(lambda chunks: None, on_rows=1)


def test_rows_reach_the_sink_then_on_rows_read_only():
    got, streamed = [], []
    sink = rows_sink(got.extend, lambda y0, labels: streamed.append((y0, labels)))
    block = np.ones((2, 5), np.uint8)
    sink([(4, block)])
    assert got == [(4, block)] and streamed[0][0] == 4 and not streamed[0][1].flags.writeable
    assert block.flags.writeable
