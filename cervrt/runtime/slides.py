"""Slide readers: any supported image, read at the model's processing resolution.

:func:`cervrt.runtime.readers.open_slide` picks a reader from its registry; the built-in ones claim
files by suffix:

- ``.png``, ``.jpg``, ``.jpeg``: OpenCV, read whole (such images fit in memory), also beyond OpenCV's
  default 2^30-pixel limit (see :mod:`cervrt._cv`). A PNG or JPEG carries no trustworthy resolution, so
  it is taken to be at the model's resolution unless ``mpp`` says otherwise (SPEC "Resolution").
- ``.tif``, ``.tiff``, ``.ome.tif``, ``.ome.tiff``: tifffile + zarr, tiled or stripped, pyramidal or
  not; only the tiles (or strips) a read touches are decoded. Resolution from OME ``PhysicalSizeX``,
  an Aperio description's ``MPP``, or the ``XResolution``/``ResolutionUnit`` (inch or centimetre) tags.
- ``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.bif``, ``.vms``, ``.vmu``, ``.svslide``: OpenSlide (the
  ``wsi`` extra), resolution from ``openslide.mpp-x``.

Resolution: the processing resolution is the model's ``target_mpp``. When the slide's mpp is known
(``mpp`` given by the user overrides the file's), the reader takes the pyramid level nearest to the
target at or below it (finer or equal) and resamples reads to the target: Gaussian anti-aliasing then
bilinear when shrinking, bilinear when enlarging, with exact sub-pixel registration so that
overlapping reads agree. A whole image is resized with ``cv2.INTER_AREA`` (shrinking) or
``cv2.INTER_LINEAR`` (enlarging). Without any mpp, level 0 is taken to be at the target. Resolutions
outside 0.01-100 um/px (e.g. the 72 dpi an image editor writes) are ignored as not microscopic.

Pixels are converted to RGB uint8: greyscale is repeated on the three channels, a palette is looked
up, 16-bit values are scaled to 8 bits (v * 255 / 65535, rounded), an alpha channel is composited on
white (glass), and TIFF ``MinIsWhite`` is inverted. Reads past the slide's edges are white (255).
"""

from __future__ import annotations

import abc
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from cervrt._cv import cv2
from cervrt._io import optional_import
from cervrt.errors import CervrtError, InputError, SlideError
from cervrt.imageio import read_rgb, to_rgb

__all__ = ["COMPOUND_SUFFIXES", "ImageSlide", "OpenSlideSlide", "Slide", "TiffSlide"]

_GLASS = 255
_MPP_RANGE = (0.01, 100.0)  # plausible microns per pixel of a microscope image
_TOLERANCE = 1e-3  # relative: a level within 0.1% of the target is at the target
_BLOCK = 2048  # output pixels per side resampled at once (OpenCV's warp is limited to 32767)
_BAND_BYTES = 64 << 20  # level bytes read at once when making a thumbnail
#: Threads that read and shrink a thumbnail's bands at once (decoders release the GIL).
THUMBNAIL_READERS = max(1, min(4, os.cpu_count() or 1))
_THUMBNAIL_ALIGN = 1024  # level rows a thumbnail band starts at a multiple of
_THUMBNAIL_MARGIN = 1.5  # a thumbnail read decoded at 1/f is still shrunk at least this much more
#: Suffixes of two parts (a slide named ``a.ome.tif`` is called ``a``).
COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif")


# --- pixels ------------------------------------------------------------------------------------


def _crop(image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """``image[y:y+h, x:x+w]`` with white where the window leaves the image."""
    out = np.full((h, w, 3), _GLASS, np.uint8)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, image.shape[0]), min(x + w, image.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out


def _thumb_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    f = min(1.0, max_side / max(width, height))
    return max(1, round(width * f)), max(1, round(height * f))


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None


def _nearly(a: float, b: float) -> bool:
    return abs(a - b) <= _TOLERANCE * b


# --- the protocol ------------------------------------------------------------------------------


class Slide(abc.ABC):
    """An image at the processing resolution; a context manager. See the module docstring.

    :meth:`read` and :meth:`thumbnail` may be called from several threads at once (tifffile serialises
    its file reads, OpenSlide is thread-safe, an in-memory image is only read); :meth:`close` may not.
    """

    def __init__(self, path: Path, *, width: int, height: int, mpp: float | None, native_mpp: float | None,
                 downsample: float, level0_size: tuple[int, int] | None = None) -> None:
        self.path = path
        #: (width, height) of the file's full resolution, the grid of every output's coordinates.
        self.level0_size = level0_size or (round(width * downsample), round(height * downsample))
        self.name = _stem(path)
        self.width = width
        self.height = height
        self.mpp = mpp
        self.native_mpp = native_mpp
        self.downsample = downsample

    @property
    def read_rows(self) -> int | None:
        """The rows reads are best aligned to (the tile height of the level read at the processing
        resolution): reads that share no such block decode no tile twice. None when there is none."""
        return None

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the window at (y, x), in processing-resolution pixels; white past the edges."""
        if h <= 0 or w <= 0:
            raise InputError(f"a slide read needs a positive size, got {h}x{w}")
        return self._read(int(y), int(x), int(h), int(w))

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide as RGB uint8, aspect kept, its longer side at most ``max_side`` pixels."""
        if max_side < 1:
            raise InputError(f"a thumbnail needs max_side >= 1, got {max_side}")
        return self._thumbnail(*_thumb_size(self.width, self.height, int(max_side)))

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file; reads after this fail."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height}, mpp={self.mpp})"

    @abc.abstractmethod
    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray: ...

    @abc.abstractmethod
    def _thumbnail(self, width: int, height: int) -> np.ndarray: ...


# --- PNG / JPEG --------------------------------------------------------------------------------


class ImageSlide(Slide):
    """A PNG or JPEG read whole through OpenCV and resized once to the processing resolution."""

    def __init__(self, path: Path, target_mpp: float, mpp: float | None) -> None:
        image = read_rgb(path)
        height, width = image.shape[:2]
        level0 = (width, height)
        downsample = 1.0 if mpp is None else target_mpp / mpp
        if not _nearly(downsample, 1.0):
            size = (max(1, round(width / downsample)), max(1, round(height / downsample)))
            shrink = cv2.INTER_AREA if downsample > 1 else cv2.INTER_LINEAR
            image = cv2.resize(image, size, interpolation=shrink)
            height, width = image.shape[:2]
        super().__init__(path, width=width, height=height, mpp=None if mpp is None else target_mpp,
                         native_mpp=mpp, downsample=downsample, level0_size=level0)
        self._image: np.ndarray | None = image

    def _pixels(self) -> np.ndarray:
        if self._image is None:
            raise InputError(f"{self.path} is closed")
        return self._image

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return _crop(self._pixels(), y, x, h, w)

    def _thumbnail(self, width: int, height: int) -> np.ndarray:
        return cv2.resize(self._pixels(), (width, height), interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        self._image = None


# --- pyramids (TIFF, OpenSlide) ----------------------------------------------------------------


def _warp_block(region: np.ndarray, scale: float, off_y: float, off_x: float, h: int, w: int) -> np.ndarray:
    """Output pixel (i, j) sampled at region coordinates (off_y + i * scale, off_x + j * scale)."""
    if scale > 1.0:
        region = cv2.GaussianBlur(region, (0, 0), (scale - 1.0) / 2.0)  # anti-aliasing before subsampling
    m = np.array([[scale, 0.0, off_x], [0.0, scale, off_y]])
    return cv2.warpAffine(region, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


class _PyramidSlide(Slide):
    """Shared resolution logic of the pyramid readers; subclasses read boxes inside one level."""

    def __init__(self, path: Path, target_mpp: float, mpp: float | None, *, sizes: list[tuple[int, int]],
                 downsamples: list[float], file_mpp: float | None) -> None:
        native = mpp if mpp is not None else _plausible(file_mpp)
        downsample = 1.0 if native is None else target_mpp / native
        self._sizes = sizes  # (width, height) per level
        self._downsamples = downsamples  # level-0 pixels per level pixel
        self._level = self._finest_coarse_enough(downsample)
        self._scale = downsample / downsamples[self._level]  # level pixels per processing pixel
        if _nearly(self._scale, 1.0):
            self._scale = 1.0
        w0, h0 = sizes[0]
        super().__init__(path, width=max(1, round(w0 / downsample)), height=max(1, round(h0 / downsample)),
                         mpp=None if native is None else target_mpp, native_mpp=native, downsample=downsample,
                         level0_size=(w0, h0))

    @property
    def level(self) -> int:
        """The pyramid level reads come from."""
        return self._level

    @property
    def read_rows(self) -> int | None:
        tile = self._tile_height(self._level) if self._scale == 1.0 else None
        return tile if tile and tile > 1 else None

    def _tile_height(self, level: int) -> int | None:
        """The tile height of ``level``, or None (not tiled, or not known)."""
        return None

    def _finest_coarse_enough(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (level 0 if none)."""
        fits = [k for k, d in enumerate(self._downsamples) if d <= downsample * (1 + _TOLERANCE)]
        return max(fits, key=lambda k: self._downsamples[k]) if fits else 0

    def _read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of a box in ``level`` pixels, white outside the level."""
        width, height = self._sizes[level]
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, height), min(x + w, width)
        inside = (y0, x0, y1, x1) == (y, x, y + h, x + w)
        out = None if inside else np.full((h, w, 3), _GLASS, np.uint8)  # inside: the box is the answer
        if y1 > y0 and x1 > x0:
            try:
                box = self._read_box(level, y0, x0, y1 - y0, x1 - x0)
            except CervrtError:
                raise
            except Exception as exc:
                raise SlideError(f"cannot read {self.path} at level {level}, rows {y0}-{y1}: "
                                  f"the file is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
            if out is None:
                return np.ascontiguousarray(box)
            out[y0 - y : y1 - y, x0 - x : x1 - x] = box
        return out

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self._scale == 1.0:
            return self._read_level(self._level, y, x, h, w)
        out = np.empty((h, w, 3), np.uint8)
        step = max(16, min(_BLOCK, int(30000 / max(self._scale, 1.0))))
        for i in range(0, h, step):
            for j in range(0, w, step):
                out[i : i + step, j : j + step] = self._resample(y + i, x + j, min(step, h - i), min(step, w - j))
        return out

    def _resample(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Processing pixel (y + i, x + j) is centred on level coordinate ((y + i + 0.5) * scale - 0.5, ...)."""
        s = self._scale
        margin = math.ceil(1.5 * max(s - 1.0, 0.0)) + 2  # the blur's reach, plus interpolation
        ly, lx = (y + 0.5) * s - 0.5, (x + 0.5) * s - 0.5
        r0, c0 = math.floor(ly) - margin, math.floor(lx) - margin
        region = self._read_level(self._level, r0, c0, math.ceil((h - 1) * s) + 2 * margin + 2,
                                  math.ceil((w - 1) * s) + 2 * margin + 2)
        return _warp_block(region, s, ly - r0, lx - c0, h, w)

    def _thumbnail(self, width: int, height: int) -> np.ndarray:
        level = self._finest_coarse_enough(self._sizes[0][0] / width)
        lw, lh = self._sizes[level]
        step = max(1, _BAND_BYTES // (3 * lw), -(-lh // height))  # level rows per band (>= one thumbnail row)
        step = min(step, -(-lh // THUMBNAIL_READERS))  # at least one band per reader thread
        # Bands start at multiples of _THUMBNAIL_ALIGN rows, so that bands read at once share no tile row
        # of the usual power-of-two tile heights, and the thumbnail does not depend on the file's tiling.
        step = max(_THUMBNAIL_ALIGN, step // _THUMBNAIL_ALIGN * _THUMBNAIL_ALIGN)
        edges = [*range(0, lh, step), lh]
        out = np.empty((height, width, 3), np.uint8)

        factor = max((f for f in (8, 4, 2) if f * _THUMBNAIL_MARGIN <= lw / width), default=1)

        def shrink(r0: int, r1: int) -> None:
            a, b = round(r0 * height / lh), round(r1 * height / lh)
            if b > a:
                rows = self._thumbnail_rows(level, r0, r1, factor)
                out[a:b] = cv2.resize(rows, (width, b - a), interpolation=cv2.INTER_AREA)

        pool = ThreadPoolExecutor(max(1, min(THUMBNAIL_READERS, len(edges) - 1)), "cervrt-thumbnail")
        try:
            for done in [pool.submit(shrink, r0, r1) for r0, r1 in itertools.pairwise(edges)]:
                done.result()  # the first band's error, if any
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, the bands not started are not read
        return out

    def _thumbnail_rows(self, level: int, r0: int, r1: int, factor: int) -> np.ndarray:
        """Rows [r0, r1) of ``level``, whole width, for a thumbnail: at 1/``factor`` where the reader can
        decode smaller for less (``factor`` is a power of two that leaves the thumbnail at least
        ``_THUMBNAIL_MARGIN`` times smaller still), else at full size."""
        return self._read_level(level, r0, 0, r1 - r0, self._sizes[level][0])

    @abc.abstractmethod
    def _read_box(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """RGB uint8 of a box that lies inside ``level``."""


class TiffSlide(_PyramidSlide):
    """A TIFF or OME-TIFF (tiled or stripped, pyramidal or not) read tile by tile through tifffile + zarr."""

    def __init__(self, path: Path, target_mpp: float, mpp: float | None) -> None:
        import tifffile  # a core dependency, imported when a TIFF is opened

        from cervrt.runtime._tiff import check_complete, level_reader, tiff_mpp

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            self._planar = self._check_axes(series.axes, path)
            check_complete(series, path)
            file_mpp = tiff_mpp(self._tif)
            self._levels = [level_reader(self._tif, series, k, path) for k in range(len(series.levels))]
        except CervrtError:
            self._close_file()
            raise
        except Exception as exc:
            self._close_file()
            raise SlideError(f"cannot read {path}: it is not a readable TIFF ({type(exc).__name__}: {exc})") from exc
        keyframe = series.keyframe
        self._photometric = int(keyframe.photometric)
        self._colormap = keyframe.colormap
        axes = (1, 2) if self._planar else (0, 1)
        sizes = [(int(z.shape[axes[1]]), int(z.shape[axes[0]])) for z in self._levels]
        super().__init__(path, target_mpp, mpp, sizes=sizes, downsamples=[sizes[0][0] / w for w, _ in sizes],
                         file_mpp=file_mpp)

    def _tile_height(self, level: int) -> int | None:
        reader = self._levels[level] if level < len(self._levels) else None
        return getattr(reader, "tile_height", None)

    def _thumbnail_rows(self, level: int, r0: int, r1: int, factor: int) -> np.ndarray:
        reader = self._levels[level]
        if factor > 1 and getattr(reader, "reducible", False) and not self._planar:
            return reader.reduced(r0, r1, factor)  # JPEG tiles decoded at 1/factor by libjpeg
        return super()._thumbnail_rows(level, r0, r1, factor)

    @staticmethod
    def _check_axes(axes: str, path: Path) -> bool:
        """True for planar (channels first) data; refuses anything but one 2-D image."""
        if axes in ("YX", "YXS", "YXC"):
            return False
        if axes in ("SYX", "CYX"):
            return True
        raise SlideError(f"{path} holds an image with axes {axes}: expected one 2-D greyscale or RGB image")

    def _read_box(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        z = self._levels[level]
        data = z[:, y : y + h, x : x + w].transpose(1, 2, 0) if self._planar else z[y : y + h, x : x + w]
        if self._photometric == 3 and self._colormap is not None:  # palette
            lut = np.rint(np.asarray(self._colormap, np.float64).T * (255 / 65535)).astype(np.uint8)
            data = lut[data]
        elif self._photometric == 0:  # MinIsWhite
            data = np.iinfo(data.dtype).max - data if data.dtype.kind == "u" else ~data
        return to_rgb(data, self.path)

    def _close_file(self) -> None:
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None

    def close(self) -> None:
        for z in self._levels:
            getattr(z, "close", lambda: None)()
        self._levels = []
        self._close_file()


# --- OpenSlide ---------------------------------------------------------------------------------


class OpenSlideSlide(_PyramidSlide):
    """A vendor whole-slide image (SVS, NDPI, MRXS, ...) read through OpenSlide (the ``wsi`` extra)."""

    def __init__(self, path: Path, target_mpp: float, mpp: float | None) -> None:
        openslide = optional_import("openslide", "wsi")
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"cannot read {path}: OpenSlide does not recognise it (corrupt or not a slide)") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"cannot read {path}: it is corrupt or truncated ({exc})") from exc
        file_mpp = self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        super().__init__(path, target_mpp, mpp, sizes=[tuple(map(int, s)) for s in self._osr.level_dimensions],
                         downsamples=[float(d) for d in self._osr.level_downsamples],
                         file_mpp=None if file_mpp is None else float(file_mpp))

    def _tile_height(self, level: int) -> int | None:
        value = self._osr.properties.get(f"openslide.level[{level}].tile-height") if self._osr is not None else None
        return int(value) if value and str(value).isdigit() else None

    def _read_box(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self._osr is None:
            raise InputError(f"{self.path} is closed")
        d = self._downsamples[level]
        rgba = np.asarray(self._osr.read_region((round(x * d), round(y * d)), level, (w, h)))
        return to_rgb(rgba, self.path)

    def close(self) -> None:
        if getattr(self, "_osr", None) is not None:
            self._osr.close()
            self._osr = None


def _stem(path: Path) -> str:
    name = path.name.lower()
    suffix = next((s for s in COMPOUND_SUFFIXES if name.endswith(s)), "")
    return path.name[: -len(suffix)] if suffix and len(path.name) > len(suffix) else path.stem
