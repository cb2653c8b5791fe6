"""Peak RSS of ``cervrt infer`` over a synthetic 40,000 x 40,000 tiled pyramidal TIFF.

The slide is glass except one square of synthetic tissue in the middle, written tile by tile with
tifffile (zlib, 512 px tiles, four reduced levels as sub-IFDs, resolution tags at the model's mpp so
that level 0 is the processing resolution); it is never held in memory. The run is short (only the
tissue's windows reach the engine) but every row band of the slide passes through the stitcher and
the mask writer (a 1.6-gigapixel mask: tiled TIFF). ``cervrt infer`` runs in a child process; its
peak RSS comes from ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` and is printed beside what
one float32 class plane of the slide alone would take (the memory a whole-slide approach needs
C + 1 of). Asserts nothing.

    python benchmarks/infer_memory.py --engine MODEL.onnx [--side 40000] [--tissue 1024] [--stride 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TILE = 512
LEVELS = 5
GLASS = 243


def _tissue(size: int) -> np.ndarray:
    from cervrt.synth import synthesize_region

    rgb, _ = synthesize_region(np.random.default_rng(0), size)
    return rgb


def _tiles(side: int, box: tuple[int, int], tissue: np.ndarray) -> Iterator[np.ndarray]:
    """Row-major tiles of a glass level of ``side`` px with ``tissue`` at ``box`` = (y, x)."""
    glass = np.full((TILE, TILE, 3), GLASS, np.uint8)
    y0, x0 = box
    y1, x1 = y0 + tissue.shape[0], x0 + tissue.shape[1]
    for ty in range(0, side, TILE):
        for tx in range(0, side, TILE):
            if ty >= y1 or tx >= x1 or ty + TILE <= y0 or tx + TILE <= x0:
                yield glass
                continue
            tile = glass.copy()
            ys, xs = slice(max(ty, y0), min(ty + TILE, y1)), slice(max(tx, x0), min(tx + TILE, x1))
            tile[ys.start - ty : ys.stop - ty, xs.start - tx : xs.stop - tx] = tissue[ys.start - y0 : ys.stop - y0,
                                                                                      xs.start - x0 : xs.stop - x0]
            yield tile


def write_slide(path: Path, side: int, tissue_side: int, mpp: float) -> None:
    """The glass slide with a tissue square in the middle, level by level, tile by tile."""
    import tifffile

    from cervrt._cv import cv2

    tissue = _tissue(tissue_side)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(LEVELS):
            f = 2**level
            s, t = -(-side // f), cv2.resize(tissue, (max(1, tissue_side // f),) * 2, interpolation=cv2.INTER_AREA)
            box = ((s - t.shape[0]) // 2, (s - t.shape[1]) // 2)
            res = 1e4 / (mpp * f)
            tif.write(_tiles(s, box, t), shape=(s, s, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                      compression="zlib", resolution=(res, res), resolutionunit="CENTIMETER",
                      subifds=LEVELS - 1 if level == 0 else None, subfiletype=1 if level else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, required=True)
    parser.add_argument("--side", type=int, default=40000)
    parser.add_argument("--tissue", type=int, default=1024, help="side of the tissue square")
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="write the slide and outputs here, and keep them")
    args = parser.parse_args()
    from cervrt.artifact import read_metadata

    metadata = read_metadata(args.engine)
    with tempfile.TemporaryDirectory(prefix="cervrt-infer-memory-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slide = work / "glass40k.tiff"
        started = time.perf_counter()
        if not slide.exists():
            write_slide(slide, args.side, args.tissue, float(metadata["mpp"]))
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - started:.1f} s")
        cmd = [sys.executable, "-m", "cervrt", "infer", "--engine", str(args.engine), str(slide), "--out",
               str(work / "out"), "--device", "cpu"]
        if args.stride:
            cmd += ["--stride", str(args.stride)]
        print("$ " + " ".join(cmd))
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        print(done.stdout.strip() or done.stderr.strip())
        report = json.loads((work / "out" / "glass40k.json").read_text()) if done.returncode == 0 else {}
    plane = 4 * args.side * args.side
    print(f"exit {done.returncode}, {seconds:.1f} s wall; peak RSS of cervrt infer {peak / 2**20:.0f} MiB; "
          f"one float32 class plane of the slide: {plane / 2**30:.1f} GiB")
    if report:
        print(json.dumps({"seconds": report["seconds"], "patches": report["patches"],
                          "mask_format": report["mask_format"]}))


if __name__ == "__main__":
    main()
