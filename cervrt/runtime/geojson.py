"""QuPath GeoJSON of a label mask: one valid polygon per connected lesion, traced on the full mask, streamed.

:class:`GeoJsonWriter` is a mask sink (``write(first_row, labels)``, ``finish()``, ``abort()``): rows
arrive in order and are traced band by band (see :mod:`cervrt.runtime._trace`: along pixel edges,
4-connected, valid rings, area == pixel count, holes included). A region still touching the band's
last row stays open; the next band's regions that continue it (a shared pixel edge across the band
border) join it, and a region is written once no band continues it, as the union of its band pieces.
Memory: one band of rows (``band_rows`` x width bytes), the last row of the band before, and the
outlines of the regions still open; the file is written feature by feature.

Each Feature is a QuPath annotation: ``classification`` {name, color}, ``measurements`` with the
region's mask pixels, its area in level-0 pixels, in mm^2 when the mpp is known, and its mean
probability when rows came with probabilities. Coordinates are level-0 pixels (SPEC "Coordinates"):
mask corner (x, y) is level-0 (x * downsample, y * downsample). ``simplify`` (mask pixels,
Douglas-Peucker with topology kept) shrinks big outlines; a simplified polygon that is no longer valid
is written unsimplified. A path ending in ``.gz`` is gzip-compressed. The file appears atomically.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

from cervrt._io import atomic_path, optional_import
from cervrt.errors import CervrtError
from cervrt.runtime._trace import trace_components
from cervrt.runtime.row_stream import RowStream

__all__ = ["GeoJsonWriter", "write_geojson_mask"]

_BAND_BYTES = 32 << 20  # mask bytes traced at once


class _Region:
    """A lesion, possibly still open: its band pieces, pixel count and probability sum."""

    __slots__ = ("label", "pieces", "pixels", "prob_sum")

    def __init__(self, label: int, pieces: list[Any], pixels: int, prob_sum: float) -> None:
        self.label, self.pieces, self.pixels, self.prob_sum = label, pieces, pixels, prob_sum

    def absorb(self, other: _Region) -> None:
        self.pieces += other.pieces
        self.pixels += other.pixels
        self.prob_sum += other.prob_sum


class _Sets:
    """Union-find over region ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while a != root:
            self.parent[a], a = root, self.parent.get(a, a)
        return root

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class GeoJsonWriter(RowStream):
    """Streams the polygons of a ``height`` x ``width`` uint8 label mask (0 background) to ``path``."""

    kind = "GeoJSON"

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]], *, downsample: float = 1.0, mpp: float | None = None,
                 simplify: float | None = None, band_rows: int | None = None) -> None:
        self._shapely = optional_import("shapely", "geojson")
        if not (math.isfinite(downsample) and downsample > 0):
            raise CervrtError(f"the GeoJSON downsample must be a positive number, got {downsample}")
        if simplify is not None and not (math.isfinite(simplify) and simplify >= 0):
            raise CervrtError(f"the GeoJSON simplify tolerance must be >= 0 mask pixels, got {simplify}")
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise CervrtError(f"the GeoJSON mpp must be a positive number, got {mpp}")
        self._take_geometry(path, height, width, class_names, palette, existing_dir=False)
        self.downsample, self.mpp, self.simplify = float(downsample), mpp, simplify
        self._band_rows = int(band_rows) if band_rows else max(1, _BAND_BYTES // self.width)
        self._rows: list[np.ndarray] = []
        self._probs: list[np.ndarray] | None = []
        self._buffered = 0
        self._next_row = 0
        self._open: dict[int, _Region] = {}
        self._last_ids: np.ndarray | None = None  # region id of each pixel of the previous band's last row
        self._last_labels: np.ndarray | None = None  # and its labels
        self._next_id = 0
        self.features = 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        self._file: TextIO | None = self._stack.enter_context(opener(tmp, "wt", encoding="utf-8"))
        self._file.write('{"type": "FeatureCollection", "features": [')

    # --- the sink protocol -----------------------------------------------------------------

    def write(self, first_row: int, labels: np.ndarray, probability: np.ndarray | None = None) -> None:
        """Append mask rows ``first_row ..`` (uint8 (n, width)); ``probability`` (n, width) is the
        winning class's probability per pixel, for the mean-probability measurement (optional)."""
        if self._file is None:
            raise CervrtError(f"the GeoJSON writer of {self.path} is closed")
        self.check_rows(first_row, labels)
        if probability is None or self._probs is None:
            self._probs = None
        else:
            if probability.shape != labels.shape:
                raise CervrtError(f"probability rows must match the labels' {labels.shape}, got {probability.shape}")
            self._probs.append(np.asarray(probability, np.float64))
        self._rows.append(labels)
        self._buffered += labels.shape[0]
        self._next_row += labels.shape[0]
        while self._buffered >= self._band_rows or (self._buffered and self._next_row == self.height):
            self._flush_band()

    def finish(self) -> None:
        """Write the last regions and rename the file into place; refuses an incomplete mask."""
        if self._file is None:
            return
        if self._next_row != self.height:
            self.abort()
            raise CervrtError(f"the GeoJSON of {self.path} is incomplete: {self._next_row} of {self.height} rows")
        try:
            self._close_regions(list(self._open))
            self._file.write("]}\n")
        except BaseException as exc:
            self._file = None
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._file = None
        self._stack.close()

    def abort(self) -> None:
        """Drop everything; no file is left."""
        if self._file is not None:
            self._file = None
            err = CervrtError("aborted")
            with contextlib.suppress(CervrtError):
                self._stack.__exit__(CervrtError, err, None)

    close = finish

    # --- bands -----------------------------------------------------------------------------

    def _take_band(self) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        probs = None
        if self._probs:
            probs = np.concatenate(self._probs) if len(self._probs) > 1 else self._probs[0]
        n = min(self._band_rows, rows.shape[0])
        self._rows = [rows[n:]] if n < rows.shape[0] else []
        if probs is not None:
            self._probs = [probs[n:]] if n < rows.shape[0] else []
            probs = probs[:n]
        self._buffered -= n
        return rows[:n], probs

    def _flush_band(self) -> None:
        first = self._next_row - self._buffered
        band, probs = self._take_band()
        last = first + band.shape[0]
        sets = _Sets()
        first_ids = np.full(self.width, -1, np.int64)
        last_ids = np.full(self.width, -1, np.int64)
        touching_bottom: set[int] = set()
        for k in np.flatnonzero(np.bincount(band.ravel(), minlength=1)[1:]) + 1:
            mask = band == k
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1  # the class's box
            crop = mask[r0:r1, c0:c1]
            lut, cc = self._trace_class(int(k), crop, first + r0, c0, None if probs is None else probs[r0:r1, c0:c1],
                                        touching_bottom, last)
            if r0 == 0:
                first_ids[c0:c1] = np.where(crop[0], lut[cc[0]], first_ids[c0:c1])
            if r1 == band.shape[0]:
                last_ids[c0:c1] = np.where(crop[-1], lut[cc[-1]], last_ids[c0:c1])
        if self._last_ids is not None:  # join regions of one class continued across the band border
            both = (self._last_ids >= 0) & (first_ids >= 0) & (self._last_labels == band[0])
            for a, b in set(zip(self._last_ids[both].tolist(), first_ids[both].tolist(), strict=True)):
                sets.join(a, b)
        groups: dict[int, list[int]] = {}
        for rid in self._open:
            groups.setdefault(sets.find(rid), []).append(rid)
        closing = []
        for root, members in groups.items():
            region = self._open[root]
            for rid in members:
                if rid != root:
                    region.absorb(self._open.pop(rid))
            if last == self.height or not any(rid in touching_bottom for rid in members):
                closing.append(root)
        self._close_regions(closing)
        roots = {rid: sets.find(rid) for rid in np.unique(last_ids[last_ids >= 0]).tolist()}
        self._last_ids = np.array([roots.get(v, -1) for v in last_ids.tolist()], np.int64) if roots else last_ids
        self._last_labels = band[-1].copy()

    def _trace_class(self, k: int, mask: np.ndarray, first: int, col: int, probs: np.ndarray | None,
                     touching_bottom: set[int], last: int) -> tuple[np.ndarray, np.ndarray]:
        """Trace class ``k`` in a box of the band whose top-left is mask pixel (``first``, ``col``): each component
        becomes an open region. Returns the region id of each component label (-1 for label 0) and the
        component label image of the box."""
        components, cc = trace_components(mask, row_offset=first, col_offset=col)
        sums = None if probs is None else np.bincount(cc.ravel(), probs.ravel(), len(components) + 1)
        lut = np.full(len(components) + 1, -1, np.int64)
        for j, comp in enumerate(components):
            rid = lut[j + 1] = self._next_id
            self._next_id += 1
            prob_sum = 0.0 if sums is None else float(sums[j + 1])
            self._open[rid] = _Region(k, [(comp.exteriors[0], comp.holes)], comp.pixels, prob_sum)
            if comp.row1 == last:
                touching_bottom.add(rid)
        return lut, cc

    # --- features --------------------------------------------------------------------------

    def _close_regions(self, rids: list[int]) -> None:
        for rid in sorted(rids):
            region = self._open.pop(rid)
            self._write_feature(region)

    def _ring(self, ring: np.ndarray) -> list[list[float]]:
        """A closed GeoJSON ring in level-0 pixels."""
        xy = ring * self.downsample if self.downsample != 1.0 else ring
        points = xy.tolist()
        return [*points, points[0]] if points[0] != points[-1] else points

    def _geometry(self, region: _Region) -> dict[str, Any]:
        """A GeoJSON Polygon (exterior counter-clockwise, holes clockwise); shapely only to merge or simplify."""
        if len(region.pieces) == 1 and not self.simplify:
            exterior, holes = region.pieces[0]
            return {"type": "Polygon", "coordinates": [self._ring(exterior)] + [self._ring(h) for h in holes]}
        shapely = self._shapely
        geoms = [shapely.Polygon(exterior, holes) for exterior, holes in region.pieces]
        geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        if self.simplify:
            simpler = shapely.simplify(geom, self.simplify, preserve_topology=True)
            if shapely.is_valid(simpler) and not simpler.is_empty:
                geom = simpler
        if geom.geom_type != "Polygon":  # the pieces of one region share pixel edges: one polygon
            raise CervrtError(f"internal error: a region of {self.path} merged into a {geom.geom_type}")
        geom = shapely.geometry.polygon.orient(geom, 1.0)
        return {"type": "Polygon", "coordinates": [self._ring(np.asarray(geom.exterior.coords)[:-1])]
                + [self._ring(np.asarray(r.coords)[:-1]) for r in geom.interiors]}

    def _write_feature(self, region: _Region) -> None:
        geom = self._geometry(region)
        k = region.label
        measurements: dict[str, float] = {
            "Mask pixels": region.pixels,
            "Area level-0 px^2": region.pixels * self.downsample ** 2,
        }
        if self.mpp is not None:
            measurements["Area mm^2"] = region.pixels * self.mpp ** 2 / 1e6
        if self._probs is not None:
            measurements["Mean probability"] = region.prob_sum / region.pixels
        feature = {
            "type": "Feature",
            "geometry": geom,
            "properties": {
                "objectType": "annotation",
                "name": self.class_names[k],
                "classification": {"name": self.class_names[k], "color": self._colours[k]},
                "isLocked": False,
                "measurements": measurements,
            },
        }
        self._file.write(("" if self.features == 0 else ",") + "\n" + json.dumps(feature, separators=(",", ":")))
        self.features += 1


def write_geojson_mask(path: str | os.PathLike[str], mask: np.ndarray, class_names: Sequence[str],
                       palette: Sequence[Sequence[int]], **options: Any) -> int:
    """Write the GeoJSON of a whole in-memory mask (see :class:`GeoJsonWriter` for ``options``); returns
    the number of features."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise CervrtError(f"the mask must be uint8 (height, width), got {mask.dtype} {mask.shape}")
    probability = options.pop("probability", None)
    with GeoJsonWriter(path, mask.shape[0], mask.shape[1], class_names, palette, **options) as writer:
        writer.write(0, mask, probability)
    return writer.features
