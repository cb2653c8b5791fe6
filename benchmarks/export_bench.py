"""Export HSP-Net (ResNet-34 and ResNet-101) to ONNX FP32 and FP16 and time it, then compare CPU throughput.

For each encoder it builds an HSP-Net with *untrained* weights (cervrt's default initialisation,
torch seed 0: no trained checkpoint is reachable from this machine; the export's cost, the file sizes
and the throughput do not depend on the weights), saves it as a cervrt checkpoint with 400 px
patches and

- runs ``cervrt.export.export`` (FP32): export time (trace + onnxslim), parity-check time, FP32 vs
  torch largest absolute difference and argmax agreement on the random and tissue inputs;
- converts that FP32 graph with ``cervrt.export.fp16.convert_to_fp16`` and checks it against FP32 on
  the same tissue input as ``export(precision="fp16")`` does, but reports the figures whether or not
  they pass the export's 99.9% gate (so that the FP16 graph can still be timed);
- the checkpoint, FP32 ONNX and FP16 ONNX sizes.

The parity figures of untrained networks say little about trained ones. Their logits are small
(|logit| < 0.5), so the class probabilities are nearly uniform and tiny numeric differences flip
the argmax of near-tied pixels. With BatchNorm at its initial statistics (mean 0, variance 1) an
untrained ResNet-101's layer3 activations reach 1e5, past FP16's largest number (65504): its FP16
graph returns inf/NaN, which the export's gate refuses (the table says so). Re-estimating the
BatchNorm statistics on synthetic tissue was tried and rejected: it makes the random 101-layer
network chaotic, so that even FP32 ONNX Runtime and torch (same math, different summation order)
disagree on 0.04% of pixels; that measures the random network, not the export.

Then, in the same run, the CPU throughput at 400x400 for batch 1 and 8 of torch (``predict_proba``,
no_grad, float32), ONNX Runtime FP32 and ONNX Runtime FP16 (CPUExecutionProvider): one warm-up run,
then ``--repeats`` timed runs (batch 8: half as many, at least 3), median time -> patches/s. The machine may be
shared: its 1-minute load average before and after is recorded.

Prints markdown tables and writes ``benchmarks/results/export-<cpu>-<versions>.json`` atomically.
Asserts nothing about time.

    python benchmarks/export_bench.py [--encoders resnet34 resnet101] [--repeats 5] [--size 400]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cervrt._io import write_json
from cervrt.bench.machine import cpu_model, host_tag
from cervrt.export import ExportConfig, export

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["resnet34", "resnet101"], choices=["resnet34", "resnet101"])
    parser.add_argument("--size", type=int, default=400, help="patch size of the checkpoint and the timed input")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case after one warm-up")
    parser.add_argument("--out", type=Path, default=None, help="JSON path [benchmarks/results/export-...json]")
    return parser.parse_args(argv)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _checkpoint(encoder: str, size: int, directory: Path) -> Path:
    import torch

    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    torch.manual_seed(0)
    model = create_model("hspnet", encoder=encoder)
    path = directory / f"hspnet-{encoder}.pt"
    save_checkpoint(path, build_checkpoint(model, "hspnet", {"encoder": encoder}, patch_size=size))
    return path


def _check_record(check: Any) -> dict[str, Any]:
    return {"max_abs_diff": check.max_abs_diff, "agreement": check.agreement, "threshold": check.threshold,
            "passed": check.passed, "finite": check.finite, "shape": list(check.shape)}


def _fp16(fp32: Path, size: int, metadata: dict[str, Any]) -> tuple[Path, float, Any]:
    """FP16 copy of ``fp32`` and its check against FP32 on tissue, as the export makes it (gate not applied)."""
    import onnx

    from cervrt.export.fp16 import convert_to_fp16
    from cervrt.export.parity import FP16_AGREEMENT, compare, make_samples, ort_session, run_session

    start = time.perf_counter()
    proto = convert_to_fp16(onnx.load(fp32))
    path = fp32.with_name(fp32.stem + ".fp16.onnx")
    onnx.save(proto, path)
    seconds = time.perf_counter() - start
    tissue = make_samples(size, metadata["mean"], metadata["std"])[1]
    expected = run_session(ort_session(fp32), tissue.image)
    check = compare("fp16 onnx", "fp32 onnx", tissue, expected, run_session(ort_session(path), tissue.image),
                    FP16_AGREEMENT)
    print("  " + check.describe() + ("" if check.passed else "  <- below the export's gate: it would refuse"))
    return path, seconds, check


def _export(encoder: str, size: int, directory: Path) -> dict[str, Any]:
    ckpt = _checkpoint(encoder, size, directory)
    result = export(ExportConfig(ckpt, output=directory / f"hspnet-{encoder}.onnx"), echo=lambda m: print("  " + m))
    fp16, fp16_seconds, fp16_check = _fp16(result.onnx, size, result.metadata)
    checks = {f"{c.candidate.split()[0]}_{c.sample}": _check_record(c) for c in (*result.checks, fp16_check)}
    return {"encoder": encoder, "params": result.metadata["params"], "macs_patch": result.metadata["macs_patch"],
            "checkpoint_bytes": ckpt.stat().st_size, "fp32_bytes": result.sizes["fp32"],
            "fp16_bytes": fp16.stat().st_size, "seconds": {**result.seconds, "fp16": fp16_seconds}, "checks": checks,
            "files": {"checkpoint": ckpt, "fp32": result.onnx, "fp16": fp16}}


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _runners(files: dict[str, Path], batch: np.ndarray) -> dict[str, Callable[[], Any]]:
    import torch

    from cervrt.checkpoint import load_checkpoint
    from cervrt.export.parity import ort_session, run_session
    from cervrt.models import model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(files["checkpoint"]))
    image = torch.from_numpy(batch)
    sessions = {name: ort_session(files[name]) for name in ("fp32", "fp16")}

    def torch_run() -> Any:
        with torch.no_grad():
            return model.predict_proba(image)

    return {"torch": torch_run, "ort_fp32": lambda: run_session(sessions["fp32"], batch),
            "ort_fp16": lambda: run_session(sessions["fp16"], batch)}


def _throughput(files: dict[str, Path], size: int, batches: list[int], repeats: int) -> list[dict[str, Any]]:
    rows = []
    for batch_size in batches:
        batch = np.random.default_rng(0).standard_normal((batch_size, 3, size, size), dtype=np.float32)
        row: dict[str, Any] = {"batch": batch_size}
        for name, run in _runners(files, batch).items():
            seconds = _median_seconds(run, repeats if batch_size == 1 else max(3, repeats // 2))
            row[name] = {"median_s": seconds, "patches_per_s": batch_size / seconds}
            print(f"  batch {batch_size} {name}: {seconds:.3f} s -> {batch_size / seconds:.2f} patches/s")
        rows.append(row)
    return rows


def _fp16_cells(check: dict[str, Any]) -> str:
    if not check["finite"]:
        return "inf/NaN | FP16 overflow: the export refuses it"
    note = "" if check["passed"] else " (below the 99.9% gate: the export refuses it)"
    return f"{check['max_abs_diff']:.2e} | {check['agreement']:.4%}{note}"


def _export_table(results: list[dict[str, Any]]) -> str:
    mib = 2**20
    lines = ["| HSP-Net | params | export s | FP16 conv. s | parity s | ckpt MiB | FP32 MiB | FP16 MiB | "
             "FP32 vs torch max abs diff (random / tissue) | FP32 agreement | FP16 vs FP32 max abs diff (tissue) | "
             "FP16 agreement |", "|" + "---|" * 12]
    for r in results:
        c, s = r["checks"], r["seconds"]
        fp32_agreement = min(c["fp32_random"]["agreement"], c["fp32_tissue"]["agreement"])
        lines.append(
            f"| {r['encoder']} | {r['params'] / 1e6:.2f}M | {s['export']:.1f} | {s.get('fp16', 0):.1f} | "
            f"{s['parity']:.1f} | {r['checkpoint_bytes'] / mib:.1f} | {r['fp32_bytes'] / mib:.1f} | "
            f"{r['fp16_bytes'] / mib:.1f} | {c['fp32_random']['max_abs_diff']:.2e} / "
            f"{c['fp32_tissue']['max_abs_diff']:.2e} | {fp32_agreement:.4%} | "
            f"{_fp16_cells(c['fp16_tissue'])} |")
    return "\n".join(lines)


def _speed_table(results: list[dict[str, Any]], size: int) -> str:
    lines = [f"| HSP-Net | batch | torch FP32 (patches/s at {size}x{size}) | ORT FP32 | ORT FP16 |",
             "|---|---|---|---|---|"]
    for r in results:
        for row in r["throughput"]:
            cells = " | ".join(f"{row[k]['patches_per_s']:.2f}" for k in ("torch", "ort_fp32", "ort_fp16"))
            lines.append(f"| {r['encoder']} | {row['batch']} | {cells} |")
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from cervrt import __version__

    return {"cpu": cpu_model(), "host": platform.node(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "cervrt": __version__,
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "weights": "untrained (default initialisation, torch seed 0)"}


def _output_path() -> Path:
    return RESULTS / f"export-{host_tag(keys=('torch', 'onnxruntime-gpu', 'onnxruntime'))}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    env = {**_environment(), "load_avg_1min_start": _load()}
    results = []
    with tempfile.TemporaryDirectory(prefix="cervrt-export-bench-") as tmp:
        for encoder in args.encoders:
            print(f"HSP-Net {encoder} (untrained weights), patch {args.size}:")
            record = _export(encoder, args.size, Path(tmp))
            record["throughput"] = _throughput(record.pop("files"), args.size, args.batches, args.repeats)
            results.append(record)
    env["load_avg_1min_end"] = _load()
    report = {"environment": env, "size": args.size, "repeats": args.repeats, "results": results}
    print("\n" + _export_table(results) + "\n\n" + _speed_table(results, args.size))
    print(f"\n{env['cpu']}, {env['cpu_count']} cores, torch {env['torch']} ({env['torch_threads']} threads), "
          f"onnxruntime {env['onnxruntime']}; load average {env['load_avg_1min_start']:.2f} -> "
          f"{env['load_avg_1min_end']:.2f}; weights untrained")
    out = args.out or _output_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
