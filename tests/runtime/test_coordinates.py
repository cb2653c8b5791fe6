"""One coordinate contract (SPEC "Coordinates"): every output, read back with its own independent reader, puts
the same class on the same level-0 pixels.

A synthetic slide has shapes of known classes at known level-0 positions, at two level-0 mpps. The mask a
perfect model gives at the processing resolution (0.904 um/px) labels each processing pixel with the class
of the level-0 pixel under its centre. That mask goes through every sink (TIFF, GeoJSON, OME-Zarr, DICOM SEG
standalone and over a DICOM source); each file is read back without cervrt (tifffile, shapely, ome-zarr,
highdicom/pydicom), mapped to level-0 pixels by the geometry the file itself declares (resolution tags,
level-0 polygon coordinates, NGFF scale + translation, DICOM origin + spacing + orientation), and compared
with the mask mapped to level 0 by the contract: level-0 pixel (x, y) lies in mask pixel
(floor((y + 0.5) / d), floor((x + 0.5) / d)), d = 0.904 / mpp. A half-pixel or one-pixel offset anywhere fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.runtime.outputs import MaskWriter
from tests.support.readback import (
    geojson_on_level0,
    seg_on_level0,
    slide_geometry,
    tiff_on_level0,
    to_level0,
    zarr_on_level0,
)

TARGET = 0.904
H0, W0 = 1400, 1100  # level-0 slide size


def _level0_labels() -> np.ndarray:
    """Known shapes at known level-0 positions (odd offsets and sizes, so no grid lines up by chance)."""
    lab = np.zeros((H0, W0), np.uint8)
    lab[101:433, 57:611] = 1
    lab[205:317, 153:299] = 2  # CIN 1 inside normal
    yy, xx = np.mgrid[0:H0, 0:W0]
    lab[(yy - 800) ** 2 + (xx - 700) ** 2 < 213**2] = 3
    lab[(yy - 800) ** 2 + (xx - 700) ** 2 < 41**2] = 0  # a hole
    lab[1203:1389, 13:1087] = 4
    lab[1250:1260, 500:1000] = 0
    return lab


def _processing_mask(level0: np.ndarray, d: float) -> np.ndarray:
    """What a perfect model writes: processing pixel (i, j) takes the class under its centre."""
    h, w = max(1, round(H0 / d)), max(1, round(W0 / d))
    rows = np.minimum(np.floor((np.arange(h) + 0.5) * d).astype(int), H0 - 1)
    cols = np.minimum(np.floor((np.arange(w) + 0.5) * d).astype(int), W0 - 1)
    return level0[np.ix_(rows, cols)]


def _to_level0(mask: np.ndarray, per_pixel: float) -> np.ndarray:
    return to_level0(mask, per_pixel, H0, W0)


# --- the contract ---------------------------------------------------------------------------------


@pytest.fixture(params=[0.25, 0.5], ids=["mpp0.25", "mpp0.5"])
def case(request, tmp_path):
    mpp0 = request.param
    d = TARGET / mpp0
    level0 = _level0_labels()
    mask = _processing_mask(level0, d)
    return mpp0, d, level0, mask, tmp_path


def _write(sink, mask: np.ndarray) -> None:
    with sink as s:
        for r in range(0, mask.shape[0], 37):
            s.write(r, mask[r : r + 37])


def test_every_output_puts_each_class_on_the_same_level0_pixels(case):
    mpp0, d, level0, mask, tmp = case
    expected = _to_level0(mask, d)
    # the contract itself: away from shape borders (within d level-0 px), the truth is recovered
    from cervrt._cv import cv2

    square = np.ones((2 * int(np.ceil(d)) + 3,) * 2, np.uint8)
    border = cv2.dilate(level0, square) != cv2.erode(level0, square)
    assert (expected[~border] == level0[~border]).all()

    _write(MaskWriter(tmp / "m.tiff", *mask.shape, fmt="tiff", mpp=TARGET), mask)
    np.testing.assert_array_equal(tiff_on_level0(tmp / "m.tiff", mpp0, H0, W0), expected)

    from cervrt.runtime.geojson import GeoJsonWriter

    _write(GeoJsonWriter(tmp / "m.geojson", *mask.shape, CLASS_NAMES, PALETTE, downsample=d, mpp=TARGET,
                         band_rows=50), mask)
    np.testing.assert_array_equal(geojson_on_level0(tmp / "m.geojson", H0, W0), expected)

    pytest.importorskip("ome_zarr")
    from cervrt.runtime.ome_zarr import OmeZarrWriter

    _write(OmeZarrWriter(tmp / "m.ome.zarr", *mask.shape, CLASS_NAMES, PALETTE, mpp=TARGET, downsample=d), mask)
    np.testing.assert_array_equal(zarr_on_level0(tmp / "m.ome.zarr", mpp0, H0, W0), expected)

    pytest.importorskip("highdicom")
    from cervrt.runtime.dicom_seg import DicomSegWriter

    seg = DicomSegWriter(tmp / "m.seg", *mask.shape, CLASS_NAMES, PALETTE, downsample=d, mpp=TARGET,
                         level0_size=(W0, H0))
    _write(seg, mask)
    # the standalone SEG's source: level-0 pixel (0, 0) centred on the slide origin, cervrt's orientation
    standalone = (np.zeros(2), np.array([0.0, -1.0]), np.array([-1.0, 0.0]), mpp0 / 1e3, mpp0 / 1e3)
    np.testing.assert_array_equal(seg_on_level0(seg.files[0], standalone, H0, W0), expected)


def test_a_seg_over_a_dicom_source_lands_on_the_source_pixels(tmp_path):
    pytest.importorskip("wsidicomizer")
    pytest.importorskip("highdicom")
    import tifffile

    from cervrt.runtime.dicom_seg import DicomSegWriter
    from cervrt.runtime.dicom_slide import DicomSlide
    from tests.support.dicom_wsi import dicomize

    mpp0 = 0.5
    level0 = _level0_labels()
    rgb = np.asarray(PALETTE, np.uint8)[level0]
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib", "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(tmp_path / "s.tif") as tif:
        tif.write(rgb, resolution=(1e4 / mpp0, 1e4 / mpp0), **opts)
    with DicomSlide(dicomize(tmp_path / "s.tif", tmp_path / "dcm"), TARGET, None) as slide:
        d = slide.downsample
        mask = _processing_mask(level0, d)
        seg = DicomSegWriter(tmp_path / "m.seg", *mask.shape, CLASS_NAMES, PALETTE, downsample=d, mpp=slide.mpp,
                             source_datasets=slide.source_datasets)
        _write(seg, mask)
        source = slide_geometry(slide.source_datasets[0])
        assert (slide.width, slide.height) == mask.shape[::-1]
    np.testing.assert_array_equal(seg_on_level0(seg.files[0], source, H0, W0), _to_level0(mask, d))
