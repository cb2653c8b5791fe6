"""What the streaming label sinks (GeoJSON, DICOM SEG, OME-Zarr) share: the rows they take and how they close.

A sink is fed uint8 label rows ``write(first_row, labels)`` top to bottom, then ``finish()`` (the
output appears) or ``abort()`` (nothing is left); as a context manager it finishes on success and
aborts on an error.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cervrt.errors import CervrtError

__all__ = ["RowStream"]


class RowStream(abc.ABC):
    """Base of the streaming sinks: subclasses set ``kind``, ``path``, ``height``, ``width``,
    ``class_names`` and ``_next_row`` (the next row expected), and implement ``finish``/``abort``."""

    kind: str = "mask"

    def _take_geometry(self, path: str | os.PathLike[str], height: int, width: int, class_names: Sequence[str],
                       palette: Sequence[Sequence[int]], *, existing_dir: bool = True) -> None:
        """Check and keep ``path``, the mask's size, its classes and one palette colour per class (and,
        with ``existing_dir``, that the output directory exists)."""
        if height < 1 or width < 1:
            raise CervrtError(f"a {self.kind} mask needs a positive size, got {height} x {width}")
        colours = np.asarray(palette, np.int64).reshape(-1, 3)
        if len(colours) != len(class_names):
            raise CervrtError(f"the palette has {len(colours)} colours for {len(class_names)} class names")
        self.path, self.height, self.width = Path(path), int(height), int(width)
        if existing_dir and not self.path.parent.is_dir():
            raise CervrtError(f"output directory {self.path.parent} does not exist")
        self.class_names, self._colours = list(class_names), colours.tolist()

    def check_rows(self, first_row: int, labels: np.ndarray, *, check_classes: bool = True) -> None:
        """Refuse rows that are not uint8 (n, width), out of order, past the end or (with
        ``check_classes``) holding a label without a class."""
        if labels.dtype != np.uint8 or labels.ndim != 2 or labels.shape[1] != self.width:
            raise CervrtError(f"{self.kind} rows must be uint8 (n, {self.width}), got {labels.dtype} {labels.shape}")
        if first_row != self._next_row or first_row + labels.shape[0] > self.height:
            raise CervrtError(f"{self.kind} rows must arrive in order within {self.height} rows: expected row "
                              f"{self._next_row}, got rows {first_row}..{first_row + labels.shape[0] - 1}")
        if check_classes and int(labels.max(initial=0)) >= len(self.class_names):
            raise CervrtError(f"labels go up to {int(labels.max())} but there are {len(self.class_names)} classes")

    @abc.abstractmethod
    def finish(self) -> None:
        """Write what is left and put the output in place."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove everything written so far."""

    def __enter__(self) -> RowStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
