"""``cervrt serve``: the local HTTP service around one loaded model (see ``cervrt.serve``)."""

from __future__ import annotations

import click

from cervrt.cli._base import backend_options, default
from cervrt.devices import DEVICE_CHOICES
from cervrt.serve.config import ServeConfig

__all__ = ["serve_command"]


def _s(name: str) -> object:
    return default(ServeConfig, name)


@click.command(name="serve")
@click.option("--engine", "model", required=True, type=click.Path(dir_okay=False),
              help="The model: an exported .onnx, a TensorRT .plan or a .pt checkpoint (loaded once).")
@click.option("--host", default=_s("host"), show_default=True,
              help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", default=_s("port"), show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free port, printed at start).")
@click.option("--workers", default=_s("workers"), show_default=True, type=click.IntRange(1),
              help="Images and slide jobs run at once (they share the one model).")
@click.option("--queue", default=_s("queue"), show_default=True, type=click.IntRange(1),
              help="Slide jobs that may wait; more are refused with 429.")
@click.option("--token", default=None, envvar="CERVRT_TOKEN",
              help="Bearer token every /v1 request must send (or set CERVRT_TOKEN).")
@click.option("--device", default=_s("device"), show_default=True, help=", ".join(DEVICE_CHOICES) + ".")
@backend_options
@click.option("--batch-size", default=_s("batch_size"), show_default=True, type=click.IntRange(1))
@click.option("--out", "out_dir", default=str(_s("out_dir")), show_default=True, type=click.Path(file_okay=False),
              help="Where slide jobs write their outputs (OUT/JOB_ID/).")
@click.option("--max-body-mb", default=_s("max_body_mb"), show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Largest image body taken by /v1/segment, in MiB.")
def serve_command(model: str, host: str, port: int, workers: int, queue: int, token: str | None, device: str,
                  backend: str, bf16: bool, batch_size: int, out_dir: str, max_body_mb: float) -> None:
    """Serve one model over HTTP: POST /v1/segment (image bytes), POST /v1/slides (a slide path),
    GET/DELETE /v1/jobs/ID, GET /v1/model, GET /healthz, the OpenAPI document at /openapi.json.

    \b
    curl -s --data-binary @region.png -H 'Content-Type: image/png' \\
         http://127.0.0.1:8080/v1/segment -o labels.png
    """
    from cervrt.serve import serve

    config = ServeConfig(model=model, host=host, port=port, workers=workers, queue=queue, token=token,
                         device=device, backend=backend, bf16=bf16, batch_size=batch_size, out_dir=out_dir,
                         max_body_mb=max_body_mb)
    serve(config, echo=click.echo)
