"""``cervrt synth``: a synthetic H&E dataset in the MTCHI layout."""

from __future__ import annotations

import click

from cervrt.cli._base import dump

__all__ = ["synth"]


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (new or empty).")
@click.option("--regions", default=12, show_default=True, type=click.IntRange(1), help="Pixel-annotated regions.")
@click.option("--size", default=512, show_default=True, type=click.IntRange(64), help="Region side in pixels.")
@click.option("--weak", "weak_regions", default=0, show_default=True, type=click.IntRange(0),
              help="Extra regions with image-level labels only (weak/labels.csv).")
@click.option("--weak-size", default=None, type=click.IntRange(16),
              help="Cut each weak region as a tile of this side from a --size region (patch-sized weak images "
                   "with exact labels) [--size].")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: same seed, same files.")
def synth(out: str, regions: int, size: int, weak_regions: int, weak_size: int | None, seed: int) -> None:
    """Write a synthetic H&E dataset in the MTCHI layout (images/, masks/, weak/labels.csv).

    Regions show stroma, glass and squamous epithelium graded normal, CIN 1, CIN 2 or CIN 3 by
    how far crowded, enlarged, dark atypical nuclei reach up from the basement membrane.
    """
    from cervrt.synth import write_dataset

    summary = write_dataset(out, regions=regions, size=size, seed=seed, weak_regions=weak_regions, weak_size=weak_size)
    click.echo(dump(summary))
