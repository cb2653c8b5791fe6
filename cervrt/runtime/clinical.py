"""The clinical outputs as mask formats of the output registry, and the provenance a slide report carries.

``dicom-seg`` (a ``NAME.seg/`` folder of DICOM SEG instances, :mod:`cervrt.runtime.dicom_seg`) and
``ome-zarr`` (``NAME.ome.zarr/``, :mod:`cervrt.runtime.ome_zarr`) are registered in
:mod:`cervrt.runtime.outputs` with the factories below; their modules (and highdicom, ome-zarr) are
imported only when such a mask is written. Besides the mask's size and mpp they take a
:class:`SinkContext`: the model's class names and palette, the slide (its
downsample, level-0 size and, for a DICOM slide, the datasets a SEG references) and the model's
provenance. :func:`geojson_sink` is the streamed GeoJSON of a slide run.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt import __version__

__all__ = ["SinkContext", "dicom_seg_paths", "dicom_seg_sink", "file_sha256", "geojson_sink", "ome_zarr_paths",
           "ome_zarr_sink", "provenance"]


@dataclass(frozen=True)
class SinkContext:
    """What a mask format may need beyond the mask's size and mpp: the model's class names and palette,
    the open slide (``downsample``, ``level0_size``, ``source_datasets`` for DICOM) and the provenance."""

    class_names: Sequence[str]
    palette: Sequence[Sequence[int]]
    slide: Any = None
    model: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, computed once per (path, size, modification time)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def provenance(engine: Any) -> dict[str, Any]:
    """Model file (absolute), its sha256, architecture, engine kind and cervrt version."""
    path = getattr(engine, "path", None)
    exists = path is not None and Path(path).is_file()
    return {
        "path": str(Path(path).resolve()) if exists else None,
        "sha256": file_sha256(path) if exists else None,
        "arch": getattr(engine, "metadata", {}).get("arch"),
        "engine": getattr(engine, "kind", None),
        "cervrt_version": __version__,
    }


def _level0_size(slide: Any) -> tuple[int, int] | None:
    size = getattr(slide, "level0_size", None)
    return None if size is None else (int(size[0]), int(size[1]))


def dicom_seg_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"mask": Path(out_dir) / f"{name}.seg"}


def ome_zarr_paths(out_dir: Path, name: str) -> dict[str, Path]:
    return {"mask": Path(out_dir) / f"{name}.ome.zarr"}


def dicom_seg_sink(path: Path, height: int, width: int, mpp: float | None, context: Any) -> Any:
    """A DICOM SEG writer for a slide run's mask (references the slide's series when it is DICOM)."""
    from cervrt.runtime.dicom_seg import DicomSegWriter

    slide, model = context.slide, context.model or {}
    return DicomSegWriter(path, height, width, context.class_names, context.palette,
                          downsample=getattr(slide, "downsample", 1.0), mpp=mpp, level0_size=_level0_size(slide),
                          source_datasets=getattr(slide, "source_datasets", None),
                          model_arch=model.get("arch") or "unknown", model_sha256=model.get("sha256"))


def ome_zarr_sink(path: Path, height: int, width: int, mpp: float | None, context: Any) -> Any:
    """An OME-Zarr label image writer for a slide run's mask."""
    from cervrt.runtime.ome_zarr import OmeZarrWriter

    slide = context.slide
    attributes = {"slide": str(getattr(slide, "path", "")), "model": context.model or {}}
    return OmeZarrWriter(path, height, width, context.class_names, context.palette, mpp=mpp,
                         downsample=getattr(slide, "downsample", 1.0), attributes=attributes)


def geojson_sink(path: Path, height: int, width: int, context: Any, simplify: float | None = None) -> Any:
    """The streamed GeoJSON of a slide run: polygons of the full mask in level-0 pixels."""
    from cervrt.runtime.geojson import GeoJsonWriter

    slide = context.slide
    return GeoJsonWriter(path, height, width, context.class_names, context.palette,
                         downsample=getattr(slide, "downsample", 1.0), mpp=getattr(slide, "mpp", None),
                         simplify=simplify)
