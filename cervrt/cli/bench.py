"""``cervrt bench``: FLOPs, latency, throughput, memory and accuracy of models side by side."""

from __future__ import annotations

import click

from cervrt.bench.config import FULL, QUICK, BenchConfig, parse_batch_sizes
from cervrt.cli._base import default
from cervrt.devices import DEVICE_CHOICES
from cervrt.errors import CervrtError

__all__ = ["bench"]

_BATCHES = ",".join(map(str, default(BenchConfig, "batch_sizes")))


def _size(settings: object) -> str:
    width, height = settings.slide_size  # type: ignore[attr-defined]
    return f"{width}x{height}"


@click.command()
@click.argument("more_models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL]...")
@click.option("--models", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Artifacts to benchmark: --models A.pt B.onnx C.plan ... [train a short synthetic HSP-Net "
                   "ResNet-34 in OUT/models, or reuse it there, and export it to FP32, FP16 and INT8 ONNX].")
@click.option("--batch-sizes", default=_BATCHES, show_default=True, help="Timed batch sizes, comma-separated.")
@click.option("--quick", is_flag=True,
              help=f"{QUICK.warmup} warm-up + {QUICK.repeats} timed runs (not {FULL.warmup} + {FULL.repeats}) and "
                   f"{QUICK.slides} {_size(QUICK)} test slide (not {FULL.slides} of {_size(FULL)}), and without "
                   f"--models {QUICK.model.patch_size} px patches trained for at most {QUICK.model.minutes:g} min "
                   f"(not {FULL.model.patch_size} px, {FULL.model.minutes:g} min): a few minutes on a 2-core CPU.")
@click.option("--device", default=default(BenchConfig, "device"), show_default=True,
              help=", ".join(DEVICE_CHOICES) + ".")
@click.option("--backend", default=default(BenchConfig, "backend"), show_default=True,
              help="Which backend runs the .onnx models: auto (ONNX Runtime), onnxruntime or openvino (CPU).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--paper", is_flag=True, help="Only print the papers' parameter and FLOP figures beside cervrt's.")
def bench(more_models: tuple[str, ...], models: tuple[str, ...], batch_sizes: str, quick: bool, device: str,
          backend: str, out: str | None, paper: bool) -> None:
    """Measure FLOPs, latency, throughput, memory and accuracy of models side by side on this machine.

    Writes OUT/report.json, OUT/report.md and PNG plots (throughput vs MACs, accuracy vs
    throughput) and prints the markdown tables, with the CPU fast path (ONNX Runtime FP32 / INT8,
    OpenVINO FP32 / BF16 / INT8: patches/s, agreement with FP32, Dice) and Dice and seconds per
    slide at strides 100, 200 and 400.
    """
    from cervrt.bench import format_paper_table, format_report, paper_table, run_bench

    if paper:
        click.echo(format_paper_table(paper_table()))
        return
    if out is None:
        raise CervrtError("cervrt bench needs --out DIR for its report (or --paper for the papers' table)")
    try:
        sizes = parse_batch_sizes(batch_sizes)
    except CervrtError as exc:  # the library names its argument; the user typed the flag
        raise CervrtError(f"--{str(exc).replace('_', '-', 1)}") from None
    config = BenchConfig(out=out, models=models + more_models, batch_sizes=sizes, quick=quick, device=device,
                         backend=backend)
    report = run_bench(config, echo=click.echo)
    click.echo(format_report(report))
    failed = [row for row in report["models"] if "error" in row]
    if failed:
        click.echo(f"error: {len(failed)} of {len(report['models'])} model(s) failed: "
                   + "; ".join(f"{row['path']}: {row['error']}" for row in failed), err=True)
        raise SystemExit(1)
