"""Test slides in DICOM: a small tiled TIFF and its conversion by an independent converter (wsidicomizer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["MPP", "dicomize", "make_tiff"]

MPP = 0.5


def _tissue(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 238, np.uint8)
    img[200:900, 300:1000] = (200, 80, 160)
    img[1000:1400, 100:500] = (120, 40, 140)
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - 500) ** 2 + (xx - 400) ** 2 < 150**2] = (90, 30, 120)
    return np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)


def make_tiff(path: Path, h: int = 1500, w: int = 1200, mpp: float = MPP) -> np.ndarray:
    """A two-level tiled RGB TIFF with its resolution in the tags (OpenSlide reads it as a generic tiled TIFF)."""
    import tifffile

    img = _tissue(h, w)
    res = {"resolutionunit": "CENTIMETER", "tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(img, resolution=(1e4 / mpp, 1e4 / mpp), **res)
        tif.write(img[::2, ::2], resolution=(1e4 / (2 * mpp), 1e4 / (2 * mpp)), subfiletype=1, **res)
    return img


def dicomize(source: Path, out: Path, encoding: str = "raw") -> Path:
    """Convert ``source`` to a DICOM WSI series in ``out`` with wsidicomizer (raw, j2k lossless or jpeg)."""
    from wsidicom import codec
    from wsidicomizer import WsiDicomizer

    settings = {"raw": codec.NumpySettings(), "j2k": codec.Jpeg2kSettings(levels=[0]), "jpeg": codec.JpegSettings()}
    WsiDicomizer.convert(source, out, include_label=False, include_overview=False, include_thumbnail=False,
                         workers=1, encoding=settings[encoding])
    return out
