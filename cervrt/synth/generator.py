"""Synthetic H&E-like cervical regions and slides in the MTCHI layout, with exact masks.

No MTCHI copy is reachable from this machine, so tests and demos use this generator. A region is
stratified squamous epithelium lying on its basement membrane over pink collagenous stroma, white
glass beyond the epithelial surface: one such band, or (half the time, when it fits) a strip of
stroma lined with epithelium on both sides. Each band is a displaced sinusoid with rete pegs,
60-150 px thick, cut along its length into segments that carry a grade:

- normal (1): small, sparse, regularly spaced nuclei in rows parallel to the basement membrane,
  upright in the basal layer and flattening towards the surface (maturation);
- CIN 1 / CIN 2 / CIN 3 (2 / 3 / 4): crowded, enlarged, darker, pleomorphic nuclei with random
  orientation, from the basement membrane up to 1/3, 2/3 or the full epithelial thickness, with
  maturing cells above (``ATYPIA_EXTENT``).

Cytoplasm, stroma and glass tones depend on depth only, never on the grade, and every region gets
its own stain vectors and intensities, so colour alone never tells the grade: the nuclei and the
height they reach do. Masks follow MTCHI: epithelium carries its grade, stroma and glass are 0.

Pixels are rendered by Beer-Lambert from hematoxylin and eosin concentration maps (the drawing
lives in :mod:`cervrt.synth._tissue`). Lengths are in pixels at MTCHI's 0.904 um/px; regions
under 400 px on a side get a proportionally thinner band so that they still show glass,
epithelium and stroma. numpy and OpenCV only: this module never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cervrt._io import atomic_path, ensure_writable_dir, write_json
from cervrt.constants import CLASS_NAMES, MTCHI_MPP
from cervrt.errors import CervrtError
from cervrt.imageio import write_png
from cervrt.synth._tissue import ATYPIA_EXTENT, random_grades, random_stain, render, tissue

__all__ = ["ATYPIA_EXTENT", "GENERATOR", "TRUTH_MASKS", "synthesize_region", "synthesize_slide", "write_dataset"]

#: The ``generator`` entry of ``dataset.json``; a directory holding it may be overwritten.
GENERATOR = "cervrt.synth"
_LEGACY_GENERATOR = "cervrt.train.synth"  # what datasets written before the move carry
#: Where the weak regions' true masks go (``weak/truth_masks``): a name no training reader looks for,
#: so that weakly supervised training never sees them; only the measurements of pseudo-labels do.
TRUTH_MASKS = "truth_masks"

_MIN_REGION = 64
_MIN_CROP = 16
_MIN_SLIDE = 256


# --- argument checks --------------------------------------------------------------------------


def _parse_size(size: int | Sequence[int], minimum: int) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(_is_int(s) for s in size):
        h, w = int(size[0]), int(size[1])
    else:
        raise CervrtError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if min(h, w) < minimum:
        raise CervrtError(f"size must be at least {minimum} px on each side, got {h}x{w}")
    return h, w


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _parse_grades(rng: np.random.Generator, grades: Sequence[int] | None) -> tuple[int, ...]:
    if grades is None:
        return random_grades(rng)
    if isinstance(grades, (str, bytes)) or not isinstance(grades, Sequence):
        raise CervrtError(f"grades must be a sequence of classes 1..4, got {grades!r}")
    if not 1 <= len(grades) <= 4 or not all(_is_int(g) and 1 <= g <= 4 for g in grades):
        raise CervrtError(f"grades must list 1 to 4 classes, each in 1..4 (1 normal .. 4 CIN 3), got {list(grades)}")
    return tuple(int(g) for g in grades)


def _blob(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A rounded, irregular tissue-piece outline filling most of an (h, w) box."""
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    rho, phi = np.hypot(x, y), np.arctan2(y, x)
    radius = 0.9 + sum(rng.uniform(0, 0.06) * np.cos(k * phi + rng.uniform(0, 6.3)) for k in range(2, 6))
    return rho < radius


def _piece_boxes(rng: np.random.Generator, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """(y, x, height, width) of tissue pieces on a grid of slots, separated by glass."""
    rows, cols = max(1, round(h / 1000)), max(1, round(w / 1000))
    slot_h, slot_w = h // rows, w // cols
    used = rng.random(rows * cols) < 0.8
    used[rng.permutation(rows * cols)[:2]] = True  # at least two pieces when there are two slots
    boxes = []
    for index in np.flatnonzero(used):
        r, c = divmod(int(index), cols)
        ph = int(slot_h * rng.uniform(0.7, 0.92))
        pw = int(slot_w * rng.uniform(0.7, 0.92))
        y = r * slot_h + int(rng.integers(0, slot_h - ph + 1))
        x = c * slot_w + int(rng.integers(0, slot_w - pw + 1))
        boxes.append((y, x, ph, pw))
    return boxes


# --- dataset writer ---------------------------------------------------------------------------


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a non-empty directory unless a previous synth run wrote it."""
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    marker = out_dir / "dataset.json"
    try:
        previous = json.loads(marker.read_text())
    except (OSError, ValueError):
        previous = None
    if not isinstance(previous, dict) or previous.get("generator") not in (GENERATOR, _LEGACY_GENERATOR):
        raise CervrtError(f"{out_dir} is not empty and holds no synthetic dataset: choose an empty or new directory")


def _write_labels_csv(path: Path, labels: dict[str, list[int]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "labels"])
    for name, classes in labels.items():
        writer.writerow([name, ";".join(str(c) for c in classes)])
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def _remove_stale(directory: Path, prefix: str, keep: set[str]) -> None:
    """Delete PNGs a previous, larger synth run left behind (only our own naming pattern)."""
    if directory.is_dir():
        for path in directory.glob(f"{prefix}_*.png"):
            if path.stem not in keep:
                path.unlink()


def _names(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(count)]


def _check_counts(regions: int, size: int, seed: int, weak_regions: int, weak_size: int | None = None) -> None:
    if not _is_int(regions) or regions < 1:
        raise CervrtError(f"regions must be an integer of at least 1, got {regions!r}")
    if not _is_int(size) or size < _MIN_REGION:
        raise CervrtError(f"size must be an integer of at least {_MIN_REGION} px, got {size!r}")
    if not _is_int(weak_regions) or weak_regions < 0:
        raise CervrtError(f"weak_regions must be an integer of at least 0, got {weak_regions!r}")
    if not _is_int(seed) or seed < 0:
        raise CervrtError(f"seed must be a non-negative integer, got {seed!r}")
    if weak_size is not None and (not _is_int(weak_size) or not _MIN_CROP <= weak_size <= size):
        raise CervrtError(f"weak_size must be an integer from {_MIN_CROP} to size ({size}), got {weak_size!r}")


def _metadata(seed: int, size: int, names: list[str], weak: list[str], counts: np.ndarray) -> dict:
    """``dataset.json``: how the set was made and, for the pixel-annotated regions, class totals."""
    return {
        "generator": GENERATOR,
        "complete": True,
        "seed": int(seed),
        "size": [int(size), int(size)],
        "mpp": MTCHI_MPP,
        "class_names": list(CLASS_NAMES),
        "counts": {
            "regions": len(names),
            "weak_regions": len(weak),
            "pixels_per_class": [int(p) for p in counts.sum(axis=0)],
            "regions_per_class": [int(p) for p in (counts > 0).sum(axis=0)],
        },
        "regions": names,
        "weak": weak,
    }


def _write_regions(out: Path, prefix: str, names: list[str], key: list[int], size: int, bar: tqdm,
                   masks: str = "masks") -> list[np.ndarray]:
    """Write ``prefix``images/NAME.png and ``prefix``MASKS/NAME.png for each name; region i draws from
    key + [i]. Returns each mask's pixel count per class."""
    counts = []
    for i, name in enumerate(names):
        image, mask = synthesize_region(np.random.default_rng([*key, i]), size)
        write_png(out / f"{prefix}images/{name}.png", image)
        write_png(out / f"{prefix}{masks}/{name}.png", mask)
        counts.append(np.bincount(mask.ravel(), minlength=5))
        bar.update()
    return counts


def _weak_crops(out: Path, names: list[str], key: list[int], size: int, crop: int, bar: tqdm) -> list[np.ndarray]:
    """Write weak regions cut from ``size``-px regions as ``crop``-px tiles (the geometry of the annotated
    regions, patch-sized weak images with exact labels), skipping tiles without epithelium."""
    counts, source, tiles = [], 0, []
    while len(counts) < len(names):
        if not tiles:
            image, mask = synthesize_region(np.random.default_rng([*key, source]), size)
            source += 1
            tiles = [(image[y : y + crop, x : x + crop], mask[y : y + crop, x : x + crop])
                     for y in range(0, size - crop + 1, crop) for x in range(0, size - crop + 1, crop)]
        image, mask = tiles.pop(0)
        count = np.bincount(mask.ravel(), minlength=5)
        if not count[1:].any():
            continue
        name = names[len(counts)]
        write_png(out / f"weak/images/{name}.png", np.ascontiguousarray(image))
        write_png(out / f"weak/{TRUTH_MASKS}/{name}.png", np.ascontiguousarray(mask))
        counts.append(count)
        bar.update()
    return counts


def _finish(out: Path, names: list[str], weak: list[str], labels: dict[str, list[int]]) -> None:
    """Write the weak labels and drop what a previous run left beyond the new counts."""
    for sub in ("images", "masks"):
        _remove_stale(out / sub, "region", set(names))
    for sub in ("images", TRUTH_MASKS):
        _remove_stale(out / "weak" / sub, "weak", set(weak))
    _remove_stale(out / "weak" / "masks", "weak", set())  # where truth masks went before
    csv_path = out / "weak" / "labels.csv"
    if weak:
        _write_labels_csv(csv_path, labels)
    elif csv_path.is_file():
        csv_path.unlink()


# --- public API -------------------------------------------------------------------------------


def synthesize_region(
    rng: np.random.Generator, size: int | tuple[int, int], grades: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One H&E-like region and its MTCHI mask.

    ``size`` is the side of a square region or ``(height, width)``, at least 64 px. ``grades``
    lists the classes (1 normal, 2 CIN 1, 3 CIN 2, 4 CIN 3) of 1-4 epithelial segments in order
    along the band (a two-band region puts the first half on one band and the rest on the other,
    or one grade on both); ``None`` draws 1-3 segments with different neighbouring grades. Returns
    an RGB uint8 image (H, W, 3) and a uint8 mask (H, W) of values 0..4. The result depends only
    on the state of ``rng``. For a given number of segments, the band geometry and the stain do
    not depend on the grades asked for: one seed with different grades is a controlled comparison.
    """
    h, w = _parse_size(size, _MIN_REGION)
    grades = _parse_grades(rng, grades)
    stain = random_stain(rng)
    hema, eosin, label = tissue(rng, h, w, grades)
    return render(rng, hema, eosin, stain), label


def synthesize_slide(
    rng: np.random.Generator, size: int | tuple[int, int] = (2000, 3000)
) -> tuple[np.ndarray, np.ndarray]:
    """A slide-sized RGB image with its mask: irregular tissue pieces separated by glass.

    Each piece is a region (see :func:`synthesize_region`) cut to a rounded outline; pieces sit on
    a grid of about 1000 px slots, so a 2000x3000 slide holds two to six. One stain per slide, with
    a slightly different intensity per piece (section thickness). ``size`` is at least 256 px.
    """
    h, w = _parse_size(size, _MIN_SLIDE)
    stain = random_stain(rng)
    hema = np.zeros((h, w), np.float32)
    eosin = np.zeros((h, w), np.float32)
    label = np.zeros((h, w), np.uint8)
    for y, x, ph, pw in _piece_boxes(rng, h, w):
        p_hema, p_eosin, p_label = tissue(rng, ph, pw, random_grades(rng))
        keep = _blob(rng, ph, pw)
        thickness = float(rng.uniform(0.9, 1.1))
        window = (slice(y, y + ph), slice(x, x + pw))
        hema[window] = np.where(keep, p_hema * thickness, 0.0)
        eosin[window] = np.where(keep, p_eosin * thickness, 0.0)
        label[window] = np.where(keep, p_label, 0)
    return render(rng, hema, eosin, stain), label


def write_dataset(
    out_dir: str | Path, regions: int, size: int, seed: int, weak_regions: int = 0, progress: bool = True,
    weak_size: int | None = None,
) -> dict:
    """Write a synthetic MTCHI-layout dataset and return its ``dataset.json`` contents.

    Layout: ``images/region_NNNN.png`` (RGB) with ``masks/region_NNNN.png`` (greyscale 0..4); with
    ``weak_regions`` > 0 also ``weak/images/weak_NNNN.png``, ``weak/labels.csv`` (``name,labels``,
    labels the ``;``-joined foreground classes present) and the true ``weak/truth_masks`` for
    measuring pseudo-labels and pseudo masks (never read by training). With ``weak_size`` below ``size``,
    each weak region is a ``weak_size``-px tile of a ``size``-px region (tiles without epithelium are
    skipped): patch-sized weak images with exact labels and the annotated regions' band geometry
    (a 64 px region on its own gets a band a sixth of the full thickness). Region ``i`` depends only on
    ``(seed, i)``: the same seed gives byte-identical files, and a larger run extends a smaller one.
    Every file is written atomically. A non-empty ``out_dir`` is refused unless a previous run of this
    generator wrote it; then it is overwritten and files of the previous run beyond the new counts are
    removed.
    """
    _check_counts(regions, size, seed, weak_regions, weak_size)
    out = Path(out_dir)
    _check_out_dir(out)
    names, weak = _names("region", regions), _names("weak", weak_regions)
    for sub in ("images", "masks") + (("weak/images", f"weak/{TRUTH_MASKS}") if weak else ()):
        ensure_writable_dir(out / sub)
    write_json(out / "dataset.json", {"generator": GENERATOR, "complete": False})
    with tqdm(total=regions + weak_regions, desc="synthesizing", unit="region", disable=not progress) as bar:
        counts = _write_regions(out, "", names, [seed, 0], size, bar)
        if weak_size is None or weak_size == size:
            weak_counts = _write_regions(out, "weak/", weak, [seed, 1], size, bar, TRUTH_MASKS)
        else:
            weak_counts = _weak_crops(out, weak, [seed, 1], size, weak_size, bar)
    labels = {name: [c for c in range(1, 5) if n[c] > 0] for name, n in zip(weak, weak_counts, strict=True)}
    _finish(out, names, weak, labels)
    meta = _metadata(seed, size, names, weak, np.array(counts).reshape(-1, 5))
    write_json(out / "dataset.json", meta)
    return meta
