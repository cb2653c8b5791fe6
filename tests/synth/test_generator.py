"""The synthetic H&E generator: determinism, labels, how the grades look, slides and the dataset writer."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import cervrt.synth as cervrt_synth
from cervrt.constants import MTCHI_MPP
from cervrt.errors import CervrtError
from cervrt.synth import GENERATOR, synthesize_region, synthesize_slide, write_dataset
from cervrt.train.data import list_regions, read_weak_labels


def _region(seed: int, size=128, grades=None):
    return synthesize_region(np.random.default_rng(seed), size, grades)


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _glass_and_stroma(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split background into glass (large bright areas, plus a rim the blur darkens) and stroma."""
    bright = (cv2.blur(_grey(image), (9, 9)) > 225) & (mask == 0)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=4)
    large = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 0.02 * mask.size]
    glass = cv2.dilate(np.isin(labels, large).astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)
    glass &= mask == 0
    return glass, (mask == 0) & ~glass


def _relative_depth(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per pixel: distance to stroma / (distance to stroma + distance to glass); 0 at the
    basement membrane, 1 at the epithelial surface. Measured from the image, not the generator."""
    glass, stroma = _glass_and_stroma(image, mask)
    to_stroma = cv2.distanceTransform((~stroma).astype(np.uint8), cv2.DIST_L2, 5)
    to_glass = cv2.distanceTransform((~glass).astype(np.uint8), cv2.DIST_L2, 5)
    return to_stroma / np.maximum(to_stroma + to_glass, 1e-6)


# --- regions ----------------------------------------------------------------------------------


def test_region_is_deterministic_per_seed():
    image_a, mask_a = _region(7)
    image_b, mask_b = _region(7)
    image_c, mask_c = _region(8)
    assert np.array_equal(image_a, image_b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(image_a, image_c)
    assert not np.array_equal(mask_a, mask_c)


def test_region_shape_dtype_and_label_values():
    image, mask = _region(0, size=(96, 160))
    assert image.shape == (96, 160, 3) and image.dtype == np.uint8
    assert mask.shape == (96, 160) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_requested_grade_appears(seed):
    _, mask = _region(seed, size=256, grades=[1, 2, 3, 4])
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3, 4}


def test_random_regions_hold_one_to_three_grades_and_cover_all():
    seen = set()
    for seed in range(12):
        _, mask = _region(seed)
        foreground = set(np.unique(mask).tolist()) - {0}
        assert 1 <= len(foreground) <= 3
        seen |= foreground
    assert seen == {1, 2, 3, 4}


def test_region_shows_glass_stroma_and_epithelium():
    image, mask = _region(3, size=256, grades=[2])
    glass, stroma = _glass_and_stroma(image, mask)
    assert glass.mean() > 0.03 and stroma.mean() > 0.1 and (mask == 2).mean() > 0.1
    assert _grey(image)[glass].mean() > 235  # white glass
    red, green, blue = (image[stroma][:, c].astype(float).mean() for c in range(3))
    assert red > blue > green  # eosin pink, not a BGR swap


def test_atypical_nuclei_reach_higher_with_the_grade():
    """Same geometry and stain (same seed), only the grade changes: dark (atypical) nuclear pixels
    fill the lower quarter for every CIN, the middle from CIN 2 on and the top only in CIN 3."""
    dark, outlines = {}, []
    for grade in (1, 2, 3, 4):
        image, mask = _region(5, size=512, grades=[grade])
        depth = _relative_depth(image, mask)
        is_dark = _grey(image) < 90
        epithelium = mask == grade
        outlines.append(epithelium)
        dark[grade] = [is_dark[epithelium & (depth >= lo) & (depth < hi)].mean()
                       for lo, hi in ((0.0, 0.25), (0.4, 0.55), (0.8, 1.0))]
    assert all(np.array_equal(outlines[0], o) for o in outlines[1:])  # only the grade changed
    low, mid, top = (np.array([dark[g][k] for g in (1, 2, 3, 4)]) for k in range(3))
    assert low[0] < 0.2 and all(low[1:] > 0.3)
    assert all(mid[:2] < 0.06) and all(mid[2:] > 0.2)
    assert all(top[:3] < 0.1) and top[3] > 0.3
    upper_half = [dark[g][1] + dark[g][2] for g in (1, 4)]
    assert upper_half[1] > 5 * upper_half[0]


def test_stain_varies_between_regions():
    means = []
    for seed in range(4):
        image, mask = _region(seed, size=256)
        _, stroma = _glass_and_stroma(image, mask)
        means.append(image[stroma].astype(float).mean(axis=0))
    assert np.ptp(np.array(means), axis=0).max() > 3


@pytest.mark.parametrize("size", [32, (64, 63), (64,), "128", True, 100.0])
def test_region_rejects_bad_sizes(size):
    with pytest.raises(CervrtError, match="size"):
        synthesize_region(np.random.default_rng(0), size)


@pytest.mark.parametrize("grades", [[], [0], [5], [1, 2, 3, 4, 1], "12", [1.0]])
def test_region_rejects_bad_grades(grades):
    with pytest.raises(CervrtError, match="grades"):
        synthesize_region(np.random.default_rng(0), 128, grades)


def test_slide_has_several_labelled_pieces_separated_by_glass():
    image, mask = synthesize_slide(np.random.default_rng(0), (1000, 2000))
    assert image.shape == (1000, 2000, 3) and mask.shape == (1000, 2000)
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4} and (mask > 0).any()
    tissue = (cv2.blur(_grey(image), (15, 15)) < 235).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(tissue, connectivity=8)
    pieces = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 0.01 * mask.size]
    assert len(pieces) >= 2
    assert _grey(image)[mask > 0].mean() < 200  # labels sit on tissue, not on glass
    assert np.array_equal(mask, synthesize_slide(np.random.default_rng(0), (1000, 2000))[1])


# --- dataset writer ---------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_write_dataset_layout_and_metadata(tmp_path):
    meta = write_dataset(tmp_path / "ds", regions=3, size=128, seed=4, weak_regions=2, progress=False)
    root = tmp_path / "ds"
    names = [f"region_{i:04d}" for i in range(3)]
    assert sorted(p.stem for p in (root / "images").glob("*.png")) == names
    assert sorted(p.stem for p in (root / "masks").glob("*.png")) == names
    assert sorted(p.stem for p in (root / "weak" / "images").glob("*.png")) == ["weak_0000", "weak_0001"]
    assert sorted(p.stem for p in (root / "weak" / "truth_masks").glob("*.png")) == ["weak_0000", "weak_0001"]
    assert not (root / "weak" / "masks").exists()  # a name training reads: the truth stays out of its way
    assert all(r.mask_path is None for r in list_regions(root / "weak", require_masks=False))
    assert json.loads((root / "dataset.json").read_text()) == meta
    assert meta["generator"] == GENERATOR and meta["seed"] == 4 and meta["size"] == [128, 128]
    assert meta["mpp"] == MTCHI_MPP and meta["class_names"][4] == "CIN 3"
    assert meta["counts"]["regions"] == 3 and meta["counts"]["weak_regions"] == 2
    total = 0
    for name in names:
        mask = cv2.imread(str(root / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (128, 128) and mask.dtype == np.uint8 and mask.max() <= 4
        total += np.bincount(mask.ravel(), minlength=5)
    assert meta["counts"]["pixels_per_class"] == total.tolist()


def test_written_images_are_rgb(tmp_path):
    write_dataset(tmp_path, regions=3, size=128, seed=1, progress=False)
    stroma_pixels = []
    for path in sorted((tmp_path / "images").glob("*.png")):
        image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(tmp_path / "masks" / path.name), cv2.IMREAD_UNCHANGED)
        stroma_pixels.append(image[(mask == 0) & (_grey(image) < 225)])
    red, green, blue = np.concatenate(stroma_pixels).astype(float).mean(axis=0)
    assert red > blue > green


def test_write_dataset_is_byte_identical_per_seed(tmp_path):
    write_dataset(tmp_path / "a", regions=2, size=96, seed=3, weak_regions=1, progress=False)
    write_dataset(tmp_path / "b", regions=2, size=96, seed=3, weak_regions=1, progress=False)
    write_dataset(tmp_path / "c", regions=2, size=96, seed=4, weak_regions=1, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    a, c = _files(tmp_path / "a"), _files(tmp_path / "c")
    assert a["images/region_0000.png"] != c["images/region_0000.png"]


def test_a_larger_run_extends_a_smaller_one(tmp_path):
    write_dataset(tmp_path / "small", regions=1, size=96, seed=9, progress=False)
    write_dataset(tmp_path / "large", regions=2, size=96, seed=9, progress=False)
    for sub in ("images", "masks"):
        small = (tmp_path / "small" / sub / "region_0000.png").read_bytes()
        assert small == (tmp_path / "large" / sub / "region_0000.png").read_bytes()


def test_weak_labels_csv_matches_the_true_masks(tmp_path):
    write_dataset(tmp_path, regions=1, size=128, seed=2, weak_regions=4, progress=False)
    with open(tmp_path / "weak" / "labels.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["name", "labels"] and len(rows) == 5
    for name, labels in rows[1:]:
        mask = cv2.imread(str(tmp_path / "weak" / "truth_masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        present = sorted(set(np.unique(mask).tolist()) - {0})
        assert labels == ";".join(str(c) for c in present)
    parsed = read_weak_labels(tmp_path / "weak" / "labels.csv")
    assert parsed == {name: frozenset(int(c) for c in labels.split(";")) for name, labels in rows[1:]}


def test_write_dataset_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CervrtError, match="not empty"):
        write_dataset(tmp_path, regions=1, size=64, seed=0, progress=False)
    (tmp_path / "dataset.json").write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(CervrtError, match="not empty"):
        write_dataset(tmp_path, regions=1, size=64, seed=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json", "notes.txt"]


def test_write_dataset_overwrites_its_own_run_and_drops_stale_files(tmp_path):
    write_dataset(tmp_path, regions=3, size=64, seed=0, weak_regions=2, progress=False)
    write_dataset(tmp_path, regions=2, size=64, seed=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["region_0000.png", "region_0001.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["region_0000.png", "region_0001.png"]
    assert not (tmp_path / "weak" / "labels.csv").exists()
    assert not list((tmp_path / "weak").rglob("*.png"))
    assert json.loads((tmp_path / "dataset.json").read_text())["counts"]["regions"] == 2


@pytest.mark.parametrize(
    "kwargs, word",
    [({"regions": 0}, "regions"), ({"size": 32}, "size"), ({"weak_regions": -1}, "weak_regions"),
     ({"seed": -1}, "seed"), ({"regions": 2.0}, "regions")],
)
def test_write_dataset_rejects_bad_arguments(tmp_path, kwargs, word):
    args = {"regions": 1, "size": 64, "seed": 0, **kwargs}
    with pytest.raises(CervrtError, match=word):
        write_dataset(tmp_path / "out", progress=False, **args)
    assert not (tmp_path / "out").exists()


def test_a_dataset_written_before_the_move_to_cervrt_synth_may_be_overwritten(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"generator": "cervrt.train.synth"}))
    write_dataset(tmp_path, regions=1, size=64, seed=0, progress=False)
    assert json.loads((tmp_path / "dataset.json").read_text())["generator"] == GENERATOR == "cervrt.synth"


def test_the_generator_and_the_image_io_never_import_torch():
    code = ("import sys, cervrt.synth, cervrt.imageio\n"
            "cervrt.synth.synthesize_region(__import__('numpy').random.default_rng(0), 64)\n"
            "sys.exit('torch' in sys.modules)")
    root = str(Path(cervrt_synth.__file__).parents[2])
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def test_truth_masks_a_previous_version_wrote_to_weak_masks_are_removed(tmp_path):
    write_dataset(tmp_path, regions=1, size=64, seed=0, weak_regions=1, progress=False)
    (tmp_path / "weak" / "masks").mkdir()
    (tmp_path / "weak" / "truth_masks" / "weak_0000.png").rename(tmp_path / "weak" / "masks" / "weak_0000.png")
    write_dataset(tmp_path, regions=1, size=64, seed=0, weak_regions=1, progress=False)
    assert not list((tmp_path / "weak" / "masks").iterdir())
    assert (tmp_path / "weak" / "truth_masks" / "weak_0000.png").is_file()


def test_small_regions_keep_bands_thick_enough_to_tell_the_grades_where_they_fit():
    from cervrt.synth._tissue import _thickness_range

    assert _thickness_range(1.0, 512) == (60, 150)  # full geometry unchanged
    assert _thickness_range(0.32, 128) == pytest.approx((38.0, 48.0))  # four nucleus spacings at least
    assert _thickness_range(0.16, 64) == pytest.approx((19.2, 24.0))  # no room: 0.3 of the short side
