"""The demo's CPU fast path: export the trained model to INT8 and compare it with FP32 on this CPU.

``demo_int8(checkpoint, fp32_onnx, calibration, out_dir)`` runs ``cervrt export --precision int8``
on the demo's checkpoint, calibrated on the demo's own training images (synthetic, like everything
in the demo), and reports the export's parity figures (argmax agreement and max |diff| against FP32
on held-out tissue) beside the speed ratio of ONNX Runtime INT8 over ONNX Runtime FP32, timed in
interleaved rounds on one batch of synthetic tissue at the model's patch size. An INT8 graph that
fails the 99% gate is refused by the export; the demo says so and goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cervrt.errors import CervrtError

__all__ = ["demo_int8", "speed_ratio"]

_ROUNDS = 3
_BATCH = 4


def speed_ratio(fast: Path, reference: Path, rounds: int = _ROUNDS) -> dict[str, float]:
    """Patches/s of ``fast`` and ``reference`` (ONNX Runtime, CPU) timed in interleaved rounds, and their ratio."""
    from cervrt.engines import open_engine
    from cervrt.timing import time_interleaved, tissue_batch

    with open_engine(reference, "cpu") as ref, open_engine(fast, "cpu") as candidate:
        batch = tissue_batch(ref.patch_size, _BATCH, ref.mean, ref.std, seed=11)
        speeds = time_interleaved({"reference": ref, "fast": candidate}, batch, rounds)
    return {"fp32_patches_per_s": speeds["reference"], "int8_patches_per_s": speeds["fast"],
            "ratio": speeds["fast"] / speeds["reference"]}


def demo_int8(checkpoint: Path, fp32_onnx: Path, calibration: Path, out_dir: Path,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Export ``checkpoint`` to ``out_dir/model.int8.onnx`` calibrated on ``calibration``; agreement and speed."""
    from cervrt.export import ExportConfig, export

    config = ExportConfig(checkpoint, output=out_dir / "model.int8.onnx", precision="int8",
                          calibration=(calibration,))
    try:
        result = export(config, echo=lambda message: echo("  " + message))
    except CervrtError as exc:
        echo(f"  INT8 export refused: {exc}")
        return {"int8": None, "int8_refused": str(exc)}
    check = result.checks[-1]
    speed = speed_ratio(result.onnx, fp32_onnx)
    echo(f"  INT8 vs FP32 (ONNX Runtime, CPU): argmax agreement {check.agreement:.2%} on held-out tissue, "
         f"{speed['int8_patches_per_s']:.2f} vs {speed['fp32_patches_per_s']:.2f} patches/s ({speed['ratio']:.2f}x)")
    return {"int8": str(result.onnx), "agreement": check.agreement, "max_abs_diff": check.max_abs_diff,
            "int8_metadata": result.metadata.get("int8"), **speed}
