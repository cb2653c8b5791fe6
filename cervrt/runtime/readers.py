"""The slide reader registry: ``open_slide`` asks each registered reader, in order, whether it opens a path.

A reader is ``(name, can_open, factory)``: ``can_open(path) -> bool`` looks at the path (its suffix,
or, for a format stored as a folder such as a DICOM slide, the directory's content) and
``factory(path, target_mpp, mpp) -> Slide`` opens it. The built-in readers (see
:mod:`cervrt.runtime.slides`) claim files by suffix: PNG/JPEG (OpenCV), TIFF/OME-TIFF (tifffile) and
the vendor formats OpenSlide reads. A new reader is one call::

    register_reader("dicom", lambda p: p.is_dir() and any(p.glob("*.dcm")), DicomSlide)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cervrt.errors import CervrtError, InputError, SlideError
from cervrt.runtime.dicom_slide import DicomSlide, is_dicom_slide
from cervrt.runtime.slides import COMPOUND_SUFFIXES, ImageSlide, OpenSlideSlide, Slide, TiffSlide

__all__ = ["SUPPORTED_SUFFIXES", "open_slide", "reader_names", "register_reader"]

#: ``factory(path, target_mpp, mpp) -> Slide``.
SlideFactory = Callable[[Path, float, "float | None"], Slide]


@dataclass(frozen=True)
class _Reader:
    name: str
    can_open: Callable[[Path], bool]
    factory: SlideFactory
    suffixes: tuple[str, ...] = ()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in COMPOUND_SUFFIXES if name.endswith(s)), path.suffix.lower())


def _by_suffix(suffixes: tuple[str, ...]) -> Callable[[Path], bool]:
    return lambda path: path.is_file() and _suffix(path) in suffixes


def _builtin(name: str, factory: SlideFactory, suffixes: tuple[str, ...]) -> _Reader:
    return _Reader(name, _by_suffix(suffixes), factory, suffixes)


_READERS: list[_Reader] = [
    _builtin("image", ImageSlide, (".png", ".jpg", ".jpeg")),
    _builtin("tiff", TiffSlide, (".tif", ".tiff", ".ome.tif", ".ome.tiff")),
    _builtin("openslide", OpenSlideSlide, (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")),
    _Reader("dicom", is_dicom_slide, DicomSlide, (".dcm",)),  # a folder of one series, or one .dcm file
]

#: File suffixes the built-in readers open (case-insensitive).
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(s for reader in _READERS for s in reader.suffixes)


def register_reader(name: str, can_open: Callable[[Path], bool], factory: SlideFactory, *,
                    first: bool = False) -> None:
    """Open the paths ``can_open(path)`` accepts (files or directories) with ``factory(path, target_mpp, mpp)``.

    Readers are asked in registration order; ``first=True`` asks this one before the built-ins. A
    reader registered again under the same ``name`` replaces the old one.
    """
    if not isinstance(name, str) or not name or not callable(can_open) or not callable(factory):
        raise InputError(f"a reader needs a name, a can_open(path) test and a factory, got {name!r}")
    kept = [reader for reader in _READERS if reader.name != name]
    entry = _Reader(name, can_open, factory)
    _READERS[:] = [entry, *kept] if first else [*kept, entry]


def reader_names() -> tuple[str, ...]:
    """The registered readers, in the order ``open_slide`` asks them."""
    return tuple(reader.name for reader in _READERS)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideError(f"{path} does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise SlideError(f"{path} is empty")


def _check_mpp(value: float, what: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise InputError(f"{what} must be a positive number of microns per pixel, got {value!r}")
    return float(value)


def _refusal(path: Path) -> CervrtError:
    if path.is_dir():
        return SlideError(f"{path} is a directory no slide reader opens: give the slide file "
                           f"(readers: {', '.join(reader_names())})")
    return SlideError(f"{path} has an unsupported suffix {path.suffix or '(none)'}: "
                       f"supported are {', '.join(SUPPORTED_SUFFIXES)}")


def open_slide(path: str | os.PathLike[str], target_mpp: float, mpp: float | None = None) -> Slide:
    """Open ``path`` for reading at ``target_mpp`` (the model's microns per pixel).

    ``mpp`` (microns per pixel of the file's full resolution) overrides what the file says; a PNG or
    JPEG without it is taken to be at ``target_mpp``. The first registered reader that claims the
    path opens it. Raises CervrtError for a missing, empty, corrupt, truncated or unsupported path.
    """
    path = Path(path)
    target_mpp = _check_mpp(target_mpp, "target_mpp")
    mpp = None if mpp is None else _check_mpp(mpp, "mpp")
    _check_path(path)
    reader = next((r for r in _READERS if r.can_open(path)), None)
    if reader is None:
        raise _refusal(path)
    return reader.factory(path, target_mpp, mpp)
