"""Slide thumbnails: read in parallel bands, and JPEG tiles decoded at a reduced scale where that is enough."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cervrt.errors import SlideError
from cervrt.runtime import slides
from cervrt.runtime._tiff import TiledLevel
from cervrt.runtime.slides import TiffSlide
from cervrt.runtime.tissue import tissue_mask
from tests.support.tiny_onnx import MPP, tissue_image


def _jpeg_tiff(path, image, compression="jpeg"):
    """One tiled level (no pyramid: the thumbnail comes from level 0), YCbCr JPEG by default."""
    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(64, 64), photometric="rgb", compression=compression, **res)
    return path


@pytest.fixture
def image():
    return tissue_image(np.random.default_rng(3), 1100, 900)


def _full_decode_thumbnail(path, side, monkeypatch):
    with monkeypatch.context() as m, TiffSlide(path, MPP, None) as slide:
        m.setattr(TiledLevel, "reducible", property(lambda self: False))
        return slide.thumbnail(side)


def test_a_jpeg_thumbnail_decoded_small_looks_like_the_full_decode(image, tmp_path, monkeypatch):
    path = _jpeg_tiff(tmp_path / "slide.tif", image)
    calls = []
    reduced = TiledLevel.reduced
    monkeypatch.setattr(TiledLevel, "reduced", lambda self, *a: calls.append(a) or reduced(self, *a))
    with TiffSlide(path, MPP, None) as slide:
        assert slide.read_rows == 64
        small = slide.thumbnail(200)  # 1100 / 200 = 5.5: decoded at 1/2 (4 x 1.5 > 5.5)
    assert small.shape == (200, 164, 3) and {a[2] for a in calls} == {2}
    full = _full_decode_thumbnail(path, 200, monkeypatch)
    difference = np.abs(small.astype(int) - full)
    assert difference.mean() < 3 and np.percentile(difference, 99) < 24  # measured: 1.5 and 6
    assert (tissue_mask(small)[0] == tissue_mask(full)[0]).mean() > 0.98  # measured: 0.990 (0.9996 on real H&E)


def test_other_compressions_are_decoded_in_full(image, tmp_path, monkeypatch):
    path = _jpeg_tiff(tmp_path / "slide.tif", image, compression="zlib")
    monkeypatch.setattr(TiledLevel, "reduced", lambda *a: pytest.fail("zlib tiles have no reduced decode"))
    with TiffSlide(path, MPP, None) as slide:
        thumb = slide.thumbnail(200)
    assert thumb.shape == (200, 164, 3)


@pytest.mark.parametrize("readers", [1, 2])
def test_bands_read_at_once_give_the_same_thumbnail(image, tmp_path, monkeypatch, readers):
    path = _jpeg_tiff(tmp_path / "slide.tif", image, compression="zlib")
    monkeypatch.setattr(slides, "_THUMBNAIL_ALIGN", 128)  # several bands even on a small slide
    monkeypatch.setattr(slides, "_BAND_BYTES", 128 * 900 * 3)
    monkeypatch.setattr(slides, "THUMBNAIL_READERS", readers)
    with TiffSlide(path, MPP, None) as slide:
        got = slide.thumbnail(200)
    monkeypatch.setattr(slides, "THUMBNAIL_READERS", 1)
    with TiffSlide(path, MPP, None) as slide:
        np.testing.assert_array_equal(got, slide.thumbnail(200))


def test_a_corrupt_jpeg_tile_in_the_thumbnail_is_named(image, tmp_path):
    path = _jpeg_tiff(tmp_path / "slide.tif", image)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = 5 * -(-page.imagewidth // page.tilewidth) + 3
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    with TiffSlide(path, MPP, None) as slide, pytest.raises(SlideError) as error:
        slide.thumbnail(200)
    message = str(error.value)
    assert "\n" not in message and "level 0 tile row 5, column 3" in message and "pixels y 320-383" in message
