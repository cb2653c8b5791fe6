"""MTCHI data: the region reader, training patches, the patch dataset and the weak-label CSV.

Pixel-annotated data (SPEC): ``DIR/images/NAME.png`` (RGB; .jpg/.jpeg/.tif/.tiff also read) with
``DIR/masks/NAME.png``, a same-sized greyscale mask of 0 background, 1 normal, 2 CIN 1, 3 CIN 2,
4 CIN 3. Image-level labels: a CSV ``name,labels`` with labels a ``;``-joined subset of 1..4.

Training patches follow the papers: 400x400 windows at stride 100 (plus a last window flush with
each end), kept when at least 20% of their pixels are foreground (mask != 0); a patch's label is
its largest foreground class. A region smaller than the patch is padded, the image with white
(255, glass) and the mask with 0 (background), so that it yields one window along that axis.

Everything but :class:`PatchDataset` needs only numpy and OpenCV; the dataset imports torch when
an item is made.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD, MIN_FOREGROUND, NUM_CLASSES, PATCH_SIZE, PATCH_STRIDE
from cervrt.errors import CervrtError
from cervrt.imageio import decode_image, read_rgb
from cervrt.runtime.tiling import check_tiling, window_starts

__all__ = [
    "IMAGE_SUFFIXES",
    "Patch",
    "PatchDataset",
    "Region",
    "extract_patches",
    "list_regions",
    "load_region",
    "pad_to_patch",
    "read_image",
    "read_mask",
    "read_weak_labels",
    "split_regions",
    "window_sums",
]

#: Image file types read from ``images/`` (masks are always PNG).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_FOREGROUND = tuple(range(1, NUM_CLASSES))  # 1 normal .. 4 CIN 3
_CLASS_HELP = "0 background, 1 normal, 2 CIN 1, 3 CIN 2, 4 CIN 3"
_SHOWN = 5  # names listed in an error message
_JITTER = 0.05  # brightness, contrast and saturation factors within 1 +- 5%
_HUE = 0.02  # hue shift within +-2% of the colour circle (about 7 degrees)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class Region:
    """One region: its name (the image's file stem), image path and mask path (None: image only)."""

    name: str
    image_path: Path
    mask_path: Path | None = None


@dataclass(frozen=True)
class Patch:
    """A training window: top-left corner ``(y, x)`` and label, the largest foreground class.

    Ties go to the higher grade (the worse lesion decides, as a pathologist would grade); a patch
    with no foreground at all (possible only with ``min_foreground=0``) is labelled 0.
    """

    y: int
    x: int
    label: int


# --- reading ----------------------------------------------------------------------------------


def _shown(names: Sequence[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def _image_files(directory: Path) -> list[Path]:
    """Image files of ``directory`` sorted by name, skipping hidden files (e.g. unfinished writes)."""
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    stems = [p.stem for p in files]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise CervrtError(f"{directory} holds several images named {_shown(twins)}: keep one file per name")
    return files


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3), exactly as the runtime reads it
    (``cervrt.imageio.read_rgb``): greyscale is repeated, RGBA is laid on white glass, 16-bit
    is scaled to 8 bits."""
    return read_rgb(Path(path))


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A mask file as uint8 (H, W) with values 0..4; a colour file is accepted when it is grey."""
    path = Path(path)
    data = decode_image(path)
    if data.ndim == 3:
        grey = data[..., 0]
        if data.shape[2] < 3 or not all(np.array_equal(grey, data[..., c]) for c in (1, 2)):
            raise CervrtError(f"mask {path} is in colour: save it as a greyscale PNG of values {_CLASS_HELP}")
        data = grey
    if not np.issubdtype(data.dtype, np.integer):
        raise CervrtError(f"mask {path} has {data.dtype} pixels: save it as an 8-bit greyscale PNG")
    if data.size and int(data.max()) >= NUM_CLASSES:
        bad = np.unique(data[data >= NUM_CLASSES])
        shown = ", ".join(str(v) for v in bad[:_SHOWN])
        raise CervrtError(f"mask {path} has values {shown} outside 0..4: use {_CLASS_HELP}")
    return data.astype(np.uint8, copy=False)


def list_regions(root: str | os.PathLike[str], require_masks: bool = True) -> list[Region]:
    """The regions of ``root/images``, sorted by name, each with ``root/masks/NAME.png``.

    With ``require_masks=False`` an image without a mask gets ``mask_path=None`` (image-level
    data); otherwise a missing mask is an error that lists the first names.
    """
    root = Path(root)
    if not root.is_dir():
        raise CervrtError(f"dataset directory {root} does not exist")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise CervrtError(f"{root} has no images/ directory: expected {root}/images/NAME.png and {root}/masks/NAME.png")
    files = _image_files(images_dir)
    if not files:
        raise CervrtError(f"{images_dir} holds no images: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
    masks = {f.stem: root / "masks" / f"{f.stem}.png" for f in files}
    regions = [Region(f.stem, f, masks[f.stem] if masks[f.stem].is_file() else None) for f in files]
    missing = [r.name for r in regions if r.mask_path is None]
    if require_masks and missing:
        raise CervrtError(f"{len(missing)} image(s) have no mask {root / 'masks'}/NAME.png: {_shown(missing)}")
    return regions


def load_region(region: Region) -> tuple[np.ndarray, np.ndarray]:
    """The region's RGB uint8 image (H, W, 3) and uint8 mask (H, W) of values 0..4."""
    if region.mask_path is None:
        raise CervrtError(f"region {region.name} has no mask: add masks/{region.name}.png or use read_image")
    image = read_image(region.image_path)
    mask = read_mask(region.mask_path)
    if image.shape[:2] != mask.shape:
        raise CervrtError(f"mask {region.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                          f"{region.image_path} is {image.shape[1]}x{image.shape[0]}: they must be the same size")
    return image, mask


# --- patches ----------------------------------------------------------------------------------


def window_sums(binary: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch: int) -> np.ndarray:
    """Pixel counts of ``binary`` in every window (rows ys x columns xs) from cumulative sums: down
    the columns over the whole array, then along the rows of the window strips only. The part of
    a window beyond the array counts as 0 (padding)."""
    h, w = binary.shape
    dtype = np.int32 if h * w < 2**31 else np.int64
    down = np.zeros((h + 1, w), dtype)
    np.cumsum(binary, axis=0, dtype=dtype, out=down[1:])
    strips = down[np.minimum(ys + patch, h)] - down[ys]
    across = np.zeros((len(ys), w + 1), dtype)
    np.cumsum(strips, axis=1, out=across[:, 1:])
    return across[:, np.minimum(xs + patch, w)] - across[:, xs]


def _check_mask_array(mask: Any) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise CervrtError(f"a mask must be a 2-D integer array of values 0..4, got shape {mask.shape} {mask.dtype}")
    return mask


def _check_fraction(name: str, value: float, low_open: bool = False) -> None:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not ((0 < value <= 1) if low_open else (0 <= value <= 1)):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise CervrtError(f"{name} must be a number in {bounds}, got {value!r}")


def extract_patches(
    mask: np.ndarray, patch: int = PATCH_SIZE, stride: int = PATCH_STRIDE, min_foreground: float = MIN_FOREGROUND
) -> list[Patch]:
    """The kept windows of a region's mask, row by row.

    Windows start at 0, stride, 2*stride, ... plus one flush with the end of each axis; an axis
    shorter than ``patch`` gets one window at 0, its missing part counting as background. A window
    is kept when (mask != 0) covers at least ``min_foreground`` of its ``patch * patch`` pixels.
    """
    mask = _check_mask_array(mask)
    check_tiling(patch, stride)
    _check_fraction("min_foreground", min_foreground)
    ys = np.array(window_starts(mask.shape[0], patch, stride))
    xs = np.array(window_starts(mask.shape[1], patch, stride))
    counts = np.stack([window_sums(mask == c, ys, xs, patch) for c in _FOREGROUND])
    foreground = counts.sum(axis=0)
    label = np.where(foreground > 0, len(_FOREGROUND) - np.argmax(counts[::-1], axis=0), 0)
    keep = foreground >= min_foreground * patch * patch - 1e-9
    return [Patch(int(ys[i]), int(xs[j]), int(label[i, j])) for i, j in zip(*np.nonzero(keep), strict=True)]


def split_regions(
    regions: Iterable[Region], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Region], list[Region]]:
    """Split by region (never by patch, so that overlapping patches never straddle the split).

    ``round(n * val_fraction)`` regions, at least one and at most n - 1, go to validation, drawn
    by ``seed``; both lists keep the input order. A single region goes to training.
    """
    regions = list(regions)
    if not regions:
        raise CervrtError("no regions to split: check the dataset directory")
    _check_fraction("val_fraction", val_fraction, low_open=True)
    if val_fraction >= 1:
        raise CervrtError(f"val_fraction must be below 1 to leave training regions, got {val_fraction}")
    if len(regions) == 1:
        return regions, []
    n_val = min(max(round(len(regions) * val_fraction), 1), len(regions) - 1)
    val = set(np.random.default_rng(seed).permutation(len(regions))[:n_val].tolist())
    return [r for i, r in enumerate(regions) if i not in val], [r for i, r in enumerate(regions) if i in val]


# --- augmentation -----------------------------------------------------------------------------


def _flip_rotate(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same random flips and 90-degree rotation on image and mask (views, no copy)."""
    turns, flips = int(rng.integers(4)), rng.random(2) < 0.5

    def apply(array: np.ndarray) -> np.ndarray:
        if flips[0]:
            array = array[:, ::-1]
        if flips[1]:
            array = array[::-1]
        return np.rot90(array, turns)

    return apply(image), apply(mask)


def _hue_rotation(fraction: float) -> np.ndarray:
    """RGB matrix turning hues by ``fraction`` of a full circle about the grey axis."""
    angle = 2 * math.pi * fraction
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rotation = math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(k, k)
    return rotation.astype(np.float32)


def _colour_jitter(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Light brightness, contrast, saturation and hue changes of float RGB pixels in 0..1."""
    brightness, contrast, saturation = rng.uniform(1 - _JITTER, 1 + _JITTER, 3)
    hue = rng.uniform(-_HUE, _HUE)
    pixels = pixels * np.float32(brightness)
    mean = float((pixels @ _LUMA).mean())
    pixels = (pixels - mean) * np.float32(contrast) + mean
    grey = (pixels @ _LUMA)[..., None]
    pixels = grey + (pixels - grey) * np.float32(saturation)
    return np.clip(pixels @ _hue_rotation(hue).T, 0.0, 1.0)


# --- dataset ----------------------------------------------------------------------------------


def pad_to_patch(array: np.ndarray, patch: int, value: int) -> np.ndarray:
    """``array`` (H, W[, C]) padded with ``value`` at the bottom / right to at least ``patch`` on each side
    (images of regions smaller than a patch: 255, glass; their masks: 0, background)."""
    dy, dx = max(0, patch - array.shape[0]), max(0, patch - array.shape[1])
    if not dy and not dx:
        return array
    widths = ((0, dy), (0, dx)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, widths, constant_values=value)


def _check_stats(name: str, values: Sequence[float], positive: bool) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (3,) or not np.all(np.isfinite(array)) or (positive and np.any(array <= 0)):
        kind = "positive numbers" if positive else "numbers"
        raise CervrtError(f"{name} must be three {kind} (R, G, B on 0..1 pixels), got {values!r}")
    return array


class PatchDataset:
    """The kept training patches of some regions, as a map-style dataset for torch's DataLoader.

    All regions are loaded once into memory (uint8). Item ``i`` is ``(image, mask, label)``:
    float32 (3, P, P) normalised as ``(pixel / 255 - mean) / std``, int64 (P, P) of 0..4, and an
    int64 scalar 0..3 standing for the patch label 1..4. ``patches`` lists ``(region_index,
    Patch)``; ``class_counts[k]`` counts patches of label ``k + 1``. With ``augment``, each item
    gets random flips, a random 90-degree rotation (image and mask alike) and a light colour
    jitter (image only), drawn from ``(seed, epoch, index)``: call :meth:`set_epoch` before each
    epoch (it does not reach DataLoader workers that persist across epochs).
    """

    def __init__(
        self,
        regions: Iterable[Region],
        patch: int = PATCH_SIZE,
        stride: int = PATCH_STRIDE,
        min_foreground: float = MIN_FOREGROUND,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        check_tiling(patch, stride)
        _check_fraction("min_foreground", min_foreground, low_open=True)
        self.mean = _check_stats("mean", mean, positive=False)
        self.std = _check_stats("std", std, positive=True)
        self.patch, self.augment, self.seed, self.epoch = patch, bool(augment), int(seed), 0
        self.regions = list(regions)
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.patches: list[tuple[int, Patch]] = []
        for index, region in enumerate(self.regions):
            image, mask = load_region(region)
            self.patches += [(index, p) for p in extract_patches(mask, patch, stride, min_foreground)]
            image, mask = pad_to_patch(image, patch, 255), pad_to_patch(mask, patch, 0)
            self.images.append(image)
            self.masks.append(mask)
        self.class_counts = np.bincount(self.labels, minlength=len(_FOREGROUND)).astype(np.int64)

    @property
    def labels(self) -> np.ndarray:
        """Every patch's label as 0..3 (class 1..4 minus one), e.g. for a weighted sampler."""
        return np.array([p.label - 1 for _, p in self.patches], dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw of an epoch (the same epoch always gives the same items)."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise CervrtError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
        index = range(len(self.patches))[index]
        region, p = self.patches[index]
        window = (slice(p.y, p.y + self.patch), slice(p.x, p.x + self.patch))
        image, mask = self.images[region][window], self.masks[region][window]
        pixels = image.astype(np.float32) / np.float32(255)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels, mask = _flip_rotate(rng, pixels, mask)
            pixels = _colour_jitter(rng, pixels)
        pixels = (pixels - self.mean) / self.std
        torch = optional_import("torch", "train")
        return (torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
                torch.from_numpy(mask.astype(np.int64)),
                torch.tensor(p.label - 1, dtype=torch.int64))


# --- image-level labels -----------------------------------------------------------------------


def _parse_weak_row(row: list[str], path: Path, line: int) -> tuple[str, frozenset[int]]:
    where = f"{path} line {line}"
    if len(row) != 2:
        raise CervrtError(f"{where}: expected two fields name,labels, got {len(row)}")
    name, cell = row[0].strip(), row[1].strip()
    if not name:
        raise CervrtError(f"{where}: the name is empty")
    if not cell:
        raise CervrtError(f"{where}: {name} has no labels: list its classes 1..4 joined by ';'")
    parts = [part.strip() for part in cell.split(";")]
    unknown = [part for part in parts if part not in {str(c) for c in _FOREGROUND}]
    if unknown:
        raise CervrtError(f"{where}: unknown class {unknown[0]!r} for {name}: use 1 normal, 2 CIN 1, 3 CIN 2, 4 CIN 3")
    return name, frozenset(int(part) for part in parts)


def read_weak_labels(csv_path: str | os.PathLike[str]) -> dict[str, frozenset[int]]:
    """Image-level labels from a ``name,labels`` CSV: name (image file stem) -> set of classes 1..4.

    Blank lines are skipped; a missing header, a bad row, an unknown or missing class and a
    repeated name are errors that give the line.
    """
    path = Path(csv_path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CervrtError(f"weak label file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CervrtError(f"cannot read weak label file {path}: {exc}") from exc
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [cell.strip().lower() for cell in header] != ["name", "labels"]:
        raise CervrtError(f"{path} must start with the header line name,labels")
    labels: dict[str, frozenset[int]] = {}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        name, classes = _parse_weak_row(row, path, reader.line_num)
        if name in labels:
            raise CervrtError(f"{path} line {reader.line_num}: {name} is listed twice")
        labels[name] = classes
    if not labels:
        raise CervrtError(f"{path} lists no images under its header")
    return labels
