"""Outputs: the format registry, mask writers (PNG, pyramidal TIFF) round trips and atomicity, thumbnail,
overlay."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cervrt._cv import cv2
from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import CervrtError
from cervrt.runtime import outputs
from cervrt.runtime.outputs import (
    PNG_MAX_PIXELS,
    LabelThumbnail,
    MaskFormat,
    MaskSink,
    MaskWriter,
    output_format,
    output_formats,
    register_output,
    write_overlay,
)


def _labels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blocky labels 0..4 (8 x 8 blocks) so that subsampled levels are checkable."""
    blocks = np.random.default_rng(seed).integers(0, 5, (-(-h // 8), -(-w // 8)), dtype=np.uint8)
    return np.kron(blocks, np.ones((8, 8), np.uint8))[:h, :w]


def _stream(writer, mask: np.ndarray, sizes=(37, 100, 1, 64)) -> None:
    row, i = 0, 0
    while row < mask.shape[0]:
        n = sizes[i % len(sizes)]
        writer.write(row, mask[row : row + n])
        row, i = row + min(n, mask.shape[0] - row), i + 1


def test_png_mask_round_trip(tmp_path):
    mask = _labels(300, 410)
    with MaskWriter(tmp_path / "m.png", 300, 410, "png") as writer:
        _stream(writer, mask)
        assert not (tmp_path / "m.png").exists()  # nothing in place before close
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED), mask)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_tiff_mask_round_trip_with_levels(tmp_path):
    mask = _labels(700, 1100)
    with MaskWriter(tmp_path / "m.tiff", 700, 1100, "tiff", mpp=0.904) as writer:
        _stream(writer, mask)
    assert [p.name for p in tmp_path.iterdir()] == ["m.tiff"]  # the raw row file is gone
    with tifffile.TiffFile(tmp_path / "m.tiff") as tif:
        levels = tif.series[0].levels
        np.testing.assert_array_equal(levels[0].asarray(), mask)
        assert [lv.shape for lv in levels] == [(700, 1100), (350, 550), (175, 275), (88, 138)]
        for f, level in zip((2, 4, 8), levels[1:], strict=True):
            np.testing.assert_array_equal(level.asarray(), mask[::f, ::f])  # nearest neighbour: labels kept
        page = tif.pages[0]
        assert (page.tilelength, page.tilewidth, page.compression) == (256, 256, tifffile.COMPRESSION.ADOBE_DEFLATE)
        num, den = page.tags["XResolution"].value
        assert 1e4 * den / num == pytest.approx(0.904)


def test_tiff_level0_is_tiled_while_rows_arrive_and_an_abort_leaves_nothing(tmp_path):
    import threading

    mask = _labels(700, 1100)
    writer = MaskWriter(tmp_path / "m.tiff", 700, 1100, "tiff")
    writer.write(0, mask[:600])  # two whole strips of 256 rows: their tiles are written now
    tiles = next(t for t in threading.enumerate() if t.name == "cervrt-mask-tiles")
    assert tiles.is_alive()
    with pytest.raises(CervrtError, match="incomplete: 600 of 700 rows"):
        writer.close()
    assert not tiles.is_alive() and list(tmp_path.iterdir()) == []  # no TIFF, temporary file or row file


def test_tiff_mask_opens_in_openslide(tmp_path):
    openslide = pytest.importorskip("openslide")
    mask = _labels(600, 700)
    with MaskWriter(tmp_path / "m.tif", 600, 700, "tiff", mpp=0.5) as writer:
        _stream(writer, mask)
    with openslide.OpenSlide(str(tmp_path / "m.tif")) as osr:
        assert osr.level_dimensions == ((700, 600), (350, 300), (175, 150))
        region = np.asarray(osr.read_region((0, 0), 0, (700, 600)))[..., 0]
    np.testing.assert_array_equal(region, mask)


def test_png_refuses_over_2_30_pixels_without_allocating(tmp_path):
    with pytest.raises(CervrtError, match="use the tiff format"):
        MaskWriter(tmp_path / "m.png", 40_000, 40_000, "png")


@pytest.mark.parametrize("fmt", ["png", "tiff"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_mid_write_leaves_nothing(tmp_path, fmt, error):
    mask = _labels(300, 300)
    with pytest.raises(error), MaskWriter(tmp_path / f"m.{fmt}", 300, 300, fmt) as writer:
        writer.write(0, mask[:100])
        raise error("stop")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_an_incomplete_mask_is_refused_and_removed(tmp_path, fmt):
    writer = MaskWriter(tmp_path / f"m.{fmt}", 300, 300, fmt)
    writer.write(0, _labels(100, 300))
    with pytest.raises(CervrtError, match="incomplete: 100 of 300 rows"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


def test_rows_must_arrive_in_order_with_the_right_shape(tmp_path):
    with MaskWriter(tmp_path / "m.tiff", 20, 10, "tiff") as writer:
        with pytest.raises(CervrtError, match="expected row 0, got 5"):
            writer.write(5, np.zeros((5, 10), np.uint8))
        with pytest.raises(CervrtError, match=r"uint8 \(n, 10\)"):
            writer.write(0, np.zeros((5, 11), np.uint8))
        with pytest.raises(CervrtError, match="past the mask"):
            writer.write(0, np.zeros((21, 10), np.uint8))
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(CervrtError, match="png, tiff"):
        MaskWriter(tmp_path / "m.bmp", 4, 4, "bmp")


def test_label_thumbnail_is_a_nearest_neighbour_subsample():
    mask = _labels(1000, 730)
    thumb = LabelThumbnail(1000, 730, max_side=300)
    assert thumb.step == 4
    _stream(thumb, mask, sizes=(33, 70, 5))
    np.testing.assert_array_equal(thumb.labels, mask[::4, ::4])


def test_overlay_has_the_legend_colours_and_leaves_background_alone(tmp_path):
    thumb = np.full((200, 300, 3), (235, 200, 220), np.uint8)
    labels = np.zeros((100, 150), np.uint8)
    labels[20:60, 20:60] = 2
    labels[50:90, 90:140] = 4
    write_overlay(tmp_path / "o.jpg", thumb, labels, PALETTE, CLASS_NAMES)
    image = cv2.cvtColor(cv2.imread(str(tmp_path / "o.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    assert image.shape[1] == 300 and image.shape[0] > 200  # legend strip beneath
    assert np.abs(image[5:30, 200:290] - (235, 200, 220)).max() <= 6  # background: the slide unchanged
    cin1 = np.rint(0.55 * np.array([235, 200, 220]) + 0.45 * np.array([0, 255, 0]))
    assert np.abs(image[80, 80] - cin1).max() <= 6  # blended, inside the CIN 1 square
    legend = image[200:]
    for colour in ((0, 255, 0), (0, 0, 255), (255, 0, 0)):
        assert (np.abs(legend - colour).max(axis=2) <= 40).sum() > 20, colour


def test_overlay_refuses_a_mismatched_palette(tmp_path):
    with pytest.raises(CervrtError, match="2 colours for 5 class names"):
        write_overlay(tmp_path / "o.jpg", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8),
                      PALETTE[:2], CLASS_NAMES)
    assert list(tmp_path.iterdir()) == []


# --- the format registry -----------------------------------------------------------------------


class _NpySink(MaskSink):
    """A third-party format: the mask as .npy inside a folder, beside a side-car file."""

    def __init__(self, path, height, width, mpp):
        super().__init__(path, height, width, mpp)
        self.mask = np.zeros((height, width), np.uint8)

    def write(self, first_row, labels):
        self.mask[first_row : first_row + labels.shape[0]] = labels

    def finish(self):
        self.path.mkdir()
        np.save(self.path / "labels.npy", self.mask)

    def abort(self):
        self.mask = None


def test_the_builtin_formats_and_their_paths(tmp_path):
    assert output_formats() == ("png", "tiff", "dicom-seg", "ome-zarr")
    assert MaskFormat.DICOM_SEG.paths(tmp_path, "s1") == {"mask": tmp_path / "s1.seg"} and MaskFormat.DICOM_SEG.context
    assert MaskFormat("png") is MaskFormat.PNG and str(MaskFormat.TIFF) == "tiff"
    assert MaskFormat.PNG.paths(tmp_path, "s1") == {"mask": tmp_path / "s1.mask.png"}
    assert output_format("png", 1, PNG_MAX_PIXELS + 1) is MaskFormat.TIFF
    assert output_format(MaskFormat.TIFF, 1 << 20, 1 << 20) is MaskFormat.TIFF


def test_a_registered_format_declares_its_own_paths_and_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_OUTPUTS", dict(outputs._OUTPUTS))
    spec = register_output("npyzarr", _NpySink, paths=lambda out, name: {"mask": out / f"{name}.labels"})
    assert output_formats() == ("png", "tiff", "dicom-seg", "ome-zarr", "npyzarr") and MaskFormat("npyzarr") is spec
    path = spec.paths(tmp_path, "s1")["mask"]
    mask = _labels(20, 30)
    with MaskWriter(path, 20, 30, fmt="npyzarr") as writer:
        _stream(writer, mask)
    assert np.array_equal(np.load(path / "labels.npy"), mask)
    with pytest.raises(CervrtError, match="needs a short name"):
        register_output("no such", _NpySink)
