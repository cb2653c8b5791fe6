"""Time the C fusion extension against its numpy reference on the same work, beside a memory copy.

The work (defaults): a 4000 x 4000 RGB image, 400 px patches at stride 100 (37 x 37 = 1369 windows),
5 classes, gaussian blend, batches of 16. For each backend it times

- ``gather``: crop + normalise every window into a reused float32 batch buffer;
- ``accumulate``: every window row's windows into a (patch + stride)-row band (the raw operation);
- ``stitch``: the whole BandStitcher (accumulate + band moves + argmax of every row).

No model runs: the probabilities come from a fixed pool of random batches, so the numbers are the
fusion's own cost. It also copies a >= 512 MB float32 buffer with ``np.copyto`` to measure the
machine's memory bandwidth in the same run, and reports the C accumulate's traffic as a fraction
of it. Bytes are counted as operand traffic: for the copy, bytes read + bytes written (2 x buffer
size); for accumulate, per window 4 * P^2 * (C reads of probs + C reads and C writes of acc + 1 read
of weights + 1 read and 1 write of wsum) = 4 * P^2 * (3C + 3) bytes. Caches serve part of the
accumulate's traffic (neighbouring windows overlap by 1 - stride/patch) and np.copyto runs on one
core while the C code uses all of them, so the fraction can exceed 1: it says "as fast as memory
moves", not "saturates DRAM".

Prints a table and writes ``benchmarks/results/fusion-<host>-<numpy version>.json`` atomically.
Asserts nothing about time.

    python benchmarks/fusion_bench.py [--size 4000] [--patch 400] [--stride 100] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cervrt._io import write_json
from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD
from cervrt.runtime.fusion import FusionBackend, get_backend
from cervrt.runtime.stitcher import BandStitcher
from cervrt.runtime.tiling import blend_weights, window_starts

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4000, help="image height and width (px)")
    parser.add_argument("--patch", type=int, default=400)
    parser.add_argument("--stride", type=int, default=100)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--copy-mb", type=int, default=512, help="size of the copied buffer (MB)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    return parser.parse_args(argv)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _windows(size: int, patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    starts = window_starts(size, patch, stride)
    ys = np.repeat(np.array(starts, np.int64), len(starts))
    xs = np.tile(np.array(starts, np.int64), len(starts))
    return ys, xs


def _prob_pool(rng: np.random.Generator, batches: int, batch: int, classes: int, patch: int) -> list[np.ndarray]:
    """A few random probability batches (softmax of noise), reused cyclically."""
    pool = []
    for _ in range(batches):
        logits = rng.standard_normal((batch, classes, patch, patch), dtype=np.float32)
        e = np.exp(logits)
        pool.append(np.ascontiguousarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32))
    return pool


def _bench_gather(backend: FusionBackend, image: np.ndarray, ys: np.ndarray, xs: np.ndarray, args) -> float:
    out = np.empty((args.batch, 3, args.patch, args.patch), np.float32)

    def run() -> None:
        for start in range(0, ys.size, args.batch):
            part = slice(start, start + args.batch)
            backend.gather(image, ys[part], xs[part], args.patch, IMAGENET_MEAN, IMAGENET_STD, out)

    return _timed(run)


def _bench_accumulate(backend: FusionBackend, pool: list[np.ndarray], args) -> float:
    """Every window row's windows into one band at band row 0 (the raw operation, no band moves)."""
    starts = np.array(window_starts(args.size, args.patch, args.stride), np.int64)
    band = args.patch + args.stride
    acc = np.zeros((args.classes, band, args.size), np.float32)
    wsum = np.zeros((band, args.size), np.float32)
    weights = blend_weights("gaussian", args.patch)
    probs = np.concatenate([pool[i % len(pool)] for i in range(-(-starts.size // args.batch))])[: starts.size]
    zeros = np.zeros(starts.size, np.int64)

    def run() -> None:
        for _ in starts:  # one call per window row
            backend.accumulate(acc, wsum, probs, zeros, starts, weights)

    return _timed(run)


def _bench_stitch(backend: FusionBackend, pool: list[np.ndarray], ys: np.ndarray, xs: np.ndarray,
                  args) -> tuple[float, np.ndarray]:
    stitcher = BandStitcher(args.size, args.size, args.classes, args.patch, args.stride, "gaussian", backend.name)
    chunks = []

    def run() -> None:
        for k, start in enumerate(range(0, ys.size, args.batch)):
            part = slice(start, start + args.batch)
            chunks.extend(stitcher.add(ys[part], xs[part], pool[k % len(pool)]))
        chunks.extend(stitcher.finish())

    seconds = _timed(run)
    return seconds, np.concatenate([labels for _, labels in chunks])


def _copy_bandwidth(megabytes: int) -> float:
    """Best of three np.copyto of a float32 buffer: (bytes read + bytes written) / second."""
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.zeros_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(3))
    return 2 * src.nbytes / best


def _run_backend(name: str, image, ys, xs, pool, args) -> tuple[dict, np.ndarray]:
    backend = get_backend(name)
    gather = _bench_gather(backend, image, ys, xs, args)
    accumulate = _bench_accumulate(backend, pool, args)
    stitch, labels = _bench_stitch(backend, pool, ys, xs, args)
    n = int(ys.size)
    result = {
        "seconds": {"gather": gather, "accumulate": accumulate, "stitch": stitch},
        "patches_per_second": {"gather": n / gather, "accumulate": n / accumulate, "stitch": n / stitch,
                               "gather_and_stitch": n / (gather + stitch)},
        "openmp": backend.openmp,
    }
    return result, labels


def _host_tag() -> str:
    tag = socket.gethostname() or platform.processor() or platform.machine() or "host"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def _report(results: dict) -> None:
    print(f"{results['windows']} windows of {results['patch']} px on {results['size']}^2, "
          f"{results['classes']} classes, gaussian, batch {results['batch']}, {results['cpus']} CPUs")
    print(f"{'backend':<8}{'gather/s':>12}{'accumulate/s':>15}{'stitch/s':>12}{'gather+stitch/s':>18}")
    for name in ("c", "numpy"):
        pps = results["backends"][name]["patches_per_second"]
        print(f"{name:<8}{pps['gather']:>12.1f}{pps['accumulate']:>15.1f}{pps['stitch']:>12.1f}"
              f"{pps['gather_and_stitch']:>18.1f}")
    ratio = results["c_over_numpy"]
    print("C / numpy speed: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    bw = results["bandwidth"]
    print(f"copy bandwidth (np.copyto, read + write): {bw['copy_gb_per_s']:.1f} GB/s; C accumulate moves "
          f"{bw['c_accumulate_gb_per_s']:.1f} GB/s = {bw['c_accumulate_fraction_of_copy']:.0%} of it")
    print(f"labels identical (C vs numpy): {results['labels_identical']}")


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    ys, xs = _windows(args.size, args.patch, args.stride)
    pool = _prob_pool(rng, 4, args.batch, args.classes, args.patch)
    backends, labels = {}, {}
    for name in ("c", "numpy"):
        backends[name], labels[name] = _run_backend(name, image, ys, xs, pool, args)
    copy_bps = _copy_bandwidth(args.copy_mb)
    accumulate_bytes = ys.size * 4 * args.patch**2 * (3 * args.classes + 3)
    c_bps = accumulate_bytes / backends["c"]["seconds"]["accumulate"]
    results = {
        "size": args.size, "patch": args.patch, "stride": args.stride, "classes": args.classes, "batch": args.batch,
        "windows": int(ys.size), "cpus": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "platform": platform.platform(), "backends": backends,
        "c_over_numpy": {k: backends["c"]["patches_per_second"][k] / backends["numpy"]["patches_per_second"][k]
                         for k in backends["c"]["patches_per_second"]},
        "bandwidth": {
            "copy_megabytes": args.copy_mb,
            "copy_gb_per_s": copy_bps / 1e9,
            "c_accumulate_gb_per_s": c_bps / 1e9,
            "c_accumulate_fraction_of_copy": c_bps / copy_bps,
            "counting": "operand bytes. copy: read + written (single-threaded np.copyto); accumulate: "
                        "4*P^2*(3C+3) per window (probs read, acc read+write, weights read, wsum read+write), "
                        "partly served by caches, on all cores",
        },
        "labels_identical": bool(np.array_equal(labels["c"], labels["numpy"])),
    }
    _report(results)
    out = args.out or RESULTS / f"fusion-{_host_tag()}-{np.__version__}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
