"""Peak memory of the tiled pyramidal TIFF mask writer on a 40,000 x 40,000 mask fed in 500-row chunks.

Run: python benchmarks/mask_writer_memory.py [--size 40000] [--chunk 500] [--out DIR]
Prints the peak RSS of this process (resource.getrusage), the mask's size in memory for comparison,
the seconds taken and the file size. No assertions: the figure goes in the notes.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from cervrt.runtime.outputs import MaskWriter


def _chunk(first_row: int, rows: int, width: int) -> np.ndarray:
    """Labels of a synthetic slide: glass with diagonal bands of classes 1..4, made row by row in uint8
    (so that the benchmark's own arrays stay the size of one chunk)."""
    x_block = (np.arange(width) // 1000 % 8).astype(np.uint8)
    out = np.empty((rows, width), np.uint8)
    for i, y in enumerate(range(first_row, first_row + rows)):
        band = (x_block + y // 1000 % 8) % 8
        out[i] = np.where(band < 4, 0, band - 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--out", type=Path, default=None, help="directory for the file (default: a temporary one)")
    args = parser.parse_args()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        path = Path(tmp) / "mask.tiff"
        start = time.perf_counter()
        with MaskWriter(path, args.size, args.size, "tiff", mpp=0.904) as writer:
            for row in range(0, args.size, args.chunk):
                writer.write(row, _chunk(row, min(args.chunk, args.size - row), args.size))
            streamed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"mask {args.size} x {args.size} ({args.size**2 / 2**20:.0f} MiB as uint8), chunks of {args.chunk} rows")
        print(f"peak RSS {peak:.0f} MiB (after imports {rss0:.0f} MiB, after streaming the rows {streamed:.0f} MiB); "
              f"{seconds:.1f} s; "
              f"file {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
