"""Independent readers of cervrt's outputs, each mapping a file back onto level-0 pixels by the geometry the
file declares (TIFF resolution tags, GeoJSON level-0 coordinates, NGFF scale + translation, DICOM origin +
spacing + orientation) -- never through cervrt's own code. Used by the coordinate-contract tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cervrt.constants import CLASS_NAMES

__all__ = ["geojson_on_level0", "seg_on_level0", "slide_geometry", "tiff_on_level0", "to_level0", "zarr_on_level0"]


def to_level0(mask: np.ndarray, per_pixel: float, h0: int, w0: int) -> np.ndarray:
    """A mask on level 0 by the contract: level-0 pixel x lies in mask pixel floor((x + 0.5) / F)."""
    rows = np.minimum(np.floor((np.arange(h0) + 0.5) / per_pixel).astype(int), mask.shape[0] - 1)
    cols = np.minimum(np.floor((np.arange(w0) + 0.5) / per_pixel).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def _index(physical: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """Pixel index whose centre (origin + index * step) is nearest to each physical coordinate."""
    return np.clip(np.floor((physical - origin) / step + 0.5).astype(int), 0, n - 1)


# --- one independent reader per output ----------------------------------------------------------


def tiff_on_level0(path, mpp0: float, h0: int, w0: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        mask = page.asarray()
        xres = page.tags["XResolution"].value
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
    mask_mpp = 1e4 * xres[1] / xres[0]
    return to_level0(mask, mask_mpp / mpp0, h0, w0)


def geojson_on_level0(path, h0: int, w0: int) -> np.ndarray:
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    out = np.zeros((h0, w0), np.uint8)
    for f in json.loads(path.read_text())["features"]:
        geom = shape(f["geometry"])
        shapely.prepare(geom)
        x0, y0, x1, y1 = (int(np.floor(v)) for v in geom.bounds)
        ys, xs = np.mgrid[max(y0, 0) : min(y1 + 1, h0), max(x0, 0) : min(x1 + 1, w0)]
        inside = shapely.contains_xy(geom, xs + 0.5, ys + 0.5)  # level-0 pixel centres
        assert not out[ys[inside], xs[inside]].any(), "two polygons cover one pixel"
        out[ys[inside], xs[inside]] = CLASS_NAMES.index(f["properties"]["classification"]["name"])
    return out


def zarr_on_level0(path, mpp0: float, h0: int, w0: int) -> np.ndarray:
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    (node,) = [n for n in Reader(parse_url(str(path / "labels" / "segmentation")))() if "image-label" in str(n.specs)
               or n.metadata.get("color")]
    mask = np.asarray(node.data[0])
    transforms = node.metadata["coordinateTransformations"][0]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    shift = next((t["translation"] for t in transforms if t["type"] == "translation"), [0.0, 0.0])
    centres = np.arange(max(h0, w0)) * mpp0  # level-0 pixel centres in micrometres (NGFF: centre at index * size)
    rows = _index(centres[:h0], shift[0], scale[0], mask.shape[0])
    cols = _index(centres[:w0], shift[1], scale[1], mask.shape[1])
    return mask[np.ix_(rows, cols)]


def slide_geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Origin (X, Y) in mm, row and column direction cosines and spacing of a DICOM total pixel matrix."""
    o = ds.TotalPixelMatrixOriginSequence[0]
    origin = np.array([float(o.XOffsetInSlideCoordinateSystem), float(o.YOffsetInSlideCoordinateSystem)])
    cos = [float(v) for v in ds.ImageOrientationSlide]
    row_sp, col_sp = (float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    return origin, np.array(cos[:2]), np.array(cos[3:5]), row_sp, col_sp


def seg_on_level0(path, source_geometry, h0: int, w0: int) -> np.ndarray:
    hd = pytest.importorskip("highdicom")
    seg = hd.seg.segread(path)
    numbers = seg.get_total_pixel_matrix(combine_segments=True, skip_overlap_checks=True)
    lut = np.zeros(256, np.uint8)
    for s in seg.SegmentSequence:
        if s.SegmentLabel in CLASS_NAMES:
            lut[int(s.SegmentNumber)] = CLASS_NAMES.index(s.SegmentLabel)
    mask = lut[numbers]
    o0, r0, c0, rs0, cs0 = source_geometry
    o, r, c, rs, cs = slide_geometry(seg)
    assert np.allclose(r, r0) and np.allclose(c, c0)
    # level-0 pixel (x, y) centre in slide mm: o0 + x * cs0 * r0 + y * rs0 * c0; project on the SEG's axes
    x_mm = o0[None, :] + np.arange(w0)[:, None] * cs0 * r0[None, :]
    y_mm = o0[None, :] + np.arange(h0)[:, None] * rs0 * c0[None, :]
    cols = _index((x_mm - o) @ r, 0.0, cs, mask.shape[1])
    rows = _index((y_mm - o) @ c, 0.0, rs, mask.shape[0])
    return mask[np.ix_(rows, cols)]
