"""OME-Zarr label sink: read back with ome-zarr-py (pyramid, colours, class names), atomic, bounded rows."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import CervrtError

pytest.importorskip("ome_zarr")
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader

from cervrt.runtime.ome_zarr import LABEL_NAME, OmeZarrWriter


def read_label_image(path) -> tuple[list[np.ndarray], dict]:
    """The levels and metadata of the store's label image, through ome-zarr's reader."""
    nodes = [n for n in Reader(parse_url(str(path / "labels" / LABEL_NAME)))() if n.specs and
             any(isinstance(s, Label) for s in n.specs)]
    assert len(nodes) == 1
    return [np.asarray(d) for d in nodes[0].data], nodes[0].metadata


def _mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h), rng.integers(0, w)
        mask[y : y + rng.integers(5, 300), x : x + rng.integers(5, 300)] = rng.integers(1, 5)
    return mask


def test_pyramid_colours_and_class_names_read_back(tmp_path):
    mask = _mask(1300, 1100)
    path = tmp_path / "s.ome.zarr"
    with OmeZarrWriter(path, *mask.shape, CLASS_NAMES, PALETTE, mpp=0.904, downsample=3.616) as w:
        for r in range(0, mask.shape[0], 77):  # chunks not aligned with the zarr chunks
            w.write(r, mask[r : r + 77])
    levels, meta = read_label_image(path)
    assert len(levels) == 3  # 1300 -> 650 -> 325 (fits one 512 chunk)
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, mask[:: 2**k, :: 2**k])
    assert meta["color"][2] == pytest.approx([0, 1, 0, 1])  # CIN 1 green, as rgba in 0..1
    assert meta["properties"][4]["class"] == "CIN 3"
    import zarr

    group = zarr.open_group(str(path / "labels" / LABEL_NAME), mode="r")
    ms = group.attrs["ome"]["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        pytest.approx([0.904 * f] * 2) for f in (1, 2, 4)]
    level0_mpp = 0.904 / 3.616  # translation: (F - 1) / 2 level-0 pixels, F = 3.616 * f
    assert [d["coordinateTransformations"][1]["translation"] for d in ms["datasets"]] == [
        pytest.approx([level0_mpp * (3.616 * f - 1) / 2] * 2) for f in (1, 2, 4)]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert zarr.open_group(str(path), mode="r").attrs["cervrt"]["downsample"] == pytest.approx(3.616)
    assert sorted(os.listdir(tmp_path)) == ["s.ome.zarr"]


def test_replaces_a_previous_store_and_errors_leave_nothing(tmp_path):
    path = tmp_path / "s.ome.zarr"
    for value in (1, 2):
        with OmeZarrWriter(path, 10, 10, CLASS_NAMES, PALETTE) as w:
            w.write(0, np.full((10, 10), value, np.uint8))
    assert read_label_image(path)[0][0].max() == 2 and sorted(os.listdir(tmp_path)) == ["s.ome.zarr"]
    with pytest.raises(CervrtError, match="incomplete"):
        with OmeZarrWriter(tmp_path / "t.ome.zarr", 10, 10, CLASS_NAMES, PALETTE) as w:
            w.write(0, np.zeros((3, 10), np.uint8))
    with pytest.raises(CervrtError, match="uint8"):
        with OmeZarrWriter(tmp_path / "t.ome.zarr", 10, 10, CLASS_NAMES, PALETTE) as w:
            w.write(0, np.zeros((3, 9), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["s.ome.zarr"]
