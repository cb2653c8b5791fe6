"""The run record of a many-slide run: the stamp each report carries, triage, resume and OUT/summary.*.

- ``RunStamp``: the model's sha256 and the settings that change a mask. A finished slide's report
  (``NAME.json``) gets ``"run": {"model_sha256", "settings"}`` and the ``"triage"`` grade; a later run
  with the same stamp skips the slide (resume), a run with another stamp refuses to overwrite its
  outputs unless told to.
- ``triage``: the highest grade whose area is at least ``min_area`` mm^2 (pixels when the slide has no
  mpp), with that area, beside the single-pixel worst grade.
- ``RunRecord``: ``OUT/summary.csv`` (a row per slide), ``OUT/run.json`` (model, sha256, settings,
  version, counts, start/end) and ``OUT/summary.html``, each rewritten atomically as slides finish.
  A shard (``--shard I/N``) writes ``summary.I-of-N.csv``, ``run.I-of-N.json`` and
  ``summary.I-of-N.html`` so that shards sharing one ``OUT`` never clobber each other's records.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cervrt import __version__
from cervrt._io import atomic_path, write_json

__all__ = ["RunRecord", "RunStamp", "SlideRow", "model_sha256", "output_paths", "read_report", "remove_partial",
           "stamp_report", "triage"]

_BASE_COLUMNS = ["slide", "id", "status", "worst_grade", "triage_grade", "triage_area", "triage_unit", "tissue_mm2"]
_TAIL_COLUMNS = ["patches_run", "patches_skipped", "seconds", "engine", "error"]


def model_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the model file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class RunStamp:
    """What a finished slide's report records so that a rerun can tell it is already done."""

    model_sha256: str
    settings: dict[str, Any]
    min_area: float = 0.0

    def for_slide(self, mpp: float | None) -> dict[str, Any]:
        """The stamp of one slide: a manifest's mpp replaces the run's."""
        settings = dict(self.settings)
        if mpp is not None:
            settings["mpp"] = mpp
        return {"model_sha256": self.model_sha256, "settings": settings}


def triage(report: dict[str, Any], min_area: float) -> dict[str, Any]:
    """The highest grade covering at least ``min_area`` (mm^2 with an mpp, else pixels), with its area."""
    classes = list(report["classes"].items())[1:]  # background first
    with_mm2 = report.get("mpp") is not None and all(c.get("mm2") is not None for _, c in classes)
    unit = "mm2" if with_mm2 else "px"
    grade, area = None, 0.0
    for name, entry in classes:
        value = float(entry["mm2"] if with_mm2 else entry["pixels"])
        if value > 0 and value >= min_area:
            grade, area = name, value
    return {"grade": grade, "area": area, "unit": unit, "min_area": min_area}


def stamp_report(result: Any, stamp: RunStamp, mpp: float | None) -> None:
    """Add the run stamp and the triage grade to a finished slide's report and rewrite NAME.json."""
    result.report["run"] = stamp.for_slide(mpp)
    result.report["triage"] = triage(result.report, stamp.min_area)
    write_json(result.paths["json"], result.report)


def output_paths(out_dir: Path, name: str, outputs: Any) -> list[Path]:
    """Every path a slide named ``name`` may write in ``out_dir`` with ``outputs`` (an OutputOptions): each
    requested mask format and the one a very large mask falls back to, the overlay, GeoJSON, the report."""
    from cervrt.runtime.slide_run import mask_format

    paths: list[Path] = []
    for fmt in (outputs.fmt, *getattr(outputs, "extra_formats", ())):
        for size in (1, 1 << 31):
            paths += mask_format(fmt, size, 1).paths(out_dir, name).values()
    paths += [out_dir / f"{name}.overlay.jpg", out_dir / f"{name}.json"]
    if outputs.geojson:
        paths += [out_dir / f"{name}.geojson", out_dir / f"{name}.geojson.gz"]
    return sorted(set(paths))


#: What follows ``.NAME.`` in the hidden temporaries a slide's outputs are written through.
_TEMP_TAILS = ("mask", "overlay.jpg", "json", "geojson", "seg", "ome.zarr")


def remove_partial(out_dir: Path, name: str, paths: list[Path]) -> None:
    """Remove what a slide killed mid-run may have left: ``paths`` and the hidden temporaries of its outputs."""
    leftovers = [*paths]
    prefix = f".{name}."
    if out_dir.is_dir():
        leftovers += [p for p in out_dir.iterdir()
                      if p.name.startswith(prefix) and p.name[len(prefix):].startswith(_TEMP_TAILS)]
    for path in leftovers:
        with contextlib.suppress(OSError):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


@dataclass
class SlideRow:
    """A slide's line in summary.csv: done (this run), skipped (done before), failed or pending."""

    slide: str
    id: str
    name: str
    status: str = "pending"
    report: dict[str, Any] | None = None
    error: str = ""
    overlay: str = ""

    def values(self, class_names: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"slide": self.slide, "id": self.id or self.name, "status": self.status,
                               "error": self.error}
        r = self.report
        if r is None:
            return row
        tri = r.get("triage") or {}
        mpp = r.get("mpp")
        row |= {"worst_grade": r.get("worst_grade") or "", "triage_grade": tri.get("grade") or "",
                "triage_area": _num(tri.get("area")), "triage_unit": tri.get("unit", ""),
                "tissue_mm2": _num(r["tissue_pixels"] * mpp * mpp * 1e-6) if mpp else "",
                "patches_run": r["patches"]["run"], "patches_skipped": r["patches"]["skipped"],
                "seconds": _num(r["seconds"]["total"]), "engine": r.get("engine", "")}
        for cls in class_names[1:]:
            entry = r["classes"].get(cls, {})
            row[f"{cls} mm2"] = _num(entry.get("mm2"))
            row[f"{cls} share"] = _num(entry.get("tissue_share"))
        return row


def _num(value: Any) -> Any:
    return "" if value is None else round(float(value), 6)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """OUT/summary.csv, OUT/run.json and OUT/summary.html of one run (or shard), kept current."""

    out: Path
    header: dict[str, Any]
    rows: list[SlideRow]
    suffix: str = ""
    started: str = field(default_factory=_now)

    def path(self, stem: str, ext: str) -> Path:
        return self.out / f"{stem}{self.suffix}{ext}"

    def class_names(self) -> list[str]:
        for row in self.rows:
            if row.report is not None:
                return list(row.report["classes"])
        return []

    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.rows), "done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    def write(self, status: str = "running") -> None:
        """Rewrite summary.csv, run.json and summary.html (each atomically)."""
        names = self.class_names()
        columns = [*_BASE_COLUMNS, *(f"{c} {k}" for c in names[1:] for k in ("mm2", "share")), *_TAIL_COLUMNS]
        with atomic_path(self.path("summary", ".csv")) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(row.values(names) for row in self.rows)
        ended = None if status == "running" else _now()
        write_json(self.path("run", ".json"), {**self.header, "cervrt": __version__, "status": status,
                                                "started": self.started, "ended": ended, "counts": self.counts()})
        from cervrt.runtime.summary_html import render_summary

        html = render_summary(self.rows, names, title=f"cervrt run {self.started}{self.suffix}", out=str(self.out))
        with atomic_path(self.path("summary", ".html")) as tmp:
            tmp.write_text(html, encoding="utf-8")


def read_report(path: Path) -> dict[str, Any] | None:
    """A slide report (NAME.json), or None when it is missing or not cervrt's."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and "classes" in report and "outputs" in report else None
