"""``RayRunner``: the many-slide loop on a Ray cluster, one slide per worker at a time.

    RayRunner(workers=4).run("hspnet.onnx", slides, "out/")              # a local cluster, started and stopped
    RayRunner(workers=100, address="head:6379", gpus_per_worker=1).run(...)  # an existing cluster, joined

Each worker is a Ray actor that opens the engine once (``num_cpus`` = its CPU threads, ``num_gpus`` =
``gpus_per_worker``: Ray gives each GPU worker its own device) and segments the slides it is handed,
reading them from paths the cluster can see and writing its outputs straight into the output folder
(on a cluster: a shared filesystem mounted at the same path on every node). Only the report (a small
dict) comes back through Ray, never pixels. ONNX Runtime gets ``cpus_per_worker`` intra-op threads
and OpenMP (the C fusion) as many, so that workers do not oversubscribe the cores.

Faults: a slide that fails (a CervrtError, an OSError) is an outcome like any other. A worker that
dies (a reader's segfault, the OOM killer, ``kill -9``) loses only the slide it was running: what that
slide had written is removed, a fresh worker is started in its place (without holding up the others),
and the slide is retried once (``retries``) on the next free worker, a live one or the fresh one,
before it is recorded as failed. Ctrl-C (KeyboardInterrupt) kills the workers, removes
the outputs of the slides they were running and stops the cluster if this runner started it.

``ray`` is an extra (``pip install "cervrt[ray]"``), imported when a RayRunner runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from cervrt._io import optional_import
from cervrt.errors import CervrtError, InputError
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.runner import OutputOptions, SlideJob, SlideOutcome, SlideRunner, run_job

__all__ = ["RayRunner", "SlideWorker", "import_ray", "local_cluster"]

#: ``on_event(kind, job, pid)``: ``"started"`` when a worker takes a job, ``"died"`` when it died on it.
EventHook = Callable[[str, SlideJob, int], None]


def import_ray() -> Any:
    """The ``ray`` module, or a MissingDependencyError naming ``cervrt[ray]``."""
    return optional_import("ray", "ray")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def _check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse in one line an address nothing listens on (ray.init would retry for a minute)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"ray address {address!r} must be HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise CervrtError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}; start one with "
                          "`ray start --head` or leave --ray-address out for a local one") from None


#: The local cluster's object store: only reports (small dicts) travel through it, never pixels.
_OBJECT_STORE_BYTES = 128 << 20


@contextlib.contextmanager
def local_cluster(num_cpus: int, num_gpus: int | None = None) -> Iterator[Any]:
    """A local Ray cluster of ``num_cpus`` CPUs for the block (quiet: no dashboard, no worker logs, a small
    object store)."""
    ray = import_ray()
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=False, object_store_memory=_OBJECT_STORE_BYTES)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _cluster(address: str | None, num_cpus: int) -> Iterator[Any]:
    ray = import_ray()
    if ray.is_initialized():  # a caller's cluster: used, left running
        yield ray
        return
    if address:
        _check_address(address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
        try:
            yield ray
        finally:
            ray.shutdown()
        return
    with local_cluster(num_cpus) as ray:
        yield ray


def _open_engine(model: Path, config: PredictorConfig, threads: int | None) -> Any:
    """The worker's engine; ONNX Runtime gets ``threads`` intra-op threads (its default is every core)."""
    from cervrt.engines import open_engine

    options = dict(config.engine_options())
    if threads and model.suffix.lower() == ".onnx" and config.backend in ("auto", "onnxruntime"):
        options["threads"] = threads
    return open_engine(model, device=config.device, batch_size=config.batch_size, backend=config.backend,
                       options=options)


class SlideWorker:
    """A Ray actor's body: one engine, opened once, for every slide this worker is handed.

    A model that cannot be opened does not kill the actor: ``info()`` reports the error, which the
    runner raises before any slide runs.
    """

    def __init__(self, model: str, config: PredictorConfig, threads: int | None) -> None:
        self._predictor, self._error = None, ""
        try:
            from cervrt.runtime.predictor import Predictor

            engine = _open_engine(Path(model), config, threads)
            self._predictor = Predictor(config=config, engine=engine)
        except CervrtError as exc:
            self._error = str(exc)

    def info(self) -> dict[str, Any]:
        """pid, peak resident memory (MiB), the engine's provider and CPU threads, and the error opening the
        model (or "")."""
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        engine = getattr(self._predictor, "engine", None)
        return {"pid": os.getpid(), "max_rss_mib": round(rss, 1), "provider": getattr(engine, "provider", ""),
                "threads": getattr(engine, "threads", None), "error": self._error}

    def run(self, job: SlideJob, outputs: OutputOptions) -> tuple[SlideOutcome, dict[str, Any]]:
        """The job's outcome, and ``info()`` after it (the worker's peak memory so far)."""
        return run_job(self._predictor, job, outputs), self.info()


class RayRunner(SlideRunner):
    """N slide workers on Ray: a local cluster started (and stopped) here, or the one at ``address``.

    ``cpus_per_worker`` (default: the machine's cores shared out, at least 1) is each worker's Ray CPU
    share and its thread count; ``gpus_per_worker`` its GPU share (1: one engine per GPU). A dead
    worker's slide is retried ``retries`` times on another worker. ``on_event(kind, job, pid)`` hears
    ``"started"`` and ``"died"``; ``workers_info`` maps each worker's pid to its latest ``info()``.
    """

    def __init__(self, workers: int, address: str | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: int | None = None, retries: int = 1, on_event: EventHook | None = None) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InputError(f"workers must be a positive number of slide workers, got {workers!r}")
        if cpus_per_worker is not None and (not isinstance(cpus_per_worker, int) or cpus_per_worker < 1):
            raise InputError(f"cpus_per_worker must be a positive integer, got {cpus_per_worker!r}")
        if not gpus_per_worker >= 0:
            raise InputError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker!r}")
        self.workers, self.address, self.gpus_per_worker = workers, address, float(gpus_per_worker)
        self.cpus_per_worker = cpus_per_worker or max(1, (os.cpu_count() or 1) // workers)
        self.retries, self.on_event = retries, on_event
        self.workers_info: dict[int, dict[str, Any]] = {}

    def _emit(self, kind: str, job: SlideJob, pid: int) -> None:
        if self.on_event is not None:
            self.on_event(kind, job, pid)

    def _run_jobs(self, model: str | os.PathLike[str], jobs: Iterable[SlideJob], config: PredictorConfig,
                  outputs: OutputOptions) -> Iterator[SlideOutcome]:
        import_ray()
        jobs = list(jobs)
        with _cluster(self.address, max(os.cpu_count() or 1, self.workers * self.cpus_per_worker)) as ray:
            pool = _Pool(ray, self, str(Path(model).absolute()), config)
            yield from pool.run(jobs, outputs)


class _Pool:
    """The workers of one run and the loop that hands them jobs and collects outcomes."""

    def __init__(self, ray: Any, runner: RayRunner, model: str, config: PredictorConfig) -> None:
        self.ray, self.runner, self.model, self.config = ray, runner, model, config
        threads = runner.cpus_per_worker
        env = {"OMP_NUM_THREADS": str(threads)}
        self.actor_class = ray.remote(SlideWorker).options(
            num_cpus=threads, num_gpus=runner.gpus_per_worker, max_restarts=0, max_task_retries=0,
            runtime_env={"env_vars": env})
        self.pids: dict[Any, int] = {}
        self.actors: list[Any] = []  # every worker started, for _stop

    def _launch(self, count: int) -> dict[Any, Any]:
        """Start ``count`` workers: ``{ref of its info(): actor}`` (ready when the ref is)."""
        actors = [self.actor_class.remote(self.model, self.config, self.runner.cpus_per_worker) for _ in range(count)]
        self.actors += actors
        return {actor.info.remote(): actor for actor in actors}

    def _ready(self, ref: Any, actor: Any) -> Any:
        """The started worker, its engine open; a model that cannot open (or a worker that cannot start) raises."""
        from ray.exceptions import RayError

        try:
            info = self.ray.get(ref)
        except RayError as exc:
            raise CervrtError(f"a Ray slide worker could not start: {_first_line(exc)}") from None
        if info["error"]:
            raise CervrtError(info["error"])
        self.runner.workers_info[info["pid"]] = info
        self.pids[actor] = info["pid"]
        return actor

    def run(self, jobs: list[SlideJob], outputs: OutputOptions) -> Iterator[SlideOutcome]:
        from ray.exceptions import RayTaskError

        queue = deque((job, 0) for job in jobs)
        inflight: dict[Any, tuple[Any, SlideJob, int]] = {}
        try:
            idle = [self._ready(ref, actor) for ref, actor in self._launch(self.runner.workers).items()]
            starting: dict[Any, Any] = {}  # replacements of dead workers, not up yet
            while queue or inflight:
                while idle and queue:
                    job, tries = queue.popleft()
                    if job.error:  # known bad before it runs: no worker needed
                        yield SlideOutcome(job, message=job.error)
                        continue
                    actor = idle.pop()
                    ref = actor.run.remote(_absolute(job), outputs)
                    inflight[ref] = (actor, job, tries)
                    self.runner._emit("started", job, self.pids[actor])
                if not inflight and not starting:
                    continue
                [ref], _ = self.ray.wait([*inflight, *starting], num_returns=1)
                if ref in starting:
                    idle.append(self._ready(ref, starting.pop(ref)))
                    continue
                actor, job, tries = inflight.pop(ref)
                try:
                    outcome, info = self.ray.get(ref)
                    self.runner.workers_info[info["pid"]] = info
                except _died() as exc:
                    self.runner._emit("died", job, self.pids.pop(actor, 0))
                    _remove_outputs(job, outputs)
                    starting |= self._launch(1)  # the retry may go to a live worker before the new one is up
                    if tries < self.runner.retries:
                        queue.appendleft((job, tries + 1))
                        continue
                    outcome = SlideOutcome(job, message=f"its worker died {tries + 1} times: {_first_line(exc)}")
                except RayTaskError as exc:  # an error run_job does not turn into a message
                    idle.append(actor)
                    cause = getattr(exc, "cause", None) or exc
                    outcome = SlideOutcome(job, message=f"{type(cause).__name__}: {_first_line(cause)}")
                else:
                    idle.append(actor)
                yield SlideOutcome(job, outcome.result, outcome.message)
        finally:
            self._stop(self.actors, inflight, outputs)

    def _stop(self, actors: list[Any], inflight: dict[Any, tuple[Any, SlideJob, int]], outputs: OutputOptions) -> None:
        """Kill the workers; the slides still running lose what they had written."""
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)
        if inflight:
            with contextlib.suppress(Exception):
                self.ray.wait(list(inflight), num_returns=len(inflight), timeout=10)
            for _, job, _ in inflight.values():
                _remove_outputs(job, outputs)


def _died() -> tuple[type[BaseException], ...]:
    """What ``ray.get`` raises when the worker process of a task is gone (killed, crashed, out of memory)."""
    from ray import exceptions as e

    return (e.RayActorError, e.OutOfMemoryError, e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError)


def _absolute(job: SlideJob) -> SlideJob:
    """The job with absolute paths: a worker's working directory is not the driver's."""
    return replace(job, slide=job.slide.absolute(), out_dir=job.out_dir.absolute())


def _remove_outputs(job: SlideJob, outputs: OutputOptions) -> None:
    from cervrt.runtime.inputs import slide_stem
    from cervrt.runtime.record import output_paths, remove_partial

    name = job.name or slide_stem(job.slide)
    remove_partial(job.out_dir, name, output_paths(job.out_dir, name, outputs))
