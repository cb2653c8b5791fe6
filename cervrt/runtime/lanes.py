"""Threads joined by bounded queues, with one stop flag: how the pipeline's stages overlap.

    with Lanes() as lanes:
        loaded = lanes.background(load(batches), depth=2)      # a thread of its own, 2 items ahead
        put, finish = lanes.writer(sink, depth=2)             # sink(item) on a writer thread, in order
        for item in loaded:
            put(work(item))
        finish()                                              # every item sunk; the first error raised

The first error of any thread is kept and raised in whichever thread next waits on a queue (each
waits at most ``POLL`` seconds before it looks at the stop flag), so a failure anywhere ends every
thread; leaving the ``with`` block, also by an error or a KeyboardInterrupt of the calling thread,
sets the flag and joins every thread (each finishes the item in hand first). Used by
``cervrt.runtime.pipeline.run_windows`` and the slide reader's prefetch; nothing else starts threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["POLL", "Lanes"]

#: Seconds a thread waits on a full or empty queue before it looks at the stop flag again.
POLL = 0.05
_T = TypeVar("_T")


class _Stopped(Exception):
    """A thread of the pipeline was told to stop (another one failed or the call was interrupted)."""


_END = object()


class Lanes:
    """The threads of one run, joined by bounded queues, with one stop flag; a context manager.

    ``pool(workers)`` is a thread pool for independent calls, shut down with the lanes.
    ``background(items, depth)`` iterates ``items`` on a thread of its own, at most ``depth`` items
    ahead of the consumer; ``writer(fn, depth)`` calls ``fn(item)`` on a thread of its own for every
    item put, in order. The first error of any thread is kept and raised in whichever thread next
    waits on a queue; leaving the ``with`` block (normally, by an error or by KeyboardInterrupt) sets
    the stop flag and joins every thread.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._pools: list[ThreadPoolExecutor] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every thread and wait for it (each finishes the item in hand first)."""
        self.stop.set()
        for thread in self._threads:
            thread.join()
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def pool(self, workers: int, name: str = "cervrt-pool") -> ThreadPoolExecutor:
        """A pool of ``workers`` threads for independent calls (``submit``), shut down with the lanes."""
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix=name)
        self._pools.append(pool)
        return pool

    def fail(self, error: BaseException) -> None:
        """Record ``error`` (the first one wins) and stop every thread."""
        with self._lock:
            if self.error is None and not isinstance(error, _Stopped) and not self.stop.is_set():
                self.error = error
        self.stop.set()

    def background(self, items: Iterable[_T], depth: int, name: str = "cervrt-stage") -> Iterator[_T]:
        """``items`` produced on a new thread, ``depth`` at most waiting; its error is raised to the consumer."""
        lane: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))

        def produce() -> None:
            try:
                for item in items:
                    self._put(lane, item)
                self._put(lane, _END)
            except BaseException as exc:  # handed to the consumer
                self.fail(exc)

        self._start(produce, name)
        return self._drain(lane)

    def writer(self, consume: Callable[[_T], None], depth: int,
               name: str = "cervrt-write") -> tuple[Callable[[_T], None], Callable[[], None]]:
        """(put, finish): ``put(item)`` queues ``consume(item)`` for the writer thread; ``finish()`` waits
        until every item is consumed and raises the first error of any thread."""
        lane: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))

        def run() -> None:
            try:
                for item in self._drain(lane):
                    consume(item)
            except BaseException as exc:  # raised by finish() or the next wait
                self.fail(exc)

        thread = self._start(run, name)

        def finish() -> None:
            self._put(lane, _END)
            while thread.is_alive():
                thread.join(POLL)
                self._check()
            self._check()

        return (lambda item: self._put(lane, item)), finish

    def _start(self, target: Callable[[], None], name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def _check(self) -> None:
        if self.stop.is_set():
            raise self.error if self.error is not None else _Stopped()

    def _put(self, lane: queue.Queue[Any], item: Any) -> None:
        while True:
            self._check()
            with contextlib.suppress(queue.Full):
                lane.put(item, timeout=POLL)
                return

    def _drain(self, lane: queue.Queue[Any]) -> Iterator[Any]:
        while True:
            try:
                item = lane.get(timeout=POLL)
            except queue.Empty:
                self._check()
                continue
            if item is _END:
                return
            yield item
