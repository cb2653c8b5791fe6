"""OME-Zarr (NGFF 0.5, zarr v3) label image of a mask, streamed in bounded memory (the ``zarr`` extra).

Layout: ``NAME.ome.zarr/labels/segmentation`` is a multiscale label image (``image-label`` metadata:
one colour per class, the palette's, background transparent; ``properties`` with each class's name),
its levels ``0``, ``1``, ... the mask subsampled nearest-neighbour by 1, 2, 4, ... (labels are never
averaged) until a level fits in one chunk. Level ``k``'s pixel (i, j) is mask pixel (i * 2^k, j * 2^k)
and its ``scale`` is 2^k times the mask's pixel size: micrometres when the mpp is known, else mask
pixels. NGFF puts a pixel's centre at its index times the scale, plus the translation: the translation
centres each level's pixels on the level-0 pixels they cover (SPEC "Coordinates"), so that level-0 pixel
x (centre at x * level-0 size) falls in level pixel floor((x + 0.5) / F), F the level-0 pixels per level
pixel. The root's ``cervrt`` attribute gives the mask-to-level-0 ``downsample`` (mask pixel (i, j)
covers level-0 [j * d, (j + 1) * d) x [i * d, (i + 1) * d)), the class names and the mpp.

Memory: rows are buffered until one chunk row (``_CHUNK`` rows x width bytes) is complete, then written
to every level at once (each level takes its every 2^k-th row and column), so nothing is read back.
Atomic: the store is written as ``NAME.ome.zarr.tmp-XXXX`` beside the target and renamed into place
(a previous store of the same name is replaced only once the new one is complete).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cervrt._io import optional_import
from cervrt.errors import CervrtError
from cervrt.runtime.row_stream import RowStream

__all__ = ["LABEL_NAME", "OmeZarrWriter"]

#: Name of the label image inside the store's ``labels`` group.
LABEL_NAME = "segmentation"
_CHUNK = 512


def _level_factors(height: int, width: int) -> list[int]:
    """Subsampling factors 1, 2, 4, ... until a level fits in one chunk."""
    factors = [1]
    while max(-(-height // factors[-1]), -(-width // factors[-1])) > _CHUNK:
        factors.append(factors[-1] * 2)
    return factors


def _temporary_dir(target: Path) -> Path:
    while True:
        tmp = target.with_name(f"{target.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise CervrtError(f"cannot write to {target.parent}: {exc.strerror}") from exc


class OmeZarrWriter(RowStream):
    """Streams a ``height`` x ``width`` uint8 label mask into an OME-Zarr store at ``path``; a mask sink."""

    kind = "OME-Zarr"

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, class_names: Sequence[str],
                 palette: Sequence[Sequence[int]], *, mpp: float | None = None, downsample: float = 1.0,
                 attributes: dict[str, Any] | None = None) -> None:
        self._zarr = optional_import("zarr", "zarr")
        self._writer = optional_import("ome_zarr.writer", "zarr")
        self._take_geometry(path, height, width, class_names, palette)
        self.mpp, self.downsample, self._attributes = mpp, float(downsample), dict(attributes or {})
        self.factors = _level_factors(self.height, self.width)
        self._tmp: Path | None = _temporary_dir(self.path)
        try:
            self._root = self._zarr.open_group(str(self._tmp), mode="w", zarr_format=3)
            self._image = self._root.create_group("labels").create_group(LABEL_NAME)
            self._levels = [self._image.create_array(
                str(k), shape=(-(-self.height // f), -(-self.width // f)), chunks=(_CHUNK, _CHUNK), dtype="uint8",
                fill_value=0) for k, f in enumerate(self.factors)]
        except BaseException:
            self.abort()
            raise
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._next_row = 0

    # --- the sink protocol -----------------------------------------------------------------

    def write(self, first_row: int, labels: np.ndarray) -> None:
        """Append mask rows ``first_row ..`` (uint8 (n, width))."""
        if self._tmp is None:
            raise CervrtError(f"the OME-Zarr writer of {self.path} is closed")
        self.check_rows(first_row, labels, check_classes=False)
        self._rows.append(np.array(labels, np.uint8, copy=True))
        self._buffered += labels.shape[0]
        self._next_row += labels.shape[0]
        while self._buffered >= _CHUNK or (self._buffered and self._next_row == self.height):
            self._flush()

    def finish(self) -> None:
        """Write the metadata and rename the store into place; refuses an incomplete mask."""
        if self._tmp is None:
            return
        if self._next_row != self.height:
            self.abort()
            raise CervrtError(f"the OME-Zarr {self.path} is incomplete: {self._next_row} of {self.height} rows")
        try:
            self._write_metadata()
            self._rename()
        except BaseException:
            self.abort()
            raise

    close = finish

    def abort(self) -> None:
        """Remove the temporary store; nothing is left."""
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- work ------------------------------------------------------------------------------

    def _flush(self) -> None:
        rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        n = min(_CHUNK, rows.shape[0])
        band, rest = rows[:n], rows[n:]
        self._rows = [rest] if rest.shape[0] else []
        first = self._next_row - self._buffered
        self._buffered -= n
        try:
            for level, f in zip(self._levels, self.factors, strict=True):
                start = -(-first // f) * f  # first row of the band on this level's grid
                if start >= first + n:
                    continue
                sub = band[start - first :: f, ::f]
                level[start // f : start // f + sub.shape[0], :] = sub
        except OSError as exc:
            raise CervrtError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _transforms(self, f: int) -> list[dict[str, Any]]:
        """Scale and translation of the level subsampled by ``f``: its pixel j covers level-0 [j * F, (j + 1) * F)
        with F = downsample * f, so its centre lies (F - 1) / 2 level-0 pixels past level-0 pixel j * F's centre."""
        level0 = (self.mpp / self.downsample) if self.mpp else 1.0 / self.downsample  # um (or mask px) per level-0 px
        big = self.downsample * f
        return [{"type": "scale", "scale": [level0 * big] * 2},
                {"type": "translation", "translation": [level0 * (big - 1) / 2] * 2}]

    def _write_metadata(self) -> None:
        unit = "micrometer" if self.mpp else None
        datasets = [{"path": str(k), "coordinateTransformations": self._transforms(f)}
                    for k, f in enumerate(self.factors)]
        axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in ("y", "x")]
        self._writer.write_multiscales_metadata(self._image, datasets=datasets, axes=axes, name=LABEL_NAME)
        colors = [{"label-value": k, "rgba": [*c, 0 if k == 0 else 255]} for k, c in enumerate(self._colours)]
        properties = [{"label-value": k, "class": name} for k, name in enumerate(self.class_names)]
        self._writer.write_label_metadata(self._root["labels"], LABEL_NAME, colors=colors, properties=properties)
        self._root.attrs["cervrt"] = {"downsample": self.downsample, "mpp": self.mpp, "class_names": self.class_names,
                                      "height": self.height, "width": self.width, **self._attributes}

    def _rename(self) -> None:
        tmp = self._tmp
        old = None
        if self.path.exists():
            old = self.path.with_name(f"{self.path.name}.old-{secrets.token_hex(4)}")
            os.replace(self.path, old)
        try:
            os.replace(tmp, self.path)
        except OSError as exc:
            if old is not None:
                os.replace(old, self.path)
            raise CervrtError(f"cannot rename the OME-Zarr into {self.path}: {exc.strerror}") from exc
        self._tmp = None
        if old is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
