"""The exceptions cervrt raises for problems a caller can fix; the CLI prints each as a single line.

Every one is a :class:`CervrtError`, so ``except CervrtError`` still catches them all; the subclasses
let calling code tell apart whose problem it is:

- :class:`InputError`: the caller's array or arguments (a wrong shape, dtype or option value);
- :class:`SlideError`: a slide that cannot be read (missing, unreadable, corrupt or unsupported);
- :class:`ModelError`: a model artifact that cannot be used (missing or wrong metadata, outputs that
  are not probabilities of the shape its metadata declares);
- :class:`DeviceError`: the GPU, its driver, or an execution provider;
- :class:`Cancelled`: a run stopped because its ``cancel`` token was set (nothing half-written stays);
- :class:`MissingDependencyError`: an optional extra is not installed (also an ``ImportError``).

Each message is one sentence that says what is wrong and what to do.
"""

from __future__ import annotations

__all__ = ["Cancelled", "CervrtError", "DeviceError", "InputError", "MissingDependencyError", "ModelError",
           "SlideError"]


class CervrtError(Exception):
    """A problem the user can fix: bad input, a missing file, an unsupported option.

    The message is one sentence that says what is wrong and what to do.
    """


class InputError(CervrtError):
    """The caller's array or arguments are not what the call takes (shape, dtype, range, option value)."""


class SlideError(CervrtError):
    """A slide cannot be read: missing, unreadable, truncated or corrupt, or a format cervrt does not read."""


class ModelError(CervrtError):
    """A model artifact cannot be used: missing or inconsistent metadata, or outputs that are not
    probabilities of the declared shape."""


class DeviceError(CervrtError):
    """The GPU, its driver or an execution provider failed or is missing."""


class Cancelled(CervrtError):
    """The run was cancelled through its ``cancel`` token; what it had written was removed."""


class MissingDependencyError(CervrtError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f'{module} is not installed: run pip install "cervrt[{extra}]"')
        self.module = module
        self.extra = extra
