"""The Predictor end to end with the C fusion extension against its numpy reference, on the same work.

Both runs stream the same PNG through ``Predictor.predict_slide`` with the same model, tiling and
batch size (every window run: tissue threshold 0); only ``fusion`` differs. Prints the seconds per
stage of each, the numpy / C ratios of the stages fusion owns (preprocess = gather + normalise,
fuse = accumulate + argmax) and of the whole run, and checks that both masks are identical. The
default model is the tests' tiny ONNX graph (patch 64), so that the engine does not drown the
fusion; pass ``--engine`` for a real export. The machine may be shared: the 1-minute load average
is printed, and the ratios come from one run. On a loaded machine the C extension's OpenMP
regions wait for descheduled threads (compare a run with ``OMP_NUM_THREADS=1``). Asserts nothing
about time.

    python benchmarks/infer_bench.py [--engine MODEL.onnx] [--size 2048] [--stride 16] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cervrt._cv import cv2  # noqa: E402
from cervrt._io import write_json  # noqa: E402
from cervrt.bench.machine import host_tag  # noqa: E402
from cervrt.runtime.predictor import STAGES, Predictor  # noqa: E402


def _image(size: int) -> np.ndarray:
    from tests.support.tiny_onnx import tissue_image

    return tissue_image(np.random.default_rng(0), size, size)


def _run(model: Path, slide: Path, out: Path, fusion: str, args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    with Predictor(model, device="cpu", batch_size=args.batch, stride=args.stride, tissue_threshold=0,
                   fusion=fusion) as predictor:
        predictor.predict(np.zeros((64, 64, 3), np.uint8))  # warm-up
        result = predictor.predict_slide(slide, out / fusion)
    return result.report, cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, default=None, help="model [the tests' tiny ONNX graph, patch 64]")
    parser.add_argument("--size", type=int, default=2048, help="side of the synthetic image")
    parser.add_argument("--stride", type=int, default=None, help="window stride [a quarter patch]")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cervrt-infer-bench-") as tmp:
        work = Path(tmp)
        model = args.engine
        if model is None:
            from tests.support.tiny_onnx import save_tiny_model

            model = save_tiny_model(work / "tiny.onnx")
        slide = work / "bench.png"
        cv2.imwrite(str(slide), _image(args.size)[:, :, ::-1])
        load = os.getloadavg()[0]
        reports, masks = {}, {}
        for fusion in ("c", "numpy"):
            reports[fusion], masks[fusion] = _run(model, slide, work, fusion, args)
    same = bool(np.array_equal(masks["c"], masks["numpy"]))
    c = reports["c"]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"{args.size}x{args.size} px, {c['patches']['run']} patches of {c['model']['patch_size']} px, stride "
          f"{c['settings']['stride']}, batch {args.batch}; load average {load:.2f}; OMP_NUM_THREADS {threads}")
    print(f"{'stage':12s}{'C (s)':>10s}{'numpy (s)':>12s}{'numpy / C':>11s}")
    ratios = {}
    for stage in (*STAGES, "total"):
        c, n = reports["c"]["seconds"][stage], reports["numpy"]["seconds"][stage]
        ratios[stage] = n / c if c > 0 else None
        print(f"{stage:12s}{c:10.3f}{n:12.3f}{(f'{ratios[stage]:.1f}x' if ratios[stage] else '-'):>11s}")
    own = {f: reports[f]["seconds"]["preprocess"] + reports[f]["seconds"]["fuse"] for f in ("c", "numpy")}
    print(f"fusion's own stages (preprocess + fuse): C {own['c']:.3f} s, numpy {own['numpy']:.3f} s, "
          f"{own['numpy'] / own['c']:.1f}x; patches/s C {reports['c']['patches_per_s']:.0f}, "
          f"numpy {reports['numpy']['patches_per_s']:.0f}; masks identical: {same}")
    out = ROOT / "benchmarks" / "results" / f"infer-c-vs-numpy-{host_tag(keys=('numpy', 'onnxruntime-gpu'))}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"size": args.size, "batch": args.batch, "load_average": load, "masks_identical": same,
                     "omp_num_threads": threads,
                     "ratios": ratios, "own_stages": own, "reports": reports})
    print(f"wrote {out}")
    print(json.dumps({"numpy_over_c_total": ratios["total"], "numpy_over_c_fusion": own["numpy"] / own["c"]}))


if __name__ == "__main__":
    main()
