"""Running the service: uvicorn on a socket cervrt binds itself (so port 0 picks a free port).

``serve(config)`` is ``cervrt serve``: it loads the model, binds, prints the address and serves until
Ctrl-C. ``BackgroundServer(config)`` runs the same server on a thread (a context manager, for tests
and for programs that embed the service): ``.url`` once started, stopped on exit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from cervrt._io import optional_import
from cervrt.errors import CervrtError, InputError
from cervrt.serve.config import ServeConfig
from cervrt.serve.service import Service

__all__ = ["BackgroundServer", "bind", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port); InputError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def _uvicorn_server(app: Any, config: ServeConfig) -> Any:
    uvicorn = optional_import("uvicorn", "serve")
    settings = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                              limit_concurrency=max(64, 4 * config.workers + config.queue))
    return uvicorn.Server(settings)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(config: ServeConfig, echo: Callable[[str], None] = print) -> None:
    """Load the model, listen on ``config.host``:``config.port`` and serve until interrupted."""
    optional_import("fastapi", "serve")
    optional_import("uvicorn", "serve")
    from cervrt.serve.app import create_app

    with Service(config) as service:
        app = create_app(service)
        sock = bind(config.host, config.port)
        server = _uvicorn_server(app, config)
        echo(f"serving {config.model} ({service.engine.kind} on {service.engine.device}) at {_url(sock)} "
             f"with {config.workers} worker(s); Ctrl-C stops")
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()


class BackgroundServer:
    """The service on a background thread: ``with BackgroundServer(config) as server: server.url``."""

    def __init__(self, config: ServeConfig, startup_timeout: float = 60.0) -> None:
        self.config = config
        self._timeout = startup_timeout
        self.service: Service | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        optional_import("fastapi", "serve")
        optional_import("uvicorn", "serve")
        from cervrt.serve.app import create_app

        self.service = Service(self.config)
        try:
            self._sock = bind(self.config.host, self.config.port)
            self.url = _url(self._sock)
            self._server = _uvicorn_server(create_app(self.service), self.config)
            self._server.config.install_signal_handlers = False
            self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                            name="cervrt-serve", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + self._timeout
            while not self._server.started:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise CervrtError(f"the server did not start on {self.url}")
                time.sleep(0.02)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        if self.service is not None:
            self.service.close()
