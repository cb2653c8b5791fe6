"""``cervrt demo``: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

import click

__all__ = ["demo"]


@click.command()
@click.option("--out", default="cervrt-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the demo writes its dataset, run and reports.")
@click.option("--minutes", default=2.0, show_default=True, type=click.FloatRange(0.1),
              help="Training time budget.")
@click.option("--seed", default=0, show_default=True, type=int)
def demo(out: str, minutes: float, seed: int) -> None:
    """Run the whole pipeline on built-in synthetic data: synthesise, train HSP-Net ResNet-34, evaluate."""
    from cervrt.demo import run_demo

    run_demo(out, minutes=minutes, seed=seed, echo=click.echo)
