"""DICOM WSI reader: a series made by an independent converter (wsidicomizer) from a TIFF reads as the TIFF does."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cervrt.errors import CervrtError

pytest.importorskip("wsidicom")
pydicom = pytest.importorskip("pydicom")

from cervrt.runtime.dicom_slide import DicomSlide, is_dicom_slide  # noqa: E402
from cervrt.runtime.slides import TiffSlide  # noqa: E402
from tests.support.dicom_wsi import MPP, dicomize, make_tiff  # noqa: E402


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dicom")
    tif = root / "slide.tif"
    make_tiff(tif)
    return tif, dicomize(tif, root / "raw")


@pytest.mark.parametrize("target", [MPP, 0.904, 2.0])
def test_reads_the_pixels_of_the_source_tiff(series, target):
    tif, folder = series
    assert is_dicom_slide(folder)
    with DicomSlide(folder, target, None) as dcm, TiffSlide(tif, target, None) as ref:
        assert (dcm.width, dcm.height, dcm.mpp, dcm.native_mpp) == (ref.width, ref.height, ref.mpp, ref.native_mpp)
        assert dcm.level == ref.level and len(dcm.source_datasets) >= 1
        np.testing.assert_array_equal(dcm.read(-5, 7, dcm.height + 10, dcm.width - 3),
                                      ref.read(-5, 7, ref.height + 10, ref.width - 3))
        np.testing.assert_array_equal(dcm.thumbnail(300), ref.thumbnail(300))


@pytest.mark.slow
def test_jpeg2000_and_jpeg_series(series, tmp_path):
    tif, _ = series
    with TiffSlide(tif, MPP, None) as ref:
        expected = ref.read(0, 0, ref.height, ref.width)
    with DicomSlide(dicomize(tif, tmp_path / "j2k", "j2k"), MPP, None) as dcm:
        np.testing.assert_array_equal(dcm.read(0, 0, dcm.height, dcm.width), expected)
    with DicomSlide(dicomize(tif, tmp_path / "jpeg", "jpeg"), MPP, None) as dcm:
        got = dcm.read(0, 0, dcm.height, dcm.width).astype(float)
    blocks = lambda a: a.reshape(75, 20, 60, 20, 3).mean(axis=(1, 3))  # noqa: E731
    assert np.abs(blocks(got) - blocks(expected.astype(float))).max() < 3  # lossy, same picture on the same grid


def test_one_file_of_the_series_is_a_slide(series):
    _, folder = series
    base = max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)
    with DicomSlide(base, MPP, None) as dcm:
        assert (dcm.width, dcm.height) == (1200, 1500)


def test_two_series_no_pixels_no_wsi_and_truncated_frames_are_refused(series, tmp_path):
    tif, folder = series
    two = tmp_path / "two"
    shutil.copytree(folder, two)
    dicomize(tif, tmp_path / "other")
    for f in (tmp_path / "other").glob("*.dcm"):
        shutil.copy(f, two / f"b{f.name}")
    with pytest.raises(CervrtError, match="2 DICOM WSI series"):
        DicomSlide(two, MPP, None)

    base = max(folder.glob("*.dcm"), key=lambda p: p.stat().st_size)
    nopix = tmp_path / "nopix"
    nopix.mkdir()
    ds = pydicom.dcmread(base)
    del ds.PixelData
    ds.save_as(nopix / "a.dcm")
    with pytest.raises(CervrtError, match="without pixel data"):
        DicomSlide(nopix, MPP, None)

    other = tmp_path / "notwsi"
    other.mkdir()
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(other / "a.dcm", enforce_file_format=True)
    with pytest.raises(CervrtError, match="no DICOM whole-slide image"):
        DicomSlide(other, MPP, None)

    cut = tmp_path / "cut"
    shutil.copytree(folder, cut)
    victim = max(cut.glob("*.dcm"), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CervrtError, match=r"corrupt|truncated|cannot"):
        with DicomSlide(cut, MPP, None) as dcm:
            dcm.read(0, 0, dcm.height, dcm.width)
