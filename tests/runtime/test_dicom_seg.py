"""DICOM SEG sink: read back with highdicom/pydicom (segments, colours, algorithm, pyramid, geometry, references)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import CervrtError

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from cervrt.runtime.dicom_seg import DicomSegWriter, segment_classes  # noqa: E402


def read_seg_labels(path) -> np.ndarray:
    """The class of every pixel of one SEG instance, through highdicom (segment number -> label -> class)."""
    seg = hd.seg.segread(path)
    numbers = seg.get_total_pixel_matrix(combine_segments=True, skip_overlap_checks=True)
    lut = np.zeros(256, np.uint8)
    for number, name in segment_classes(seg).items():
        if name in CLASS_NAMES:
            lut[number] = CLASS_NAMES.index(name)
    return lut[numbers]


def _mask() -> np.ndarray:
    mask = np.zeros((700, 600), np.uint8)
    mask[100:300, 50:400] = 2
    mask[400:650, 300:550] = 4
    mask[420:430, 320:330] = 0
    return mask


def test_standalone_seg_pyramid_segments_and_geometry(tmp_path):
    mask = _mask()
    path = tmp_path / "s.seg"
    with DicomSegWriter(path, *mask.shape, CLASS_NAMES, PALETTE, downsample=2.0, mpp=0.904, model_arch="hspnet_r34",
                        model_sha256="ab" * 32) as w:
        for r in range(0, mask.shape[0], 64):
            w.write(r, mask[r : r + 64])
    assert [f.name for f in w.files] == ["level-0.dcm", "level-1.dcm", "level-2.dcm"]
    assert sorted(os.listdir(tmp_path)) == ["s.seg"]
    pyramid, series = set(), set()
    for level, f in enumerate(w.files):
        np.testing.assert_array_equal(read_seg_labels(f), mask[:: 2**level, :: 2**level])
        ds = pydicom.dcmread(f)
        pyramid.add(ds.PyramidUID)
        series.add(ds.SeriesInstanceUID)
        assert ds.Rows == ds.Columns == 256
        spacing = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
        assert spacing == pytest.approx([0.904e-3 * 2**level] * 2)  # mm per SEG pixel
    assert len(pyramid) == len(series) == 1
    ds = pydicom.dcmread(w.files[0])
    assert ds.SegmentationType == "LABELMAP"
    labels = {s.SegmentLabel: s for s in ds.SegmentSequence if s.SegmentLabel in CLASS_NAMES}
    assert sorted(labels) == ["CIN 1", "CIN 3"]  # one segment per class present
    cin3 = labels["CIN 3"]
    assert hd.color.CIELabColor.from_dicom_value(cin3.RecommendedDisplayCIELabValue).to_rgb() == pytest.approx(
        (255, 0, 0), abs=2)
    algo = cin3.SegmentationAlgorithmIdentificationSequence[0]
    assert cin3.SegmentAlgorithmName == "cervrt hspnet_r34"
    assert "model_sha256=" + "ab" * 32 in algo.AlgorithmParameters


def test_seg_references_its_dicom_source(tmp_path):
    pytest.importorskip("wsidicomizer")
    from cervrt.runtime.dicom_slide import DicomSlide
    from tests.support.dicom_wsi import dicomize, make_tiff

    make_tiff(tmp_path / "s.tif", 600, 500)
    with DicomSlide(dicomize(tmp_path / "s.tif", tmp_path / "dcm"), 1.0, None) as slide:
        mask = np.zeros((slide.height, slide.width), np.uint8)
        mask[20:100, 30:200] = 3
        path = tmp_path / "s.seg"
        with DicomSegWriter(path, *mask.shape, CLASS_NAMES, PALETTE, downsample=slide.downsample, mpp=slide.mpp,
                            source_datasets=slide.source_datasets) as w:
            w.write(0, mask)
        source = slide.source_datasets[0]
    ds = pydicom.dcmread(w.files[0])
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    src_spacing = float(source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    spacing = float(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing[0])
    assert spacing == pytest.approx(src_spacing * 2)  # 0.5 um slide read at 1.0 um
    np.testing.assert_array_equal(read_seg_labels(w.files[0]), mask)


def test_empty_mask_incomplete_rows_and_too_big_for_one_instance(tmp_path, monkeypatch):
    path = tmp_path / "e.seg"
    with DicomSegWriter(path, 40, 30, CLASS_NAMES, PALETTE) as w:
        w.write(0, np.zeros((40, 30), np.uint8))
    assert read_seg_labels(w.files[0]).max() == 0
    with pytest.raises(CervrtError, match="incomplete"):
        with DicomSegWriter(tmp_path / "i.seg", 40, 30, CLASS_NAMES, PALETTE) as w:
            w.write(0, np.zeros((10, 30), np.uint8))
    import cervrt.runtime.dicom_seg as module

    monkeypatch.setattr(module.DicomSegWriter, "_transfer_syntax", lambda self: str(pydicom.uid.ExplicitVRLittleEndian))
    with pytest.raises(CervrtError, match="4 GiB"):
        DicomSegWriter(tmp_path / "big.seg", 70_000, 70_000, CLASS_NAMES, PALETTE)
    assert sorted(os.listdir(tmp_path)) == ["e.seg"]


def test_a_missing_extra_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    import sys

    from cervrt.runtime.dicom_slide import DicomSlide
    from cervrt.runtime.ome_zarr import OmeZarrWriter

    for module in ("highdicom", "wsidicom", "ome_zarr.writer"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(CervrtError, match=r'pip install "cervrt\[dicom\]"'):
        DicomSegWriter(tmp_path / "x.seg", 10, 10, CLASS_NAMES, PALETTE)
    with pytest.raises(CervrtError, match=r'pip install "cervrt\[dicom\]"'):
        DicomSlide(tmp_path, 0.9, None)
    with pytest.raises(CervrtError, match=r'pip install "cervrt\[zarr\]"'):
        OmeZarrWriter(tmp_path / "x.ome.zarr", 10, 10, CLASS_NAMES, PALETTE)
    assert os.listdir(tmp_path) == []
