"""``cervrt info``: describe a checkpoint, an exported model or an architecture."""

from __future__ import annotations

import click

from cervrt.cli._base import dump
from cervrt.constants import PATCH_SIZE
from cervrt.errors import CervrtError

__all__ = ["info"]


@click.command()
@click.argument("artifact", required=False, type=click.Path(dir_okay=False))
@click.option("--arch", default=None, help="Describe an architecture instead of a file.")
@click.option("--encoder", default=None, help="With --arch: one of the architecture's encoders [its default].")
@click.option("--patch-size", default=None, type=click.IntRange(32), help=f"With --arch: patch side [{PATCH_SIZE}].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def info(artifact: str | None, arch: str | None, encoder: str | None, patch_size: int | None, as_json: bool) -> None:
    """Describe a checkpoint, an ONNX or TensorRT model, or an architecture: classes, parameters, MACs,
    patch size, normalisation and (ONNX, TensorRT) the inputs and outputs with their dtypes."""
    from cervrt.model_info import arch_info, artifact_info, format_info

    if (artifact is None) == (arch is None):
        raise CervrtError("info takes either an artifact file or --arch NAME")
    try:
        data = artifact_info(artifact) if artifact else arch_info(arch, encoder, patch_size)
        text = dump(data) if as_json else format_info(data)
    except CervrtError:
        raise
    except Exception as exc:  # info describes any file it is given: never a traceback
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CervrtError(f"cannot describe {artifact or arch}: {type(exc).__name__} {detail}".rstrip()) from None
    click.echo(text)
