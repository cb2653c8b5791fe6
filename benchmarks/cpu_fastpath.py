"""CPU fast path: ONNX Runtime and OpenVINO at FP32, BF16 and INT8, with speed ratios measured in one run.

For each model -- HSP-Net ResNet-34 from a checkpoint (``--checkpoint``, e.g. the demo's trained
``run/best.pt``), HSP-Net ResNet-101 and DeepLab v3+ built *untrained* (torch seed 0; no trained
checkpoint of theirs exists on this machine, so their agreement says little: a random network's
near-uniform probabilities flip on any rounding, and they have no agreement target) -- it

- exports FP32 ONNX (``cervrt.export.export``) and quantizes it to INT8 as ``cervrt export
  --precision int8`` does (``quantize_int8``: QDQ, per-channel int8 weights, uint8 activations,
  MinMax over ``--calibration-patches`` tissue patches from ``--calibration``, the default float
  groups), reporting the figures whether or not they pass the export's 99% gate;
- opens ONNX Runtime FP32 (today's default), ONNX Runtime INT8, OpenVINO FP32, OpenVINO BF16 (where
  the CPU has it) and OpenVINO INT8 on the CPU (``cervrt.bench.fastpath.open_cpu_engines``, shared
  with ``cervrt bench``);
- times all engines on one tissue batch (``--size`` px, ``--batch`` patches) in interleaved rounds
  (one warm-up each, then ``--rounds`` rounds, one run of every engine per round, median): the
  ratios to ONNX Runtime FP32 come from the same minutes of the same run, so that load on a shared
  machine hits every engine alike; the patches/s themselves depend on that load
  (``cervrt.timing.time_interleaved``);
- label agreement with ONNX Runtime FP32 on held-out tissue patches (from ``--test``, not used for
  calibration) and, for the trained model, Dice on the synthetic test set (``--test``: images/ and
  masks/, tiled by non-overlapping patches) and its change against FP32 in points.

The machine is named (``cervrt.bench.machine``) with its load average before and after; prints a
markdown table and writes ``benchmarks/results/cpu-fastpath-<cpu>-<versions>.{json,md}``. Asserts
nothing about time.

    python benchmarks/cpu_fastpath.py --checkpoint DEMO/run/best.pt --calibration DEMO/data --test DEMO/test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cervrt._io import atomic_path, write_json
from cervrt.bench.fastpath import open_cpu_engines
from cervrt.bench.machine import host_tag, machine_info
from cervrt.timing import time_interleaved, tissue_batch

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
_UNTRAINED = {"hspnet-resnet101": ("hspnet", "resnet101"), "deeplabv3plus": ("deeplabv3plus", "resnet101")}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained HSP-Net ResNet-34 checkpoint")
    parser.add_argument("--calibration", type=Path, required=True, help="calibration images (a dataset dir)")
    parser.add_argument("--test", type=Path, required=True, help="test set with images/ and masks/")
    parser.add_argument("--untrained", nargs="*", default=list(_UNTRAINED), choices=list(_UNTRAINED))
    parser.add_argument("--calibration-patches", type=int, default=32)
    parser.add_argument("--size", type=int, default=400, help="side of the timed patches")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="JSON path [benchmarks/results/cpu-fastpath-...json]")
    return parser.parse_args(argv)


def _load() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def _untrained_checkpoint(arch: str, encoder: str, patch: int, directory: Path) -> Path:
    import torch

    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    torch.manual_seed(0)
    path = directory / f"{arch}-{encoder}.pt"
    save_checkpoint(path, build_checkpoint(create_model(arch, encoder=encoder), arch, {"encoder": encoder},
                                           patch_size=patch))
    return path


def _export(checkpoint: Path, directory: Path) -> Path:
    from cervrt.export import ExportConfig, export

    return export(ExportConfig(checkpoint, output=directory / (checkpoint.stem + ".onnx"))).onnx


def _int8(fp32: Path, args: argparse.Namespace, meta: dict[str, Any]) -> tuple[Path, float]:
    import onnx

    from cervrt.artifact import attach_metadata
    from cervrt.export.calibration import draw_calibration, normalise
    from cervrt.export.int8 import quantize_int8

    start = time.perf_counter()
    drawn = draw_calibration([args.calibration], meta["patch_size"], meta["mpp"], args.calibration_patches, holdout=1)
    quantized, _ = quantize_int8(onnx.load(fp32), normalise(drawn.calibration, meta["mean"], meta["std"]))
    attach_metadata(quantized, {**meta, "precision": "int8"})
    path = fp32.with_name(fp32.stem + ".int8.onnx")
    onnx.save(quantized, path)
    return path, time.perf_counter() - start


def _argmax(engine: Any, x: np.ndarray) -> np.ndarray:
    return np.concatenate([engine.run(x[i : i + 4]).probs.argmax(1) for i in range(0, len(x), 4)])


def _holdout(test: Path, meta: dict[str, Any]) -> np.ndarray:
    from cervrt.export.calibration import draw_calibration, holdout_count, normalise

    drawn = draw_calibration([test], meta["patch_size"], meta["mpp"], 1, holdout=holdout_count(meta["patch_size"]))
    return normalise(drawn.holdout, meta["mean"], meta["std"])


def _dice(engine: Any, test: Path, meta: dict[str, Any]) -> float:
    from cervrt.export.calibration import normalise
    from cervrt.metrics import MetricAccumulator
    from cervrt.train.data import list_regions, load_region

    p, acc = meta["patch_size"], MetricAccumulator(len(meta["class_names"]))
    for region in list_regions(test):
        image, mask = load_region(region)
        h, w = (-(-s // p) * p for s in mask.shape)
        padded = np.full((h, w, 3), 255, np.uint8)
        padded[: mask.shape[0], : mask.shape[1]] = image
        tiles = [padded[y : y + p, x : x + p] for y in range(0, h, p) for x in range(0, w, p)]
        labels = _argmax(engine, normalise(np.stack(tiles), meta["mean"], meta["std"]))
        pred = np.zeros((h, w), np.uint8)
        for label, (y, x) in zip(labels, [(y, x) for y in range(0, h, p) for x in range(0, w, p)], strict=True):
            pred[y : y + p, x : x + p] = label
        acc.update(pred[: mask.shape[0], : mask.shape[1]], mask)
    return float(acc.compute()["dice"])


def _model(name: str, checkpoint: Path, trained: bool, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    from cervrt.artifact import read_metadata

    print(f"{name}: exporting FP32 and quantizing INT8 ...", flush=True)
    fp32 = _export(checkpoint, directory)
    meta = read_metadata(fp32)
    int8, int8_seconds = _int8(fp32, args, meta)
    engines, absent = open_cpu_engines(fp32, int8)
    for engine_name, reason in absent.items():
        print(f"{name}: {engine_name} absent: {reason}", flush=True)
    try:
        speed = time_interleaved(engines, tissue_batch(args.size, args.batch, meta["mean"], meta["std"]), args.rounds)
        x = _holdout(args.test, meta)
        reference = _argmax(engines["ORT FP32"], x)
        agreement = {k: float(np.mean(_argmax(e, x) == reference)) for k, e in engines.items()}
        dice = {k: _dice(e, args.test, meta) for k, e in engines.items()} if trained else {}
        provider = {k: f"{e.provider}, {e.precision}" for k, e in engines.items()}
    finally:
        for engine in engines.values():
            engine.close()
    base = speed["ORT FP32"]
    rows = [{"engine": k, "runs": provider[k], "patches_per_s": v, "ratio": v / base, "agreement": agreement[k],
             "dice": dice.get(k), "dice_change_points": None if k not in dice else 100 * (dice[k] - dice["ORT FP32"])}
            for k, v in speed.items()]
    return {"model": name, "trained": trained, "patch_size": meta["patch_size"], "int8_seconds": int8_seconds,
            "holdout_pixels": int(x.shape[0] * x.shape[2] * x.shape[3]), "rows": rows}


def _markdown(results: list[dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"CPU fast path on {info['cpu']} ({info['usable_cores']} cores), {args.size}x{args.size}, batch "
             f"{args.batch}, load average {info['load_before']} before / {info['load_after']} after "
             "(a shared machine: compare the ratios, not the patches/s)", ""]
    for result in results:
        note = "trained (demo)" if result["trained"] else "UNTRAINED: agreement says little, no target"
        lines += [f"### {result['model']} ({note})", "",
                  "| engine | runs as | patches/s | vs ORT FP32 | agreement with FP32 | Dice | Dice change |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in result["rows"]:
            dice = "-" if r["dice"] is None else f"{r['dice']:.4f}"
            change = "-" if r["dice_change_points"] is None else f"{r['dice_change_points']:+.2f} pt"
            lines.append(f"| {r['engine']} | {r['runs']} | {r['patches_per_s']:.2f} | {r['ratio']:.2f}x | "
                         f"{r['agreement']:.2%} | {dice} | {change} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    info = {**machine_info(), "load_before": _load()}
    results = []
    with tempfile.TemporaryDirectory(prefix="cervrt-fastpath-") as tmp:
        results.append(_model("hspnet-resnet34", args.checkpoint, True, args, Path(tmp)))
        print(_markdown(results[-1:], {**info, "load_after": _load()}, args), flush=True)
        patch = results[0]["patch_size"]  # the untrained ones calibrate and hold out at the trained model's patch
        for name in args.untrained:
            arch, encoder = _UNTRAINED[name]
            checkpoint = _untrained_checkpoint(arch, encoder, patch, Path(tmp))
            results.append(_model(name, checkpoint, False, args, Path(tmp)))
            print(_markdown(results[-1:], {**info, "load_after": _load()}, args), flush=True)
    info["load_after"] = _load()
    report = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()}, "results": results}
    text = _markdown(results, info, args)
    print(text)
    import openvino

    info["versions"]["openvino"] = openvino.__version__.split("-")[0]
    out = args.out or RESULTS / f"cpu-fastpath-{host_tag(info['versions'], keys=('onnxruntime-gpu', 'openvino'))}.json"
    write_json(out, report)
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(text + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
