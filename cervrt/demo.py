"""``cervrt demo``: the whole pipeline on built-in synthetic data, in a few minutes on a laptop CPU.

Synthesise a small MTCHI-layout dataset and a separate test set, train HSP-Net ResNet-34 within a
time budget, evaluate it on the test set beside the majority-class baseline, export it to ONNX FP32
and FP16 with their parity figures and to INT8 (its agreement and speed ratio beside FP32), and say
where the files went.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import ensure_writable_dir, write_json
from cervrt.errors import CervrtError
from cervrt.metrics import MetricAccumulator

__all__ = ["DEMO_SETTINGS", "export_demo_model", "majority_baseline", "run_demo"]

#: Sizes chosen so that training fits in about two minutes on a 2-core CPU.
DEMO_SETTINGS = {
    "train_regions": 10,
    "test_regions": 4,
    "region_size": 512,
    "patch_size": 128,
    "stride": 64,
    "batch_size": 8,
    "epochs": 3,
}


def majority_baseline(masks: list[np.ndarray], train_masks: list[np.ndarray], num_classes: int = 5) -> dict:
    """Metrics of predicting, everywhere, the most frequent foreground class of the training masks."""
    counts = sum(np.bincount(m.ravel(), minlength=num_classes) for m in train_masks)
    majority = int(np.argmax(counts[1:]) + 1)
    acc = MetricAccumulator(num_classes)
    for mask in masks:
        acc.update(np.full_like(mask, majority), mask)
    return {"class": majority, **acc.compute()}


def _masks(root: Path) -> list[np.ndarray]:
    from cervrt.train.data import list_regions, load_region

    return [load_region(r)[1] for r in list_regions(root)]


def _check_summary(check: Any) -> dict:
    return {"candidate": check.candidate, "reference": check.reference, "sample": check.sample,
            "max_abs_diff": check.max_abs_diff, "agreement": check.agreement, "passed": check.passed}


def export_demo_model(checkpoint: Path, out_dir: Path, echo: Callable[[str], None] = print) -> dict:
    """Export ``checkpoint`` to ``out_dir/model.onnx`` (FP32) and ``model.fp16.onnx`` with their parity checks.

    One export writes both graphs. A briefly trained model may have many near-tied pixels, so an FP16 graph
    can fall below the export's 99.9% agreement gate: the export then refuses it (nothing written) and the
    demo says so and goes on with the FP32 graph, which was checked and written first.
    """
    from cervrt.export import ExportConfig, export

    config = ExportConfig(checkpoint, output=out_dir / "model.fp16.onnx", precision="fp16",
                          fp32_output=out_dir / "model.onnx")
    started = time.time()
    try:
        result = export(config, echo=lambda message: echo("  " + message))
    except CervrtError as exc:
        fp32 = config.fp32_output
        if not (fp32.is_file() and fp32.stat().st_mtime >= started):  # the FP32 graph itself failed
            raise
        echo(f"  FP16 export refused: {exc}")
        return {"fp32": str(fp32), "fp16": None, "fp16_refused": str(exc)}
    return {"fp32": str(result.files["fp32"]), "fp16": str(result.files["fp16"]),
            "sizes": {k: result.sizes[k] for k in ("fp32", "fp16")}, "seconds": result.seconds,
            "checks": [_check_summary(c) for c in result.checks]}


def run_demo(out: str | os.PathLike[str], minutes: float = 2.0, seed: int = 0,
             echo: Callable[[str], None] = print) -> dict:
    """Run synth -> train -> evaluate under ``out``; returns the summary also written to ``out/demo.json``."""
    from cervrt.demo_fastpath import demo_int8
    from cervrt.demo_infer import demo_inference
    from cervrt.synth import write_dataset
    from cervrt.train.evaluate import evaluate_checkpoint
    from cervrt.train.loop import TrainConfig, train

    s = DEMO_SETTINGS
    root = ensure_writable_dir(out)
    echo(f"[1/5] synthesising {s['train_regions']} training and {s['test_regions']} test regions in {root}/")
    write_dataset(root / "data", regions=s["train_regions"], size=s["region_size"], seed=seed, weak_regions=4)
    write_dataset(root / "test", regions=s["test_regions"], size=s["region_size"], seed=seed + 1000)
    echo(f"[2/5] training HSP-Net ResNet-34 for at most {minutes:g} min")
    config = TrainConfig(data=str(root / "data"), out=str(root / "run"), arch="hspnet", encoder="resnet34",
                         epochs=s["epochs"], batch_size=s["batch_size"], loss="ae", patch_size=s["patch_size"],
                         stride=s["stride"], seed=seed, time_limit_minutes=minutes)
    result = train(config, log=echo)
    echo("[3/5] evaluating best.pt on the test set (stride a quarter patch, gaussian blend)")
    evaluation = evaluate_checkpoint(result.out / "best.pt", root / "test", json_out=root / "eval.json", echo=echo)
    baseline = majority_baseline(_masks(root / "test"), _masks(root / "data"))
    echo(f"majority-class baseline (always {baseline['class']}): dice {baseline['dice']:.4f}  "
         f"miou {baseline['miou']:.4f}  ap {baseline['ap']:.4f}  wp {baseline['wp']:.4f}")
    echo("[4/5] exporting best.pt to ONNX FP32 and FP16, each checked by ONNX Runtime")
    exported = export_demo_model(result.out / "best.pt", root, echo=echo)
    echo("  INT8 (static QDQ, calibrated on the training images' tissue, gated on 99% agreement with FP32)")
    exported["int8"] = demo_int8(result.out / "best.pt", Path(exported["fp32"]), root / "data", root, echo=echo)
    echo("[5/5] cervrt infer with the FP32 ONNX model on a synthetic slide with ground truth")
    inference = demo_inference(exported["fp32"], root / "infer", seed=seed + 2000, echo=echo)
    summary = {"settings": s, "train_minutes": result.seconds / 60, "epochs_run": result.epochs_run,
               "test_metrics": evaluation["metrics"], "majority_baseline": baseline, "export": exported,
               "inference": inference,
               "files": {"data": str(root / "data"), "test": str(root / "test"), "run": str(result.out),
                         "eval": str(root / "eval.json"), "onnx": exported["fp32"], "onnx_fp16": exported["fp16"]}}
    write_json(root / "demo.json", summary)
    files = ", ".join(f"{k} {v}" for k, v in summary["files"].items() if v)
    echo(f"files: {files}, summary {root / 'demo.json'}")
    return summary


