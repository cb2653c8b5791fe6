"""Time the C fusion extension against its numpy reference on the same work, beside a memory copy.

The work (defaults): a 4000 x 4000 RGB image, 400 px patches at stride 100 (37 x 37 = 1369 windows),
5 classes, gaussian blend, batches of 16. For each backend it times

- ``gather``: crop + normalise every window into a reused float32 batch buffer;
- ``accumulate``: every window row's windows into a (patch + stride)-row band (the raw operation);
- ``stitch``: the whole BandStitcher (accumulate + band moves + argmax of every row).

No model runs: the probabilities come from a fixed pool of random batches, so the numbers are the
fusion's own cost; gather and accumulate count the best of ``--repeats`` passes, the stitch one pass.
It also copies a 1 GiB float32 buffer with ``np.copyto`` (best of ``--copy-repeats`` before and again
after the fusion runs, once on one thread and once split over all cores) to measure the machine's
memory bandwidth in the same run; the fastest copy is the ceiling (on a shared machine other jobs
take part of the bandwidth at times, so the best copy is the fairest ceiling). Bytes are counted as
operand traffic: for the copy, bytes read + bytes written (2 x buffer size); for accumulate, per
window 4 * P^2 * (C reads of probs + (C + 1) reads and (C + 1) writes of the band sums acc and wsum
+ 1 read of the weights) = 4 * P^2 * (3C + 3) bytes. The ceiling in patches/s is the copy bandwidth
divided by those bytes per window; the C accumulate's (and the whole stitch's) patches/s are
reported as a fraction of it. Caches serve part of the accumulate's traffic (neighbouring windows
overlap by 1 - stride/patch), so the fraction can exceed 1: it says "as fast as memory moves", not
"saturates DRAM". The machine may be shared with other jobs: the 1-minute load average before and
after is recorded, and the ratios (C / numpy, fraction of the copy) come from one run.

Prints a table and writes ``benchmarks/results/fusion-<cpu>-numpy<version>-cervrt<version>.json``
atomically. Asserts nothing about time.

    python benchmarks/fusion_bench.py [--size 4000] [--patch 400] [--stride 100] [--batch 16] [--copy-mb 1024]
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cervrt import __version__
from cervrt._io import write_json
from cervrt.bench.machine import cpu_model, host_tag
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
    parser.add_argument("--copy-mb", type=int, default=1024, help="size of the copied buffer (MiB)")
    parser.add_argument("--copy-repeats", type=int, default=5,
                        help="copies timed before and after the fusion runs; the best counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of gather and accumulate; the best counts")
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

    return min(_timed(run) for _ in range(args.repeats))


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

    return min(_timed(run) for _ in range(args.repeats))


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


def _copy_bandwidth(megabytes: int, repeats: int) -> dict[str, float]:
    """Best of ``repeats`` np.copyto of a float32 buffer, on one thread and split over all cores, in bytes/s.

    Bytes are read + written (2 x buffer size) per copy.
    """
    src = np.ones(megabytes * 2**20 // 4, np.float32)
    dst = np.zeros_like(src)
    threads = os.cpu_count() or 1
    bounds = np.linspace(0, src.size, threads + 1).astype(np.int64)
    parts = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(threads) as pool:
        def split() -> None:
            list(pool.map(lambda pair: np.copyto(*pair), parts))

        single = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
        multi = min(_timed(split) for _ in range(repeats))
    return {"one_thread": 2 * src.nbytes / single, "all_cores": 2 * src.nbytes / multi}


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


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


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
    print(f"copy bandwidth (np.copyto of {bw['copy_megabytes']} MiB, read + write, best of {bw['copy_repeats']}): "
          f"{bw['copy_one_thread_gb_per_s']:.1f} GB/s on one thread, {bw['copy_all_cores_gb_per_s']:.1f} GB/s "
          f"on {results['cpus']} threads; ceiling {bw['copy_gb_per_s']:.1f} GB/s")
    print(f"bytes per window 4*P^2*(3C+3) = {bw['bytes_per_window'] / 2**20:.2f} MiB -> ceiling "
          f"{bw['ceiling_patches_per_s']:.0f} patches/s; C accumulate {bw['c_accumulate_gb_per_s']:.1f} GB/s = "
          f"{bw['c_accumulate_fraction_of_copy']:.0%} of it, numpy {bw['numpy_accumulate_fraction_of_copy']:.0%}, "
          f"C stitch (accumulate + band moves + argmax) {bw['c_stitch_fraction_of_copy']:.0%}")
    print(f"labels identical (C vs numpy): {results['labels_identical']}")


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    load = [_load()]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    ys, xs = _windows(args.size, args.patch, args.stride)
    pool = _prob_pool(rng, 4, args.batch, args.classes, args.patch)
    before = _copy_bandwidth(args.copy_mb, args.copy_repeats)
    backends, labels = {}, {}
    for name in ("c", "numpy"):
        backends[name], labels[name] = _run_backend(name, image, ys, xs, pool, args)
    copy = {key: max(value, before[key]) for key, value in _copy_bandwidth(args.copy_mb, args.copy_repeats).items()}
    copy_bps = max(copy.values())
    window_bytes = 4 * args.patch**2 * (3 * args.classes + 3)
    accumulate_bytes = ys.size * window_bytes
    c_bps = accumulate_bytes / backends["c"]["seconds"]["accumulate"]
    ceiling = copy_bps / window_bytes
    results = {
        "size": args.size, "patch": args.patch, "stride": args.stride, "classes": args.classes, "batch": args.batch,
        "repeats": args.repeats,
        "windows": int(ys.size), "cpus": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
        "numpy": np.__version__, "cervrt": __version__, "platform": platform.platform(), "load_avg_1min": load,
        "backends": backends,
        "c_over_numpy": {k: backends["c"]["patches_per_second"][k] / backends["numpy"]["patches_per_second"][k]
                         for k in backends["c"]["patches_per_second"]},
        "bandwidth": {
            "copy_megabytes": args.copy_mb,
            "copy_repeats": args.copy_repeats,
            "copy_one_thread_gb_per_s": copy["one_thread"] / 1e9,
            "copy_all_cores_gb_per_s": copy["all_cores"] / 1e9,
            "copy_gb_per_s": copy_bps / 1e9,
            "bytes_per_window": window_bytes,
            "ceiling_patches_per_s": ceiling,
            "c_accumulate_gb_per_s": c_bps / 1e9,
            "c_accumulate_fraction_of_copy": c_bps / copy_bps,
            "numpy_accumulate_fraction_of_copy": backends["numpy"]["patches_per_second"]["accumulate"] / ceiling,
            "c_stitch_fraction_of_copy": backends["c"]["patches_per_second"]["stitch"] / ceiling,
            "counting": "operand bytes. copy: read + written (np.copyto, the faster of one thread and all cores); "
                        "accumulate: 4*P^2*(3C+3) per window (probs read, acc and wsum read+write, weights read), "
                        "partly served by caches, on all cores",
        },
        "labels_identical": bool(np.array_equal(labels["c"], labels["numpy"])),
    }
    _report(results)
    results["load_avg_1min"].append(_load())
    out = args.out or RESULTS / f"fusion-{host_tag(keys=('numpy', 'cervrt'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
