"""What ``cervrt infer`` was given, as a list of slides with output names that cannot collide.

An input is a slide file (or a folder a reader claims, such as a DICOM slide), a directory (every
supported slide inside it; its sub-folders too with ``recursive``), a glob (``"scans/**/*.svs"``) or
a manifest CSV (``path[,mpp][,id]``, a header row naming the columns, or those three columns in that
order without one; relative paths are relative to the manifest's folder).

Each slide's *output name* is its path relative to the root of the input that found it, without the
slide suffix: ``scans/a/case1.svs`` found in ``scans/`` is ``a/case1`` (outputs in ``OUT/a/``); a
file given by itself is its stem; a glob's root is the folder before its first wildcard; a manifest
row's name is its ``id``, else its path relative to the manifest's folder. Two slides with the same
name (case-insensitively) are an error before anything runs. Files in a directory that no reader
opens are skipped and counted; a manifest row with a missing file or a bad mpp becomes a slide that
fails (with that reason) in the run's summary.
"""

from __future__ import annotations

import csv
import glob
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cervrt.errors import InputError
from cervrt.runtime.readers import SUPPORTED_SUFFIXES
from cervrt.runtime.slides import COMPOUND_SUFFIXES

__all__ = ["SlideInput", "SlideInputs", "collect_inputs", "parse_shard", "read_manifest", "shard", "slide_stem"]

_WILDCARDS = set("*?[")


@dataclass(frozen=True)
class SlideInput:
    """One slide: its path, its output name (``a/case1``), the manifest's id and mpp, or why it cannot run."""

    path: Path
    name: str
    id: str = ""
    mpp: float | None = None
    error: str = ""


@dataclass
class SlideInputs:
    """The slides found, in input order, and how many unsupported files the directories held."""

    slides: list[SlideInput] = field(default_factory=list)
    unsupported: int = 0


def slide_stem(path: Path) -> str:
    """The slide's file name without its slide suffix (``a.ome.tiff`` -> ``a``)."""
    lower = path.name.lower()
    suffix = next((s for s in COMPOUND_SUFFIXES if lower.endswith(s)), path.suffix)
    return path.name[: -len(suffix)] if suffix and len(path.name) > len(suffix) else path.name


def _name(path: Path, root: Path) -> str:
    rel = PurePosixPath(*path.relative_to(root).parts)
    return str(rel.parent / slide_stem(path)) if str(rel.parent) != "." else slide_stem(path)


def _is_slide(path: Path) -> bool:
    """A file with a slide suffix, or a folder of DICOM instances (a DICOM WSI series)."""
    if path.is_dir():
        return any(path.glob("*.dcm"))
    lower = path.name.lower()
    return any(lower.endswith(s) for s in SUPPORTED_SUFFIXES) and not path.name.startswith(".")


def _walk(folder: Path, root: Path, recursive: bool, found: SlideInputs) -> None:
    for entry in sorted(folder.iterdir()):
        if _is_slide(entry):
            found.slides.append(SlideInput(entry, _name(entry, root)))
        elif entry.is_dir():
            if recursive:
                _walk(entry, root, recursive, found)
        elif not entry.name.startswith("."):
            found.unsupported += 1


def _scan(root: Path, recursive: bool, found: SlideInputs) -> None:
    before = len(found.slides)
    _walk(root, root, recursive, found)
    if len(found.slides) == before:
        hint = "" if recursive else " (its sub-folders are searched with --recursive)"
        raise InputError(f"{root} holds no slides{hint}: supported are {', '.join(SUPPORTED_SUFFIXES)}")


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if _WILDCARDS & set(p)), len(parts))]]
    return Path(*fixed) if fixed else Path(".")


def _expand_glob(pattern: str, found: SlideInputs) -> None:
    root = _glob_root(pattern)
    matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    slides = [p for p in matches if _is_slide(p)]
    if not slides:
        raise InputError(f"no slides match {pattern!r}")
    found.slides.extend(SlideInput(p, _name(p, root)) for p in slides)
    found.unsupported += sum(1 for p in matches if p.is_file() and not _is_slide(p))


def _row_mpp(text: str) -> tuple[float | None, str]:
    if not text.strip():
        return None, ""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        return None, f"bad mpp {text.strip()!r} in the manifest: give positive microns per pixel or leave it empty"
    return value, ""


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the manifest {path}: {exc}") from None
    if not table:
        raise InputError(f"the manifest {path} has no rows: write one slide per line as path[,mpp][,id]")
    header = [cell.strip().lower() for cell in table[0]]
    if "path" in header:
        unknown = sorted(set(header) - {"path", "mpp", "id", ""})
        if unknown:
            raise InputError(f"the manifest {path} has unknown column {unknown[0]!r}: its columns are path, mpp, id")
        table = table[1:]
    else:
        header = ["path", "mpp", "id"]
    return [dict(zip(header, (cell.strip() for cell in row), strict=False)) for row in table]


def _check_id(ident: str, line: int, manifest: Path) -> str:
    parts = PurePosixPath(ident.replace("\\", "/")).parts
    if ident.startswith(("/", "\\")) or not parts or any(p in ("..", ".") for p in parts):
        raise InputError(f"{manifest}, row {line}: the id {ident!r} must be a relative name (no '..', not absolute)")
    return str(PurePosixPath(*parts))


def read_manifest(manifest: str | os.PathLike[str]) -> list[SlideInput]:
    """The slides a manifest CSV lists; a row with a missing file or a bad mpp carries its error."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"the manifest {manifest} does not exist" if not manifest.exists()
                         else f"the manifest {manifest} is not a file")
    base = manifest.parent
    slides = []
    for line, row in enumerate(_rows(manifest), start=1):
        if not row.get("path"):
            raise InputError(f"{manifest}, row {line}: no path")
        path = Path(row["path"]) if os.path.isabs(row["path"]) else base / row["path"]
        mpp, error = _row_mpp(row.get("mpp", ""))
        if not error and not path.exists():
            error = f"{path} does not exist (manifest row {line})"
        ident = _check_id(row["id"], line, manifest) if row.get("id") else ""
        name = ident or (_name(path, base) if path.is_relative_to(base) else slide_stem(path))
        slides.append(SlideInput(path, name, ident, mpp, error))
    return slides


def _check_collisions(slides: Sequence[SlideInput]) -> None:
    seen: dict[str, SlideInput] = {}
    for slide in slides:
        key = slide.name.casefold()
        if key in seen:
            raise InputError(f"{seen[key].path} and {slide.path} would both write outputs named {slide.name!r}: "
                             "give their common folder (their paths below it become the names) or a manifest with ids")
        seen[key] = slide


def collect_inputs(inputs: Iterable[str | os.PathLike[str]], recursive: bool = False,
                   manifest: str | os.PathLike[str] | None = None) -> SlideInputs:
    """The slides of ``inputs`` (files, folders, globs) and of ``manifest``, with collision-free names."""
    found = SlideInputs()
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir() and not _is_slide(path):
            _scan(path, recursive, found)
        elif not path.exists() and _WILDCARDS & set(item):
            _expand_glob(item, found)
        else:  # a slide file, or a path that fails (missing, unsupported) as that slide's error
            found.slides.append(SlideInput(path, slide_stem(path)))
    if manifest is not None:
        found.slides.extend(read_manifest(manifest))
    if not found.slides:
        raise InputError("no slides given: pass slide files, folders, globs or --manifest")
    _check_collisions(found.slides)
    return found


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N) with 1 <= I <= N."""
    head, sep, tail = str(text).partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = 0, 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise InputError(f"shard {text!r} must be I/N with 1 <= I <= N, e.g. 1/4")
    return index, count


def shard(slides: Sequence[SlideInput], index: int, count: int) -> list[SlideInput]:
    """The ``index``-th (1-based) of ``count`` parts: every count-th slide in output-name order."""
    ordered = sorted(slides, key=lambda s: s.name.casefold())
    return ordered[index - 1 :: count]
