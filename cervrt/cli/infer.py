"""``cervrt infer``: segment whole slides with an exported model, serially or on a Ray cluster.

Defaults and choices come from ``PredictorConfig``, ``BatchOptions`` and ``Blend``, mask formats from
the output registry (``cervrt.runtime.outputs.register_output``), devices from ``cervrt.devices``.
The inputs, resume, shards, run record and workers are ``cervrt.runtime.batch``'s.
"""

from __future__ import annotations

import sys

import click

from cervrt.cli._base import backend_options, default, values
from cervrt.devices import DEVICE_CHOICES
from cervrt.runtime.batch import BatchOptions
from cervrt.runtime.config import Blend, PredictorConfig
from cervrt.runtime.outputs import output_formats
from cervrt.runtime.progress import PROGRESS_MODES
from cervrt.runtime.runner import OutputOptions

__all__ = ["infer"]


def _p(name: str) -> object:
    return default(PredictorConfig, name)


def _b(name: str) -> object:
    return default(BatchOptions, name)


@click.command()
@click.argument("slides", nargs=-1, metavar="[SLIDE|DIR|GLOB]...")
@click.option("--manifest", type=click.Path(dir_okay=False), help="A CSV of slides: path[,mpp][,id] (header optional).")
@click.option("--recursive", is_flag=True, help="Search the sub-folders of directories given as inputs.")
@click.option("--engine", "model", required=True, type=click.Path(dir_okay=False),
              help="The model: an exported .onnx, a TensorRT .plan or a .pt checkpoint.")
@click.option("--out", required=True, type=click.Path(), help="Output directory (created if needed).")
@click.option("--stride", default=_p("stride"), type=click.IntRange(1), help="Window stride [a quarter of the patch].")
@click.option("--blend", default=_p("blend"), show_default=True, type=click.Choice(values(Blend)))
@click.option("--batch-size", default=_p("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--device", default=_p("device"), show_default=True, help=", ".join(DEVICE_CHOICES) + ".")
@backend_options
@click.option("--mpp", default=_p("mpp"), type=click.FloatRange(min=0, min_open=True),
              help="Microns per pixel of the slides (overrides the file's; needed for PNG/JPEG at another scale).")
@click.option("--tissue-threshold", default=_p("tissue_threshold"), show_default=True, type=click.FloatRange(0, 1),
              help="Windows with less tissue than this are not run (0: run every window).")
@click.option("--geojson", is_flag=True, help="Also write NAME.geojson (one polygon per lesion, for QuPath).")
@click.option("--geojson-simplify", type=click.FloatRange(min=0), default=None, metavar="TOL",
              help="Simplify the GeoJSON outlines by TOL mask pixels, topology kept (big slides); implies --geojson.")
@click.option("--geojson-gz", is_flag=True, help="Write NAME.geojson.gz (gzip); implies --geojson.")
@click.option("--require-mpp", is_flag=True,
              help="Refuse slides that carry no microns per pixel (else the model's is assumed, with a warning).")
@click.option("--format", "fmt", default=(OutputOptions().fmt,), show_default=True, multiple=True,
              type=click.Choice(output_formats()),
              help="Mask format; repeat for several (--format tiff --format dicom-seg --format ome-zarr). Tiled "
                   "pyramidal TIFF replaces PNG for masks over 2^30 pixels.")
@click.option("--workers", type=int, default=_b("workers"),
              help="Run N slide workers on Ray (a local cluster started and stopped here; needs cervrt[ray]).")
@click.option("--ray-address", default=_b("ray_address"), help="Join the Ray cluster at HOST:PORT instead.")
@click.option("--gpus-per-worker", default=_b("gpus_per_worker"), show_default=True, type=click.FloatRange(0),
              help="GPUs each Ray worker takes (1: one engine per GPU).")
@click.option("--cpus-per-worker", default=_b("cpus_per_worker"), type=int,
              help="CPU threads (and Ray CPUs) per worker [the cores shared out].")
@click.option("--shard", default=None, metavar="I/N", help="Run only the I-th of N parts of the inputs.")
@click.option("--overwrite", is_flag=True, help="Redo slides that already have outputs in OUT.")
@click.option("--min-area", default=_b("min_area"), show_default=True, type=click.FloatRange(0),
              help="Triage: the highest grade covering at least this many mm^2 (pixels without mpp).")
@click.option("--progress", "progress_mode", default=_b("progress"), show_default=True,
              type=click.Choice(PROGRESS_MODES), help="Progress on stderr (auto: a bar on a terminal, else lines).")
@click.option("--dry-run", is_flag=True, help="Plan every slide and estimate the time; write nothing.")
def infer(slides: tuple[str, ...], manifest: str | None, recursive: bool, model: str, out: str, stride: int | None,
          blend: str, batch_size: int, device: str, backend: str, bf16: bool, mpp: float | None,
          tissue_threshold: float, geojson: bool,
          geojson_simplify: float | None, geojson_gz: bool, require_mpp: bool, fmt: tuple[str, ...],
          workers: int | None, ray_address: str | None, gpus_per_worker: float,
          cpus_per_worker: int | None, shard: str | None, overwrite: bool, min_area: float, progress_mode: str,
          dry_run: bool) -> None:
    """Segment whole slides: OUT/NAME.mask.png, NAME.overlay.jpg, NAME.json (and NAME.geojson) per slide,
    and OUT/summary.csv, run.json, summary.html for the run.

    Inputs are slide files, directories, globs or --manifest. A slide from a folder keeps its path below
    that folder as its output name (OUT/a/case1.*). A slide already done with this model and these
    settings is skipped; other existing outputs are refused without --overwrite. A bad slide is reported
    in one line and the others still run; the exit code is 1 if any failed.
    """
    from cervrt.runtime.batch import run_batch
    from cervrt.runtime.inputs import collect_inputs, parse_shard

    config = PredictorConfig(device=device, batch_size=batch_size, stride=stride, blend=blend,
                             tissue_threshold=tissue_threshold, mpp=mpp, backend=backend, bf16=bf16)
    options = BatchOptions(workers=workers, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
                           cpus_per_worker=cpus_per_worker, shard=parse_shard(shard) if shard else None,
                           overwrite=overwrite, min_area=min_area, progress=progress_mode)
    inputs = collect_inputs(slides, recursive=recursive, manifest=manifest)
    outputs = OutputOptions(fmt=fmt[0], extra_formats=tuple(dict.fromkeys(f for f in fmt[1:] if f != fmt[0])),
                            geojson=geojson or geojson_gz or geojson_simplify is not None,
                            geojson_simplify=geojson_simplify, geojson_gzip=geojson_gz, require_mpp=require_mpp)
    if dry_run:
        from cervrt.runtime.batch import dry_run_batch

        dry_run_batch(model, inputs, out, config, outputs, options, echo=click.echo)
        return
    summary = run_batch(model, inputs, out, config, outputs, options, echo=click.echo,
                        error=lambda line: click.echo(line, err=True))
    if summary.failed:
        sys.exit(1)
