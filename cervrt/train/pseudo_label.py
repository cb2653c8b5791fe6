"""MTCHI Algorithm 1: pseudo-labelled patches from slides that carry image-level labels only.

A patch classifier M trained on the pixel-annotated patches S0 (``cervrt train --arch classifier``,
or an Ensemble-A checkpoint, whose assisted block classifies too) scores overlapping windows of
every weak image; then, as the paper's Algorithm 1 reads here:

- Step 3: ``c_i`` is the number of weak images whose label set contains class i ("the number of
  times class i appears in T_img"; every image lists a class at most once).
- Step 4: for each weak image and each class i of its labels, the windows are ranked by M's softmax
  probability of class i and the first ``floor(Np / (4 c_i))`` join S_p with pseudo-label i, so that
  every class contributes at most Np / 4 patches. A window chosen for several of its image's classes
  is kept once, with the class of the highest probability ("the pseudo-label is the category with
  the largest confidence probability from M"; ties go to the higher grade).
- Step 5: per class, S_p is re-ranked by confidence and ``ceil(r% of its patches)`` are kept, as
  SPEC words it. With a full S_p (Np / 4 per class) this is the paper's ``Np x r% / 4``; when the
  images hold fewer windows than the quotas it still keeps r%, so r keeps its meaning on small sets.

Windows are ``patch`` (the classifier's training patch size) at ``stride`` (100 px by default,
plus a last window flush with each end); windows under ``min_tissue`` tissue (not white glass)
are not scored. The output is ``OUT/pseudo.csv`` (``slide,y,x,size,pseudo_label,confidence``)
and ``OUT/pseudo.json`` (settings and counts), both written atomically. Pseudo-labels train
classification only (SPEC): :class:`PseudoPatchDataset` gives their patches masks of 255.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cervrt._io import atomic_path, ensure_writable_dir, write_json
from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD, PATCH_STRIDE
from cervrt.errors import CervrtError
from cervrt.glass import glass_strategy
from cervrt.runtime.tiling import check_tiling, window_starts
from cervrt.train.data import (
    Patch,
    PatchDataset,
    extract_patches,
    list_regions,
    pad_to_patch,
    read_image,
    read_mask,
    read_weak_labels,
    window_sums,
)

__all__ = [
    "CSV_HEADER",
    "Candidate",
    "PseudoLabelConfig",
    "PseudoPatchDataset",
    "class_quotas",
    "keep_top",
    "pseudo_label",
    "pseudo_label_accuracy",
    "read_pseudo_labels",
    "select_candidates",
    "tissue_fraction",
    "weak_images",
    "write_pseudo_labels",
]

CSV_HEADER = ("slide", "y", "x", "size", "pseudo_label", "confidence")
_CLASSES = (1, 2, 3, 4)
_GLASS = glass_strategy("near_white")  # darkest channel >= 215 and max - min <= 25: white glass
_UNKNOWN_MASK = 255


@dataclass(frozen=True)
class Candidate:
    """One pseudo-labelled window: image name, top-left corner, side, class 1..4, M's probability."""

    slide: str
    y: int
    x: int
    size: int
    label: int
    confidence: float


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Settings of one ``cervrt pseudo-label`` run (the patch size comes from the classifier)."""

    classifier: str
    weak_data: str
    labels: str
    out: str
    np_total: int = 4000
    keep: float = 50.0
    stride: int = PATCH_STRIDE
    min_tissue: float = 0.2
    batch_size: int = 16
    device: str = "auto"

    def check(self) -> None:
        """Raise CervrtError for values no run can use."""
        if not 0 < self.keep <= 100:
            raise CervrtError(f"keep (the percentage of S_p kept per class) must be in (0, 100], got {self.keep}")
        if self.np_total < 4:
            raise CervrtError(f"np_total (S_p patches in all) must be at least 4, one per class, got {self.np_total}")
        if not 0 <= self.min_tissue <= 1:
            raise CervrtError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        for name in ("stride", "batch_size"):
            if getattr(self, name) < 1:
                raise CervrtError(f"{name} must be at least 1, got {getattr(self, name)}")


# --- Algorithm 1, steps 3-5 (pure numpy) -------------------------------------------------------


def class_quotas(labels: Mapping[str, Iterable[int]], np_total: int) -> dict[int, int]:
    """Step 3 and the Step 4 quota: ``{i: floor(Np / (4 c_i))}`` for every class i some image is labelled with."""
    counts = {i: sum(i in set(classes) for classes in labels.values()) for i in _CLASSES}
    quotas = {i: np_total // (4 * c) for i, c in counts.items() if c}
    short = [i for i, q in quotas.items() if q == 0]
    if short:
        i = short[0]
        raise CervrtError(f"np_total {np_total} gives no patch to class {i}, which labels {counts[i]} images: "
                          f"use np_total {4 * counts[i]} or more")
    return quotas


def select_candidates(slide: str, corners: np.ndarray, probs: np.ndarray, classes: Iterable[int],
                      quotas: Mapping[int, int], size: int) -> list[Candidate]:
    """Step 4 on one image: the top ``quotas[i]`` windows by probability of each labelled class i.

    ``corners`` (n, 2) are the windows' (y, x), ``probs`` (n, 4) M's softmax over classes 1..4.
    Ties in probability keep the window order (row by row). A window picked for several classes
    keeps the one with the highest probability (ties: the higher grade).
    """
    best: dict[int, tuple[float, int]] = {}
    for i in sorted(set(classes)):
        order = np.argsort(-probs[:, i - 1], kind="stable")[: quotas[i]]
        for w in order.tolist():
            score = (float(probs[w, i - 1]), i)
            if w not in best or score > best[w]:
                best[w] = score
    return [Candidate(slide, int(corners[w, 0]), int(corners[w, 1]), size, label, conf)
            for w, (conf, label) in sorted(best.items())]


def keep_top(candidates: Sequence[Candidate], keep: float) -> list[Candidate]:
    """Step 5: per class, the ``ceil(keep% of n)`` most confident (ties: input order); input order kept."""
    kept: set[int] = set()
    for i in _CLASSES:
        members = [k for k, c in enumerate(candidates) if c.label == i]
        members.sort(key=lambda k: -candidates[k].confidence)
        kept.update(members[: math.ceil(round(len(members) * keep / 100, 9))])
    return [c for k, c in enumerate(candidates) if k in kept]


# --- files ------------------------------------------------------------------------------------


def write_pseudo_labels(path: str | os.PathLike[str], candidates: Iterable[Candidate]) -> None:
    """The patch list as CSV (``CSV_HEADER``), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for c in candidates:
        writer.writerow([c.slide, c.y, c.x, c.size, c.label, f"{c.confidence:.6f}"])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _parse_row(row: list[str], where: str) -> Candidate:
    if len(row) != len(CSV_HEADER):
        raise CervrtError(f"{where}: expected {len(CSV_HEADER)} fields {','.join(CSV_HEADER)}, got {len(row)}")
    try:
        y, x, size, label = (int(v) for v in row[1:5])
        confidence = float(row[5])
    except ValueError:
        raise CervrtError(f"{where}: y, x, size and pseudo_label must be integers and confidence a number") from None
    if label not in _CLASSES:
        raise CervrtError(f"{where}: pseudo_label {label} is outside 1..4 (1 normal, 2 CIN 1, 3 CIN 2, 4 CIN 3)")
    if y < 0 or x < 0 or size < 1 or not 0 <= confidence <= 1:
        raise CervrtError(f"{where}: need y, x >= 0, size >= 1 and confidence in [0, 1]")
    return Candidate(row[0].strip(), y, x, size, label, confidence)


def read_pseudo_labels(path: str | os.PathLike[str]) -> list[Candidate]:
    """The patch list written by :func:`write_pseudo_labels`; a bad line is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise CervrtError(f"pseudo-label file {path} does not exist: make it with `cervrt pseudo-label`")
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    if tuple(cell.strip() for cell in next(reader, [])) != CSV_HEADER:
        raise CervrtError(f"{path} must start with the header line {','.join(CSV_HEADER)}")
    rows = [_parse_row(row, f"{path} line {reader.line_num}") for row in reader if any(c.strip() for c in row)]
    if not rows:
        raise CervrtError(f"{path} lists no patches")
    return rows


def weak_images(weak_data: str | os.PathLike[str], names: Iterable[str]) -> dict[str, Path]:
    """Image path of every name, from ``weak_data/images``; names without an image are an error.

    Masks beside the images (a synthetic set's truth) are never read here.
    """
    found = {r.name: r.image_path for r in list_regions(weak_data, require_masks=False)}
    missing = sorted(set(names) - set(found))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CervrtError(f"{len(missing)} labelled image(s) are not in {Path(weak_data) / 'images'}: {shown}")
    return {name: found[name] for name in names}


# --- scoring windows with M -------------------------------------------------------------------


def tissue_fraction(image: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
    """Share of non-glass pixels in each window: glass is near-white and unsaturated (the ``near_white``
    strategy of :mod:`cervrt.glass`)."""
    glass = _GLASS.glass(image)
    ys, xs = np.unique(corners[:, 0]), np.unique(corners[:, 1])
    sums = window_sums(~glass, ys, xs, patch)
    return sums[np.searchsorted(ys, corners[:, 0]), np.searchsorted(xs, corners[:, 1])] / float(patch * patch)


class _Scorer:
    """M in eval mode on a device: probabilities (n, 4) of normalised uint8 windows."""

    def __init__(self, checkpoint: dict[str, Any], device: str, batch_size: int) -> None:
        import torch

        from cervrt.models import model_from_checkpoint
        from cervrt.train.tensors import resolve_device

        self.torch, self.device, self.batch_size = torch, resolve_device(device), batch_size
        self.model = model_from_checkpoint(checkpoint).to(self.device)
        self.mean = checkpoint.get("mean", IMAGENET_MEAN)
        self.std = checkpoint.get("std", IMAGENET_STD)

    def __call__(self, image: np.ndarray, corners: np.ndarray, patch: int) -> np.ndarray:
        from cervrt.train.tensors import to_model_input

        torch, out = self.torch, []
        with torch.no_grad():
            for start in range(0, len(corners), self.batch_size):
                batch = corners[start : start + self.batch_size]
                crops = np.stack([image[y : y + patch, x : x + patch] for y, x in batch])
                x = to_model_input(crops, self.mean, self.std, self.device)
                out.append(torch.softmax(self.model.classify(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(_CLASSES)), np.float32)


def _load_classifier(path: str) -> dict[str, Any]:
    from cervrt.checkpoint import load_checkpoint
    from cervrt.models import get_spec

    if not Path(path).is_file():
        raise CervrtError(f"classifier checkpoint {path} does not exist: "
                          "train one with `cervrt train --arch classifier`")
    ckpt = load_checkpoint(path)
    if not hasattr(get_spec(ckpt["arch"]).builder, "classify"):
        raise CervrtError(f"{path} holds a {ckpt['arch']} model, which has no patch classifier: "
                          "use a checkpoint of --arch classifier or ensemble_a")
    return ckpt


def _windows(image: np.ndarray, patch: int, config: PseudoLabelConfig) -> np.ndarray:
    corners = np.array([(y, x) for y in window_starts(image.shape[0], patch, config.stride)
                        for x in window_starts(image.shape[1], patch, config.stride)], dtype=np.int64)
    return corners[tissue_fraction(image, corners, patch) >= config.min_tissue - 1e-9]


def pseudo_label(config: PseudoLabelConfig, progress: bool = True) -> dict[str, Any]:
    """Run Algorithm 1 steps 3-5 with the classifier of ``config``; write OUT/pseudo.csv and pseudo.json."""
    config.check()
    ckpt = _load_classifier(config.classifier)
    patch = int(ckpt["patch_size"])
    check_tiling(patch, config.stride)
    labels = read_weak_labels(config.labels)
    paths = weak_images(config.weak_data, labels)
    quotas = class_quotas(labels, config.np_total)
    out = ensure_writable_dir(config.out)
    scorer = _Scorer(ckpt, config.device, config.batch_size)
    candidates: list[Candidate] = []
    scored = 0
    for name in tqdm(labels, desc="pseudo-label", unit="slide", disable=not progress):
        image = pad_to_patch(read_image(paths[name]), patch, 255)
        corners = _windows(image, patch, config)
        scored += len(corners)
        candidates += select_candidates(name, corners, scorer(image, corners, patch), labels[name], quotas, patch)
    kept = keep_top(candidates, config.keep)
    write_pseudo_labels(out / "pseudo.csv", kept)
    summary = _summary(config, ckpt, labels, quotas, scored, candidates, kept)
    write_json(out / "pseudo.json", summary)
    return summary


def _per_class(candidates: Sequence[Candidate]) -> dict[str, int]:
    return {str(i): sum(c.label == i for c in candidates) for i in _CLASSES}


def _summary(config: PseudoLabelConfig, ckpt: dict[str, Any], labels: Mapping[str, frozenset[int]],
             quotas: Mapping[int, int], scored: int, candidates: Sequence[Candidate],
             kept: Sequence[Candidate]) -> dict[str, Any]:
    return {
        "settings": asdict(config), "classifier_arch": ckpt["arch"], "patch_size": int(ckpt["patch_size"]),
        "images": len(labels), "windows_scored": scored,
        "c_i": {str(i): sum(i in s for s in labels.values()) for i in _CLASSES},
        "quota_per_image": {str(i): q for i, q in quotas.items()},
        "s_p": _per_class(candidates), "kept": _per_class(kept), "total_kept": len(kept),
    }


# --- measuring against truth masks (synthetic data) -------------------------------------------


def pseudo_label_accuracy(candidates: Sequence[Candidate], masks_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Compare pseudo-labels with each window's true label in ``masks_dir/NAME.png`` (evaluation only).

    The true label is S0's patch label (the foreground class with the most pixels, 0 when the window
    has no foreground). Returns the accuracy, the share of windows where the pseudo class is present
    at all, per-class accuracy and the confusion counts ``confusion[pseudo - 1][true]``.
    """
    masks: dict[str, np.ndarray] = {}
    confusion = np.zeros((len(_CLASSES), len(_CLASSES) + 1), np.int64)
    present = 0
    for c in candidates:
        if c.slide not in masks:
            masks[c.slide] = read_mask(Path(masks_dir) / f"{c.slide}.png")
        window = masks[c.slide][c.y : c.y + c.size, c.x : c.x + c.size]
        truth = extract_patches(window, patch=c.size, stride=c.size, min_foreground=0.0)[0].label
        confusion[c.label - 1, truth] += 1
        present += bool((window == c.label).any())
    n = max(1, len(candidates))
    per_class = {str(i): float(confusion[i - 1, i] / confusion[i - 1].sum()) if confusion[i - 1].sum() else math.nan
                 for i in _CLASSES}
    return {"patches": len(candidates), "accuracy": float(np.trace(confusion[:, 1:]) / n),
            "class_present": present / n, "no_foreground": float(confusion[:, 0].sum() / n),
            "per_class_accuracy": per_class, "confusion": confusion.tolist()}


# --- training on pseudo-labelled patches ------------------------------------------------------


class PseudoPatchDataset(PatchDataset):
    """The patches of a pseudo-label CSV as a :class:`PatchDataset` (same items and augmentation).

    Their masks are all 255 (unknown): they train a classification branch only (SPEC). ``patch``
    must be the size the patches were cut at.
    """

    def __init__(self, csv_path: str | os.PathLike[str], weak_data: str | os.PathLike[str], patch: int,
                 augment: bool = False, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 seed: int = 0) -> None:
        super().__init__([], patch=patch, stride=patch, augment=augment, mean=mean, std=std, seed=seed)
        records = read_pseudo_labels(csv_path)
        sizes = sorted({r.size for r in records})
        if sizes != [patch]:
            shown = ", ".join(map(str, sizes))
            raise CervrtError(f"{csv_path} holds patches of {shown} px but training uses {patch} px: "
                              "pseudo-label with a classifier trained at the same --patch-size")
        names = list(dict.fromkeys(r.slide for r in records))
        paths = weak_images(weak_data, names)
        index = {name: i for i, name in enumerate(names)}
        for name in names:
            image = pad_to_patch(read_image(paths[name]), patch, 255)
            self.images.append(image)
            self.masks.append(np.broadcast_to(np.uint8(_UNKNOWN_MASK), image.shape[:2]))
        outside = [r for r in records if r.y + patch > self.images[index[r.slide]].shape[0]
                   or r.x + patch > self.images[index[r.slide]].shape[1]]
        if outside:
            r = outside[0]
            raise CervrtError(f"{csv_path}: the patch at y={r.y}, x={r.x} reaches beyond {r.slide}: "
                              "was the CSV made for other images?")
        self.patches = [(index[r.slide], Patch(r.y, r.x, r.label)) for r in records]
        self.class_counts = np.bincount(self.labels, minlength=len(_CLASSES)).astype(np.int64)
