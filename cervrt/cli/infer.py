"""``cervrt infer``: segment whole slides with an exported model.

Defaults and choices come from ``PredictorConfig`` and ``Blend``, mask formats from the output
registry (``cervrt.runtime.outputs.register_output``), devices from ``cervrt.devices``.
"""

from __future__ import annotations

import sys

import click

from cervrt.cli._base import default, values
from cervrt.devices import DEVICE_CHOICES
from cervrt.runtime.config import Blend, PredictorConfig
from cervrt.runtime.outputs import output_formats
from cervrt.runtime.runner import OutputOptions

__all__ = ["infer"]


def _p(name: str) -> object:
    return default(PredictorConfig, name)


@click.command()
@click.argument("slides", nargs=-1, required=True, metavar="SLIDE...")
@click.option("--engine", "model", required=True, type=click.Path(dir_okay=False),
              help="The model: an exported .onnx, a TensorRT .plan or a .pt checkpoint.")
@click.option("--out", required=True, type=click.Path(), help="Output directory (created if needed).")
@click.option("--stride", default=_p("stride"), type=click.IntRange(1), help="Window stride [a quarter of the patch].")
@click.option("--blend", default=_p("blend"), show_default=True, type=click.Choice(values(Blend)))
@click.option("--batch-size", default=_p("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--device", default=_p("device"), show_default=True, help=", ".join(DEVICE_CHOICES) + ".")
@click.option("--mpp", default=_p("mpp"), type=click.FloatRange(min=0, min_open=True),
              help="Microns per pixel of the slides (overrides the file's; needed for PNG/JPEG at another scale).")
@click.option("--tissue-threshold", default=_p("tissue_threshold"), show_default=True, type=click.FloatRange(0, 1),
              help="Windows with less tissue than this are not run (0: run every window).")
@click.option("--geojson", is_flag=True, help="Also write NAME.geojson (per-class polygons for QuPath).")
@click.option("--format", "fmt", default=OutputOptions().fmt, show_default=True,
              type=click.Choice(output_formats()),
              help="Mask format (tiled pyramidal TIFF is used anyway for masks over 2^30 pixels).")
def infer(slides: tuple[str, ...], model: str, out: str, stride: int | None, blend: str, batch_size: int,
          device: str, mpp: float | None, tissue_threshold: float, geojson: bool, fmt: str) -> None:
    """Segment whole slides: OUT/NAME.mask.png, NAME.overlay.jpg, NAME.json (and NAME.geojson) per slide.

    A bad slide is reported in one line and the others still run; the exit code is 1 if any failed.
    """
    from cervrt.runtime.infer import infer_slides

    config = PredictorConfig(device=device, batch_size=batch_size, stride=stride, blend=blend,
                             tissue_threshold=tissue_threshold, mpp=mpp)
    summary = infer_slides(model, slides, out, config, OutputOptions(fmt=fmt, geojson=geojson), echo=click.echo,
                           error=lambda line: click.echo(line, err=True))
    if summary.failed:
        sys.exit(1)
