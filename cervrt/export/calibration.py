"""Calibration and held-out patches for INT8 export: tissue only, spread over the inputs, at the model's mpp.

``--calibration PATH...`` names image files, directories of images (a directory with an ``images/``
folder, the MTCHI layout, is read from there) or slides, in any format the runtime reads
(:data:`cervrt.runtime.readers.SUPPORTED_SUFFIXES`). Each is opened as the runtime opens it, at the
model's microns per pixel (``open_slide``), and cut into a grid of non-overlapping patch-sized
windows; the runtime's tissue detector (:class:`cervrt.runtime.tissue.TissueMap`) keeps the windows
that are at least :data:`MIN_TISSUE` tissue. Windows are then taken round-robin over the inputs (a
shuffled order within each, from a fixed seed), so that one large slide cannot fill the whole set,
and split into the calibration patches and the held-out patches the parity gate checks on: the
two never share a window.

Every problem is one CervrtError line before anything is quantized: no input, a path that does not
exist, a directory without images, an unreadable image (the reader's own error, which names the
file), no tissue anywhere, or fewer tissue windows than asked for.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cervrt.errors import InputError

__all__ = [
    "DEFAULT_CALIBRATION_PATCHES",
    "MIN_TISSUE",
    "CalibrationSet",
    "calibration_files",
    "draw_calibration",
    "holdout_count",
    "normalise",
]

#: Calibration patches drawn when ``--calibration-patches`` is not given.
DEFAULT_CALIBRATION_PATCHES = 32
#: Least tissue share of a calibration or held-out window.
MIN_TISSUE = 0.5
#: Pixels the held-out patches cover at least (one pixel is then 0.0004% of the agreement).
_HOLDOUT_PIXELS = 1 << 18
_MIN_HOLDOUT = 4


@dataclass(frozen=True)
class CalibrationSet:
    """RGB uint8 patches (n, P, P, 3) for calibration and for the held-out parity gate, and where they came from."""

    calibration: np.ndarray
    holdout: np.ndarray
    sources: tuple[str, ...]

    def describe(self) -> str:
        return (f"{len(self.calibration)} calibration and {len(self.holdout)} held-out tissue patches of "
                f"{self.calibration.shape[1]} px from {len(self.sources)} image(s)")


def holdout_count(patch_size: int) -> int:
    """Held-out patches for a model of this patch size: at least 4, and at least 2^18 pixels."""
    return max(_MIN_HOLDOUT, math.ceil(_HOLDOUT_PIXELS / (patch_size * patch_size)))


def normalise(patches: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 (n, P, P, 3) -> float32 NCHW normalised as the runtime does: ``(rgb / 255 - mean) / std``."""
    scaled = (patches.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2), dtype=np.float32)


def _images_in(directory: Path) -> list[Path]:
    from cervrt.runtime.readers import SUPPORTED_SUFFIXES

    folder = directory / "images" if (directory / "images").is_dir() else directory
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and any(p.name.lower().endswith(s) for s in SUPPORTED_SUFFIXES))
    if not found:
        raise InputError(f"{folder} holds no images for calibration: expected files ending in "
                          f"{', '.join(SUPPORTED_SUFFIXES)}")
    return found


def calibration_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The image and slide files named by ``paths`` (directories expanded); CervrtError when there are none."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise InputError("INT8 export needs calibration images: pass --calibration PATH [PATH...] with H&E "
                          "images, a directory of them (e.g. a dataset's images/) or slides")
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"calibration input {path} does not exist")
        files.extend(_images_in(path) if path.is_dir() else [path])
    return list(dict.fromkeys(files))


def _tissue_windows(path: Path, patch_size: int, mpp: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of the grid windows of ``path`` at least MIN_TISSUE tissue, shuffled."""
    from cervrt.runtime.readers import open_slide
    from cervrt.runtime.tissue import TissueMap

    with open_slide(path, target_mpp=mpp) as slide:
        tissue = TissueMap.from_slide(slide)
        ys, xs = np.meshgrid(np.arange(0, max(slide.height - patch_size, 0) + 1, patch_size),
                             np.arange(0, max(slide.width - patch_size, 0) + 1, patch_size), indexing="ij")
    ys, xs = ys.ravel(), xs.ravel()
    keep = tissue.fraction(ys, xs, patch_size) >= MIN_TISSUE
    corners = list(zip(ys[keep].tolist(), xs[keep].tolist(), strict=True))
    rng.shuffle(corners)
    return corners


def _round_robin(windows: dict[Path, list[tuple[int, int]]], total: int) -> list[tuple[Path, tuple[int, int]]]:
    picked: list[tuple[Path, tuple[int, int]]] = []
    depth = 0
    while len(picked) < total:
        layer = [(path, corners[depth]) for path, corners in windows.items() if depth < len(corners)]
        if not layer:
            break
        picked.extend(layer[: total - len(picked)])
        depth += 1
    return picked


def _read(picked: list[tuple[Path, tuple[int, int]]], patch_size: int, mpp: float) -> np.ndarray:
    from cervrt.runtime.readers import open_slide

    out = np.empty((len(picked), patch_size, patch_size, 3), np.uint8)
    by_file: dict[Path, list[int]] = {}
    for index, (path, _) in enumerate(picked):
        by_file.setdefault(path, []).append(index)
    for path, indices in by_file.items():
        with open_slide(path, target_mpp=mpp) as slide:
            for index in indices:
                y, x = picked[index][1]
                out[index] = slide.read(y, x, patch_size, patch_size)
    return out


def draw_calibration(paths: Sequence[str | os.PathLike[str]], patch_size: int, mpp: float | None, count: int,
                     holdout: int | None = None, seed: int = 0) -> CalibrationSet:
    """``count`` calibration and ``holdout`` held-out tissue patches from ``paths`` (see the module docstring).

    ``mpp``: the model's microns per pixel (None: the images are taken to be at the model's resolution).
    ``holdout`` defaults to :func:`holdout_count`.
    """
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise InputError(f"--calibration-patches must be a positive number of patches, got {count!r}")
    holdout = holdout_count(patch_size) if holdout is None else int(holdout)
    if holdout < 1:
        raise InputError(f"the parity gate needs at least one held-out patch, got {holdout}")
    files = calibration_files(paths)
    rng = np.random.default_rng(seed)
    target = 1.0 if mpp is None else float(mpp)
    windows = {path: _tissue_windows(path, patch_size, target, rng) for path in files}
    windows = {path: corners for path, corners in windows.items() if corners}
    found = sum(len(c) for c in windows.values())
    if not found:
        raise InputError(f"no tissue found in the {len(files)} calibration image(s) ({files[0].name}...): "
                          f"pass H&E images with tissue (windows of {patch_size} px at least {MIN_TISSUE:.0%} tissue)")
    if found < count + holdout:
        raise InputError(f"the calibration images hold {found} tissue patches of {patch_size} px; {count + holdout} "
                          f"are needed (--calibration-patches {count} plus {holdout} held out for the parity gate): "
                          "pass more images or a lower --calibration-patches")
    picked = _round_robin(windows, count + holdout)
    held = set(np.linspace(0, len(picked) - 1, holdout).round().astype(int).tolist())
    patches = _read(picked, patch_size, target)
    calibration = np.array([i for i in range(len(picked)) if i not in held], dtype=np.int64)
    sources = tuple(dict.fromkeys(path.name for path, _ in picked))
    return CalibrationSet(patches[calibration], patches[sorted(held)], sources)
