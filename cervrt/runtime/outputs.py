"""What a slide run writes: the label mask, a label thumbnail and the overlay JPEG (GeoJSON: runtime/geojson.py).

Every file is written atomically (a temporary name beside the target, renamed when complete; removed
on an error or Ctrl-C), so a failed run never leaves half a file.

The mask (uint8, 0 background .. 4 CIN 3, at the processing resolution) arrives as row chunks from the
stitcher. As PNG it is held in memory (height x width bytes) and refused over 2^30 pixels. As TIFF it
is a tiled (256 x 256, deflate) pyramid written in bounded memory as the rows arrive: level 0 strip by
strip on a thread of its own, each reduced level (2x, 4x, ... until it fits in one tile, subsampled
nearest-neighbour: labels must not be averaged) compressed tile by tile into a temporary file beside
the target; the levels are top-level reduced-resolution pages (OpenSlide's "generic tiled TIFF").

Mask formats are registered: ``register_output(name, sink, suffix=..., paths=...)`` adds one (a
``MaskSink`` subclass, and the path(s) it writes); ``output_formats()`` is what ``cervrt infer
--format`` offers, ``output_format(name, height, width)`` what a slide run writes.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import queue
import tempfile
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cervrt._cv import cv2
from cervrt._io import atomic_path
from cervrt.errors import CervrtError
from cervrt.runtime import clinical

__all__ = [
    "PNG_MAX_PIXELS",
    "LabelThumbnail",
    "MaskFormat",
    "MaskSink",
    "MaskWriter",
    "OutputFormat",
    "output_format",
    "output_formats",
    "register_output",
    "write_overlay",
]

#: Largest mask written as PNG (it is held in memory); larger masks need the TIFF format.
PNG_MAX_PIXELS = 1 << 30
_TILE = 256
_JPEG_QUALITY = 90


# --- mask sinks --------------------------------------------------------------------------------


class MaskSink(abc.ABC):
    """Receives the rows of a mask in order and writes the file when they are all there."""

    def __init__(self, path: Path, height: int, width: int, mpp: float | None) -> None:
        self.path, self.height, self.width, self.mpp = path, height, width, mpp

    @abc.abstractmethod
    def write(self, first_row: int, labels: np.ndarray) -> None: ...

    @abc.abstractmethod
    def finish(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop whatever was buffered."""


class _PngSink(MaskSink):
    def __init__(self, path: Path, height: int, width: int, mpp: float | None) -> None:
        if height * width > PNG_MAX_PIXELS:
            raise CervrtError(f"a {height} x {width} mask is over 2^30 pixels, too large for PNG: use the tiff format")
        super().__init__(path, height, width, mpp)
        self._mask: np.ndarray | None = np.zeros((height, width), np.uint8)

    def write(self, first_row: int, labels: np.ndarray) -> None:
        self._mask[first_row : first_row + labels.shape[0]] = labels

    def finish(self) -> None:
        with atomic_path(self.path) as tmp:
            if not cv2.imwrite(str(tmp), self._mask):
                raise CervrtError(f"OpenCV could not write {self.path}")
        self._mask = None

    def abort(self) -> None:
        self._mask = None


class _Aborted(Exception):
    """Stops the tile thread of an aborted TIFF mask."""


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _level_factors(height: int, width: int) -> list[int]:
    """Subsampling factors of the reduced levels: 2, 4, ... until a level fits in one tile."""
    factors, f = [], 2
    while max(height, width) > _TILE * (f // 2):
        factors.append(f)
        f *= 2
    return factors


class _ReducedLevel:
    """One reduced level (every ``f``-th row and column) built as rows arrive: its 256-row strips are cut
    into tiles, zlib-compressed and appended to ``spill`` (a temporary file), whose (offset, size) are kept."""

    def __init__(self, f: int, height: int, width: int, spill: BinaryIO) -> None:
        self.f, self.shape, self._spill = f, (-(-height // f), -(-width // f)), spill
        self._strip = np.zeros((_TILE, self.shape[1]), np.uint8)
        self._held = self._rows = 0
        self.tiles: list[tuple[int, int]] = []

    def add(self, first_row: int, labels: np.ndarray) -> None:
        rows = labels[(-first_row) % self.f :: self.f, :: self.f]  # the level-0 rows at multiples of f
        done = 0
        while done < rows.shape[0]:
            take = min(rows.shape[0] - done, _TILE - self._held)
            self._strip[self._held : self._held + take] = rows[done : done + take]
            self._held, self._rows, done = self._held + take, self._rows + take, done + take
            if self._held == _TILE or self._rows == self.shape[0]:
                self._flush()

    def _flush(self) -> None:
        self._strip[self._held :] = 0  # edge tiles are stored whole
        for c in range(0, self.shape[1], _TILE):
            tile = np.zeros((_TILE, _TILE), np.uint8)
            part = self._strip[:, c : c + _TILE]
            tile[:, : part.shape[1]] = part
            data = zlib.compress(tile.data, 6)
            self.tiles.append((self._spill.tell(), len(data)))
            self._spill.write(data)
        self._held = 0

    def encoded(self) -> Iterator[bytes]:
        for offset, size in self.tiles:
            self._spill.seek(offset)
            yield self._spill.read(size)


class _TiffSink(MaskSink):
    """Written as the rows arrive (see the module docstring): when the last rows come, what is left is
    copying the reduced levels' compressed tiles (a few MB for a slide's labels) into the file."""

    def __init__(self, path: Path, height: int, width: int, mpp: float | None) -> None:
        import tifffile

        super().__init__(path, height, width, mpp)
        try:
            fd, spill = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tiles", dir=path.parent)
        except OSError as exc:
            raise CervrtError(f"cannot write to {path.parent}: {exc.strerror}") from exc
        self._spill: BinaryIO = os.fdopen(fd, "w+b")
        self._cleanup = weakref.finalize(self, _remove, spill)  # also on garbage collection
        self._reduced = [_ReducedLevel(f, height, width, self._spill) for f in _level_factors(height, width)]
        self._options = {"dtype": np.uint8, "tile": (_TILE, _TILE), "compression": "zlib",
                         "photometric": "minisblack", "metadata": None}
        if self.mpp:
            self._options |= {"resolution": (1e4 / self.mpp, 1e4 / self.mpp), "resolutionunit": "CENTIMETER"}
        self._file = contextlib.ExitStack()  # the temporary TIFF, renamed into place by finish
        tmp = self._file.enter_context(atomic_path(self.path))
        self._tif = self._file.enter_context(tifffile.TiffWriter(tmp, bigtiff=height * width >= 1 << 31))
        self._strip = np.empty((min(_TILE, height), width), np.uint8)
        self._held = 0  # rows of the strip being filled
        self._strips: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._level0 = threading.Thread(target=self._write_level0, name="cervrt-mask-tiles", daemon=True)
        self._level0.start()

    def write(self, first_row: int, labels: np.ndarray) -> None:
        try:
            for level in self._reduced:
                level.add(first_row, labels)
        except OSError as exc:
            raise CervrtError(f"cannot write the mask tiles beside {self.path}: {exc.strerror}") from exc
        done = 0
        while done < labels.shape[0]:
            take = min(labels.shape[0] - done, self._strip.shape[0] - self._held)
            self._strip[self._held : self._held + take] = labels[done : done + take]
            self._held, done = self._held + take, done + take
            if self._held == self._strip.shape[0] or first_row + done == self.height:
                self._put(self._strip[: self._held].copy())
                self._held = 0

    def _put(self, item: np.ndarray | None) -> None:
        while self._level0.is_alive():
            try:
                self._strips.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        self._raise_level0_error()

    def _raise_level0_error(self) -> None:
        if self._error is not None:
            raise CervrtError(f"cannot write the mask {self.path}: {self._error}") from self._error

    def _write_level0(self) -> None:
        try:
            self._tif.write(self._level0_tiles(), shape=(self.height, self.width), **self._options)
        except BaseException as exc:  # handed to the writing thread (or dropped by abort)
            self._error = exc

    def _level0_tiles(self) -> Iterator[np.ndarray]:
        """Level 0's tiles, row by row, strip by strip as ``write`` hands them over (None: aborted)."""
        for _ in range(0, self.height, _TILE):
            strip = self._strips.get()
            if strip is None:
                raise _Aborted
            for c in range(0, self.width, _TILE):
                yield np.ascontiguousarray(strip[:, c : c + _TILE])

    def finish(self) -> None:
        try:
            self._level0.join()
            self._raise_level0_error()
            options = dict(self._options)
            for level in self._reduced:
                if self.mpp:
                    options["resolution"] = (1e4 / (self.mpp * level.f), 1e4 / (self.mpp * level.f))
                self._tif.write(level.encoded(), shape=level.shape, subfiletype=1, **options)
            self._file.close()  # closes the TIFF and renames it into place
        except BaseException:
            self.abort()
            raise
        self.abort()

    def abort(self) -> None:
        while self._level0.is_alive():  # tell the tile thread to stop, making room in its queue if need be
            try:
                self._strips.put_nowait(None)
                self._level0.join()
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._strips.get_nowait()
        with contextlib.suppress(_Aborted, Exception):
            self._file.__exit__(_Aborted, _Aborted(), None)  # the temporary TIFF is removed
        self._spill.close()
        self._cleanup()


# --- the output registry -----------------------------------------------------------------------

#: ``sink(path, height, width, mpp)``: receives the rows (``write(first_row, labels)``), then ``finish()``
#: or ``abort()``; see ``MaskSink``.
SinkFactory = Callable[[Path, int, int, "float | None"], MaskSink]


@dataclass(frozen=True)
class OutputFormat:
    """A registered mask format: its name, its sink, the path(s) it writes and its size limit.

    ``value`` is the name (``"png"``), ``suffix`` what follows ``NAME.mask`` (``".png"``); a format
    written as several files or a folder passes ``paths(out_dir, name) -> {"mask": ..., ...}``. A mask
    over ``max_pixels`` is written as ``fallback`` instead.
    """

    value: str
    sink: SinkFactory
    suffix: str
    max_pixels: int | None = None
    fallback: str | None = None
    layout: Callable[[Path, str], dict[str, Path]] | None = None
    context: bool = False  # the sink also takes a clinical.SinkContext (class names, palette, slide, model)

    def paths(self, out_dir: Path, name: str) -> dict[str, Path]:
        """The files (or folders) the format writes for slide ``name`` in ``out_dir``; ``"mask"`` first."""
        if self.layout is not None:
            return self.layout(Path(out_dir), name)
        return {"mask": Path(out_dir) / f"{name}.mask{self.suffix}"}

    def __str__(self) -> str:
        return self.value


_OUTPUTS: dict[str, OutputFormat] = {}


def register_output(name: str, sink: SinkFactory, *, suffix: str | None = None, max_pixels: int | None = None,
                    fallback: str | None = None,
                    paths: Callable[[Path, str], dict[str, Path]] | None = None,
                    context: bool = False) -> OutputFormat:
    """Make ``name`` a mask format (``--format NAME``): ``sink(path, height, width, mpp)`` writes it.

    ``suffix`` defaults to ``"." + name``; ``paths(out_dir, name)`` replaces the single
    ``NAME.mask.SUFFIX`` path; a mask over ``max_pixels`` is written as the ``fallback`` format.
    """
    if not isinstance(name, str) or not name.replace("-", "_").isidentifier() or not callable(sink):
        raise CervrtError(f"an output format needs a short name (letters, digits, _, -) and a sink, got {name!r}")
    spec = OutputFormat(name, sink, f".{name}" if suffix is None else suffix, max_pixels, fallback, paths, context)
    _OUTPUTS[name] = spec
    return spec


def output_formats() -> tuple[str, ...]:
    """The registered mask formats' names, the default (``png``) first."""
    return tuple(_OUTPUTS)


def _mask_format(fmt: str | OutputFormat) -> OutputFormat:
    spec = _OUTPUTS.get(fmt.value if isinstance(fmt, OutputFormat) else fmt)  # type: ignore[arg-type]
    if spec is None:
        raise CervrtError(f"unknown mask format {fmt!r}: choose one of {', '.join(_OUTPUTS)}")
    return spec


def output_format(requested: str | OutputFormat, height: int, width: int) -> OutputFormat:
    """The format a ``height`` x ``width`` mask is written in: ``requested``, or its fallback when too large."""
    spec = _mask_format(requested)
    if spec.max_pixels is not None and height * width > spec.max_pixels and spec.fallback:
        return _mask_format(spec.fallback)
    return spec


class MaskFormat:
    """The built-in mask formats, for code that names one: ``MaskFormat.PNG``, ``MaskFormat.TIFF``.

    ``MaskFormat("tiff")`` looks any registered format up by name (CervrtError listing them if unknown).
    """

    def __new__(cls, name: str | OutputFormat) -> OutputFormat:  # type: ignore[misc]
        return _mask_format(name)

    PNG = register_output("png", _PngSink, max_pixels=PNG_MAX_PIXELS, fallback="tiff")
    TIFF = register_output("tiff", _TiffSink)
    DICOM_SEG = register_output("dicom-seg", clinical.dicom_seg_sink, paths=clinical.dicom_seg_paths, context=True)
    OME_ZARR = register_output("ome-zarr", clinical.ome_zarr_sink, paths=clinical.ome_zarr_paths, context=True)



class MaskWriter:
    """Streams a uint8 label mask to ``path`` in a registered format (PNG, tiled TIFF, ...); a context manager.

    Chunks arrive in row order and cover every row once; :meth:`close` writes (TIFF: finishes) the
    file and renames it into place. Leaving the ``with`` block by an exception, or :meth:`abort`,
    leaves no file. ``mpp`` (microns per pixel), when known, goes into the TIFF resolution tags.
    """

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, fmt: str | OutputFormat = "png",
                 mpp: float | None = None, context: clinical.SinkContext | None = None) -> None:
        self.path = Path(path)
        self.format = _mask_format(fmt)
        if height < 1 or width < 1:
            raise CervrtError(f"a mask needs a positive size, got {height} x {width}")
        if not self.path.parent.is_dir():
            raise CervrtError(f"output directory {self.path.parent} does not exist")
        self.height, self.width = int(height), int(width)
        if self.format.context and context is None:
            raise CervrtError(f"the {self.format.value} format needs the slide and model (a SinkContext)")
        extra = (context,) if self.format.context else ()
        self._sink: MaskSink | None = self.format.sink(self.path, self.height, self.width, mpp, *extra)
        self._next_row = 0

    def write(self, first_row: int, labels: np.ndarray) -> None:
        """Append rows ``first_row .. first_row + len(labels) - 1`` (uint8, width columns)."""
        if self._sink is None:
            raise CervrtError(f"the mask writer of {self.path} is closed")
        if labels.dtype != np.uint8 or labels.ndim != 2 or labels.shape[1] != self.width:
            raise CervrtError(f"mask rows must be uint8 (n, {self.width}), got {labels.dtype} {labels.shape}")
        if first_row != self._next_row:
            raise CervrtError(f"mask rows must arrive in order: expected row {self._next_row}, got {first_row}")
        if first_row + labels.shape[0] > self.height:
            raise CervrtError(f"mask rows run past the mask's {self.height} rows")
        self._sink.write(first_row, labels)
        self._next_row += labels.shape[0]

    def close(self) -> None:
        """Write the file and rename it into place; refuses (and removes) an incomplete mask."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        if self._next_row != self.height:
            sink.abort()
            raise CervrtError(f"the mask {self.path} is incomplete: {self._next_row} of {self.height} rows written")
        sink.finish()

    def abort(self) -> None:
        """Drop everything written so far; no file is left."""
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.abort()

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- label thumbnail ---------------------------------------------------------------------------


class LabelThumbnail:
    """A nearest-neighbour subsample of streamed labels: every ``step``-th row and column.

    ``step`` is the smallest integer that brings the longer side to at most ``max_side``; label pixel
    (i, j) is mask pixel (i * step, j * step).
    """

    def __init__(self, height: int, width: int, max_side: int) -> None:
        if height < 1 or width < 1 or max_side < 1:
            raise CervrtError(f"a label thumbnail needs positive sizes, got {height} x {width}, max_side {max_side}")
        self.step = max(1, math.ceil(max(height, width) / max_side))
        self.labels = np.zeros((-(-height // self.step), -(-width // self.step)), np.uint8)

    def write(self, first_row: int, labels: np.ndarray) -> None:
        """Keep the rows of the chunk (starting at mask row ``first_row``) that fall on the grid."""
        start = -(-first_row // self.step) * self.step  # first grid row at or after first_row
        rows = labels[start - first_row :: self.step, :: self.step]
        self.labels[start // self.step : start // self.step + rows.shape[0]] = rows


# --- overlay -----------------------------------------------------------------------------------


def _check_palette(palette: Sequence[Sequence[int]], class_names: Sequence[str], labels: np.ndarray) -> np.ndarray:
    colours = np.asarray(palette, np.uint8).reshape(-1, 3)
    if len(colours) != len(class_names):
        raise CervrtError(f"the palette has {len(colours)} colours for {len(class_names)} class names")
    if labels.size and int(labels.max()) >= len(colours):
        raise CervrtError(f"labels go up to {int(labels.max())} but there are only {len(colours)} classes")
    return colours


def _outline(colour: np.ndarray) -> tuple[int, int, int]:
    """A region's outline: its colour, or dark grey for a colour too light to see on H&E (white, normal)."""
    light = float(np.dot(colour, (0.299, 0.587, 0.114))) > 200
    return (90, 90, 90) if light else (int(colour[0]), int(colour[1]), int(colour[2]))


def _legend(width: int, colours: np.ndarray, class_names: Sequence[str], present: set[int]) -> np.ndarray:
    """A white strip (RGB) with a colour box and the name of each foreground class."""
    scale = max(0.45, min(1.4, width / 1400))
    box, pad = round(22 * scale), round(12 * scale)
    thick = max(1, round(1.6 * scale))
    entries = [(k, name if k in present else f"{name} (none)") for k, name in enumerate(class_names) if k > 0]
    widths = [box + pad // 2 + cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, thick)[0][0] + 2 * pad
              for _, t in entries]
    rows, x, row = [[]], pad, 0
    for (k, text), w in zip(entries, widths, strict=True):
        if x + w > width and rows[-1]:
            rows.append([])
            x, row = pad, row + 1
        rows[-1].append((k, text, x))
        x += w
    strip = np.full(((box + pad) * len(rows) + pad, width, 3), 255, np.uint8)
    for r, entries_in_row in enumerate(rows):
        y = pad + r * (box + pad)
        for k, text, x0 in entries_in_row:
            cv2.rectangle(strip, (x0, y), (x0 + box, y + box), tuple(int(c) for c in colours[k]), -1)
            cv2.rectangle(strip, (x0, y), (x0 + box, y + box), (60, 60, 60), thick)
            ink = (30, 30, 30) if k in present else (150, 150, 150)
            cv2.putText(strip, text, (x0 + box + pad // 2, y + box - round(4 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.8 * scale, ink, thick, cv2.LINE_AA)
    return strip


def write_overlay(path: str | os.PathLike[str], thumbnail_rgb: np.ndarray, labels_small: np.ndarray,
                  palette: Sequence[Sequence[int]], class_names: Sequence[str], alpha: float = 0.45) -> None:
    """JPEG of the class colours blended over the slide thumbnail (background left as the slide), each
    region outlined in its colour (dark grey for white), with a legend strip beneath."""
    if thumbnail_rgb.dtype != np.uint8 or thumbnail_rgb.ndim != 3 or thumbnail_rgb.shape[2] != 3:
        raise CervrtError(f"the overlay needs an RGB uint8 thumbnail, got {thumbnail_rgb.dtype} {thumbnail_rgb.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise CervrtError(f"the overlay alpha must be within 0..1, got {alpha}")
    colours = _check_palette(palette, class_names, labels_small)
    h, w = thumbnail_rgb.shape[:2]
    labels = cv2.resize(labels_small, (w, h), interpolation=cv2.INTER_NEAREST)
    out = thumbnail_rgb.copy()
    present = {int(k) for k in np.unique(labels) if k > 0}
    values = np.arange(256, dtype=np.float64)[:, None]
    for k in sorted(present):  # each class's blend as a lookup table: rint((1 - alpha) * v + alpha * colour)
        lut = np.rint((1 - alpha) * values + alpha * colours[k][None, :]).astype(np.uint8)
        blended = cv2.LUT(thumbnail_rgb, lut.reshape(1, 256, 3))
        np.copyto(out, blended, where=(labels == k)[..., None])
    for k in sorted(present):
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, _outline(colours[k]), max(1, round(w / 800)), cv2.LINE_AA)
    image = np.vstack([out, _legend(w, colours, class_names, present)])
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise CervrtError(f"OpenCV could not write {path}")
