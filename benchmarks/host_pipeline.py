"""The host pipeline's ceiling: a slide through ``predict_slide`` with an engine that costs nothing.

A null engine (one fixed probability array, no compute, no copy) is plugged in through the public ``register_engine``
(suffix ``.null``), so what is measured is everything around the engine: reading and decoding the
slide, gathering and normalising patches, fusing windows, writing the mask (tiled TIFF with its
pyramid) and the overlay. Each slide runs twice in one invocation, each time in a child process:

- ``sequential``: the stages one after another on one thread, and the TIFF reader decoding the
  tiles each read touches (no tile cache: the path before issue 12);
- ``overlap``: the band reader prefetching on its own thread with each tile decoded once (a
  bounded cache), and loader, engine, fusion and writer overlapping on threads of their own.

Slides: the real SVS through OpenSlide, and a JPEG-tiled TIFF of real H&E built once from that SVS
(level 0 tiled by mirroring up to ``--side`` pixels, 256 px tiles, into ``--work``, reused), at the
Predictor's default tissue threshold (``--tissue-threshold 0`` runs every window). Peak RSS of an
overlapped run over a ``--big`` pixel square TIFF (the same H&E mirrored) is read with
``resource.getrusage`` in its child.

Prints, per slide and mode, each stage's seconds and Mpx/s (slide area over the stage's busy
seconds), the end-to-end seconds and Mpx/s and end-to-end over the slowest stage, with the load
(``os.getloadavg``); writes ``benchmarks/results/host-pipeline-<host>.json`` and ``.md``. Asserts
nothing; on a shared machine compare only the ratios of one run.

    python benchmarks/host_pipeline.py [--stride 100] [--patch 400] [--side 12288] [--big 40000] [--no-big]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
SVS = Path("/work/shared/data/tcga-cr-7395-01a-01-ts1.svs")
TILE = 256
CLASSES = ("background", "normal", "cin1", "cin2", "cin3")
MODES = ("sequential", "overlap")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svs", type=Path, default=SVS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cervrt-host-pipeline"))
    parser.add_argument("--side", type=int, default=12288, help="side of the JPEG-tiled TIFF (pixels)")
    parser.add_argument("--big", type=int, default=40000, help="side of the TIFF whose peak RSS is measured")
    parser.add_argument("--no-big", action="store_true", help="skip the peak-RSS run")
    parser.add_argument("--patch", type=int, default=400)
    parser.add_argument("--stride", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tissue-threshold", type=float, default=0.1,
                        help="windows under this tissue share are not run (0: every window)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SLIDE", "THRESHOLD"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the null engine (what a third party would register) -------------------------------------------


def _null_engine(path: str | Path, device: str, batch_size: int) -> object:
    from cervrt.engines import Engine, EngineOutput

    class NullEngine(Engine):
        kind = "null"

        def __init__(self) -> None:
            self.metadata = json.loads(Path(path).read_text())
            self.device, self.provider, self.precision = "cpu", "none", "fp32"
            self.max_batch, self.thread_safe = None, True
            p, c = self.patch_size, self.num_classes
            probs = np.full((max(int(batch_size), 1), c, p, p), 0.5 / (c - 1), np.float32)
            probs[:, 1] = 0.5  # every pixel "normal": a mask of one region (random labels would make the
            self._probs = probs  # overlay's contour drawing, not the pipeline, the measure)

        def _run(self, batch: np.ndarray) -> EngineOutput:
            n = batch.shape[0]
            if n > self._probs.shape[0]:
                self._probs = np.concatenate([self._probs] * (n // self._probs.shape[0] + 1))
            return EngineOutput(self._probs[:n], None)

    return NullEngine()


def _model(work: Path, patch: int) -> Path:
    path = work / f"null-{patch}.null"
    palette = [[0, 0, 0], [0, 160, 0], [255, 220, 0], [255, 120, 0], [220, 0, 0]]
    path.write_text(json.dumps({"arch": "null", "patch_size": patch, "class_names": list(CLASSES),
                                "palette": palette, "mean": [0.5] * 3, "std": [0.25] * 3, "mpp": 0.904}))
    return path


# ---- the slides ---------------------------------------------------------------------------------


def _source(svs: Path) -> np.ndarray:
    import openslide

    with openslide.OpenSlide(str(svs)) as osr:
        w, h = osr.level_dimensions[0]
        return np.asarray(osr.read_region((0, 0), 0, (w, h)).convert("RGB"))


def _mirrored_tiles(source: np.ndarray, side: int) -> Iterator[np.ndarray]:
    """side x side of ``source`` mirrored at its edges (so the tissue continues), tile by tile in row-major order."""
    h, w = source.shape[:2]
    rows = np.abs((np.arange(side) // h) % 2 * (h - 1) - np.arange(side) % h)
    cols = np.abs((np.arange(side) // w) % 2 * (w - 1) - np.arange(side) % w)
    for y in range(0, side, TILE):
        band = source[rows[y : y + TILE]]
        for x in range(0, side, TILE):
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            part = band[:, cols[x : x + TILE]]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


def _tiff(work: Path, source: np.ndarray | None, svs: Path, side: int) -> Path:
    import tifffile

    path = work / f"hne-{side}-jpeg{TILE}.tif"
    if not path.exists():
        source = _source(svs) if source is None else source
        part = path.with_suffix(".part")
        tifffile.imwrite(part, _mirrored_tiles(source, side), shape=(side, side, 3), dtype=np.uint8,
                         tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                         bigtiff=side > 20000)
        part.replace(path)
    return path


# ---- one run (in a child process) -----------------------------------------------------------------


def _child(mode: str, slide: str, threshold: float, args: argparse.Namespace) -> None:
    from cervrt.engines import register_engine
    from cervrt.runtime import _tiff
    from cervrt.runtime.predictor import Predictor

    register_engine(".null", _null_engine)
    if mode == "sequential":
        _tiff.CACHE_TILE_ROWS = 0  # every read decodes the tiles it touches, as before the tile cache
    out = args.work / f"out-{mode}"
    with Predictor(_model(args.work, args.patch), stride=args.stride, batch_size=args.batch_size,
                   tissue_threshold=threshold, fusion="c") as predictor:
        result = predictor.predict_slide(slide, out, fmt="tiff", overlap=mode == "overlap")
    report = result.report
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": report["seconds"], "patches": report["patches"], "width": report["width"],
                      "height": report["height"], "peak_rss_mb": peak}))


def _run_child(mode: str, slide: Path, threshold: float, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(slide), str(threshold), "--work", str(args.work),
           "--patch", str(args.patch), "--stride", str(args.stride), "--batch-size", str(args.batch_size)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = result["seconds"]
    total = seconds.pop("total")
    stages = {k: v for k, v in seconds.items() if v > 0}
    mpx = result["width"] * result["height"] / 1e6
    slowest = max(stages, key=stages.get)
    return {"mode": mode, "slide": slide.name, "mpx": mpx, "patches": result["patches"], "load_1min": load,
            "seconds": stages, "mpx_per_s": {k: mpx / v for k, v in stages.items()}, "total_s": total,
            "e2e_mpx_per_s": mpx / total, "slowest": slowest, "e2e_over_slowest": total / stages[slowest],
            "peak_rss_mb": result["peak_rss_mb"]}


def _table(runs: list[dict]) -> str:
    stages = ("read", "tissue", "preprocess", "engine", "fuse", "write")
    lines = ["| slide | mode | patches run | " + " | ".join(f"{s} s (Mpx/s)" for s in stages)
             + " | e2e s | e2e Mpx/s | e2e / slowest | load |",
             "|" + "---|" * (len(stages) + 7)]
    for r in runs:
        cells = [f"{r['seconds'][s]:.2f} ({r['mpx_per_s'][s]:.0f})" if s in r["seconds"] else "-" for s in stages]
        patches = f"{r['patches']['run']} of {r['patches']['total']}"
        lines.append(f"| {r['slide']} | {r['mode']} | {patches} | " + " | ".join(cells)
                     + f" | {r['total_s']:.2f} | {r['e2e_mpx_per_s']:.1f} | {r['e2e_over_slowest']:.2f} "
                     f"({r['slowest']}) | {r['load_1min']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        mode, slide, threshold = args.child
        _child(mode, slide, float(threshold), args)
        return 0
    from cervrt.bench.machine import host_tag, machine_info

    start = time.perf_counter()
    source = None if (args.work / f"hne-{args.side}-jpeg{TILE}.tif").exists() else _source(args.svs)
    tiff = _tiff(args.work, source, args.svs, args.side)
    runs = [_run_child(mode, slide, args.tissue_threshold, args) for slide in (tiff, args.svs) for mode in MODES]
    big = None
    if not args.no_big:
        path = _tiff(args.work, source, args.svs, args.big)
        big = _run_child("overlap", path, args.tissue_threshold, args)
        big["plane_mb"] = args.big * args.big * 4 / 2**20
    results = {"machine": machine_info(), "uptime": subprocess.run(["uptime"], capture_output=True,
                                                                   text=True).stdout.strip(),
               "patch": args.patch, "stride": args.stride, "batch_size": args.batch_size, "runs": runs,
               "peak_rss": big, "command": "python benchmarks/host_pipeline.py " + " ".join(argv or sys.argv[1:]),
               "seconds": time.perf_counter() - start}
    table = _table(runs + ([big] if big else []))
    for slide in {r["slide"] for r in runs}:
        seq, ovl = (next(r for r in runs if r["slide"] == slide and r["mode"] == m) for m in MODES)
        table += f"\n\n{slide}: overlap / sequential end to end {seq['total_s'] / ovl['total_s']:.2f}x"
    if big:
        table += (f"\n\npeak RSS on the {args.big}^2 TIFF (overlap): {big['peak_rss_mb']:.0f} MB "
                  f"(one float32 plane of it: {big['plane_mb']:.0f} MB)")
    print(f"{results['uptime']}\n{table}")
    out = args.out or RESULTS / f"host-pipeline-{host_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{results['command']}` -- {results['uptime']}\n\n{table}\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
