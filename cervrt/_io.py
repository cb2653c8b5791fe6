"""Atomic output: write to a temporary file beside the target, then rename over it.

An interrupted or failed run leaves the previous file (or nothing) in place, never half a file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import numbers
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cervrt.errors import CervrtError, MissingDependencyError

__all__ = ["atomic_path", "ensure_writable_dir", "nan_to_none", "optional_import", "write_json"]


def optional_import(module: str, extra: str) -> Any:
    """Import an optional dependency lazily; a missing one names the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module.split(".")[0], extra) from exc


def ensure_writable_dir(directory: str | os.PathLike[str], create: bool = True) -> Path:
    """Return ``directory`` as a Path, creating it when asked; raise CervrtError if it cannot be written."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise CervrtError(f"{path} exists and is not a directory")
    if not path.exists():
        if not create:
            raise CervrtError(f"output directory {path} does not exist")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CervrtError(f"cannot create output directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise CervrtError(f"output directory {path} is not writable")
    return path


def _create_temporary(directory: Path, target: Path) -> Path:
    """A new empty file beside ``target``, with the permissions the user's umask gives any new file.

    (``tempfile.mkstemp`` would make it 0600, and the rename would hand that on to the output.)
    """
    while True:
        tmp = directory / f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise CervrtError(f"cannot write to {directory}: {exc.strerror}") from exc


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it over ``target`` on success.

    The temporary name keeps the target's suffix so that writers which pick a format by
    extension (OpenCV, tifffile, torch) still do. On any exception the temporary file is removed.
    """
    target = Path(target)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CervrtError(f"output directory {directory} does not exist")
    tmp = _create_temporary(directory, target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def nan_to_none(value: Any) -> Any:
    """``value`` as strict JSON can hold it, through dicts, lists and tuples: a non-finite float (NaN,
    inf) becomes None, and numpy scalars become plain ints and floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (see :func:`nan_to_none`: NaN is written as null), atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(nan_to_none(obj), indent=2, allow_nan=False) + "\n")
