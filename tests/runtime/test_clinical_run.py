"""Slide runs with the clinical formats: a DICOM WSI in, several mask formats and the streamed GeoJSON out,
the report's paths, sizes, mpp and provenance; every output of one run lands on the same level-0 pixels."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.predictor import Predictor
from tests.support.tiny_onnx import save_tiny_model

pytest.importorskip("wsidicom")
pytest.importorskip("highdicom")
pytest.importorskip("ome_zarr")
pytest.importorskip("wsidicomizer")

from tests.support.dicom_wsi import MPP, dicomize, make_tiff
from tests.support.readback import (
    geojson_on_level0,
    seg_on_level0,
    slide_geometry,
    tiff_on_level0,
    zarr_on_level0,
)

H0, W0 = 700, 560


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("clinical")
    tif = root / "s.tif"
    make_tiff(tif, H0, W0)
    return save_tiny_model(root / "tiny.onnx"), tif, dicomize(tif, root / "dcm")


def _predictor(model: Path) -> Predictor:
    return Predictor(model, PredictorConfig(device="cpu", tissue_threshold=0.0, stride=32))


def test_a_dicom_slide_gives_the_mask_of_its_source_tiff(setup, tmp_path):
    import tifffile

    model, tif, folder = setup
    with _predictor(model) as p:
        a = p.predict_slide(tif, tmp_path / "a", fmt="tiff")
        b = p.predict_slide(folder, tmp_path / "b", fmt="tiff")
    assert b.name == "dcm"
    np.testing.assert_array_equal(tifffile.imread(a.paths["mask"], key=0), tifffile.imread(b.paths["mask"], key=0))
    assert (b.report["width"], b.report["height"]) == (a.report["width"], a.report["height"])


def test_every_format_of_one_run_lands_on_the_same_level0_pixels(setup, tmp_path):
    model, _, folder = setup
    with _predictor(model) as p:
        result = p.predict_slide(folder, tmp_path, fmt=("tiff", "ome-zarr", "dicom-seg"), geojson=True)
    r = result.report
    assert r["level0"] == {"width": W0, "height": H0} and r["mpp_assumed"] is False
    assert all(Path(v).is_absolute() and Path(v).exists() for v in r["outputs"].values())
    assert r["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert r["model"]["path"] == str(model.resolve()) and r["model"]["cervrt_version"]
    paths = result.paths
    expected = tiff_on_level0(paths["mask"], MPP, H0, W0)
    assert len(np.unique(expected)) > 1  # the tiny model gives more than one class here
    np.testing.assert_array_equal(zarr_on_level0(paths["mask.ome-zarr"], MPP, H0, W0), expected)
    np.testing.assert_array_equal(geojson_on_level0(paths["geojson"], H0, W0), expected)
    import pydicom

    seg = sorted(paths["mask.dicom-seg"].glob("level-*.dcm"))[0]
    source = pydicom.dcmread(max(folder.glob("*.dcm"), key=lambda f: f.stat().st_size), stop_before_pixels=True)
    assert pydicom.dcmread(seg).FrameOfReferenceUID == source.FrameOfReferenceUID
    np.testing.assert_array_equal(seg_on_level0(seg, slide_geometry(source), H0, W0), expected)


def test_a_slide_without_mpp_is_flagged_and_can_be_refused(setup, tmp_path):
    import tifffile

    from cervrt.imageio import write_png

    model, tif, _folder = setup

    png = tmp_path / "p.png"
    write_png(png, tifffile.imread(tif, key=0)[:300, :300])
    with _predictor(model) as p:
        result = p.predict_slide(png, tmp_path / "out", geojson=True)
        assert result.report["mpp_assumed"] is True
        with pytest.raises(CervrtError, match="mpp"):
            p.predict_slide(png, tmp_path / "refused", require_mpp=True)
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
