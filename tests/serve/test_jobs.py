"""JobQueue: a bounded queue on worker threads; progress, results, failures and cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from cervrt.errors import Cancelled, SlideError
from cervrt.serve.jobs import JobFinished, JobQueue, JobStatus, QueueFull, UnknownJob


def _wait(job, *statuses, timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.status not in statuses:
        assert time.monotonic() < deadline, f"job stayed {job.status}"
        time.sleep(0.01)
    return job


class _Runner:
    """run(job): waits for ``release`` (checking the job's token), reports progress, returns a report."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, job):
        self.started.set()
        job.progress(0, 4)
        while not self.release.wait(0.01):
            if job.token.is_set():
                raise Cancelled("cancelled")
        if job.slide == "bad.svs":
            raise SlideError("bad.svs is truncated")
        job.progress(4, 4)
        return {"slide": job.slide}, {"mask": f"/out/{job.slide}.mask.png"}


@pytest.fixture
def runner():
    return _Runner()


@pytest.fixture
def jobs(runner):
    queue = JobQueue(runner, workers=1, max_queued=2)
    yield queue
    runner.release.set()
    queue.close()


def test_a_job_runs_reports_progress_and_its_result(jobs, runner):
    job = jobs.submit("a.svs", {"stride": 16})
    assert runner.started.wait(5)
    assert _wait(job, JobStatus.RUNNING).snapshot()["progress"] == {"done": 0, "total": 4}
    runner.release.set()
    snap = _wait(job, JobStatus.DONE).snapshot()
    assert snap["report"] == {"slide": "a.svs"} and snap["outputs"] == {"mask": "/out/a.svs.mask.png"}
    assert snap["progress"] == {"done": 4, "total": 4} and snap["error"] is None and snap["options"] == {"stride": 16}
    assert jobs.get(job.id) is job


def test_a_failure_is_one_line_and_the_worker_goes_on(jobs, runner):
    runner.release.set()
    bad, good = jobs.submit("bad.svs", {}), jobs.submit("b.svs", {})
    assert _wait(bad, JobStatus.FAILED).error == "bad.svs is truncated"
    assert _wait(good, JobStatus.DONE).report == {"slide": "b.svs"}


def test_the_queue_is_bounded(jobs, runner):
    first = jobs.submit("a.svs", {})
    assert runner.started.wait(5)
    _wait(first, JobStatus.RUNNING)
    jobs.submit("b.svs", {})
    jobs.submit("c.svs", {})
    with pytest.raises(QueueFull, match=r"the job queue is full \(2 waiting\)"):
        jobs.submit("d.svs", {})


def test_cancel_a_queued_and_a_running_job(jobs, runner):
    running = jobs.submit("a.svs", {})
    assert runner.started.wait(5)
    queued = jobs.submit("b.svs", {})
    assert jobs.cancel(queued.id).status is JobStatus.CANCELLED
    jobs.cancel(running.id)
    assert _wait(running, JobStatus.CANCELLED).error == "cancelled while running"
    runner.release.set()
    time.sleep(0.05)
    assert queued.status is JobStatus.CANCELLED and queued.started is None
    with pytest.raises(JobFinished, match=r"has already finished \(cancelled\)"):
        jobs.cancel(running.id)


def test_unknown_jobs(jobs):
    with pytest.raises(UnknownJob, match=r"no job 'nope'"):
        jobs.get("nope")
    with pytest.raises(UnknownJob):
        jobs.cancel("nope")


def test_finished_jobs_beyond_keep_are_forgotten(runner):
    runner.release.set()
    queue = JobQueue(runner, workers=1, max_queued=8, keep=2)
    try:
        done = [_wait(queue.submit(f"{k}.svs", {}), JobStatus.DONE) for k in range(4)]
        queue.submit("last.svs", {})
        with pytest.raises(UnknownJob):
            queue.get(done[0].id)
        assert queue.get(done[-1].id) is done[-1]
    finally:
        queue.close()
