"""Latency of one region through ``cervrt serve`` over loopback against the same call in process.

One synthetic 2000x2000 tissue image (PNG-encoded once) is segmented ``--repeat`` times each way, with
the same model and settings:

- in process: ``Predictor.predict(rgb)`` (decoded pixels in, labels out), and the same with the PNG
  decode and the labels' PNG encode that the service does, to split the service's cost into codec
  work and HTTP work;
- over loopback: ``POST /v1/segment`` to a real server (uvicorn on 127.0.0.1, a free port) with httpx,
  body = the PNG bytes, response = the labels PNG.

The labels of both ways are checked to be identical. Prints and saves (benchmarks/results/) the
median and min seconds of each, and the machine's 1-minute load average (the machine may be
shared). The default model is the tests' tiny ONNX graph (patch 64: the engine is cheap, so the
service's own cost shows); pass ``--engine`` for a real export. Asserts nothing about time.

    python benchmarks/serve_latency.py [--engine MODEL.onnx] [--size 2000] [--repeat 5] [--stride 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cervrt._cv import cv2  # noqa: E402
from cervrt._io import write_json  # noqa: E402
from cervrt.bench.machine import host_tag  # noqa: E402


def _times(run, repeat: int) -> dict[str, float]:
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs": seconds}


def main() -> None:
    import httpx

    from cervrt.runtime.predictor import Predictor
    from cervrt.serve import BackgroundServer, ServeConfig
    from cervrt.serve.service import decode_body
    from tests.support.tiny_onnx import save_tiny_model, tissue_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, default=None, help="model [the tests' tiny ONNX graph, patch 64]")
    parser.add_argument("--size", type=int, default=2000, help="side of the region")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stride", type=int, default=None, help="window stride [a quarter patch]")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    rgb = tissue_image(np.random.default_rng(0), args.size, args.size)
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    with tempfile.TemporaryDirectory(prefix="cervrt-serve-bench-") as tmp:
        model = args.engine or save_tiny_model(Path(tmp) / "tiny.onnx")
        settings = {"batch_size": args.batch, "stride": args.stride}
        with Predictor(model, device="cpu", **settings) as predictor:
            labels = predictor.predict(rgb)  # warm-up
            direct = _times(lambda: predictor.predict(rgb), args.repeat)
            codec = _times(lambda: cv2.imencode(".png", predictor.predict(decode_body(png))), args.repeat)
        config = ServeConfig(model, port=0, device="cpu", batch_size=args.batch, out_dir=Path(tmp) / "jobs")
        params = {} if args.stride is None else {"stride": args.stride}
        with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=600) as client:
            def post() -> bytes:
                response = client.post("/v1/segment", content=png, params=params,
                                       headers={"Content-Type": "image/png"})
                response.raise_for_status()
                return response.content

            served = cv2.imdecode(np.frombuffer(post(), np.uint8), cv2.IMREAD_UNCHANGED)  # warm-up
            http = _times(post, args.repeat)
    identical = bool(np.array_equal(served, labels))
    result = {"machine": host_tag(), "load_1min": os.getloadavg()[0], "size": args.size, "png_bytes": len(png),
              "model": str(args.engine or "tiny ONNX graph (patch 64)"), "settings": settings, "repeat": args.repeat,
              "in_process": direct, "in_process_with_png_codec": codec, "http_loopback": http,
              "labels_identical": identical}
    for name in ("in_process", "in_process_with_png_codec", "http_loopback"):
        print(f"{name:<28} median {result[name]['median_s']:.3f} s  min {result[name]['min_s']:.3f} s")
    print(f"labels identical: {identical}; load {result['load_1min']:.2f}; PNG body {len(png) / 1e6:.1f} MB")
    out = ROOT / "benchmarks" / "results" / f"serve-latency-{host_tag()}.json"
    write_json(out, result)
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
