"""WSSS data: patches with image-level labels (phase 1) and patches with three pseudo masks (phase 2).

Phase 1 takes patches with the set of foreground classes they show, from one of two sources:

- pixel-annotated regions (``DIR/images`` + ``DIR/masks``, S0-like data): the papers' windows
  (patch, stride, minimum foreground share), each labelled with the classes covering at least
  ``label_min_share`` of it. The masks give the labels only; phase 1 never sees a pixel label.
- image-level labelled regions (``DIR/images`` + a ``name,labels`` CSV, e.g. ``cervrt synth
  --weak``): windows whose non-glass share reaches the minimum, each inheriting its region's
  labels. That is exact when regions are patch-sized (as in LUAD-HistoSeg) and noisy otherwise.
  True masks, when present (``DIR/truth_masks`` of a synthetic set, or ``DIR/masks``), only measure
  the pseudo masks.

Phase 2 reads what ``cervrt wsss pseudo-masks`` writes (:data:`MASK_DIRS`): ``images/NAME.png``
(the patch), ``masks_layer2/``, ``masks_layer3/`` and ``masks/`` (the last layer's pseudo mask, so
the directory is also a plain MTCHI-layout dataset), plus ``masks_fused/`` for inspection.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES
from cervrt.errors import CervrtError
from cervrt.glass import GlassThreshold
from cervrt.runtime.tiling import check_tiling, window_starts
from cervrt.synth import TRUTH_MASKS
from cervrt.train.data import (
    Region,
    extract_patches,
    list_regions,
    load_region,
    pad_to_patch,
    read_image,
    read_mask,
    read_weak_labels,
)

__all__ = [
    "FUSED_DIR",
    "MASK_DIRS",
    "ClassificationDataset",
    "PseudoMaskDataset",
    "WeakSample",
    "WeakSource",
    "load_weak_source",
    "patch_labels",
]

#: Pseudo-mask directory of each Grad-CAM layer; the last layer's is ``masks/``.
MASK_DIRS: dict[str, str] = {"layer2": "masks_layer2", "layer3": "masks_layer3", "layer4": "masks"}
FUSED_DIR = "masks_fused"
_FOREGROUND = NUM_CLASSES - 1
_GLASS = GlassThreshold()  # the default glass of the weak regions


@dataclass(frozen=True)
class WeakSample:
    """One phase-1 patch: region index, top-left corner, and its foreground classes (1..4)."""

    region: int
    y: int
    x: int
    labels: tuple[int, ...]

    def multi_hot(self) -> np.ndarray:
        """float32 (4,): 1 for each present class (class k at index k - 1)."""
        target = np.zeros(_FOREGROUND, np.float32)
        target[[c - 1 for c in self.labels]] = 1.0
        return target


@dataclass
class WeakSource:
    """Regions (uint8 RGB, padded with glass to at least one patch) and the phase-1 samples cut from them.

    ``masks`` holds each region's true mask when the data has one (for measuring only), else None.
    """

    regions: list[Region]
    images: list[np.ndarray]
    masks: list[np.ndarray | None]
    samples: list[WeakSample]
    patch: int

    def crop(self, sample: WeakSample) -> np.ndarray:
        return self.images[sample.region][sample.y : sample.y + self.patch, sample.x : sample.x + self.patch]

    def truth(self, sample: WeakSample) -> np.ndarray | None:
        mask = self.masks[sample.region]
        return None if mask is None else mask[sample.y : sample.y + self.patch, sample.x : sample.x + self.patch]

    def name(self, sample: WeakSample) -> str:
        return f"{self.regions[sample.region].name}_y{sample.y:05d}_x{sample.x:05d}"


def patch_labels(mask: np.ndarray, min_share: float) -> tuple[int, ...]:
    """Foreground classes covering at least ``min_share`` of the mask window (at least one pixel)."""
    counts = np.bincount(mask.ravel(), minlength=NUM_CLASSES)
    need = max(1.0, min_share * mask.size)
    return tuple(c for c in range(1, NUM_CLASSES) if counts[c] >= need)


def _from_masks(root: str, patch: int, stride: int, min_foreground: float, min_share: float) -> WeakSource:
    regions = list_regions(root)
    source = WeakSource(regions, [], [], [], patch)
    for index, region in enumerate(regions):
        image, mask = load_region(region)
        image, mask = pad_to_patch(image, patch, 255), pad_to_patch(mask, patch, 0)
        for p in extract_patches(mask, patch, stride, min_foreground):
            labels = patch_labels(mask[p.y : p.y + patch, p.x : p.x + patch], min_share)
            if labels:
                source.samples.append(WeakSample(index, p.y, p.x, labels))
        source.images.append(image)
        source.masks.append(mask)
    return source


def _truth_path(root: Path, region: Region) -> Path | None:
    """A weak region's true mask, for measuring only: ``truth_masks/NAME.png`` (``cervrt synth --weak``),
    else ``masks/NAME.png``, else None."""
    truth = root / TRUTH_MASKS / f"{region.name}.png"
    return truth if truth.is_file() else region.mask_path


def _from_csv(root: str, csv_path: str, patch: int, stride: int, min_tissue: float,
              glass: GlassThreshold) -> WeakSource:
    labels = read_weak_labels(csv_path)
    regions = [r for r in list_regions(root, require_masks=False) if r.name in labels]
    missing = sorted(set(labels) - {r.name for r in regions})
    if missing:
        raise CervrtError(f"{csv_path} lists {len(missing)} image(s) not in {root}/images, e.g. {missing[0]}")
    source = WeakSource(regions, [], [], [], patch)
    for index, region in enumerate(regions):
        image = pad_to_patch(read_image(region.image_path), patch, 255)
        tissue = ~glass.glass(image)
        for y in window_starts(image.shape[0], patch, stride):
            for x in window_starts(image.shape[1], patch, stride):
                if tissue[y : y + patch, x : x + patch].mean() >= min_tissue:
                    source.samples.append(WeakSample(index, y, x, tuple(sorted(labels[region.name]))))
        source.images.append(image)
        truth = _truth_path(Path(root), region)
        mask = None if truth is None else pad_to_patch(read_mask(truth), patch, 0)
        source.masks.append(mask if mask is not None and mask.shape == image.shape[:2] else None)
    return source


def load_weak_source(data: str | os.PathLike[str], labels_csv: str | os.PathLike[str] | None, *, patch: int,
                     stride: int, min_foreground: float, label_min_share: float = 0.01,
                     glass: GlassThreshold = _GLASS) -> WeakSource:
    """The phase-1 patches of ``data``: labels from ``labels_csv`` when given, else from the masks."""
    check_tiling(patch, stride)
    if not 0.0 < min_foreground <= 1.0:
        raise CervrtError(f"min-foreground must be in (0, 1], got {min_foreground}")
    if not 0.0 <= label_min_share < 1.0:
        raise CervrtError(f"label-min-share must be in [0, 1), got {label_min_share}")
    if labels_csv is None:
        source = _from_masks(str(data), patch, stride, min_foreground, label_min_share)
    else:
        source = _from_csv(str(data), str(labels_csv), patch, stride, min_foreground, glass)
    if not source.samples:
        raise CervrtError(f"no {patch} px patch of {data} has {min_foreground:.0%} tissue with a label: "
                          "lower --min-foreground or --patch-size")
    return source


# --- torch datasets ---------------------------------------------------------------------------


def _flip_rotate(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flips and 90-degree rotation of (H, W, ...) arrays."""
    turns, flips = int(rng.integers(4)), rng.random(2) < 0.5
    out = []
    for array in arrays:
        if flips[0]:
            array = array[:, ::-1]
        if flips[1]:
            array = array[::-1]
        out.append(np.ascontiguousarray(np.rot90(array, turns)))
    return out


class _Normalised:
    """Shared: normalisation, epoch-seeded augmentation and the image tensor."""

    def __init__(self, augment: bool, seed: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment, self.seed, self.epoch = bool(augment), int(seed), 0
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def set_epoch(self, epoch: int) -> None:
        """Choose the augmentation draw of an epoch."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None

    def _image(self, rgb: np.ndarray) -> Any:
        import torch

        pixels = (rgb.astype(np.float32) / np.float32(255) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class ClassificationDataset(_Normalised):
    """Phase-1 items: (image float32 (3, P, P), multi-hot float32 (4,)); flips and rotations when augmenting."""

    def __init__(self, source: WeakSource, augment: bool = True, seed: int = 0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(augment, seed, mean, std)
        self.source = source

    def __len__(self) -> int:
        return len(self.source.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        import torch

        sample = self.source.samples[index]
        rgb = self.source.crop(sample)
        rng = self._rng(index)
        if rng is not None:
            (rgb,) = _flip_rotate(rng, rgb)
        return self._image(rgb), torch.from_numpy(sample.multi_hot())


class PseudoMaskDataset(_Normalised):
    """Phase-2 items: (image, pseudo masks int64 (3, P, P) in layer order layer2, layer3, layer4, 0).

    ``regions`` are the patches of a pseudo-mask directory (``list_regions(DIR)``); the last value
    stands in for the loop's patch label, which a model without a classifier ignores.
    """

    def __init__(self, regions: Sequence[Region], augment: bool = True, seed: int = 0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(augment, seed, mean, std)
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        for region in regions:
            root = Path(region.image_path).parent.parent
            masks = [read_mask(root / MASK_DIRS[layer] / f"{region.name}.png") for layer in MASK_DIRS]
            self.images.append(read_image(region.image_path))
            self.targets.append(np.stack(masks, axis=-1))
        sizes = {image.shape for image in self.images}
        if len(sizes) > 1:
            raise CervrtError(f"pseudo-mask patches differ in size ({len(sizes)} sizes): regenerate them in one run")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, Any, Any]:
        import torch

        rgb, target = self.images[index], self.targets[index]
        rng = self._rng(index)
        if rng is not None:
            rgb, target = _flip_rotate(rng, rgb, target)
        masks = torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1)).astype(np.int64))
        return self._image(rgb), masks, torch.tensor(0, dtype=torch.int64)
