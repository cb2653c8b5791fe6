"""``cervrt export``: checkpoint -> self-describing ONNX (and optionally a TensorRT plan).

Precisions, the default opset and the supported range come from ``cervrt.export.config``.
"""

from __future__ import annotations

import click

from cervrt.cli._base import default, values
from cervrt.export.config import SUPPORTED_OPSETS, BatchProfile, ExportConfig, Precision

__all__ = ["export_command"]

_PROFILE = BatchProfile()
_OPSETS = f"{SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"


@click.command(name="export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="ONNX file to write [the checkpoint's name with .onnx, or .fp16.onnx, beside it].")
@click.option("--precision", default=default(ExportConfig, "precision"), show_default=True,
              type=click.Choice(values(Precision)),
              help="fp16: weights and activations in FP16, softmax and pooling kept in FP32.")
@click.option("--fp16-io", is_flag=True, help="With --precision fp16: float16 input and outputs too.")
@click.option("--opset", default=default(ExportConfig, "opset"), show_default=True, type=int,
              help=f"ONNX opset ({_OPSETS}).")
@click.option("--engine", default=None, type=click.Path(dir_okay=False),
              help="Also build a TensorRT plan here (X.plan; needs a GPU and cervrt[tensorrt]).")
@click.option("--batch", default=None,
              help=f"With --engine: the profile's batch sizes MIN:OPT:MAX [{_PROFILE}].")
@click.option("--workspace", default=None, type=float, help="With --engine: TensorRT workspace limit in GB.")
def export_command(checkpoint: str, output: str | None, precision: str, fp16_io: bool, opset: int,
                   engine: str | None, batch: str | None, workspace: float | None) -> None:
    """Export a checkpoint to a self-describing ONNX file (and optionally a TensorRT engine).

    The graph takes `image` float32 (N, 3, H, W), normalised with the mean/std in its metadata, and
    returns softmax probabilities `probs` (N, classes, H, W) -- plus `class_probs` for models with a
    patch classifier -- for any N, H and W. ONNX Runtime is checked against torch (and FP16 against
    FP32) before the file is written; a check that fails leaves no file.
    """
    from cervrt.export import export

    config = ExportConfig.from_options(checkpoint, output=output, precision=precision, fp16_io=fp16_io,
                                       opset=opset, engine=engine, batch=batch, workspace=workspace)
    export(config, echo=click.echo)
