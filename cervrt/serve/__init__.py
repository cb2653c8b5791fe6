"""``cervrt serve``: a local HTTP service around one loaded model (the ``serve`` extra: FastAPI, uvicorn).

    from cervrt.serve import BackgroundServer, ServeConfig
    with BackgroundServer(ServeConfig("model.onnx", port=0)) as server:
        print(server.url)              # http://127.0.0.1:PORT; POST image bytes to /v1/segment

The routes are listed in ``cervrt.serve.app``; the service (one model, image requests, slide jobs)
in ``cervrt.serve.service``; jobs in ``cervrt.serve.jobs``. Importing this package imports neither
FastAPI nor uvicorn (they load when a server is created).
"""

from __future__ import annotations

from cervrt.serve.config import ServeConfig
from cervrt.serve.server import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServeConfig", "serve"]
