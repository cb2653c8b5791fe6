"""Size, time and peak memory of the clinical mask formats for a synthetic N x N label mask.

The mask (60 ellipses of the four grades at seeded random places, background elsewhere) is made band by
band and streamed, 1024 rows at a time, into the OME-Zarr, GeoJSON (``.geojson.gz``) and DICOM SEG sinks
(mask at 0.904 um/px, level-0 downsample 3.616). Prints one line per format: bytes on disk, seconds
(including making the mask), peak RSS of the process so far. Asserts nothing about time.

    python benchmarks/clinical_formats.py 40000 /tmp/clinical --formats zarr,geojson,seg
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from cervrt.constants import CLASS_NAMES, PALETTE

__all__ = ["main"]


def _blobs(n: int) -> list[tuple[float, float, float, float, int]]:
    rng = np.random.default_rng(0)
    return [(rng.uniform(0, n), rng.uniform(0, n), rng.uniform(n / 40, n / 8), rng.uniform(n / 40, n / 8),
             int(rng.integers(1, 5))) for _ in range(60)]


def _band(n: int, blobs: list, r0: int, r1: int) -> np.ndarray:
    yy = np.arange(r0, r1, dtype=np.float32)[:, None]
    lab = np.zeros((r1 - r0, n), np.uint8)
    for cy, cx, ay, ax, k in blobs:
        if r1 < cy - ay or r0 > cy + ay:
            continue
        c0, c1 = max(0, int(cx - ax)), min(n, int(cx + ax) + 1)
        xx = np.arange(c0, c1, dtype=np.float32)[None, :]
        lab[:, c0:c1][((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 < 1] = k
    return lab


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _writer(fmt: str, out: Path, n: int):
    options = {"mpp": 0.904, "downsample": 3.616}
    if fmt == "zarr":
        from cervrt.runtime.ome_zarr import OmeZarrWriter

        return OmeZarrWriter(out / "s.ome.zarr", n, n, CLASS_NAMES, PALETTE, **options)
    if fmt == "geojson":
        from cervrt.runtime.geojson import GeoJsonWriter

        return GeoJsonWriter(out / "s.geojson.gz", n, n, CLASS_NAMES, PALETTE, **options)
    from cervrt.runtime.dicom_seg import DicomSegWriter

    return DicomSegWriter(out / "s.seg", n, n, CLASS_NAMES, PALETTE, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, help="mask side in pixels")
    parser.add_argument("out", type=Path, help="output directory (created)")
    parser.add_argument("--formats", default="zarr,geojson,seg", help="comma-separated: zarr, geojson, seg")
    args = parser.parse_args()
    n, blobs = args.size, _blobs(args.size)
    args.out.mkdir(parents=True, exist_ok=True)
    for fmt in args.formats.split(","):
        writer = _writer(fmt, args.out, n)
        start = time.perf_counter()
        with writer as w:
            for r in range(0, n, 1024):
                w.write(r, _band(n, blobs, r, min(r + 1024, n)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{fmt}: {_size(writer.path) / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s, "
              f"peak RSS so far {peak:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
