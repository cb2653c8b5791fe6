"""Slide readers on tiny synthetic files: conversions, resolution and level choice, tile reads, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import tifffile.zarr as tiffzarr

from cervrt._cv import cv2
from cervrt.errors import CervrtError
from cervrt.runtime import readers
from cervrt.runtime._tiff import TiledLevel
from cervrt.runtime.readers import open_slide, reader_names, register_reader
from cervrt.runtime.slides import ImageSlide, OpenSlideSlide, TiffSlide


def _rng_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient(h: int, w: int) -> np.ndarray:
    """A smooth RGB image: R follows x, G follows y, B constant (resampling keeps it predictable)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.dstack([xx * 200 / w + 20, yy * 200 / h + 20, np.full_like(xx, 128)]).round().astype(np.uint8)


def _png(path: Path, image: np.ndarray) -> Path:
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 and image.shape[2] == 3 else image
    assert cv2.imwrite(str(path), data)
    return path


def _pyramid(path: Path, image: np.ndarray, mpp: float | None = 0.25, factors: tuple[int, ...] = (2, 4),
             tile: int = 64, **kwargs) -> Path:
    """A tiled pyramidal TIFF (top-level reduced pages, OpenSlide's generic tiled TIFF) with resolution tags."""
    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(tile, tile), photometric="rgb", compression="zlib", **res, **kwargs)
        for f in factors:
            tif.write(image[::f, ::f], tile=(tile, tile), photometric="rgb", compression="zlib", subfiletype=1)
    return path


# --- PNG / JPEG --------------------------------------------------------------------------------


def test_png_reads_exactly_at_the_model_resolution(tmp_path):
    image = _rng_image(50, 70)
    with open_slide(_png(tmp_path / "region.png", image), target_mpp=0.9) as slide:
        assert isinstance(slide, ImageSlide)
        assert (slide.height, slide.width, slide.name) == (50, 70, "region")
        assert slide.mpp is None and slide.native_mpp is None and slide.downsample == 1.0
        np.testing.assert_array_equal(slide.read(0, 0, 50, 70), image)
        np.testing.assert_array_equal(slide.read(10, 20, 5, 6), image[10:15, 20:26])


def test_reads_past_the_edges_are_white(tmp_path):
    image = _rng_image(20, 30)
    with open_slide(_png(tmp_path / "a.png", image), 0.9) as slide:
        out = slide.read(-5, 25, 10, 10)
    assert out.shape == (10, 10, 3)
    assert (out[:5] == 255).all() and (out[:, 5:] == 255).all()
    np.testing.assert_array_equal(out[5:, :5], image[:5, 25:30])


def test_jpeg_is_read(tmp_path):
    image = _gradient(40, 60)
    path = tmp_path / "a.jpg"
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    with open_slide(path, 0.9) as slide:
        assert np.abs(slide.read(0, 0, 40, 60).astype(int) - image).max() <= 6


def test_greyscale_is_repeated_on_three_channels(tmp_path):
    grey = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    with open_slide(_png(tmp_path / "g.png", grey), 0.9) as slide:
        out = slide.read(0, 0, 12, 16)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_rgba_is_composited_on_white(tmp_path):
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[..., :3] = (0, 0, 200)  # red in BGR
    bgra[..., 3] = [[0, 255, 128], [0, 255, 128]]
    with open_slide(_png(tmp_path / "a.png", bgra), 0.9) as slide:
        out = slide.read(0, 0, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [200, 0, 0])
    np.testing.assert_array_equal(out[0, 2], [227, 127, 127])  # 200 * 128/255 + 255 * 127/255 = 227.4


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    grey = np.array([[0, 257, 65535, 32896]], np.uint16)
    with open_slide(_png(tmp_path / "a.png", grey), 0.9) as slide:
        assert slide.read(0, 0, 1, 4)[0, :, 0].tolist() == [0, 1, 255, 128]


def test_palette_png_is_looked_up(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    index = np.array([[0, 1], [2, 0]], np.uint8)
    image = pil.fromarray(index, "P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 150, 0] + [0] * 759)
    image.save(tmp_path / "p.png")
    with open_slide(tmp_path / "p.png", 0.9) as slide:
        out = slide.read(0, 0, 2, 2)
    assert [out[0, 0].tolist(), out[0, 1].tolist(), out[1, 0].tolist()] == [[10, 20, 30], [200, 0, 0], [0, 150, 0]]


def test_png_with_user_mpp_is_resampled_with_inter_area(tmp_path):
    image = _rng_image(40, 60)
    with open_slide(_png(tmp_path / "a.png", image), target_mpp=0.9, mpp=0.45) as slide:
        assert (slide.height, slide.width, slide.downsample, slide.mpp, slide.native_mpp) == (20, 30, 2.0, 0.9, 0.45)
        np.testing.assert_array_equal(slide.read(0, 0, 20, 30),
                                      cv2.resize(image, (30, 20), interpolation=cv2.INTER_AREA))
    with open_slide(tmp_path / "a.png", target_mpp=0.9, mpp=1.8) as slide:  # coarser than the model: enlarged
        assert (slide.height, slide.width) == (80, 120)


def test_thumbnail_keeps_the_aspect(tmp_path):
    with open_slide(_png(tmp_path / "a.png", _rng_image(50, 100)), 0.9) as slide:
        assert slide.thumbnail(20).shape == (10, 20, 3)
        assert slide.thumbnail(1000).shape == (50, 100, 3)  # never enlarged


def _child(code: str, **env: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return run.stdout.strip()


def test_opencv_pixel_limit_is_raised_before_cv2_is_imported():
    code = "import sys, os; import cervrt.runtime.slides, cervrt._cv as c; " \
           "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'], c.PIXEL_LIMIT, c.PIXEL_LIMIT_RAISED)"
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert run.stdout.split() == [str(1 << 40), str(1 << 40), "True"]
    run = subprocess.run([sys.executable, "-c", "import cv2; " + code], capture_output=True, text=True, check=True,
                         env=env)
    assert run.stdout.split() == [str(1 << 40), str(1 << 30), "False"]  # cv2 came first: its default stays


def test_opencv_reads_the_limit_we_pass_at_import(tmp_path):
    """The mechanism, scaled down: with the limit set to 100 pixels before cervrt imports cv2, a 20x20 PNG is
    refused and a 5x5 one read, so the value set in the environment is the one OpenCV enforces."""
    _png(tmp_path / "big.png", _rng_image(20, 20))
    _png(tmp_path / "small.png", _rng_image(5, 5))
    code = ("from cervrt.runtime.readers import open_slide; from cervrt.errors import CervrtError\n"
            f"print(open_slide({str(tmp_path / 'small.png')!r}, 0.9).width)\n"
            f"try:\n    open_slide({str(tmp_path / 'big.png')!r}, 0.9)\n"
            "except CervrtError as e:\n    print('refused', 'limit of 100' in str(e))")
    assert _child(code, OPENCV_IO_MAX_IMAGE_PIXELS="100").split() == ["5", "refused", "True"]


# --- TIFF --------------------------------------------------------------------------------------


def test_tiff_level_nearest_at_or_below_the_target(tmp_path):
    image = _gradient(400, 600)
    path = _pyramid(tmp_path / "s.tif", image, mpp=0.25)
    cases = {0.5: (1, 1.0), 0.9: (1, 1.8), 1.0: (2, 1.0), 2.0: (2, 2.0), 0.25: (0, 1.0), 0.1: (0, 0.4)}
    for target, (level, scale) in cases.items():
        with open_slide(path, target) as slide:
            assert isinstance(slide, TiffSlide)
            assert (slide.level, pytest.approx(slide._scale)) == (level, scale), target
            assert slide.native_mpp == pytest.approx(0.25) and slide.mpp == target
            assert (slide.width, slide.height) == (round(600 * 0.25 / target), round(400 * 0.25 / target))


def test_tiff_at_a_level_resolution_reads_that_level_exactly(tmp_path):
    image = _rng_image(300, 500)
    with open_slide(_pyramid(tmp_path / "s.tif", image), target_mpp=0.5) as slide:
        np.testing.assert_array_equal(slide.read(7, 11, 100, 130), image[::2, ::2][7:107, 11:141])


def test_tiff_resampling_lands_on_the_right_place(tmp_path):
    image = _gradient(400, 600)
    with open_slide(_pyramid(tmp_path / "s.tif", image), target_mpp=0.9) as slide:  # level 1, 1.8 level px per px
        out = slide.read(20, 30, 40, 50).astype(float)
    # processing pixel (y, x) is centred on level-0 pixel ((y + 0.5) * 3.6 - 0.5, ...)
    x0 = (np.arange(30, 80) + 0.5) * 3.6 - 0.5
    y0 = (np.arange(20, 60) + 0.5) * 3.6 - 0.5
    assert np.abs(out[0, :, 0] - (x0 * 200 / 600 + 20)).max() <= 1.5
    assert np.abs(out[:, 0, 1] - (y0 * 200 / 400 + 20)).max() <= 1.5


def test_overlapping_reads_agree(tmp_path):
    with open_slide(_pyramid(tmp_path / "s.tif", _rng_image(400, 600)), target_mpp=0.7) as slide:
        big = slide.read(10, 10, 80, 90).astype(int)
        small = slide.read(30, 45, 20, 25).astype(int)
    assert np.abs(big[20:40, 35:60] - small).max() <= 1


def test_tiff_reads_only_the_tiles_it_needs_and_decodes_each_once(tmp_path, monkeypatch):
    path = _pyramid(tmp_path / "s.tif", _rng_image(512, 512), factors=(), tile=64)  # 8 x 8 tiles
    keys: list[tuple[int, int]] = []
    decode = TiledLevel.decode_tile

    def spy(self, r, c):
        keys.append((r, c))
        return decode(self, r, c)

    monkeypatch.setattr(TiledLevel, "decode_tile", spy)
    with open_slide(path, target_mpp=0.25) as slide:
        keys.clear()
        slide.read(70, 70, 50, 50)  # inside tile (1, 1)
        assert keys == [(1, 1)]
        keys.clear()
        slide.read(100, 100, 60, 60)  # rows and columns 100..159: tiles (1..2, 1..2); (1, 1) is cached
        assert sorted(keys) == [(1, 2), (2, 1), (2, 2)]


def test_tiff_resolution_from_inch_tags_ome_and_user(tmp_path):
    image = _rng_image(64, 64)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, image, tile=(32, 32), photometric="rgb", resolution=(50800, 50800), resolutionunit="INCH")
    ome = tmp_path / "o.ome.tiff"
    tifffile.imwrite(ome, image, tile=(32, 32), photometric="rgb", metadata={"PhysicalSizeX": 0.3})
    dpi72 = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi72, image, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with open_slide(inch, 0.9) as a, open_slide(ome, 0.9) as b, open_slide(dpi72, 0.9) as c:
        assert a.native_mpp == pytest.approx(0.5) and b.native_mpp == pytest.approx(0.3)
        assert b.name == "o"
        assert c.native_mpp is None and c.downsample == 1.0  # 72 dpi is an editor's default, not a microscope's
    with open_slide(inch, 0.9, mpp=0.45) as d:
        assert d.native_mpp == 0.45 and d.width == 32


def test_ome_tiff_pyramid_in_subifds(tmp_path):
    image = _rng_image(256, 384)
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, tile=(64, 64), photometric="rgb", subifds=1, metadata={"PhysicalSizeX": 0.25,
                                                                                "PhysicalSizeY": 0.25})
        tif.write(image[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    with open_slide(path, target_mpp=0.5) as slide:
        assert (slide.name, slide.level, slide.native_mpp, slide.width) == ("slide", 1, 0.25, 192)
        np.testing.assert_array_equal(slide.read(3, 4, 50, 60), image[::2, ::2][3:53, 4:64])


def test_reads_from_several_threads_agree(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    corners = [(y, x) for y in range(0, 200, 40) for x in range(0, 300, 60)]
    with open_slide(_pyramid(tmp_path / "s.tif", _rng_image(400, 600)), target_mpp=0.6) as slide:
        serial = [slide.read(y, x, 64, 64) for y, x in corners]
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda c: slide.read(c[0], c[1], 64, 64), corners))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)


def test_strip_tiff_and_conversions(tmp_path):
    grey16 = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", grey16, rowsperstrip=7)
    with open_slide(tmp_path / "g.tif", 0.9) as slide:
        out = slide.read(0, 0, 30, 40)
    np.testing.assert_array_equal(out[..., 0], cv2.convertScaleAbs(grey16, alpha=255 / 65535))
    assert (out[..., 0] == out[..., 2]).all()
    rgba = np.dstack([_rng_image(16, 16), np.zeros((16, 16), np.uint8)])
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    with open_slide(tmp_path / "a.tif", 0.9) as slide:
        assert (slide.read(0, 0, 16, 16) == 255).all()  # fully transparent is glass


def test_uncompressed_single_strip_tiff_is_read_row_by_row(tmp_path, monkeypatch):
    image = _rng_image(120, 90)
    tifffile.imwrite(tmp_path / "u.tif", image, photometric="rgb")  # one uncompressed strip
    grey16 = (np.arange(50 * 40).reshape(50, 40) * 30).astype(np.uint16)
    tifffile.imwrite(tmp_path / "be.tif", grey16, byteorder=">")  # big-endian samples
    monkeypatch.setattr(tiffzarr.ZarrTiffStore, "get", None)  # any zarr read would fail
    with open_slide(tmp_path / "u.tif", 0.9) as slide:
        np.testing.assert_array_equal(slide.read(30, 20, 60, 50), image[30:90, 20:70])
    with open_slide(tmp_path / "be.tif", 0.9) as slide:
        np.testing.assert_array_equal(slide.read(0, 0, 50, 40)[..., 1], cv2.convertScaleAbs(grey16, alpha=255 / 65535))


def test_compressed_giant_strips_are_refused(tmp_path, monkeypatch):
    from cervrt.runtime import _tiff

    monkeypatch.setattr(_tiff, "MAX_CHUNK_BYTES", 1000)
    tifffile.imwrite(tmp_path / "z.tif", _rng_image(100, 100), photometric="rgb", compression="zlib",
                     rowsperstrip=100)
    with pytest.raises(CervrtError, match="save it as a tiled TIFF"):
        open_slide(tmp_path / "z.tif", 0.9)


def test_tiff_thumbnail_uses_a_coarse_level(tmp_path):
    image = _gradient(400, 600)
    with open_slide(_pyramid(tmp_path / "s.tif", image), 0.25) as slide:
        thumb = slide.thumbnail(150)
    assert thumb.shape == (100, 150, 3)
    expected = cv2.resize(image, (150, 100), interpolation=cv2.INTER_AREA)
    assert np.abs(thumb.astype(int) - expected).max() <= 3


# --- OpenSlide ---------------------------------------------------------------------------------


def test_openslide_reads_a_generic_tiled_tiff_like_tifffile(tmp_path):
    pytest.importorskip("openslide")
    path = _pyramid(tmp_path / "s.tif", _rng_image(300, 400), mpp=0.25, tile=256)
    with OpenSlideSlide(path, 0.6, None) as osr, TiffSlide(path, 0.6, None) as tif:
        assert osr.native_mpp == pytest.approx(0.25)
        assert (osr.level, osr.width, osr.height) == (tif.level, tif.width, tif.height) == (1, 167, 125)
        np.testing.assert_array_equal(osr.read(-3, 5, 40, 60), tif.read(-3, 5, 40, 60))
        assert osr.thumbnail(64).shape == (48, 64, 3)


def test_missing_openslide_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide now raises ImportError
    (tmp_path / "x.svs").write_bytes(b"II*\0" + bytes(100))
    with pytest.raises(CervrtError, match=r'pip install "cervrt\[wsi\]"'):
        open_slide(tmp_path / "x.svs", 0.9)


# --- bad input ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nope.png", "does not exist"),
    (lambda d: _write(d / "e.png", b""), "is empty"),
    (lambda d: d, "is a directory"),
    (lambda d: _write(d / "c.png", os.urandom(300)), "corrupt"),
    (lambda d: _cut(_png(d / "t.png", _rng_image(60, 60)), 0.5), "corrupt or truncated"),
    (lambda d: _write(d / "b.bmp", b"BM" + bytes(60)), "unsupported suffix .bmp"),
    (lambda d: _write(d / "c.tif", os.urandom(300)), "not a readable TIFF"),
    (lambda d: _cut(_pyramid(d / "t.tif", _rng_image(256, 256)), 0.5), "truncated"),
    (lambda d: _write(d / "c.svs", os.urandom(300)), "cannot read"),
])
def test_bad_files_raise_one_clear_error(tmp_path, make, message):
    with pytest.raises(CervrtError, match=message):
        open_slide(make(tmp_path), 0.9)


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / "t.jpg"
    assert cv2.imwrite(str(path), _rng_image(64, 64))
    with pytest.raises(CervrtError, match="corrupt or truncated"):
        open_slide(_cut(path, 0.5), 0.9)


@pytest.mark.parametrize("target, mpp", [(0, None), (-1, None), (float("nan"), None), (0.9, 0)])
def test_bad_resolution_is_refused(tmp_path, target, mpp):
    with pytest.raises(CervrtError, match="positive number of microns"):
        open_slide(_png(tmp_path / "a.png", _rng_image(4, 4)), target, mpp)


def test_bad_read_size_is_refused(tmp_path):
    with open_slide(_png(tmp_path / "a.png", _rng_image(4, 4)), 0.9) as slide, pytest.raises(CervrtError):
        slide.read(0, 0, 0, 4)


# --- the reader registry -----------------------------------------------------------------------


@pytest.fixture
def fresh_readers(monkeypatch):
    monkeypatch.setattr(readers, "_READERS", list(readers._READERS))


def test_a_registered_reader_may_claim_a_directory(tmp_path, fresh_readers):
    folder = tmp_path / "slide_dicom"
    folder.mkdir()
    _png(folder / "frame.png", _rng_image(40, 50))
    register_reader("folder", lambda p: p.is_dir() and (p / "frame.png").exists(),
                    lambda p, target, mpp: ImageSlide(p / "frame.png", target, mpp))
    assert reader_names() == ("image", "tiff", "openslide", "dicom", "folder")
    with open_slide(folder, 0.9) as slide:
        assert (slide.width, slide.height) == (50, 40)
    with pytest.raises(CervrtError, match=r"is a directory no slide reader opens.*readers: image, tiff, openslide"):
        open_slide(tmp_path, 0.9)


def test_readers_are_asked_in_order_and_first_goes_before_the_builtins(tmp_path, fresh_readers):
    path = _png(tmp_path / "a.png", _rng_image(30, 30))
    seen = []
    register_reader("spy", lambda p: seen.append(p) or False, ImageSlide)
    with open_slide(path, 0.9):
        assert seen == []  # the built-in image reader claimed it first
    register_reader("spy", lambda p: True, lambda p, target, mpp: "claimed", first=True)
    assert reader_names()[0] == "spy" and reader_names().count("spy") == 1
    assert open_slide(path, 0.9) == "claimed"
    with pytest.raises(CervrtError, match="a reader needs a name"):
        register_reader("", lambda p: True, ImageSlide)
