"""GeoJSON of a label mask: valid polygons along pixel edges, exact areas, holes, lesions across bands."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cervrt.constants import CLASS_NAMES, PALETTE
from cervrt.errors import CervrtError
from cervrt.runtime._trace import trace_components
from cervrt.runtime.geojson import GeoJsonWriter, write_geojson_mask

shapely = pytest.importorskip("shapely")
from shapely.geometry import shape  # noqa: E402


def _read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return json.load(f)["features"]


def _rasterise(features: list[dict], height: int, width: int, downsample: float = 1.0) -> np.ndarray:
    """The class of every mask pixel from the polygons, by testing pixel centres (an independent check)."""
    ys, xs = np.mgrid[0:height, 0:width]
    points = shapely.points((xs.ravel() + 0.5) * downsample, (ys.ravel() + 0.5) * downsample)
    out = np.zeros(height * width, np.uint8)
    for f in features:
        k = CLASS_NAMES.index(f["properties"]["classification"]["name"])
        inside = shapely.contains(shape(f["geometry"]), points)
        assert not (out[inside] > 0).any(), "two polygons cover one pixel"
        out[inside] = k
    return out.reshape(height, width)


def _check(features: list[dict], mask: np.ndarray, downsample: float = 1.0) -> None:
    for f in features:
        geom = shape(f["geometry"])
        assert geom.geom_type == "Polygon"
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert geom.area == pytest.approx(f["properties"]["measurements"]["Mask pixels"] * downsample ** 2)
    for k in range(1, len(CLASS_NAMES)):
        area = sum(shape(f["geometry"]).area for f in features if f["properties"]["name"] == CLASS_NAMES[k])
        assert area == pytest.approx(int((mask == k).sum()) * downsample ** 2, rel=1e-12)
    np.testing.assert_array_equal(_rasterise(features, *mask.shape, downsample), mask)


def test_tracer_on_random_masks_gives_valid_rings_with_exact_areas():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 24, 2))
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        components, cc = trace_components(mask)
        assert cc.max() == len(components)
        for c in components:
            assert len(c.exteriors) == 1
            polygon = shapely.Polygon(c.exteriors[0], c.holes)
            assert polygon.is_valid, shapely.is_valid_reason(polygon)
            assert polygon.area == c.pixels
            assert shapely.Polygon(c.exteriors[0]).exterior.is_ccw  # RFC 7946 winding
        assert sum(c.pixels for c in components) == mask.sum()


def test_corner_touching_pixels_are_separate_and_a_hole_touching_the_outside_is_valid():
    diagonal = np.array([[1, 0], [0, 1]], bool)
    components, _ = trace_components(diagonal)
    assert [c.pixels for c in components] == [1, 1]
    ring = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], bool)  # hole meets outside at a corner
    (c,), _ = trace_components(ring)
    polygon = shapely.Polygon(c.exteriors[0], c.holes)
    assert polygon.is_valid and polygon.area == 7


def test_one_feature_per_lesion_with_holes_and_measurements(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[5:25, 5:25] = 2
    mask[10:15, 10:15] = 0  # a hole
    mask[12:13, 12:13] = 4  # an island in the hole
    mask[30:35, 30:45] = 2  # a second CIN 1 lesion
    mask[0:3, 47:50] = 1
    path = tmp_path / "s.geojson"
    n = write_geojson_mask(path, mask, CLASS_NAMES, PALETTE, mpp=0.5,
                           probability=np.full(mask.shape, 0.75, np.float32))
    features = _read(path)
    assert n == len(features) == 4
    cin1 = [f for f in features if f["properties"]["classification"]["name"] == "CIN 1"]
    assert len(cin1) == 2 and cin1[0]["properties"]["classification"]["color"] == [0, 255, 0]
    holed = max(cin1, key=lambda f: f["properties"]["measurements"]["Mask pixels"])
    assert len(holed["geometry"]["coordinates"]) == 2  # exterior and the hole
    m = holed["properties"]["measurements"]
    assert m["Mask pixels"] == 400 - 25
    assert m["Area mm^2"] == pytest.approx(375 * 0.25 / 1e6)
    assert m["Mean probability"] == pytest.approx(0.75)
    _check(features, mask)


@pytest.mark.parametrize("band_rows", [1, 3, 7, 1000])
def test_lesions_crossing_band_borders_are_merged(tmp_path, band_rows):
    rng = np.random.default_rng(band_rows)
    from cervrt._cv import cv2

    noise = cv2.GaussianBlur(rng.random((60, 70)).astype(np.float32), (0, 0), 2.0)
    mask = np.digitize(noise, np.quantile(noise, [0.3, 0.5, 0.7, 0.85])).astype(np.uint8)
    mask[20:40, 5:8] = 3  # a lesion spanning many bands, with a U shape closing below
    mask[20:23, 5:20] = 3
    mask[20:40, 17:20] = 3
    mask[38:40, 5:20] = 3
    path = tmp_path / "bands.geojson"
    with GeoJsonWriter(path, *mask.shape, CLASS_NAMES, PALETTE, band_rows=band_rows) as w:
        for r in range(0, mask.shape[0], 4):  # chunks not aligned with the bands
            w.write(r, mask[r : r + 4])
    features = _read(path)
    _check(features, mask)
    one_pass = tmp_path / "one.geojson"
    write_geojson_mask(one_pass, mask, CLASS_NAMES, PALETTE)
    assert len(features) == len(_read(one_pass))  # the same lesions whatever the banding


def test_level0_coordinates_simplify_and_gzip(tmp_path):
    mask = np.zeros((30, 30), np.uint8)
    yy, xx = np.mgrid[0:30, 0:30]
    mask[(yy - 15) ** 2 + (xx - 15) ** 2 < 100] = 4
    path = tmp_path / "s.geojson.gz"
    write_geojson_mask(path, mask, CLASS_NAMES, PALETTE, downsample=4.0)
    (f,) = _read(path)
    assert shape(f["geometry"]).bounds == (24.0, 24.0, 100.0, 100.0)  # pixel 6..24 edges, scaled to level 0
    _check([f], mask, 4.0)
    simple = tmp_path / "simple.geojson"
    write_geojson_mask(simple, mask, CLASS_NAMES, PALETTE, simplify=1.0)
    (g,) = _read(simple)
    geom = shape(g["geometry"])
    assert geom.is_valid and len(geom.exterior.coords) < len(shape(f["geometry"]).exterior.coords)


def test_bad_input_and_abort_leave_no_file(tmp_path):
    path = tmp_path / "x.geojson"
    with pytest.raises(CervrtError, match="in order"):
        with GeoJsonWriter(path, 10, 10, CLASS_NAMES, PALETTE) as w:
            w.write(2, np.zeros((2, 10), np.uint8))
    with pytest.raises(CervrtError, match="incomplete"):
        with GeoJsonWriter(path, 10, 10, CLASS_NAMES, PALETTE) as w:
            w.write(0, np.zeros((2, 10), np.uint8))
    with pytest.raises(CervrtError, match="classes"):
        write_geojson_mask(path, np.full((3, 3), 9, np.uint8), CLASS_NAMES, PALETTE)
    with pytest.raises(CervrtError, match="downsample"):
        GeoJsonWriter(path, 3, 3, CLASS_NAMES, PALETTE, downsample=0)
    assert os.listdir(tmp_path) == []


def test_real_slide_mask_polygons_are_valid_and_exact(tmp_path):
    svs = Path(__file__).resolve().parents[3] / "shared" / "data" / "tcga-cr-7395-01a-01-ts1.svs"
    openslide = pytest.importorskip("openslide")
    if not svs.exists():
        pytest.skip("the real slide is not beside the repository")
    from cervrt._cv import cv2

    with openslide.OpenSlide(str(svs)) as osr:
        rgb = np.asarray(osr.read_region((0, 0), 1, osr.level_dimensions[1]).convert("RGB"))
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # a label mask with real tissue outlines: saturation bands
    mask = np.digitize(cv2.medianBlur(hsv[..., 1], 9), [30, 60, 90, 120]).astype(np.uint8)
    path = tmp_path / "real.geojson"
    write_geojson_mask(path, mask, CLASS_NAMES, PALETTE, band_rows=500)
    features = _read(path)
    for k in range(1, 5):
        geoms = [shape(f["geometry"]) for f in features if f["properties"]["name"] == CLASS_NAMES[k]]
        assert all(g.is_valid for g in geoms)
        assert sum(g.area for g in geoms) == int((mask == k).sum())
