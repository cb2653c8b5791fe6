"""``cervrt export``: checkpoint -> self-describing ONNX (and optionally a TensorRT plan).

Precisions, the default opset and the supported range come from ``cervrt.export.config``.
"""

from __future__ import annotations

import click

from cervrt.cli._base import default, values
from cervrt.errors import CervrtError
from cervrt.export.calibration import DEFAULT_CALIBRATION_PATCHES
from cervrt.export.config import SUPPORTED_OPSETS, BatchProfile, ExportConfig, Precision

__all__ = ["export_command"]


def _from_state_dict(path: str, output: str | None, arch: str, given: dict[str, object]) -> object:
    from cervrt.adopt import parse_floats
    from cervrt.export.state_dict import checkpoint_from_state_dict

    for key in ("mean", "std"):
        if key in given:
            given[key] = parse_floats(str(given[key]), f"--{key}")
    return checkpoint_from_state_dict(path, output, arch, **given)

_PROFILE = BatchProfile()
_OPSETS = f"{SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"


_STATE_DICT = ("encoder", "classes", "patch_size", "mpp", "mean", "std")


@click.command(name="export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", default=None,
              help="CHECKPOINT is a plain state_dict of this cervrt architecture (e.g. hspnet), trained elsewhere.")
@click.option("--encoder", default=None, help="With --arch: the encoder (resnet34, resnet101) [the architecture's].")
@click.option("--classes", default=None, help="With --arch: a class count or comma-separated names [5: cervrt's].")
@click.option("--patch-size", default=None, type=click.IntRange(32), help="With --arch: the patch side [400].")
@click.option("--mpp", default=None, type=click.FloatRange(min=0, min_open=True),
              help="With --arch: microns per pixel it was trained at [0.904].")
@click.option("--mean", default=None, help="With --arch: RGB mean on the 0..1 scale, comma-separated [ImageNet's].")
@click.option("--std", default=None, help="With --arch: RGB std on the 0..1 scale, comma-separated [ImageNet's].")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False),
              help="ONNX file to write [the checkpoint's name with .onnx, .fp16.onnx or .int8.onnx, beside it].")
@click.option("--precision", default=default(ExportConfig, "precision"), show_default=True,
              type=click.Choice(values(Precision)),
              help="fp16: weights and activations in FP16, softmax and pooling kept in FP32; int8: static "
                   "QDQ quantization calibrated on --calibration tissue, gated on 99% agreement with FP32.")
@click.option("--fp16-io", is_flag=True, help="With --precision fp16: float16 input and outputs too.")
@click.option("--opset", default=default(ExportConfig, "opset"), show_default=True, type=int,
              help=f"ONNX opset ({_OPSETS}).")
@click.option("--engine", default=None, type=click.Path(dir_okay=False),
              help="Also build a TensorRT plan here (X.plan; needs a GPU and cervrt[tensorrt]).")
@click.option("--batch", default=None,
              help=f"With --engine: the profile's batch sizes MIN:OPT:MAX [{_PROFILE}].")
@click.option("--workspace", default=None, type=float, help="With --engine: TensorRT workspace limit in GB.")
@click.option("--calibration", multiple=True, type=click.Path(),
              help="With --precision int8: H&E images, an images/ directory or slides to calibrate on "
                   "(--calibration PATH [PATH...]).")
@click.option("--calibration-patches", default=None, type=int,
              help=f"With --precision int8: tissue patches to calibrate on [{DEFAULT_CALIBRATION_PATCHES}].")
@click.argument("more_calibration", nargs=-1, type=click.Path(), metavar="")
def export_command(checkpoint: str, arch: str | None, output: str | None, precision: str, fp16_io: bool, opset: int,
                   engine: str | None, batch: str | None, workspace: float | None, calibration: tuple[str, ...],
                   calibration_patches: int | None, more_calibration: tuple[str, ...], **state_dict: object) -> None:
    """Export a checkpoint to a self-describing ONNX file (and optionally a TensorRT engine).

    The graph takes `image` float32 (N, 3, H, W), normalised with the mean/std in its metadata, and
    returns softmax probabilities `probs` (N, classes, H, W) -- plus `class_probs` for models with a
    patch classifier -- for any N, H and W. ONNX Runtime is checked against torch (and FP16 against
    FP32) before the file is written; a check that fails leaves no file.

    With --arch, CHECKPOINT is a plain state_dict (loaded with weights_only=True) of that
    architecture: it is first saved as a cervrt checkpoint beside the ONNX file (NAME.pt).
    """
    from cervrt.export import export

    given = {k: v for k, v in state_dict.items() if v is not None}
    if arch is None and given:
        raise CervrtError(f"--{next(iter(given)).replace('_', '-')} describes a plain state_dict: add --arch NAME")
    if arch is not None:
        checkpoint = str(_from_state_dict(checkpoint, output, arch, given))

    if more_calibration and not calibration:
        raise CervrtError(f"unexpected argument {more_calibration[0]!r}: calibration paths follow --calibration")
    config = ExportConfig.from_options(checkpoint, output=output, precision=precision, fp16_io=fp16_io,
                                       opset=opset, engine=engine, batch=batch, workspace=workspace,
                                       calibration=calibration + more_calibration,
                                       calibration_patches=calibration_patches)
    export(config, echo=click.echo)
