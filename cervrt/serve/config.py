"""``ServeConfig``: what ``cervrt serve`` runs (the model, the address, workers, the job bound, the token).

The service binds to the loopback interface (127.0.0.1) unless told otherwise; any other address
needs a bearer token (``token``), so that nothing on the network can use it without one. Slide jobs
write their outputs under ``out_dir``, one folder per job.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cervrt.errors import InputError

__all__ = ["LOOPBACK", "ServeConfig", "is_loopback"]

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ServeConfig:
    """``model``: the artifact, loaded once; ``host``/``port`` (0: any free port); ``workers``: images and
    slides run at once, sharing the model; ``queue``: slide jobs waiting at most (more are refused with
    429); ``token``: the bearer token every /v1 request must carry (required off loopback);
    ``device``, ``backend``, ``bf16`` and ``batch_size``: as for the Predictor; ``out_dir``: where slide jobs write;
    ``max_body_mb``: the largest image body taken; ``keep_jobs``: finished jobs remembered."""

    model: Path
    host: str = LOOPBACK
    port: int = 8080
    workers: int = 1
    queue: int = 16
    token: str | None = None
    device: str = "auto"
    backend: str = "auto"
    bf16: bool = False
    batch_size: int = 8
    out_dir: Path = Path("cervrt-serve")
    max_body_mb: float = 256.0
    keep_jobs: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port must be 0..65535 (0: any free port), got {self.port!r}")
        for name in ("workers", "queue", "batch_size", "keep_jobs"):
            _positive(getattr(self, name), name)
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise InputError("token must be a non-empty string without spaces")
        if not is_loopback(self.host) and not self.token:
            raise InputError(f"host {self.host} is not loopback: pass --token TOKEN so that only clients holding "
                             "it can use the service, or serve on 127.0.0.1")
        if not self.max_body_mb > 0:
            raise InputError(f"max_body_mb must be positive, got {self.max_body_mb}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
