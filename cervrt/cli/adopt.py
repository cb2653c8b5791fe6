"""``cervrt adopt``: give an ONNX model that cervrt did not export cervrt's metadata (see ``cervrt.adopt``)."""

from __future__ import annotations

import click

from cervrt.cli._base import dump
from cervrt.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["adopt_command"]

_IMAGENET = (",".join(map(str, IMAGENET_MEAN)), ",".join(map(str, IMAGENET_STD)))


@click.command(name="adopt")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--classes", required=True,
              help="The model's classes in output-channel order, comma-separated, background first.")
@click.option("--mean", default=_IMAGENET[0], show_default=True, help="RGB mean on the 0..1 scale, comma-separated.")
@click.option("--std", default=_IMAGENET[1], show_default=True, help="RGB std on the 0..1 scale, comma-separated.")
@click.option("--mpp", required=True, type=float, help="Microns per pixel the model was trained at.")
@click.option("--patch", required=True, type=int, help="Patch side the model runs on, in pixels.")
@click.option("--output", "output_kind", default="probs", show_default=True, type=click.Choice(["probs", "logits"]),
              help="What the model returns: probabilities, or logits (a softmax is appended).")
@click.option("--input", "input_name", default=None, help="The input's name (when the graph has several).")
@click.option("--output-name", default=None, help="The output to use (when the graph has several).")
@click.option("--class-map", default=None,
              help="Map the model's classes onto cervrt's grades, e.g. 'glass=background,lsil=CIN 1,hsil=CIN 3' "
                   "[keep the model's own classes].")
@click.option("-o", "--out", "output", required=True, type=click.Path(dir_okay=False), help="The adopted .onnx.")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata written and the checks as JSON.")
def adopt_command(model: str, classes: str, mean: str, std: str, mpp: float, patch: int, output_kind: str,
                  input_name: str | None, output_name: str | None, class_map: str | None, output: str,
                  as_json: bool) -> None:
    """Adopt a foreign ONNX segmentation model: write a copy with cervrt metadata that cervrt runs.

    The model takes (N, 3, H, W) images normalised as (rgb / 255 - mean) / std and returns
    (N, classes, H, W) scores. A test tile checks the shapes and that the outputs (after the softmax
    appended for --output logits) are probabilities: in [0, 1], summing to 1 within 1e-3. A model
    that fails a check is refused in one line and nothing is written.
    """
    from cervrt.adopt import AdoptConfig, adopt

    config = AdoptConfig(source=model, output=output, classes=classes, mean=mean, std=std, mpp=mpp, patch=patch,
                         output_kind=output_kind, input_name=input_name, output_name=output_name,
                         class_map=class_map)
    result = adopt(config, echo=None if as_json else click.echo)
    if as_json:
        click.echo(dump({"path": str(result.path), "metadata": result.metadata, "checks": result.checks}))
