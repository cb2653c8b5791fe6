"""DICOM whole-slide images (Supplement 145) read through wsidicom (the ``dicom`` extra).

A slide is a folder holding the instances of one series (``.dcm`` files, or files without a suffix),
or a single ``.dcm`` file. The series' VOLUME levels make the pyramid, the base level's pixel
spacing gives the mpp, and only the tiles (frames) a read touches are decoded (JPEG, JPEG 2000, JPEG-LS,
RLE or uncompressed, whatever wsidicom decodes). The first optical path and the default focal plane
are read. Level choice and resampling are the other pyramid readers' (see
:class:`cervrt.runtime.slides._PyramidSlide`).

Refused with one CervrtError sentence: a folder with instances of more than one WSI series (give one
series' folder), no WSI image instance at all, instances without pixel data, a pyramid without pixel
spacing (unless ``mpp`` is given), and a frame that cannot be decoded (truncated or corrupt).

For outputs that refer back to the slide (DICOM-SEG): :attr:`DicomSlide.source_datasets` (the base
level's pydicom datasets), :attr:`series_uid`, :attr:`frame_of_reference_uid`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.errors import CervrtError
from cervrt.imageio import to_rgb
from cervrt.runtime.slides import _PyramidSlide

__all__ = ["WSI_SOP_CLASS", "DicomSlide", "is_dicom_slide"]

#: VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_DICM = b"DICM"


def _is_dicom_file(path: Path) -> bool:
    """A file with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == _DICM
    except OSError:
        return False


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and
                  (p.suffix.lower() == ".dcm" or (not p.suffix and _is_dicom_file(p))))


def is_dicom_slide(path: Path) -> bool:
    """True for a ``.dcm`` file or a folder holding ``.dcm`` files (or suffix-less DICOM files)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".dcm"
    return path.is_dir() and bool(_dicom_files(path))


def _headers(files: list[Path], pydicom: Any) -> list[Any]:
    out = []
    for f in files:
        try:
            out.append((f, pydicom.dcmread(f, stop_before_pixels=True)))
        except Exception as exc:  # pydicom raises InvalidDicomError, OSError, struct errors ...
            raise CervrtError(f"cannot read {f}: it is not a readable DICOM file ({type(exc).__name__})") from exc
    return out


def _check_series(path: Path, files: list[Path], pydicom: Any) -> None:
    """One WSI series, every image instance with pixel data."""
    images = [(f, ds) for f, ds in _headers(files, pydicom) if str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS]
    if not images:
        raise CervrtError(f"{path} holds no DICOM whole-slide image (SOP class {WSI_SOP_CLASS}): give a DICOM WSI "
                          "series' folder")
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in images})
    if len(series) > 1:
        raise CervrtError(f"{path} holds {len(series)} DICOM WSI series ({', '.join(s[-12:] for s in series)}): "
                          "give a folder with the files of one series")
    volumes = [(f, ds) for f, ds in images if "LABEL" not in ds.get("ImageType", []) and
               "OVERVIEW" not in ds.get("ImageType", [])]
    if not volumes:
        raise CervrtError(f"{path} holds only label or overview images, no VOLUME pyramid level")
    for f, ds in volumes:
        if "PixelData" not in ds and "FloatPixelData" not in ds and not _has_pixel_tag(f, pydicom):
            raise CervrtError(f"{f} is a DICOM WSI instance without pixel data: the series is incomplete")


def _has_pixel_tag(f: Path, pydicom: Any) -> bool:
    """Whether the file has a Pixel Data element (stop_before_pixels hides it from the header)."""
    try:
        ds = pydicom.dcmread(f, defer_size=1024, specific_tags=["PixelData"])
    except Exception:
        return False
    return "PixelData" in ds


class DicomSlide(_PyramidSlide):
    """A DICOM WSI series (a folder or one ``.dcm`` file) read through wsidicom, tile by tile."""

    def __init__(self, path: Path, target_mpp: float, mpp: float | None) -> None:
        wsidicom = optional_import("wsidicom", "dicom")
        pydicom = optional_import("pydicom", "dicom")
        path = Path(path)
        files = _dicom_files(path)
        if not files:
            raise CervrtError(f"{path} holds no .dcm file")
        _check_series(path, files, pydicom)
        self._lock = threading.Lock()
        try:
            self._wsi = wsidicom.WsiDicom.open(files if path.is_dir() else path)
            self._levels = list(self._wsi.levels)
        except CervrtError:
            raise
        except Exception as exc:
            raise CervrtError(f"cannot open {path} as a DICOM WSI: {type(exc).__name__}: {exc}") from exc
        if not self._levels:
            self.close()
            raise CervrtError(f"{path} holds no readable pyramid level")
        sizes = [(int(lv.size.width), int(lv.size.height)) for lv in self._levels]
        try:
            file_mpp = float(self._levels[0].mpp.width)
        except Exception:  # wsidicom's WsiDicomNoResolutionError: no pixel spacing
            file_mpp = None
        if file_mpp is None and mpp is None:
            self.close()
            raise CervrtError(f"{path} has no pixel spacing: give its microns per pixel (--mpp)")
        self._region, self._point, self._size = (wsidicom.geometry.Region, wsidicom.geometry.Point,
                                                 wsidicom.geometry.Size)
        super().__init__(path, target_mpp, mpp, sizes=sizes, downsamples=[sizes[0][0] / w for w, _ in sizes],
                         file_mpp=file_mpp)

    # --- what a DICOM output refers to ---------------------------------------------------------

    @property
    def source_datasets(self) -> list[Any]:
        """The base level's pydicom datasets (what a DICOM-SEG references)."""
        return list(self._levels[0].datasets)

    @property
    def series_uid(self) -> str:
        return str(self.source_datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str | None:
        value = self.source_datasets[0].get("FrameOfReferenceUID")
        return None if value is None else str(value)

    # --- reading -------------------------------------------------------------------------------

    def _read_box(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        if getattr(self, "_wsi", None) is None:
            raise CervrtError(f"{self.path} is closed")
        region = self._region(self._point(x, y), self._size(w, h))
        with self._lock:  # wsidicom's frame readers share file handles
            image = self._levels[level].get_region(region)
        return to_rgb(np.asarray(image.convert("RGB") if image.mode != "RGB" else image), self.path)

    def close(self) -> None:
        wsi, self._wsi = getattr(self, "_wsi", None), None
        if wsi is not None:
            wsi.close()
