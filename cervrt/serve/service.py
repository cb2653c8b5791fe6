"""The service behind ``cervrt serve``, without the web framework: one model, images, slide jobs.

:class:`Service` opens the model once (one engine for every request); a request's options (stride,
blend, tissue threshold, batch size) make a light Predictor over that same engine. ``segment``
decodes an image body, runs it and returns the labels with a report; ``submit`` queues a slide job
(``cervrt.serve.jobs``) whose outputs go to ``out_dir/JOB_ID/`` as ``cervrt infer`` writes them.
At most ``workers`` images run at once (the others wait for a slot); slide jobs run on ``workers``
threads of their own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import ensure_writable_dir
from cervrt.errors import InputError
from cervrt.serve.config import ServeConfig
from cervrt.serve.jobs import Job, JobQueue

__all__ = ["PREDICTOR_OPTIONS", "SLIDE_OPTIONS", "Service", "class_table", "decode_body"]

#: Request options that become Predictor settings.
PREDICTOR_OPTIONS = ("stride", "blend", "tissue_threshold", "batch_size", "mpp")
#: Request options of slide jobs beyond those: what is written.
SLIDE_OPTIONS = ("format", "geojson")


def decode_body(data: bytes) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an encoded image (PNG, JPEG, TIFF, BMP, ...); InputError when it is not one."""
    from cervrt._cv import cv2
    from cervrt.imageio import to_rgb

    if not data:
        raise InputError("the request body is empty: send the image file's bytes")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise InputError("the request body is not an image OpenCV can decode (PNG, JPEG, TIFF, BMP)")
    return to_rgb(decoded, Path("the request body"), bgr=True)


def class_table(labels: np.ndarray, class_names: tuple[str, ...], mpp: float | None) -> dict[str, dict[str, Any]]:
    """Pixels, mm^2 (when the mpp is known) and share of the tissue (pixels labelled 1..C-1) per class."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))[: len(class_names)]
    tissue = int(counts[1:].sum())
    return {name: {"pixels": int(pixels), "mm2": None if mpp is None else float(pixels) * mpp * mpp * 1e-6,
                   "tissue_share": None if k == 0 or tissue == 0 else int(pixels) / tissue}
            for k, (name, pixels) in enumerate(zip(class_names, counts.tolist(), strict=True))}


class Service:
    """One model loaded once, serving images and slide jobs (see the module docstring); a context manager."""

    def __init__(self, config: ServeConfig) -> None:
        from cervrt.runtime.config import PredictorConfig
        from cervrt.runtime.predictor import Predictor

        self.config = config
        self.out_dir = ensure_writable_dir(config.out_dir)
        self._base = PredictorConfig(device=config.device, backend=config.backend, bf16=config.bf16,
                                     batch_size=config.batch_size)
        self._predictor = Predictor(config.model, self._base)
        self.engine = self._predictor.engine
        self._slots = threading.BoundedSemaphore(config.workers)
        self.jobs = JobQueue(self._run_job, config.workers, config.queue, config.keep_jobs)
        self.started = time.time()

    # -- lifetime --------------------------------------------------------------------------------

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the jobs, stop the workers, free the model."""
        self.jobs.close()
        self._predictor.close()

    # -- what the routes call ----------------------------------------------------------------------

    def predictor(self, options: dict[str, Any]) -> Any:
        """A Predictor over the one engine with ``options`` (those of PREDICTOR_OPTIONS not None) applied."""
        changes = {k: v for k, v in options.items() if k in PREDICTOR_OPTIONS and v is not None}
        return self._predictor.with_settings(**changes) if changes else self._predictor

    def model_info(self) -> dict[str, Any]:
        """GET /v1/model: the metadata and what runs it."""
        engine = self.engine
        return {"path": str(self.config.model), "metadata": engine.metadata, "engine": engine.kind,
                "provider": engine.provider, "device": engine.device, "precision": engine.precision,
                "classes": list(engine.class_names), "patch_size": engine.patch_size, "mpp": engine.mpp}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model": self.config.model.name, "jobs": self.jobs.counts(),
                "uptime_s": round(time.time() - self.started, 3)}

    def segment(self, data: bytes, options: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Labels (uint8, the image's own size) and the report of an encoded image; ``options`` as PREDICTOR_OPTIONS."""
        start = time.perf_counter()
        image = decode_body(data)
        least = max(1, self.engine.patch_size // 16)
        if options.get("stride") is not None and options["stride"] < least:
            raise InputError(f"stride must be at least {least} (a sixteenth of the model's {self.engine.patch_size} "
                             f"px patch) on this service, got {options['stride']}")
        predictor = self.predictor(options)
        counted: dict[str, int] = {}

        def progress(done: int, total: int) -> None:
            counted["run"], counted["total"] = done, total

        with self._slots:
            labels = predictor.predict(image, mpp=options.get("mpp"), progress=progress)
        return labels, self._report(predictor, labels, counted, options.get("mpp"), time.perf_counter() - start)

    def submit(self, slide: str, options: dict[str, Any]) -> Job:
        """Queue a slide job; InputError for a path the server cannot read or a bad option (checked now)."""
        from cervrt.runtime.outputs import output_formats

        path = Path(slide)
        if not path.exists():
            raise InputError(f"slide {slide} does not exist on the server: give a path the server can read")
        fmt = options.get("format") or "png"
        if fmt not in output_formats():
            raise InputError(f"unknown mask format {fmt!r}: choose one of {', '.join(output_formats())}")
        self.predictor(options)  # the options are checked now, not when the job starts
        return self.jobs.submit(str(path), options)

    # -- helpers --------------------------------------------------------------------------------------

    def _report(self, predictor: Any, labels: np.ndarray, counted: dict[str, int], mpp: float | None,
                seconds: float) -> dict[str, Any]:
        engine, settings = self.engine, predictor.settings
        names = engine.class_names
        table = class_table(labels, names, mpp if mpp is not None else engine.mpp)
        found = [name for name in names[1:] if table[name]["pixels"] > 0]
        run = counted.get("run", 0)
        return {"width": int(labels.shape[1]), "height": int(labels.shape[0]),
                "mpp": mpp if mpp is not None else engine.mpp,
                "model": {"arch": engine.metadata.get("arch"), "patch_size": engine.patch_size, "mpp": engine.mpp,
                          "classes": list(names)},
                "engine": engine.kind, "provider": engine.provider, "precision": engine.precision,
                "device": engine.device, "fusion": predictor.fusion_backend,
                "settings": {"stride": settings.stride, "blend": settings.blend.value,
                             "batch_size": settings.batch_size, "tissue_threshold": settings.tissue_threshold},
                "patches": {"run": run}, "no_tissue": run == 0,
                "tissue_pixels": int(sum(table[name]["pixels"] for name in names[1:])), "classes": table,
                "worst_grade": found[-1] if found else None, "seconds": {"total": round(seconds, 4)}}

    def _run_job(self, job: Job) -> tuple[dict[str, Any], dict[str, str]]:
        predictor = self.predictor(job.options)
        out = self.out_dir / job.id
        try:
            result = predictor.predict_slide(job.slide, out, fmt=job.options.get("format") or "png",
                                             geojson=bool(job.options.get("geojson")), progress=job.progress,
                                             cancel=job.token)
        except BaseException:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when the run left it empty (it removes what it wrote)
            raise
        return result.report, {kind: str(path) for kind, path in result.paths.items()}
