"""TIFF details of the slide reader: resolution from the file's metadata, truncation check, level readers.

A tiled level of one chunky page (the usual whole-slide TIFF) is read by ``TiledLevel``: each tile a
read touches is decoded once and kept in a bounded LRU cache of decoded tiles (by default three tile
rows of the level), so the overlapping bands of a sliding window decode every tile once, and a tile
that fails to decode is named by its position. Other levels are read through tifffile's zarr store
(only the tiles or strips a read touches are decoded), except an uncompressed, contiguous, chunky
page: tifffile would decode a whole strip per read, and
such files often hold the whole image in one strip, so their rows are read straight from the file.
A compressed level stored in chunks of more than :data:`MAX_CHUNK_BYTES` (e.g. a whole image in one
deflate strip) is refused with the advice to save it tiled: every read would decode all of it.
"""

from __future__ import annotations

import collections
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._cv import cv2
from cervrt.errors import SlideError

__all__ = ["CACHE_TILE_ROWS", "MAX_CHUNK_BYTES", "TiledLevel", "check_complete", "level_reader", "tiff_mpp"]

#: Largest decoded tile or strip read through zarr.
MAX_CHUNK_BYTES = 256 << 20
#: Tile rows of a level the decoded-tile cache holds (a band of patch + stride rows spans at most
#: ceil((patch + stride) / tile) + 1 tile rows, and reads move down, so the rows above are done with).
CACHE_TILE_ROWS = 3


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
                raise SlideError(f"{path} is truncated: its image data runs past the end of the file")


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
                    raise SlideError(f"{self._file.name} is truncated: row {row} runs past the end of the file")
        return out

    def close(self) -> None:
        self._file.close()


class TiledLevel:
    """A tiled, chunky, single-page TIFF level read tile by tile; decoded tiles kept in an LRU cache of at
    most ``cache_bytes`` (thread-safe: file reads are serialised, decoding is not)."""

    def __init__(self, page: Any, path: Path, level: int, cache_bytes: int | None = None) -> None:
        samples = int(page.samplesperpixel)
        self.shape: tuple[int, ...] = (int(page.imagelength), int(page.imagewidth),
                                       *((samples,) if samples > 1 else ()))
        self.dtype = np.dtype(page.dtype)
        self._page, self._path, self._level = page, path, level
        self._th, self._tw = int(page.tilelength), int(page.tilewidth)
        self._cols = math.ceil(self.shape[1] / self._tw)
        tile_bytes = self._th * self._tw * samples * self.dtype.itemsize
        self.cache_bytes = cache_bytes if cache_bytes is not None else CACHE_TILE_ROWS * self._cols * tile_bytes
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cached = 0
        self._cache_lock = threading.Lock()
        self._file = open(path, "rb")
        self._file_lock = threading.Lock()
        self.decoded = 0  #: tiles decoded so far (each once while the cache holds it)

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded tiles held now (at most ``cache_bytes``, or one tile when that is larger)."""
        return self._cached

    @property
    def tile_height(self) -> int:
        return self._th

    def __getitem__(self, index: tuple[slice, slice]) -> np.ndarray:
        rows, cols = index
        y0, x0 = rows.start or 0, cols.start or 0
        y1, x1 = min(rows.stop, self.shape[0]), min(cols.stop, self.shape[1])  # clipped at the edges, as zarr does
        th, tw = self._th, self._tw
        out = np.empty((y1 - y0, x1 - x0, *self.shape[2:]), self.dtype)
        for r in range(y0 // th, (y1 - 1) // th + 1):
            for c in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._tile(r, c)
                a0, a1, b0, b1 = max(y0, r * th), min(y1, (r + 1) * th), max(x0, c * tw), min(x1, (c + 1) * tw)
                out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] = tile[a0 - r * th : a1 - r * th, b0 - c * tw : b1 - c * tw]
        return out

    def _tile(self, r: int, c: int) -> np.ndarray:
        key = r * self._cols + c
        with self._cache_lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
        tile = self.decode_tile(r, c)
        with self._cache_lock:
            if key not in self._cache:
                self._cache[key] = tile
                self._cached += tile.nbytes
            while self._cached > self.cache_bytes and len(self._cache) > 1:
                self._cached -= self._cache.popitem(last=False)[1].nbytes
        return tile

    def decode_tile(self, r: int, c: int) -> np.ndarray:
        """The tile at tile row ``r``, column ``c``, decoded from the file (not cached); a CervrtError naming
        its position when it does not decode."""
        index, page = r * self._cols + c, self._page
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        shape = (self._th, self._tw, *self.shape[2:])
        if count == 0:  # a sparse tile: never written, tifffile reads it as zeros
            return np.zeros(shape, self.dtype)
        with self._file_lock:
            self._file.seek(offset)
            data = self._file.read(count)
        try:
            if len(data) != count:
                raise ValueError(f"{count - len(data)} bytes missing")
            segment = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)[0]
            tile = np.asarray(segment).reshape(shape)
        except Exception as exc:
            what = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise SlideError(f"cannot decode {self._path}: the tile at level {self._level} tile row {r}, column {c} "
                              f"(pixels y {r * self._th}-{(r + 1) * self._th - 1}, x {c * self._tw}-"
                              f"{(c + 1) * self._tw - 1}) is corrupt ({what})") from exc
        self.decoded += 1
        return tile

    @property
    def reducible(self) -> bool:
        """Whether ``reduced`` can decode this level at 1/2, 1/4 or 1/8: baseline YCbCr JPEG tiles of 8-bit RGB."""
        page = self._page
        return (page.compression == 7 and page.photometric == 6 and self.dtype == np.uint8
                and self.shape[2:] == (3,))

    def reduced(self, y0: int, y1: int, factor: int) -> np.ndarray:
        """RGB uint8 rows [y0, y1) of the whole level width at 1/``factor`` (2, 4 or 8; y0 a multiple of it),
        decoded at that scale by the JPEG decoder (the DCT-domain scaling of libjpeg, several times faster
        than a full decode; each 8x8 block is reduced to its mean at 1/8). Not cached; for thumbnails."""
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
        th, tw, f = self._th, self._tw, factor
        y1 = min(y1, self.shape[0])
        out = np.empty((-(-(y1 - y0) // f), -(-self.shape[1] // f), 3), np.uint8)
        tables = self._page.jpegtables
        for r in range(y0 // th, (y1 - 1) // th + 1):
            for c in range(self._cols):
                tile = self._reduced_tile(r, c, flag, tables)
                a0, a1 = max(y0, r * th) - r * th, min(y1, (r + 1) * th) - r * th  # rows of the tile wanted
                rows = tile[a0 // f : -(-a1 // f)]
                top, left = (r * th + a0 - y0) // f, c * tw // f
                cols = min(rows.shape[1], out.shape[1] - left)
                out[top : top + rows.shape[0], left : left + cols] = rows[: out.shape[0] - top, :cols]
        return out

    def _reduced_tile(self, r: int, c: int, flag: int, tables: bytes | None) -> np.ndarray:
        index, page = r * self._cols + c, self._page
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        with self._file_lock:
            self._file.seek(offset)
            data = self._file.read(count)
        stream = tables[:-2] + data[2:] if tables and data[:2] == b"\xff\xd8" else data  # tables, then the tile
        tile = cv2.imdecode(np.frombuffer(stream, np.uint8), flag) if count and len(data) == count else None
        if tile is None or tile.ndim != 3:
            raise SlideError(f"cannot decode {self._path}: the tile at level {self._level} tile row {r}, column {c} "
                             f"(pixels y {r * self._th}-{(r + 1) * self._th - 1}, x {c * self._tw}-"
                             f"{(c + 1) * self._tw - 1}) is corrupt (its JPEG data does not decode)")
        return cv2.cvtColor(tile, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._file.close()
        with self._cache_lock:
            self._cache.clear()
            self._cached = 0


def _tiled_level(series: Any, level: int, path: Path) -> TiledLevel | None:
    """A TiledLevel for a single tiled chunky page whose series shape is (Y, X[, S]), else None."""
    pages = series.levels[level].pages
    if len(pages) != 1:
        return None
    page = series.levels[level].keyframe
    chunky = page.samplesperpixel == 1 or page.planarconfig == 1
    if not (page.is_tiled and chunky and getattr(page, "tiledepth", 1) == 1):
        return None
    reader = TiledLevel(page, path, level)
    if tuple(series.levels[level].shape) != reader.shape:
        reader.close()
        return None
    return reader


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
    page = series.levels[level].keyframe
    if len(series.levels[level].pages) == 1 and (raw := _raw_level(tif, page, path)) is not None:
        return raw
    if (tiled := _tiled_level(series, level, path)) is not None:
        return tiled
    chunk = int(np.prod(page.chunks)) * np.dtype(page.dtype).itemsize
    if chunk > MAX_CHUNK_BYTES:
        raise SlideError(f"{path} stores its image in {chunk / 2**20:.0f} MB compressed strips that every read "
                          "would decode whole: save it as a tiled TIFF (e.g. vips tiffsave --tile --pyramid)")
    import zarr  # only here: its import alone takes about 0.1 s

    return zarr.open_array(series.aszarr(level=level), mode="r")
