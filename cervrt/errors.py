"""The one exception type cervrt raises for bad input; the CLI prints it as a single line."""

from __future__ import annotations

__all__ = ["CervrtError", "MissingDependencyError"]


class CervrtError(Exception):
    """A problem the user can fix: bad input, a missing file, an unsupported option.

    The message is one sentence that says what is wrong and what to do.
    """


class MissingDependencyError(CervrtError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(f'{module} is not installed: run pip install "cervrt[{extra}]"')
        self.module = module
        self.extra = extra
