"""Image files <-> RGB uint8 arrays: the one decoder that training and inference share.

Pixels are converted to RGB uint8: greyscale is repeated on the three channels, 16-bit values are
scaled to 8 bits (v * 255 / 65535, rounded), booleans become 0/255, and an alpha channel is
composited on white (glass). :func:`write_png` writes atomically. Needs only numpy and OpenCV.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cervrt._cv import PIXEL_LIMIT, PIXEL_LIMIT_RAISED, cv2
from cervrt._io import atomic_path
from cervrt.errors import CervrtError, SlideError

__all__ = ["decode_image", "read_rgb", "to_rgb", "write_png"]

_GLASS = 255
_BAND_ROWS = 1024  # rows composited at once (bounds the float buffer)
_NOT_DECODED = "it is not an image file, or it is corrupt or truncated"


def _uint8(data: np.ndarray, source: Path) -> np.ndarray:
    if not data.dtype.isnative:  # big-endian samples of a TIFF
        data = data.astype(data.dtype.newbyteorder("="))
    if data.dtype == np.uint8:
        return data
    if data.dtype == np.uint16:
        return cv2.convertScaleAbs(data, alpha=255.0 / 65535.0)
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * 255
    raise SlideError(f"{source} has {data.dtype} pixels: only 8- and 16-bit images are read, save it as 8-bit RGB")


def _composite(data: np.ndarray, colour: list[int]) -> np.ndarray:
    """Colour channels ``colour`` of ``data`` laid over white by its last (alpha) channel, in row bands."""
    out = np.empty((*data.shape[:2], 3), np.uint8)
    for r in range(0, data.shape[0], _BAND_ROWS):
        band = data[r : r + _BAND_ROWS]
        if band[..., -1].min() == 255:  # opaque (a slide read inside its image): the colours as they are
            out[r : r + _BAND_ROWS] = band[..., colour]
            continue
        alpha = band[..., -1:].astype(np.float32) * np.float32(1 / 255)
        out[r : r + _BAND_ROWS] = np.rint(band[..., colour] * alpha + _GLASS * (1 - alpha))
    return out


def to_rgb(data: np.ndarray, source: Path, bgr: bool = False) -> np.ndarray:
    """Any greyscale/colour, with or without alpha, 8/16-bit array as (H, W, 3) RGB uint8.

    ``bgr``: the colour channels are in OpenCV's BGR order. ``source`` names the file in errors.
    """
    data = _uint8(data, source)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(data), cv2.COLOR_GRAY2RGB)
    if data.ndim != 3 or data.shape[2] not in (2, 3, 4):
        raise SlideError(f"{source} has pixels of shape {data.shape[2:]}: expected greyscale, RGB or RGBA")
    if data.shape[2] == 3:
        data = np.ascontiguousarray(data)
        return cv2.cvtColor(data, cv2.COLOR_BGR2RGB, dst=data) if bgr else data  # in place: no second copy
    colour = [0, 0, 0] if data.shape[2] == 2 else ([2, 1, 0] if bgr else [0, 1, 2])
    return _composite(data, colour)


def decode_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A PNG/JPEG file as OpenCV decodes it (BGR order, any depth and channels); CervrtError if it cannot."""
    path = Path(path)
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise SlideError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV 5 raises, rather than returning None, for an image over its pixel limit
        if "MAX_IMAGE" not in str(exc):
            raise SlideError(f"cannot decode {path}: {_NOT_DECODED}") from exc
        late = "" if PIXEL_LIMIT_RAISED else " import cervrt before cv2, or"
        raise SlideError(f"{path} has more pixels than OpenCV's decode limit of {PIXEL_LIMIT}:{late} set "
                          "OPENCV_IO_MAX_IMAGE_PIXELS higher before cv2 is first imported") from exc
    if data is None:
        raise SlideError(f"cannot decode {path}: {_NOT_DECODED}")
    return data


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """A PNG/JPEG file as (H, W, 3) RGB uint8, converted as the module docstring says (the training
    data reader and the slide reader both use this, so that training and inference see the same pixels)."""
    path = Path(path)
    return to_rgb(decode_image(path), path, bgr=True)


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write an RGB (H, W, 3) or greyscale (H, W) uint8 array as a PNG, atomically."""
    path = Path(path)
    image = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise CervrtError(f"cannot write {path}: check the disk space and permissions")
