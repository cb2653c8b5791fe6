"""cervrt's GPU acceptance checks, one JSON out (driven by ``benchmarks/gpu_acceptance.sh``).

    python benchmarks/gpu_acceptance.py --out DIR            # on a GPU machine
    python benchmarks/gpu_acceptance.py --out DIR --emulate  # the host logic, on the emulated driver

Sections (each records ``status`` PASS/FAIL/SKIP, its figures and its seconds; a failure never stops
the others):

- ``env``: driver CUDA version, GPU, NVRTC, torch/CUDA, the kernel image ``build_kernels`` picks;
- ``kernels_vs_c``: the device pipeline (stage, normalise, accumulate, argmax) on known probabilities
  against the C extension's fusion (``BandStitcher(backend="c")``, numpy where the C build is
  missing): labels bitwise, normalised inputs within 1e-6;
- ``overlap``: the loader's copy/compute overlap, from CUDA events on the copy and compute streams
  (uploads of batch k+1 while batch k is normalised and "inferred" by a fixed kernel load);
- ``bandwidth``: the gather/normalise and accumulate kernels' effective bandwidth against the card's
  device-to-device copy bandwidth, and pinned host-to-device bandwidth;
- ``predict_slide``: a synthetic slide through ``Predictor.predict_slide`` with the torch engine on
  CUDA (fp16 autocast, channels-last): patches/s, end-to-end over engine seconds, the path taken and
  its fallback, and agreement with the same engine fused on the host (with ``--emulate``: the fake
  TensorRT plan of the tests on the emulated driver, which checks the same host logic).

TensorRT is not exercised here (the machine has none): TensorRT stays compiled, unexecuted. Nothing
imports zarr, imagecodecs or openslide (the slide is a TIFF read by tifffile).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # cervrt from this tree, and tests.support for the emulated driver

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESULTS: list[dict[str, Any]] = []


def section(name: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Record a check's figures, status and seconds in RESULTS; print one JSON line per check."""
    def wrap(check: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            start, record = time.perf_counter(), {"section": name}
            try:
                record.update(check(*args, **kwargs) or {})
                record.setdefault("status", "PASS")
            except Exception as exc:  # record it and go on with the other checks
                record.update(status="FAIL", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-3000:])
            record["seconds"] = round(time.perf_counter() - start, 3)
            RESULTS.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "trace"}, default=str), flush=True)
            return record
        return run
    return wrap


# ---- the emulated driver (--emulate) ----------------------------------------------------------------------


@contextlib.contextmanager
def emulation(enabled: bool, workdir: Path) -> Iterator[Any]:
    """The tests' strict emulated driver with the kernels built for the host, or the real driver."""
    if not enabled:
        yield None
        return
    from cuda.bindings import driver as real

    from cervrt.runtime.gpu import CSRC_DIR
    from tests.support.cuda_emulation import build_host_kernels, emulated_cuda

    kernels = build_host_kernels(CSRC_DIR, workdir)
    if kernels is None:
        raise SystemExit("--emulate needs a C++ compiler on PATH to build the kernels for the host")
    with emulated_cuda(real, kernels) as driver:
        yield driver


class Timer:
    """CUDA events with timing on one stream; ``elapsed_ms()`` is None on the emulated driver."""

    def __init__(self, stream: Any, emulated: bool) -> None:
        self.stream, self.emulated = stream, emulated
        if not emulated:
            from cervrt.cuda import check, driver

            cu = driver()
            self._events = [check(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DEFAULT), "cuEventCreate")
                            for _ in range(2)]

    def start(self) -> None:
        if not self.emulated:
            from cervrt.cuda.memory import record_event

            record_event(self._events[0], self.stream)

    def stop(self) -> float | None:
        from cervrt.cuda import check, driver
        from cervrt.cuda.memory import record_event, synchronize_event, synchronize_stream

        if self.emulated:
            synchronize_stream(self.stream)
            return None
        record_event(self._events[1], self.stream)
        synchronize_event(self._events[1])
        return float(check(driver().cuEventElapsedTime(*self._events), "cuEventElapsedTime"))

    def close(self) -> None:
        if not self.emulated:
            from cervrt.cuda import driver

            for event in self._events:
                driver().cuEventDestroy(event)


def _gbps(nbytes: float, ms: float | None) -> float | None:
    return None if not ms else round(nbytes / (ms * 1e6), 1)


# ---- sections ---------------------------------------------------------------------------------------------


@section("env")
def env(emulated: bool) -> dict[str, Any]:
    from cervrt.cuda import driver_version, gpu_info
    from cervrt.runtime.gpu import build_kernels, nvrtc_version

    gpu = gpu_info(0)
    out: dict[str, Any] = {"emulated": emulated, "gpu": gpu.name, "capability": gpu.capability,
                           "driver_cuda": driver_version(), "nvrtc": ".".join(map(str, nvrtc_version()))}
    image, what = build_kernels(0)
    out["kernel_image"], out["kernel_bytes"] = what, len(image)
    with contextlib.suppress(ImportError):
        import torch

        out["torch"], out["torch_cuda"] = torch.__version__, torch.version.cuda
        out["torch_sees_gpu"] = bool(torch.cuda.is_available())
    return out


def _scene(height: int, width: int, patch: int, stride: int, classes: int, seed: int) -> tuple[np.ndarray, ...]:
    from cervrt.runtime.tiling import window_starts

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    grid = [(y, x) for y in window_starts(height, patch, stride) for x in window_starts(width, patch, stride)]
    ys, xs = (np.array(v, np.int64) for v in zip(*grid, strict=True))
    probs = rng.dirichlet(np.ones(classes), size=(len(grid), patch, patch)).astype(np.float32)
    return image, ys, xs, np.ascontiguousarray(probs.transpose(0, 3, 1, 2))


@section("kernels_vs_c")
def kernels_vs_c(emulated: bool, small: bool = False) -> dict[str, Any]:
    from cervrt.cuda import check, driver
    from cervrt.runtime import reference
    from cervrt.runtime.fusion import get_backend
    from cervrt.runtime.gpu import CudaFusion
    from cervrt.runtime.stitcher import BandStitcher

    cases = [(150, 120, 32, 12, 5, "gaussian"), (300, 40, 24, 8, 7, "mean")] if small else [
        (150, 120, 32, 12, 5, "gaussian"), (300, 40, 24, 8, 7, "mean"), (700, 900, 128, 32, 16, "gaussian")]
    backend = "c" if get_backend("auto").name == "c" else "numpy"
    results = []
    for height, width, patch, stride, batch, blend in cases:
        image, ys, xs, probs = _scene(height, width, patch, stride, 5, height)
        with CudaFusion(patch, 5, batch_size=batch, mean=MEAN, std=STD) as gpu:
            with gpu.active():
                device = gpu.alloc(probs.nbytes)
                check(driver().cuMemcpyHtoD(device, probs.ctypes.data, probs.nbytes), "cuMemcpyHtoD")
                host_in = np.empty((batch, 3, patch, patch), np.float32)
            band = gpu.image(height, width, stride, blend)
            chunks, worst = [], 0.0
            for start in range(0, len(ys), batch):
                part = slice(start, start + batch)
                staged = gpu.stage(image, ys[part], xs[part])
                inputs = gpu.normalize(staged)
                n = len(staged)
                with gpu.active():
                    check(driver().cuMemcpyDtoHAsync(host_in.ctypes.data, inputs, n * host_in[0].nbytes,
                                                     gpu.compute_stream), "cuMemcpyDtoHAsync")
                    check(driver().cuStreamSynchronize(gpu.compute_stream), "cuStreamSynchronize")
                want = np.empty_like(host_in[:n])
                reference.gather(image, ys[part], xs[part], patch, MEAN, STD, want)
                worst = max(worst, float(np.abs(host_in[:n] - want).max()))
                chunks += band.add(staged, device + start * probs[0].nbytes)
            chunks += band.finish()
            band.close()
        labels = np.concatenate([c for _, c in chunks])
        stitcher = BandStitcher(height, width, 5, patch, stride, blend, backend=backend)
        expected = np.concatenate([c for _, c in stitcher.add(ys, xs, probs, None) + stitcher.finish()])
        results.append({"case": f"{height}x{width} p{patch} s{stride} b{batch} {blend}",
                        "labels_equal": bool(np.array_equal(labels, expected)),
                        "differing_pixels": int((labels != expected).sum()), "max_input_error": worst})
    ok = all(r["labels_equal"] and r["max_input_error"] <= 1e-6 for r in results)
    return {"status": "PASS" if ok else "FAIL", "against": backend, "cases": results}


@section("overlap")
def overlap(emulated: bool) -> dict[str, Any]:
    """Uploads on the copy stream against normalise + a fixed kernel load on the compute stream."""
    from cervrt.runtime.gpu import CudaFusion

    patch, batch, batches = (64, 4, 4) if emulated else (512, 32, 24)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (patch, patch * batch, 3), dtype=np.uint8)
    ys, xs = np.zeros(batch, np.int64), np.arange(batch, dtype=np.int64) * patch
    out: dict[str, Any] = {"patch": patch, "batch": batch, "batches": batches}
    with CudaFusion(patch, 5, batch_size=batch, mean=MEAN, std=STD, num_slots=2) as gpu, gpu.active():
        copy, compute = Timer(gpu._copy_stream, emulated), Timer(gpu.compute_stream, emulated)

        def load(staged: Any) -> None:  # an engine's worth of device work: normalise a few times over
            for _ in range(4):
                gpu.normalize(staged)

        staged = gpu.stage(image, ys, xs)
        gpu.synchronize()
        copy.start()  # uploads alone
        for _ in range(batches):
            staged = gpu.stage(image, ys, xs)
        upload_ms = copy.stop()
        compute.start()  # compute alone
        for _ in range(batches):
            load(staged)
        compute_ms = compute.stop()
        gpu.synchronize()
        wall = time.perf_counter()
        compute.start()  # both, pipelined as the loader does it
        for _ in range(batches):
            load(gpu.stage(image, ys, xs))
        pipelined_ms = compute.stop()
        out["pipelined_wall_ms"] = round((time.perf_counter() - wall) * 1e3, 3)
        copy.close()
        compute.close()
    out.update(upload_ms=upload_ms, compute_ms=compute_ms, pipelined_ms=pipelined_ms)
    if None not in (upload_ms, compute_ms, pipelined_ms):
        hidden = upload_ms + compute_ms - pipelined_ms
        out["overlap_fraction"] = round(max(0.0, hidden) / min(upload_ms, compute_ms), 3)
    else:
        out["status"] = "PASS (emulated: no timings)"
    return out


@section("bandwidth")
def bandwidth(emulated: bool) -> dict[str, Any]:
    from cervrt.cuda import memory as mem
    from cervrt.runtime.gpu import CudaFusion

    patch, batch, classes = (32, 4, 5) if emulated else (512, 32, 5)
    copy_bytes = (1 << 20) if emulated else (1 << 30)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (patch, patch * batch, 3), dtype=np.uint8)
    ys, xs = np.zeros(batch, np.int64), np.arange(batch, dtype=np.int64) * patch
    out: dict[str, Any] = {}
    with CudaFusion(patch, classes, batch_size=batch, mean=MEAN, std=STD) as gpu, gpu.active():
        timer = Timer(gpu.compute_stream, emulated)
        staged = gpu.stage(image, ys, xs)
        gpu.normalize(staged)
        timer.start()
        for _ in range(10):
            gpu.normalize(staged)
        ms = timer.stop()
        out["gather_normalize_ms"] = None if ms is None else round(ms / 10, 4)
        out["gather_normalize_GBps"] = _gbps(batch * patch * patch * 15, None if ms is None else ms / 10)
        width = patch * batch
        band = gpu.image(4 * patch, width, patch // 4)
        probs = gpu.alloc(batch * classes * patch * patch * 4)
        mem.memset_d32_async(probs, 0x3E4CCCCD, batch * classes * patch * patch, gpu.compute_stream)  # 0.2f
        timer.start()
        band.add(staged, probs)
        ms = timer.stop()
        moved = batch * patch * patch * (classes * 4 * 3 + 8)  # probs read, sums read + written, weights, wsum
        out["accumulate_ms"], out["accumulate_GBps"] = ms, _gbps(moved, ms)
        band.close()
        src, dst = gpu.alloc(copy_bytes), gpu.alloc(copy_bytes)
        timer.start()
        mem.copy_dtod_async(dst, src, copy_bytes, gpu.compute_stream)
        ms = timer.stop()
        out["dtod_copy_GBps"] = _gbps(2 * copy_bytes, ms)  # read + write
        pinned = gpu.pinned(copy_bytes)
        timer.start()
        mem.copy_htod_async(dst, pinned.ctypes.data, copy_bytes, gpu.compute_stream)
        ms = timer.stop()
        out["htod_pinned_GBps"] = _gbps(copy_bytes, ms)
        del pinned
        timer.close()
    if out.get("dtod_copy_GBps"):
        out["gather_vs_copy"] = round(out["gather_normalize_GBps"] / out["dtod_copy_GBps"], 3)
        out["accumulate_vs_copy"] = round(out["accumulate_GBps"] / out["dtod_copy_GBps"], 3)
    else:
        out["status"] = "PASS (emulated: no timings)"
    return out


def _slide(directory: Path, size: int) -> Path:
    import tifffile

    rng = np.random.default_rng(2)
    base = np.array([200, 120, 170], np.float32)
    image = np.clip(base + rng.normal(0, 35, (size, size, 3)), 0, 255).astype(np.uint8)
    image[: size // 8] = 245  # some glass
    path = directory / "slide.tiff"
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.904, 1e4 / 0.904),
                     resolutionunit="CENTIMETER")
    return path


def _engines(emulated: bool, directory: Path) -> tuple[Callable[[], Any], dict[str, Any]]:
    """(open the device engine, settings): the torch engine on CUDA in fp16, or the tests' fake plan."""
    if emulated:
        from tests.support.fake_trt_runtime import make_fake_trt_runtime, plan_metadata, write_plan

        sys.modules["tensorrt"] = make_fake_trt_runtime(max_batch=8)
        path = write_plan(directory, plan_metadata(gpu=("Emulated GPU", "7.5"), max_batch=8))

        def open_plan() -> Any:
            from cervrt.engines import open_engine

            return open_engine(path, "cuda", batch_size=8)

        return open_plan, {"batch_size": 8, "stride": 16, "tissue_threshold": 0.5}
    from cervrt.engines.torch import TorchEngine
    from tests.support.tiny_models import save_tiny_checkpoint

    path = save_tiny_checkpoint(directory / "hspnet.pt", patch_size=256)
    return lambda: TorchEngine(path, "cuda", batch_size=32, precision="fp16", channels_last=True), {
        "batch_size": 32, "stride": 128, "tissue_threshold": 0.5}


@section("predict_slide")
def predict_slide(emulated: bool, directory: Path) -> dict[str, Any]:
    import tifffile

    from cervrt.runtime.predictor import Predictor

    open_device_engine, settings = _engines(emulated, directory)
    slide = _slide(directory, 256 if emulated else 6144)
    engine = open_device_engine()
    out: dict[str, Any] = {"engine": engine.kind, "precision": engine.precision, "device": engine.device}
    masks = {}
    try:
        for fusion in ("auto", "c"):
            with Predictor(engine=engine, fusion=fusion, **settings) as predictor:
                predictor.predict(np.full((512, 512, 3), 180, np.uint8))  # warm-up: kernels, autotuning
                result = predictor.predict_slide(slide, directory / f"out-{fusion}")
            report = result.report
            masks[fusion] = tifffile.imread(result.paths["mask"]) if str(result.paths["mask"]).endswith(
                (".tif", ".tiff")) else _png(result.paths["mask"])
            seconds = report["seconds"]
            out[fusion] = {"fusion": report["fusion"], "fallback": report.get("fallback"),
                           "patches_run": report["patches"]["run"], "patches_per_s": round(report["patches_per_s"], 1),
                           "e2e_over_engine": round(seconds["total"] / seconds["engine"], 3) if seconds["engine"]
                           else None, "seconds": seconds}
    finally:
        engine.close()
    out["labels_agree_with_host_fusion"] = round(float((masks["auto"] == masks["c"]).mean()), 6)
    ok = out["auto"]["fusion"] == "cuda" and out["labels_agree_with_host_fusion"] > 0.999
    return {"status": "PASS" if ok else "FAIL", **out}


def _png(path: Path) -> np.ndarray:
    from cervrt._cv import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_acceptance.json")
    parser.add_argument("--emulate", action="store_true", help="run the host logic on the emulated driver")
    parser.add_argument("--only", choices=("kernels_vs_c",), help="one section (compute-sanitizer runs this)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, emulation(args.emulate, Path(tmp)):
        if args.only == "kernels_vs_c":
            kernels_vs_c(args.emulate, small=True)
        else:
            env(args.emulate)
            kernels_vs_c(args.emulate, small=args.emulate)
            overlap(args.emulate)
            bandwidth(args.emulate)
            predict_slide(args.emulate, Path(tmp))
    name = "gpu_acceptance.sanitizer.json" if args.only else "gpu_acceptance.json"
    summary = {"emulated": args.emulate, "failed": [r["section"] for r in RESULTS if r["status"] == "FAIL"],
               "sections": RESULTS}
    partial = args.out / (name + ".part")
    partial.write_text(json.dumps(summary, indent=2, default=str))
    partial.replace(args.out / name)
    print(f"wrote {args.out / name}: {len(RESULTS)} sections, failed: {summary['failed'] or 'none'}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
