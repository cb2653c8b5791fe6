"""Slide jobs: a bounded queue, worker threads, status and progress, cancellation (no web framework here).

``JobQueue(run, workers, max_queued)`` hands each submitted :class:`Job` to ``run(job)`` on one of
``workers`` threads; ``run`` reports progress through ``job.progress(done, total)``, must stop with
:class:`~cervrt.errors.Cancelled` once ``job.token`` is set, and returns the job's report and output
paths. A job is ``queued``, ``running``, then ``done``, ``failed`` (with a one-line ``error``) or
``cancelled``. Submitting to a full queue raises :class:`QueueFull`; cancelling a queued job takes it
out at once, a running one at its next batch. Finished jobs are kept (the ``keep`` most recent) so
that their status can still be read.
"""

from __future__ import annotations

import collections
import enum
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cervrt.cancel import CancelToken
from cervrt.errors import Cancelled, CervrtError, InputError

__all__ = ["Job", "JobFinished", "JobQueue", "JobStatus", "QueueFull", "UnknownJob"]

_LOG = logging.getLogger("cervrt.serve")


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


class QueueFull(CervrtError):
    """The job queue holds as many jobs as it may: try again later."""


class JobFinished(CervrtError):
    """The job has already finished (done, failed or cancelled): there is nothing to cancel."""


class UnknownJob(InputError):
    """No job has this id (it never existed, or it was forgotten)."""


@dataclass
class Job:
    """One slide job: what to run, where it stands, what it produced."""

    slide: str
    options: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: JobStatus = JobStatus.QUEUED
    done: int = 0
    total: int | None = None
    report: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    token: CancelToken = field(default_factory=CancelToken)

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = int(done), int(total)

    def snapshot(self) -> dict[str, Any]:
        """The job as JSON-ready values (what GET /v1/jobs/{id} returns)."""
        return {"id": self.id, "status": self.status.value, "slide": self.slide, "options": self.options,
                "progress": {"done": self.done, "total": self.total}, "report": self.report,
                "outputs": self.outputs, "error": self.error, "created": self.created, "started": self.started,
                "finished": self.finished}


class JobQueue:
    """Runs jobs on ``workers`` threads, at most ``max_queued`` waiting (see the module docstring)."""

    def __init__(self, run: Callable[[Job], tuple[dict[str, Any], dict[str, str]]], workers: int = 1,
                 max_queued: int = 16, keep: int = 1000) -> None:
        self._run = run
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queued)
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"cervrt-job-{k}", daemon=True)
                         for k in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- the API --------------------------------------------------------------------------------

    def submit(self, slide: str, options: dict[str, Any]) -> Job:
        """Queue a job; QueueFull when ``max_queued`` are waiting already."""
        job = Job(slide, dict(options))
        with self._lock:
            if self._closed:
                raise QueueFull("the service is shutting down: no new jobs")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"the job queue is full ({self._queue.maxsize} waiting): try again later") from None
            self._jobs[job.id] = job
            self._forget_old()
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r}: it does not exist or was forgotten")
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next batch; JobFinished if it has finished."""
        job = self.get(job_id)
        with self._lock:
            if job.status.finished:
                raise JobFinished(f"job {job_id} has already finished ({job.status.value}): nothing to cancel")
            job.token.cancel()
            if job.status is JobStatus.QUEUED:
                self._finish(job, JobStatus.CANCELLED, "cancelled before it started")
        return job

    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self._lock:
            statuses = [job.status.value for job in self._jobs.values()]
        return {s.value: statuses.count(s.value) for s in JobStatus}

    def close(self, timeout: float = 10.0) -> None:
        """Cancel every job and stop the workers (waiting up to ``timeout`` seconds for running ones)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                if not job.status.finished:
                    job.token.cancel()
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the workers --------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.token.is_set():
                    if not job.status.finished:
                        self._finish(job, JobStatus.CANCELLED, "cancelled before it started")
                    continue
                job.status, job.started = JobStatus.RUNNING, time.time()
            self._execute(job)

    def _execute(self, job: Job) -> None:
        try:
            report, outputs = self._run(job)
        except Cancelled:
            status, error, report, outputs = JobStatus.CANCELLED, "cancelled while running", None, None
        except CervrtError as exc:
            status, error, report, outputs = JobStatus.FAILED, str(exc), None, None
        except OSError as exc:
            status, error, report, outputs = JobStatus.FAILED, f"{type(exc).__name__}: {exc}", None, None
        except Exception as exc:  # a bug: keep the worker alive and say so in one line
            _LOG.exception("job %s failed", job.id)
            status, error, report, outputs = JobStatus.FAILED, f"internal error: {type(exc).__name__}", None, None
        else:
            status, error = JobStatus.DONE, None
        with self._lock:
            job.report, job.outputs = report, outputs
            self._finish(job, status, error)

    def _finish(self, job: Job, status: JobStatus, error: str | None) -> None:
        job.status, job.error, job.finished = status, error, time.time()

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status.finished]
        for key in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[key]
