"""The HTTP API of ``cervrt serve`` (FastAPI): routes, the bearer token, one-line errors.

Routes (every ``/v1`` route needs ``Authorization: Bearer TOKEN`` when the service has a token):

- ``POST /v1/segment``: the image file's bytes as the body (``Content-Type: image/*``), the options as
  query parameters (``stride``, ``blend``, ``tissue_threshold``, ``batch_size``, ``mpp``); returns the
  labels as a single-channel PNG (pixel value = class index), or, with ``Accept: application/json``,
  a JSON report (pixels, mm^2 and tissue share per class, worst grade, what ran) with the labels PNG
  in base64 under ``labels_png``;
- ``POST /v1/slides``: a JSON body with ``slide`` (a path the server can read) and the same options
  plus ``format`` and ``geojson``; returns the queued job (202);
- ``GET /v1/jobs/{id}``: status, progress, report and output paths; ``DELETE /v1/jobs/{id}``: cancel;
- ``GET /v1/model``: the model's metadata; ``GET /healthz``; the OpenAPI document at ``/openapi.json``.

Errors are JSON ``{"detail": "one line"}``: 400 for a bad image or option (InputError), 401 without
the token, 404 for an unknown job, 409 for a job that has finished or was cancelled, 413 for a body
over the limit, 415 for a body that is not ``image/*``, 422 for a request that does not match the
schema or a slide that cannot be read, 429 when the job queue is full, 503 when the model or the
device fails. No response carries a traceback; an unexpected failure is a 500 with one line.
"""

from __future__ import annotations

import base64
import hmac
import logging
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cervrt._io import nan_to_none
from cervrt.errors import Cancelled, CervrtError, DeviceError, InputError, ModelError, SlideError
from cervrt.serve.jobs import JobFinished, QueueFull, UnknownJob
from cervrt.serve.schemas import Error, JobView, SlideRequest
from cervrt.serve.service import Service

__all__ = ["ERROR_STATUS", "create_app", "status_of"]

_LOG = logging.getLogger("cervrt.serve")

#: CervrtError kinds -> HTTP status (the first match in order wins; other CervrtErrors are 400).
ERROR_STATUS: tuple[tuple[type[CervrtError], int], ...] = (
    (UnknownJob, 404), (QueueFull, 429), (JobFinished, 409), (Cancelled, 409), (SlideError, 422), (ModelError, 503),
    (DeviceError, 503), (InputError, 400),
)
_ERRORS = {400: "bad image or option", 401: "missing or wrong bearer token", 404: "no such job",
           409: "the job has finished", 413: "body too large", 415: "not an image/* body",
           422: "request does not match the schema, or the slide cannot be read", 429: "job queue full",
           503: "the model or the device failed"}


def status_of(exc: CervrtError) -> int:
    """The HTTP status for a CervrtError (see ERROR_STATUS)."""
    return next((status for kind, status in ERROR_STATUS if isinstance(exc, kind)), 400)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:500]


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error, "description": _ERRORS[code]} for code in codes}


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(CervrtError)
    async def cervrt_error(request: Request, exc: CervrtError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return JSONResponse({"detail": _one_line(f"{where}: {first.get('msg', 'invalid')}")}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        _LOG.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__} (see the server's log)"},
                            status_code=500)


_BEARER = HTTPBearer(auto_error=False, description="The token given to cervrt serve --token.")


def _check_token(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    """``Authorization: Bearer TOKEN`` must carry the service's token (when it has one)."""
    token = request.app.state.token
    given = credentials.credentials if credentials is not None else ""
    if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token: send Authorization: Bearer TOKEN",
                            headers={"WWW-Authenticate": "Bearer"})


async def _read_body(request: Any, limit: int) -> bytes:
    from fastapi import HTTPException

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is {int(declared)} bytes; this service takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is over {limit} bytes, the most this service takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _png(labels: Any) -> bytes:
    from cervrt._cv import cv2

    ok, encoded = cv2.imencode(".png", labels)
    if not ok:
        raise CervrtError("could not encode the labels as PNG")
    return encoded.tobytes()


_Stride = Annotated[int | None, Query(ge=1, le=100_000, description="Pixels between windows [a quarter of the patch].")]
_BlendQ = Annotated[Literal["gaussian", "mean"] | None, Query(description="Window blending [gaussian].")]
_Threshold = Annotated[float | None, Query(ge=0, le=1, allow_inf_nan=False,
                                           description="Windows with less tissue are not run [0.1].")]
_BatchSize = Annotated[int | None, Query(ge=1, le=256, description="Windows per engine call [the service's].")]
_Mpp = Annotated[float | None, Query(gt=0, le=100, allow_inf_nan=False,
                                     description="Microns per pixel of the image [the model's].")]
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SEGMENT_BODY = {"requestBody": {"required": True, "content": {
    kind: _BINARY for kind in ("image/png", "image/jpeg", "image/tiff")}}}
_SEGMENT_RESPONSES = {200: {"content": {"image/png": _BINARY, "application/json": {"schema": {"type": "object"}}},
                            "description": "The labels as a PNG (pixel = class index), or the report as JSON"},
                      **_responses(400, 401, 413, 415, 422, 503)}


def _routes(app: FastAPI, service: Service) -> None:
    secured = [Depends(_check_token)] if service.config.token else []
    limit = service.config.max_body_bytes

    @app.get("/healthz", summary="Liveness: the model is loaded and the service answers")
    def healthz() -> dict[str, Any]:
        return service.health()

    @app.get("/v1/model", dependencies=secured, responses=_responses(401),
             summary="The model's cervrt metadata and what runs it")
    def model() -> dict[str, Any]:
        return nan_to_none(service.model_info())

    @app.post("/v1/segment", dependencies=secured, summary="Segment one image sent as the body",
              responses=_SEGMENT_RESPONSES, openapi_extra=_SEGMENT_BODY)
    async def segment(request: Request, stride: _Stride = None, blend: _BlendQ = None,
                      tissue_threshold: _Threshold = None, batch_size: _BatchSize = None, mpp: _Mpp = None) -> Response:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith("image/"):
            raise HTTPException(415, f"the body must be an image file with Content-Type image/*, got {kind or 'none'}")
        data = await _read_body(request, limit)
        options = {"stride": stride, "blend": blend, "tissue_threshold": tissue_threshold,
                   "batch_size": batch_size, "mpp": mpp}
        labels, report = await run_in_threadpool(service.segment, data, options)
        png = await run_in_threadpool(_png, labels)
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse(nan_to_none({**report, "labels_png": base64.b64encode(png).decode()}))
        return Response(png, media_type="image/png")

    @app.post("/v1/slides", dependencies=secured, status_code=202, response_model=JobView,
              responses=_responses(400, 401, 422, 429), summary="Queue a slide on the server's disk")
    def slides(body: SlideRequest) -> dict[str, Any]:
        options = body.model_dump(exclude={"slide"})
        try:
            return service.submit(body.slide, options).snapshot()
        except (ValueError, OSError) as exc:  # e.g. a path with a NUL byte
            raise InputError(f"slide {body.slide!r} is not a path the server can read: {type(exc).__name__}") from None

    @app.get("/v1/jobs/{job_id}", dependencies=secured, response_model=JobView,
             responses=_responses(401, 404), summary="A slide job's status, progress, report and outputs")
    def job(job_id: str) -> dict[str, Any]:
        return nan_to_none(service.jobs.get(job_id).snapshot())

    @app.delete("/v1/jobs/{job_id}", dependencies=secured, response_model=JobView,
                responses=_responses(401, 404, 409), summary="Cancel a queued or running slide job")
    def cancel(job_id: str) -> dict[str, Any]:
        return nan_to_none(service.jobs.cancel(job_id).snapshot())


def create_app(service: Service) -> FastAPI:
    """The FastAPI application serving ``service`` (see the module docstring)."""
    from cervrt import __version__

    app = FastAPI(title="cervrt", version=__version__, docs_url=None, redoc_url=None,
                  description="Cervical precancer segmentation of H&E images with one loaded model.")
    app.state.token = service.config.token
    _install_errors(app)
    _routes(app, service)
    return app
