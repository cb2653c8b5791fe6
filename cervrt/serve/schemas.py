"""The request and response bodies of the HTTP API (pydantic models, part of the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Error", "JobView", "Progress", "SlideRequest"]


class Error(BaseModel):
    """Every error: one line saying what is wrong and what to do."""

    detail: str


class Progress(BaseModel):
    done: int
    total: int | None


class JobView(BaseModel):
    """A slide job: its status, progress, and once done its report and output paths."""

    id: str
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    slide: str
    options: dict[str, Any]
    progress: Progress
    report: dict[str, Any] | None
    outputs: dict[str, str] | None
    error: str | None
    created: float
    started: float | None
    finished: float | None


class SlideRequest(BaseModel):
    """A slide on the server's disk and the infer options (unset: the service's defaults)."""

    model_config = ConfigDict(extra="forbid")

    slide: str = Field(min_length=1, max_length=4096, description="A slide path the server can read.")
    stride: int | None = Field(None, ge=1, le=100_000, description="Pixels between windows [a quarter of the patch].")
    blend: Literal["gaussian", "mean"] | None = None
    tissue_threshold: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    batch_size: int | None = Field(None, ge=1, le=256)
    mpp: float | None = Field(None, gt=0, le=100, allow_inf_nan=False,
                              description="Microns per pixel of the slide [the file's].")
    format: Literal["png", "tiff"] | None = Field(None, description="Mask format [png].")
    geojson: bool = False
