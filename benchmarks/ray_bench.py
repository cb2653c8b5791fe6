"""12 slides serially in one process vs on 2 Ray workers (each with one ONNX Runtime thread).

Both runs go through ``cervrt.runtime.batch.run_batch`` (the ``cervrt infer`` path: inputs, run
record, resume check) on the same synthetic PNG slides with the same model and tiling. Prints and
saves (``benchmarks/results/ray-*.json``):

- wall seconds of each run and the serial / Ray ratio (Ray's includes starting its local cluster);
- Ray's start-up (``ray.init`` and two workers up with the engine open) and, per slide, the overhead
  Ray adds: the time from handing a slide to a worker to its outcome at the driver, minus the
  slide's own seconds in its report (scheduling, the call, the result coming back);
- each worker's peak resident memory (ru_maxrss) and the driver's.

The default model is the tests' tiny ONNX graph (patch 64), so that this measures the runner rather
than a network; pass ``--engine`` for a real export. The machine may be shared and loaded: the
1-minute load average before and after is printed. Asserts nothing about time.

    python benchmarks/ray_bench.py [--engine MODEL.onnx] [--slides 12] [--size 768] [--stride 16]
"""

from __future__ import annotations

import argparse
import os
import resource
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
from cervrt.runtime.batch import BatchOptions, run_batch  # noqa: E402
from cervrt.runtime.config import PredictorConfig  # noqa: E402
from cervrt.runtime.inputs import collect_inputs  # noqa: E402
from cervrt.runtime.runner import OutputOptions  # noqa: E402


def _slides(folder: Path, count: int, size: int) -> None:
    from tests.support.tiny_onnx import slide_image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        box = (size // 8, size // 8, size * 3 // 4, size * 3 // 4)
        cv2.imwrite(str(folder / f"slide{i:02d}.png"), slide_image(rng, size, size, box)[:, :, ::-1])


def _serial(model: Path, slides: Path, out: Path, config: PredictorConfig) -> float:
    start = time.perf_counter()
    summary = run_batch(model, collect_inputs([slides]), out, config, OutputOptions(), BatchOptions(progress="none"),
                        echo=lambda line: None)
    assert not summary.failed, summary.failed
    return time.perf_counter() - start


def _ray(model: Path, slides: Path, out: Path, config: PredictorConfig, workers: int) -> dict:
    from cervrt.runtime.ray_runner import RayRunner, local_cluster

    started, arrived = {}, {}
    start = time.perf_counter()
    with local_cluster(num_cpus=workers):
        up = time.perf_counter()
        runner = RayRunner(workers, cpus_per_worker=1,
                           on_event=lambda kind, job, pid: started.setdefault(job.slide.stem, time.perf_counter()))
        summary = runner.run(model, sorted(slides.iterdir()), out, config, echo=lambda line: None,
                             on_outcome=lambda o: arrived.setdefault(o.job.slide.stem, time.perf_counter()))
        assert not summary.failed, summary.failed
    end = time.perf_counter()
    first = min(started.values())
    own = {r.name: r.report["seconds"]["total"] for r in summary.results}
    overhead = [arrived[name] - started[name] - own[name] for name in own]
    return {"wall_s": end - start, "cluster_start_s": up - start, "workers_up_s": first - up,
            "overhead_per_slide_s": float(np.mean(overhead)), "overhead_max_s": float(np.max(overhead)),
            "slide_seconds_sum": float(sum(own.values())),
            "worker_max_rss_mib": [info["max_rss_mib"] for info in runner.workers_info.values()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path, default=None, help="model [the tests' tiny ONNX graph, patch 64]")
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--size", type=int, default=768, help="side of each synthetic slide")
    parser.add_argument("--stride", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.engine
        if model is None:
            from tests.support.tiny_onnx import save_tiny_model

            model = save_tiny_model(work / "tiny.onnx")
        _slides(work / "slides", args.slides, args.size)
        config = PredictorConfig(device="cpu", stride=args.stride, tissue_threshold=0.1, mpp=0.904)
        serial_s = _serial(model, work / "slides", work / "serial", config)
        ray = _ray(model, work / "slides", work / "ray", config, args.workers)
        same = all(np.array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(work / "ray" / p.name), cv2.IMREAD_UNCHANGED))
                   for p in sorted((work / "serial").glob("*.mask.png")))
    result = {"slides": args.slides, "size": args.size, "stride": args.stride, "workers": args.workers,
              "cpus": os.cpu_count(), "serial_s": serial_s, "ray": ray, "serial_over_ray": serial_s / ray["wall_s"],
              "serial_over_ray_without_startup": serial_s / (ray["wall_s"] - ray["cluster_start_s"]
                                                            - ray["workers_up_s"]),
              "masks_identical": same, "driver_max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "load_1min": [load_before, os.getloadavg()[0]]}
    for key, value in result.items():
        print(f"{key}: {value}")
    target = ROOT / "benchmarks" / "results" / f"ray-{host_tag()}.json"
    write_json(target, result)
    print(f"-> {target}")


if __name__ == "__main__":
    main()
