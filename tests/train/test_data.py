"""MTCHI reader, patch extraction, region split, the patch dataset and the weak-label CSV."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD
from cervrt.errors import CervrtError
from cervrt.train.data import (
    Patch,
    PatchDataset,
    Region,
    extract_patches,
    list_regions,
    load_region,
    read_image,
    read_weak_labels,
    split_regions,
)


def _write(root, name, image, mask=None, suffix=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    assert cv2.imwrite(str(root / "images" / f"{name}{suffix}"), data)
    if mask is not None:
        assert cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)


def _random_image(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _reference_patches(mask, patch, stride, min_foreground):
    """Pixel-counting oracle: pad with background, count every window, ties to the higher class."""
    h, w = mask.shape
    starts = [[*range(0, max(n - patch, 0) + 1, stride)] for n in (h, w)]
    for axis, n in enumerate((h, w)):
        if n > patch and starts[axis][-1] != n - patch:
            starts[axis].append(n - patch)
    padded = np.zeros((max(h, patch), max(w, patch)), mask.dtype)
    padded[:h, :w] = mask
    kept = []
    for y, x in itertools.product(*starts):
        counts = np.bincount(padded[y : y + patch, x : x + patch].ravel(), minlength=5)
        if counts[1:].sum() >= min_foreground * patch * patch:
            best = max(range(1, 5), key=lambda c: (counts[c], c))
            kept.append(Patch(y, x, best if counts[1:].sum() else 0))
    return kept


# --- extract_patches --------------------------------------------------------------------------


def test_patches_on_a_hand_made_600x500_mask():
    """Windows start at y 0/100/200 and x 0/100. Worked out by hand:
    (0, 0) and (0, 100): 100x400 of CIN 2 = 25%, kept, label 3;
    (100, 0): 50x200 of normal = 6.25%, dropped; (100, 100): 50x100 = 3.1%, dropped;
    (200, 0): 150x200 normal + 100x100 CIN 3 = 25%, kept, normal is larger -> 1;
    (200, 100): 150x100 normal + 100x200 CIN 3 = 21.9%, kept, CIN 3 is larger -> 4."""
    mask = np.zeros((600, 500), np.uint8)
    mask[0:100, :] = 3
    mask[450:600, 0:200] = 1
    mask[500:600, 300:500] = 4
    expected = [Patch(0, 0, 3), Patch(0, 100, 3), Patch(200, 0, 1), Patch(200, 100, 4)]
    assert extract_patches(mask, 400, 100, 0.2) == expected
    assert len(extract_patches(mask, 400, 100, 0.0)) == 6


def test_foreground_threshold_is_inclusive():
    mask = np.zeros((400, 400), np.uint8)
    mask.ravel()[:32000] = 2  # exactly 20%
    assert extract_patches(mask) == [Patch(0, 0, 2)]
    mask.ravel()[31999] = 0
    assert extract_patches(mask) == []


def test_last_window_is_flush_with_the_end():
    mask = np.ones((450, 520), np.uint8)
    patches = extract_patches(mask, 400, 100, 0.0)
    assert sorted({p.y for p in patches}) == [0, 50]
    assert sorted({p.x for p in patches}) == [0, 100, 120]


def test_small_region_gives_one_padded_window():
    mask = np.full((150, 300), 2, np.uint8)  # 45,000 px of a 160,000 px window: 28%
    assert extract_patches(mask, 400, 100, 0.2) == [Patch(0, 0, 2)]
    assert extract_patches(mask, 400, 100, 0.3) == []
    tall = np.full((900, 120), 1, np.uint8)
    assert [(p.y, p.x) for p in extract_patches(tall, 400, 100, 0.0)] == [(0, 0), (100, 0), (200, 0), (300, 0),
                                                                           (400, 0), (500, 0)]


def test_label_is_the_largest_class_and_ties_go_to_the_higher_grade():
    mask = np.zeros((400, 400), np.uint8)
    mask[:, :200] = 1
    mask[:, 200:] = 4
    assert extract_patches(mask) == [Patch(0, 0, 4)]
    mask[:, 190:200] = 4
    mask[:50, :] = 2
    counts = np.bincount(mask.ravel(), minlength=5)
    assert extract_patches(mask)[0].label == int(np.argmax(counts[1:]) + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patches_match_the_pixel_counting_oracle(seed):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 5, (6, 7)).astype(np.uint8)
    mask = cv2.resize(blocks, (263, 231), interpolation=cv2.INTER_NEAREST)
    for patch, stride, fraction in ((64, 24, 0.3), (100, 100, 0.5), (300, 50, 0.0)):
        assert extract_patches(mask, patch, stride, fraction) == _reference_patches(mask, patch, stride, fraction)


def test_extract_patches_is_fast_on_a_large_mask():
    mask = np.zeros((3000, 3000), np.uint8)
    mask[1000:2000] = 3
    patches = extract_patches(mask)  # 27 x 27 windows, by cumulative sums
    # kept: windows holding >= 80 rows of the band, i.e. y = 700, 800, ..., 1900 (13 rows of 27)
    assert {p.label for p in patches} == {3} and sorted({p.y for p in patches}) == list(range(700, 2000, 100))
    assert len(patches) == 13 * 27


@pytest.mark.parametrize(
    "mask, kwargs",
    [(np.zeros((8, 8, 3), np.uint8), {}), (np.zeros((8, 8), np.float32), {}),
     (np.zeros((8, 8), np.uint8), {"stride": 500}), (np.zeros((8, 8), np.uint8), {"min_foreground": 1.5})],
)
def test_extract_patches_rejects_bad_input(mask, kwargs):
    with pytest.raises(CervrtError):
        extract_patches(mask, **kwargs)


# --- list_regions / load_region ---------------------------------------------------------------


def test_list_regions_pairs_images_with_masks(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    _write(tmp_path, "b", _random_image((20, 30)), mask)
    _write(tmp_path, "a", _random_image((20, 30)), mask, suffix=".jpg")
    (tmp_path / "images" / ".a.png.tmp.png").write_bytes(b"half written")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    regions = list_regions(tmp_path)
    assert [r.name for r in regions] == ["a", "b"]
    assert regions[0] == Region("a", tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png")


def test_list_regions_errors(tmp_path):
    with pytest.raises(CervrtError, match="does not exist"):
        list_regions(tmp_path / "nowhere")
    with pytest.raises(CervrtError, match="images/"):
        list_regions(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(CervrtError, match="no images"):
        list_regions(tmp_path)
    for name in ("r1", "r2", "r3"):
        _write(tmp_path, name, _random_image((8, 8)))
    _write(tmp_path, "r0", _random_image((8, 8)), np.zeros((8, 8), np.uint8))
    with pytest.raises(CervrtError, match=r"3 image\(s\) have no mask .*r1, r2, r3"):
        list_regions(tmp_path)
    weak = list_regions(tmp_path, require_masks=False)
    assert [r.mask_path is None for r in weak] == [False, True, True, True]


def test_list_regions_refuses_two_images_with_one_name(tmp_path):
    _write(tmp_path, "x", _random_image((8, 8)), np.zeros((8, 8), np.uint8))
    _write(tmp_path, "x", _random_image((8, 8)), suffix=".tif")
    with pytest.raises(CervrtError, match="several images named x"):
        list_regions(tmp_path)


def test_load_region_round_trip(tmp_path):
    image = _random_image((30, 40))
    mask = np.random.default_rng(1).integers(0, 5, (30, 40), dtype=np.uint8)
    _write(tmp_path, "r", image, mask)
    loaded_image, loaded_mask = load_region(list_regions(tmp_path)[0])
    assert np.array_equal(loaded_image, image) and np.array_equal(loaded_mask, mask)
    assert loaded_image.dtype == np.uint8 and loaded_mask.dtype == np.uint8


def test_grey_rgba_and_16_bit_images_become_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 2] = 200  # red
    bgra[:2, ..., 3] = 255  # top half opaque, bottom half transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    rgba = read_image(tmp_path / "rgba.png")
    assert rgba[0, 0].tolist() == [200, 0, 0] and rgba[3, 3].tolist() == [255, 255, 255]
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((4, 4, 3), 0x1234, np.uint16))
    assert read_image(tmp_path / "deep.png").tolist()[0][0] == [0x12] * 3


def test_load_region_checks_mask_values(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[0, 0], mask[1, 1] = 7, 255
    _write(tmp_path, "bad", _random_image((10, 10)), mask)
    with pytest.raises(CervrtError, match=r"bad\.png has values 7, 255 outside 0\.\.4"):
        load_region(list_regions(tmp_path)[0])


def test_load_region_checks_sizes_and_files(tmp_path):
    _write(tmp_path, "r", _random_image((10, 12)), np.zeros((10, 11), np.uint8))
    with pytest.raises(CervrtError, match="same size"):
        load_region(list_regions(tmp_path)[0])
    (tmp_path / "images" / "r.png").write_bytes(b"not a png")
    with pytest.raises(CervrtError, match="not an image"):
        load_region(list_regions(tmp_path)[0])
    with pytest.raises(CervrtError, match="no mask"):
        load_region(Region("w", tmp_path / "images" / "r.png", None))


def test_colour_masks_are_accepted_only_when_grey(tmp_path):
    mask = np.random.default_rng(0).integers(0, 5, (6, 6), dtype=np.uint8)
    _write(tmp_path, "r", _random_image((6, 6)))
    cv2.imwrite(str(tmp_path / "masks" / "r.png"), np.repeat(mask[..., None], 3, axis=2))
    assert np.array_equal(load_region(list_regions(tmp_path)[0])[1], mask)
    colour = np.repeat(mask[..., None], 3, axis=2)
    colour[0, 0, 1] = 4 - colour[0, 0, 0] + 1
    cv2.imwrite(str(tmp_path / "masks" / "r.png"), colour)
    with pytest.raises(CervrtError, match="greyscale"):
        load_region(list_regions(tmp_path)[0])


# --- split_regions ----------------------------------------------------------------------------


def _regions(n):
    return [Region(f"r{i}", f"images/r{i}.png", f"masks/r{i}.png") for i in range(n)]


def test_split_is_deterministic_disjoint_and_ordered():
    regions = _regions(10)
    train, val = split_regions(regions, 0.2, seed=3)
    assert (train, val) == split_regions(regions, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and set(train).isdisjoint(val)
    assert sorted(train + val, key=regions.index) == regions
    assert train == sorted(train, key=regions.index) and val == sorted(val, key=regions.index)
    assert any(split_regions(regions, 0.2, seed=s)[1] != val for s in range(4, 10))


def test_split_keeps_one_region_on_each_side():
    assert [len(part) for part in split_regions(_regions(2), 0.01)] == [1, 1]
    assert [len(part) for part in split_regions(_regions(3), 0.99)] == [1, 2]
    assert split_regions(_regions(1)) == (_regions(1), [])


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2"])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(CervrtError, match="val_fraction"):
        split_regions(_regions(4), fraction)
    with pytest.raises(CervrtError, match="no regions"):
        split_regions([], 0.2)


# --- PatchDataset -----------------------------------------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _asymmetric_mask(h, w, seed=0):
    blocks = np.random.default_rng(seed).integers(0, 5, (5, 6)).astype(np.uint8)
    mask = cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST)
    mask[:4, :] = 4  # at least this much foreground everywhere along the top
    return mask


def test_dataset_items_dtypes_shapes_and_normalisation(tmp_path, torch):
    image, mask = _random_image((100, 90)), _asymmetric_mask(100, 90)
    _write(tmp_path, "r", image, mask)
    ds = PatchDataset(list_regions(tmp_path), patch=64, stride=32, min_foreground=0.1)
    expected = extract_patches(mask, 64, 32, 0.1)
    assert [p for _, p in ds.patches] == expected and len(ds) == len(expected) > 0
    assert ds.class_counts.tolist() == np.bincount([p.label - 1 for p in expected], minlength=4).tolist()
    for index, (_, p) in enumerate(ds.patches):
        x, m, label = ds[index]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 64, 64)
        assert m.dtype == torch.int64 and tuple(m.shape) == (64, 64)
        assert label.dtype == torch.int64 and label.ndim == 0 and int(label) == p.label - 1
        crop = image[p.y : p.y + 64, p.x : p.x + 64].astype(np.float32) / 255
        undone = x.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)
        np.testing.assert_allclose(undone, crop, atol=1e-5)
        assert np.array_equal(m.numpy(), mask[p.y : p.y + 64, p.x : p.x + 64])


def test_dataset_pads_small_regions_with_glass(tmp_path, torch):
    _write(tmp_path, "small", _random_image((40, 50)), np.full((40, 50), 2, np.uint8))
    ds = PatchDataset(list_regions(tmp_path), patch=64, stride=16, min_foreground=0.2, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(ds) == 1
    x, m, label = ds[0]
    assert float(x[:, 40:, :].min()) == 1.0 and float(x[:, :, 50:].min()) == 1.0  # white
    assert int(m[40:].max()) == 0 and int(m[:, 50:].max()) == 0 and int(label) == 1


def _dihedral(array):
    for flip in (False, True):
        base = array[:, ::-1] if flip else array
        for turns in range(4):
            yield np.rot90(base, turns)


def test_augmentation_keeps_image_and_mask_aligned(tmp_path, torch):
    mask = _asymmetric_mask(96, 96, seed=2)
    image = np.repeat((mask * 60)[..., None], 3, axis=2).astype(np.uint8)  # grey level codes the class
    _write(tmp_path, "coded", image, mask)
    ds = PatchDataset(list_regions(tmp_path), patch=64, stride=32, min_foreground=0.05, augment=True,
                      mean=(0, 0, 0), std=(1, 1, 1), seed=5)
    changed = jittered = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for index, (_, p) in enumerate(ds.patches):
            x, m, _ = ds[index]
            decoded = np.rint(x.numpy().mean(axis=0) * 255 / 60).astype(np.int64)
            assert np.array_equal(decoded, m.numpy())  # image and mask moved together
            original = mask[p.y : p.y + 64, p.x : p.x + 64]
            assert any(np.array_equal(m.numpy(), t) for t in _dihedral(original))
            crop = image[p.y : p.y + 64, p.x : p.x + 64].astype(np.float32) / 255
            jitter = np.abs(x.numpy().transpose(1, 2, 0) - _match(crop, original, m.numpy())).max()
            assert jitter < 0.15  # light colour jitter only
            changed += not np.array_equal(m.numpy(), original)
            jittered += jitter > 0.005
    assert changed > 0 and jittered > 0


def _match(crop, original, moved):
    """The crop under the dihedral transform that turns ``original`` into ``moved``."""
    for image_t, mask_t in zip(_dihedral(crop), _dihedral(original), strict=True):
        if np.array_equal(mask_t, moved):
            return image_t
    raise AssertionError("no flip/rotation matches")


def test_augmentation_is_reproducible_per_seed_epoch_and_index(tmp_path, torch):
    _write(tmp_path, "r", _random_image((96, 96)), _asymmetric_mask(96, 96))
    regions = list_regions(tmp_path)
    a = PatchDataset(regions, patch=64, stride=32, min_foreground=0.05, augment=True, seed=1)
    b = PatchDataset(regions, patch=64, stride=32, min_foreground=0.05, augment=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(len(a)))
    b.set_epoch(4)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    assert torch.equal(a[-1][0], a[len(a) - 1][0])
    with pytest.raises(IndexError):
        a[len(a)]


def test_dataset_works_with_a_dataloader(tmp_path, torch):
    _write(tmp_path, "r", _random_image((96, 96)), _asymmetric_mask(96, 96))
    ds = PatchDataset(list_regions(tmp_path), patch=64, stride=32, min_foreground=0.05, augment=True)
    images, masks, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert tuple(images.shape) == (2, 3, 64, 64) and tuple(masks.shape) == (2, 64, 64) and tuple(labels.shape) == (2,)


def test_dataset_rejects_bad_settings(tmp_path, torch):
    _write(tmp_path, "r", _random_image((70, 70)), np.zeros((70, 70), np.uint8))
    regions = list_regions(tmp_path)
    assert len(PatchDataset(regions, patch=64, stride=32)) == 0  # no foreground: nothing kept
    with pytest.raises(CervrtError, match="min_foreground"):
        PatchDataset(regions, patch=64, stride=32, min_foreground=0)
    with pytest.raises(CervrtError, match="std"):
        PatchDataset(regions, patch=64, stride=32, std=(1, 0, 1))
    with pytest.raises(CervrtError, match="stride"):
        PatchDataset(regions, patch=64, stride=65)
    with pytest.raises(CervrtError, match="epoch"):
        PatchDataset(regions, patch=64, stride=32).set_epoch(-1)


# --- read_weak_labels -------------------------------------------------------------------------


def test_read_weak_labels(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("\ufeffname,labels\nslide_a,1;3\n\n slide_b , 4 \nslide_c,\"2;2;1\"\n", encoding="utf-8")
    assert read_weak_labels(path) == {"slide_a": frozenset({1, 3}), "slide_b": frozenset({4}),
                                      "slide_c": frozenset({1, 2})}


@pytest.mark.parametrize(
    "text, message",
    [("", "header"), ("slide,labels\na,1\n", "header"), ("name,labels\n", "no images"),
     ("name,labels\na,1;5\n", r"line 2: unknown class '5'"), ("name,labels\na,0\n", "unknown class '0'"),
     ("name,labels\na,x\n", "unknown class 'x'"), ("name,labels\na,1;;2\n", "unknown class ''"),
     ("name,labels\na,\n", "a has no labels"), ("name,labels\na,1\nb,2\na,3\n", "line 4: a is listed twice"),
     ("name,labels\na,1,2\n", "two fields"), ("name,labels\n,1\n", "name is empty")],
)
def test_read_weak_labels_errors(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(CervrtError, match=message):
        read_weak_labels(path)


def test_read_weak_labels_missing_file(tmp_path):
    with pytest.raises(CervrtError, match="does not exist"):
        read_weak_labels(tmp_path / "missing.csv")
