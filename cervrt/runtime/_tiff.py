"""TIFF details of the slide reader: resolution from the file's metadata, truncation check, level readers.

A level is read through tifffile's zarr store (only the tiles or strips a read touches are decoded),
except an uncompressed, contiguous, chunky page: tifffile would decode a whole strip per read, and
such files often hold the whole image in one strip, so their rows are read straight from the file.
A compressed level stored in chunks of more than :data:`MAX_CHUNK_BYTES` (e.g. a whole image in one
deflate strip) is refused with the advice to save it tiled: every read would decode all of it.
"""

from __future__ import annotations

import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.errors import CervrtError

__all__ = ["MAX_CHUNK_BYTES", "check_complete", "level_reader", "tiff_mpp"]

#: Largest decoded tile or strip read through zarr.
MAX_CHUNK_BYTES = 256 << 20


def _ome_mpp(xml: str) -> float | None:
    units = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and element.get("PhysicalSizeX"):
            factor = units.get(element.get("PhysicalSizeXUnit", "µm"))
            return None if factor is None else float(element.get("PhysicalSizeX")) * factor
    return None


def _tag_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    microns = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value))  # inch, centimetre
    return None if microns is None or num <= 0 else microns * den / num


def tiff_mpp(tif: Any) -> float | None:
    page = tif.series[0].levels[0].keyframe
    if tif.is_ome and (mpp := _ome_mpp(tif.ome_metadata or "")):
        return mpp
    match = re.search(r"\bMPP\s*=\s*([0-9.]+)", page.description or "")
    if tif.is_svs and match:
        return float(match.group(1))
    return _tag_mpp(page)


def check_complete(series: Any, path: Path) -> None:
    size = os.path.getsize(path)
    for level in series.levels:
        for page in level.pages:
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True) if c]
            if ends and max(ends) > size:
                raise CervrtError(f"{path} is truncated: its image data runs past the end of the file")


class RawLevel:
    """Rows of an uncompressed, contiguous, chunky TIFF page, read from the file (thread-safe)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.shape = shape  # (height, width) or (height, width, samples)
        self._offset = offset
        self._dtype = dtype
        self._pixel = dtype.itemsize * (shape[2] if len(shape) == 3 else 1)
        self._file = open(path, "rb")
        self._lock = threading.Lock()

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, *self.shape[2:]), self._dtype)
        row_bytes = self.shape[1] * self._pixel
        with self._lock:
            for i, row in enumerate(range(rows.start, rows.stop)):
                self._file.seek(self._offset + row * row_bytes + cols.start * self._pixel)
                if self._file.readinto(memoryview(out[i]).cast("B")) != out[i].nbytes:
                    raise CervrtError(f"{self._file.name} is truncated: row {row} runs past the end of the file")
        return out

    def close(self) -> None:
        self._file.close()


def _raw_level(tif: Any, page: Any, path: Path) -> RawLevel | None:
    """A RawLevel for an uncompressed contiguous chunky page of 8/16-bit samples, else None."""
    plain = page.compression == 1 and page.predictor == 1 and page.fillorder == 1 and not page.is_tiled
    if not (plain and page.is_contiguous and page.bitspersample in (8, 16) and page.sampleformat == 1):
        return None
    if page.samplesperpixel > 1 and page.planarconfig != 1:
        return None
    shape = tuple(page.shaped[-3:]) if page.samplesperpixel > 1 else tuple(page.shaped[-3:-1])
    return RawLevel(path, page.dataoffsets[0], shape, np.dtype(page.dtype).newbyteorder(tif.byteorder))


def level_reader(tif: Any, series: Any, level: int, path: Path) -> Any:
    """An array-like of pyramid ``level`` of ``series`` that reads only what a slice asks for."""
    import zarr

    page = series.levels[level].keyframe
    if len(series.levels[level].pages) == 1 and (raw := _raw_level(tif, page, path)) is not None:
        return raw
    chunk = int(np.prod(page.chunks)) * np.dtype(page.dtype).itemsize
    if chunk > MAX_CHUNK_BYTES:
        raise CervrtError(f"{path} stores its image in {chunk / 2**20:.0f} MB compressed strips that every read "
                          "would decode whole: save it as a tiled TIFF (e.g. vips tiffsave --tile --pyramid)")
    return zarr.open_array(series.aszarr(level=level), mode="r")
