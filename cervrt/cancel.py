"""Cancellation tokens: what a per-call ``cancel=`` argument takes, and the check a long run makes.

A token is anything with an ``is_set()`` method -- a :class:`threading.Event`, or a
:class:`CancelToken` -- or a zero-argument callable returning true once the run should stop.
A run calls :func:`raise_if_cancelled` between batches; it raises :class:`~cervrt.errors.Cancelled`,
and the caller's clean-up (removing what was half-written) runs on the way out.
"""

from __future__ import annotations

import threading
from typing import Any

from cervrt.errors import Cancelled, InputError

__all__ = ["CancelToken", "check_token", "is_cancelled", "raise_if_cancelled"]


class CancelToken:
    """A thread-safe flag: ``cancel()`` from any thread, ``is_set()`` (or ``cancelled``) to read it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"<CancelToken {'cancelled' if self.is_set() else 'active'}>"


def check_token(cancel: Any) -> Any:
    """``cancel`` if it is None, has ``is_set()`` or is callable; else InputError saying what is taken."""
    if cancel is None or callable(getattr(cancel, "is_set", None)) or callable(cancel):
        return cancel
    raise InputError(f"cancel must be a threading.Event, a cervrt.CancelToken or a callable returning bool, "
                     f"got {type(cancel).__name__}")


def is_cancelled(cancel: Any) -> bool:
    """Whether the token says stop (False for None)."""
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())


def raise_if_cancelled(cancel: Any, what: str = "the run") -> None:
    """Raise Cancelled when ``cancel`` is set."""
    if is_cancelled(cancel):
        raise Cancelled(f"{what} was cancelled")
