"""The demo's last step: ``cervrt infer`` (the library call) on a synthetic slide with ground truth.

Synthesise one H&E-like region of ``SLIDE_SIZE`` px (``synthesize_region``) and its mask, write them
as PNGs at the model's resolution (``root/slide/``), run ``infer_slides`` on it with the exported ONNX
model (outputs in ``root``), and score the mask it wrote against the ground truth (Dice and the other
SPEC metrics), printed next to the run's throughput and the model's MACs per patch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._cv import cv2
from cervrt.errors import CervrtError
from cervrt.metrics import MetricAccumulator

__all__ = ["SLIDE_SIZE", "demo_inference"]

#: Side of the synthetic slide, pixels at the model's resolution.
SLIDE_SIZE = 1024


def _write_slide(directory: Path, seed: int) -> tuple[Path, np.ndarray]:
    from cervrt.imageio import write_png
    from cervrt.synth import synthesize_region

    rgb, mask = synthesize_region(np.random.default_rng(seed), SLIDE_SIZE)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "synthetic_slide.png"
    write_png(path, rgb)
    write_png(directory / "synthetic_slide.truth.png", mask)
    return path, mask


def _failure(summary: Any) -> Exception:
    slide, message = summary.failed[0]
    return CervrtError(f"inference on the synthetic slide {slide} failed: {message}")


def demo_inference(model: str | Path, root: Path, seed: int = 0, stride: int | None = None,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``cervrt infer`` with ``model`` on a synthetic slide under ``root``; returns metrics and throughput.

    ``stride`` defaults to half the model's patch: overlapping windows, blended (a stride of a whole
    patch shows the block edges; ``cervrt infer``'s default of a quarter patch runs 16 times as many
    patches as no overlap, this one 4 times).
    """
    from cervrt.artifact import read_metadata
    from cervrt.constants import MTCHI_MPP
    from cervrt.runtime.config import PredictorConfig
    from cervrt.runtime.infer import infer_slides

    slide, truth = _write_slide(root / "slide", seed)
    stride = stride or max(int(read_metadata(model)["patch_size"]) // 2, 1)
    summary = infer_slides(model, [slide], root, PredictorConfig(device="auto", stride=stride, mpp=MTCHI_MPP),
                           echo=lambda line: echo("  " + line), error=echo)
    if summary.failed:
        raise _failure(summary)
    result = summary.results[0]
    predicted = cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED)
    accumulator = MetricAccumulator(len(result.report["model"]["classes"]))
    accumulator.update(predicted, truth)
    metrics = accumulator.compute()
    report = result.report
    macs = report["macs_per_patch"]
    cost = f", {macs / 1e9:.2f} GMACs per {report['model']['patch_size']} px patch" if macs else ""
    echo(f"  synthetic slide {SLIDE_SIZE}x{SLIDE_SIZE}: dice {metrics['dice']:.4f}  miou {metrics['miou']:.4f}  "
         f"| {report['patches_per_s']:.1f} patches/s, {report['mpx_per_s']:.3f} Mpx/s on {report['device']} "
         f"({report['provider']}){cost}")
    return {"slide": str(slide), "stride": stride, "metrics": metrics, "report": str(result.paths["json"]),
            "patches_per_s": report["patches_per_s"], "mpx_per_s": report["mpx_per_s"], "macs_per_patch": macs,
            "seconds": report["seconds"], "outputs": {k: str(v) for k, v in result.paths.items()}}
