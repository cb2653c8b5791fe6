"""Where a model runs: the ``device=`` strings every engine, the Predictor and the CLI accept.

``parse_device("cuda:1")`` -> ``Device("cuda", 1)``. The built-in kinds are ``auto`` (a GPU when one
works, else the CPU), ``cpu`` and ``cuda`` (with an optional ordinal); a backend may accept more
kinds (an OpenVINO ``gpu`` or ``npu``, say) and passes them as ``extra_kinds``. Plain Python: no
numpy, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cervrt.errors import InputError

__all__ = ["DEVICE_CHOICES", "Device", "parse_device"]

#: What ``device=`` accepts with every backend.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
_KINDS = ("auto", "cpu", "cuda")
_DEVICE_PATTERN = re.compile(r"^([a-z][a-z0-9_]*)(?::(\d+))?$")


@dataclass(frozen=True)
class Device:
    """A parsed ``device=`` string: kind ``auto`` / ``cpu`` / ``cuda`` (or a backend's own) and an ordinal."""

    kind: str
    index: int | None = None

    @property
    def ordinal(self) -> int:
        """The device ordinal (0 unless ``kind:N`` said otherwise)."""
        return self.index or 0

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def _choices(extra_kinds: tuple[str, ...]) -> str:
    return ", ".join(DEVICE_CHOICES + tuple(k for k in extra_kinds if k not in _KINDS))


def parse_device(device: str | Device, extra_kinds: Iterable[str] = ()) -> Device:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or an ``extra_kinds`` kind, ``kind:N``) -> Device.

    Anything else raises a CervrtError listing the valid forms. ``auto`` and ``cpu`` take no ordinal.
    """
    extra = tuple(str(kind).lower() for kind in extra_kinds)
    if isinstance(device, Device):
        return device
    text = device.strip().lower() if isinstance(device, str) else ""
    found = _DEVICE_PATTERN.match(text)
    kind = found.group(1) if found else ""
    known = kind in _KINDS or kind in extra
    if not found or not known or (found.group(2) is not None and kind in ("auto", "cpu")):
        raise InputError(f"unknown device {device!r}: use one of {_choices(extra)} (N = 0, 1, ...)")
    index = found.group(2)
    return Device(kind, None if index is None else int(index))
