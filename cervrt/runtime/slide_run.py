"""One slide through a Predictor, streamed to disk: ``Predictor.predict_slide`` does this.

Outputs in ``out_dir`` (all written atomically; if the run fails or is interrupted, the ones this run
had already finished are removed again, so a slide has all of its outputs or none):

- ``NAME.mask.png``: uint8 labels 0..C-1 at the processing resolution (the model's mpp); a tiled
  pyramidal ``NAME.mask.tiff`` with ``fmt="tiff"`` or when the mask has more than 2^30 pixels
  (beyond what PNG readers take);
- ``NAME.overlay.jpg``: the palette over a thumbnail of the slide, with a legend;
- ``NAME.json``: the report (see ``slide_report``);
- ``NAME.geojson`` (``.geojson.gz`` with ``geojson_gzip``) with ``geojson=True``: one valid polygon per
  lesion traced on the full mask along pixel edges, in level-0 pixels (QuPath imports it), streamed with
  the mask (``cervrt.runtime.geojson``); ``geojson_simplify`` simplifies the outlines;
- several mask formats at once with ``fmt=("tiff", "dicom-seg", ...)``: the first one's paths are the
  ``mask`` entries, the others' ``mask.FORMAT`` (``NAME.seg/``, ``NAME.ome.zarr/`` are folders).

The report gives the output paths (absolute), the level-0 and processing sizes, the mpp used and whether it
was assumed (``mpp_assumed``: the file carries none, so the model's was taken; ``require_mpp=True``
refuses such a slide), and the provenance: model file, sha256, arch, engine, cervrt version, settings.

A slide without tissue (no window reaches the tissue threshold) is not an error: its mask is all
background and the report says ``"no_tissue": true``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cervrt._io import ensure_writable_dir, write_json
from cervrt.errors import CervrtError
from cervrt.runtime.clinical import SinkContext, geojson_sink, provenance
from cervrt.runtime.hooks import OnRows, rows_sink
from cervrt.runtime.lanes import Lanes
from cervrt.runtime.outputs import (
    LabelThumbnail,
    MaskWriter,
    OutputFormat,
    output_format,
    write_overlay,
)
from cervrt.runtime.pipeline import STAGES, Progress, Rows, StageTimer
from cervrt.runtime.stitcher import LabelChunk

__all__ = ["READ_THREADS", "THUMBNAIL_SIDE", "SlidePredictor", "SlideResult", "SlideRows", "mask_format", "run_slide",
           "slide_report"]

#: Longest side of the overlay and of the label thumbnail the GeoJSON is traced from.
THUMBNAIL_SIDE = 2048
#: Threads that read a slide's bands at once in an overlapped run (decoders release the GIL).
READ_THREADS = max(1, min(2, os.cpu_count() or 1))


class SlidePredictor(Protocol):
    """What a slide run uses of a Predictor: its public hooks, nothing private."""

    engine: Any
    settings: Any  # a resolved PredictorConfig
    num_classes: int
    fusion_backend: str

    def gather_args(self) -> tuple[Callable[..., None], int, tuple[float, ...], tuple[float, ...]]: ...

    def plan_windows(self, height: int, width: int, tissue: Any) -> tuple[Rows, int]: ...

    def label_rows(self, source: Any, rows: Rows, height: int, width: int, sink: Callable[[list[LabelChunk]], None],
                   timer: StageTimer, progress: Progress | None, *, overlap: bool = True) -> int: ...


def mask_format(requested: str | OutputFormat, height: int, width: int) -> OutputFormat:
    """The registered format ``requested`` names (``png``, ``tiff``, ...), or its fallback for a mask too large."""
    return output_format(requested, height, width)


@dataclass(frozen=True)
class SlideResult:
    """What ``predict_slide`` wrote: the report (also in NAME.json) and the output paths by kind."""

    name: str
    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def no_tissue(self) -> bool:
        return bool(self.report["no_tissue"])


class SlideRows:
    """Patches of a slide read a band at a time: the ``patch`` rows of one window row, over the span of
    that row's windows. Consecutive window rows over the same span reuse the rows they share, so each
    slide row is read once, and rows no window covers are not read; memory is ``patch`` x span x 3
    bytes per band. With ``prefetch`` the bands are built in plan order on a thread of their own, one
    band ahead of the patches gathered, their fresh rows read by ``readers`` threads at once (the same
    rows as without prefetch, so the same pixels); ``close()`` (or ``with``) stops them. On a tiled
    slide (``Slide.read_rows``) the fresh rows are read in blocks aligned to the tile rows, so readers
    running at once never decode the same tile (on the SVS two readers read level 0 in half the time);
    elsewhere the reads are the bands' fresh rows as they come.
    A read error (a corrupt tile) is raised by the ``gather`` or ``rows`` that needs the band."""

    def __init__(self, slide: Any, rows: Rows, gather: Callable[..., None], patch: int, mean: Sequence[float],
                 std: Sequence[float], *, prefetch: bool = False, readers: int = 1) -> None:
        self._slide, self._gather, self._patch, self._mean, self._std = slide, gather, patch, mean, std
        self._order = [y for y, _ in rows]
        self._spans = {y: (int(xs[0]), int(xs[-1]) + patch) for y, xs in rows}
        self._band: np.ndarray | None = None  # the last band built (the band stream's)
        self._prefetch, self._readers = prefetch, max(1, readers)
        self._lanes: Lanes | None = None
        self._bands: Iterator[tuple[int, np.ndarray, int]] | None = None
        self._current: tuple[int, np.ndarray, int] | None = None
        self._timer = StageTimer()
        self.rows_read = 0

    def __enter__(self) -> SlideRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the prefetch thread (it finishes the read in hand) and drop the bands."""
        if self._lanes is not None:
            self._lanes.close()
        self._lanes = self._bands = self._current = self._band = None

    def gather(self, segments: list[tuple[int, np.ndarray]], out: np.ndarray, timer: StageTimer) -> None:
        self._timer = timer  # the reads are timed where they run (the prefetch thread, or here)
        k = 0
        for y, xs in segments:
            band, x0 = self.rows(y)
            with timer("preprocess"):
                self._gather(band, np.zeros(xs.size, dtype=np.int64), xs - x0, self._patch, self._mean, self._std,
                             out[k : k + xs.size])
            k += xs.size

    def pixels(self, y: int) -> tuple[np.ndarray, int, int]:
        """``rows(y)`` as the pipeline's PatchSource wants it: the band and the image (row, column) of its (0, 0)."""
        band, x0 = self.rows(y)
        return band, y, x0

    def rows(self, y: int) -> tuple[np.ndarray, int]:
        """uint8 (patch, span, 3) rows y .. y + patch over window row y's span, and the span's first column.

        Window rows asked for in plan order come from the band stream (prefetched or not); any other is
        read on its own."""
        x0, x1 = self._spans[y]
        current = self._current
        if current is None or current[0] < y:
            if self._bands is None:
                self._bands = self._stream()
            for current in self._bands:
                if current[0] >= y:
                    break
            self._current = current
        if current is not None and current[0] == y:
            return current[1], current[2]
        self.rows_read += self._patch
        return np.ascontiguousarray(self._read(y, x0, self._patch, x1 - x0)), x0

    def _requests(self) -> Iterator[tuple[int, int, tuple[int, int, int, int]]]:
        """Per window row in plan order: (y, rows kept from the previous band, the read of the rest)."""
        p, previous = self._patch, None
        for y in self._order:
            x0, x1 = self._spans[y]
            if previous is not None and previous[1] == (x0, x1) and previous[0] < y < previous[0] + p:
                keep = previous[0] + p - y
                yield y, keep, (previous[0] + p, x0, p - keep, x1 - x0)
            else:
                yield y, 0, (y, x0, p, x1 - x0)
            previous = (y, (x0, x1))

    def _stream(self) -> Iterator[tuple[int, np.ndarray, int]]:
        if not self._prefetch:
            return (self._band_of(y, keep, self._read(*read)) for y, keep, read in self._requests())
        self._lanes = Lanes()
        return self._lanes.background(self._prefetched(self._lanes.pool(self._readers, "cervrt-read")), 1,
                                      "cervrt-bands")

    def _prefetched(self, pool: Any) -> Iterator[tuple[int, np.ndarray, int]]:
        """The bands in order, their fresh rows read by ``pool``, ``readers`` reads ahead."""
        requests = list(self._requests())
        reads, pieces = _aligned_reads([read for _, _, read in requests],
                                       self._slide_rows() if self._readers > 1 else None)
        last_use = {index: i for i, parts in enumerate(pieces) for index, _, _ in parts}
        futures: dict[int, Any] = {}
        submitted = 0
        for i, (y, keep, _) in enumerate(requests):
            needed = max(index for index, _, _ in pieces[i])
            while submitted < len(reads) and submitted <= needed + self._readers - 1:
                futures[submitted] = pool.submit(self._read, *reads[submitted])
                submitted += 1
            parts = [futures[index].result()[start : start + rows] for index, start, rows in pieces[i]]
            for index, _, _ in pieces[i]:
                if last_use[index] == i:
                    del futures[index]
            yield self._band_of(y, keep, parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _slide_rows(self) -> int | None:
        rows = getattr(self._slide, "read_rows", None)
        return rows if isinstance(rows, int) and rows > 1 else None

    def _band_of(self, y: int, keep: int, fresh: np.ndarray) -> tuple[int, np.ndarray, int]:
        """Window row y's band: ``keep`` rows from the previous band, then ``fresh`` (a new array, so a band
        handed out is never written again)."""
        x0 = self._spans[y][0]
        self.rows_read += fresh.shape[0]
        if keep:
            band = np.empty((self._patch, *fresh.shape[1:]), np.uint8)
            band[:keep] = self._band[-keep:]
            band[keep:] = fresh
        else:
            band = np.ascontiguousarray(fresh)
        self._band = band
        return y, band, x0

    def _read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        with self._timer("read"):
            return self._slide.read(y, x, h, w)


def _aligned_reads(fresh: list[tuple[int, int, int, int]], block: int | None
                   ) -> tuple[list[tuple[int, int, int, int]], list[list[tuple[int, int, int]]]]:
    """The reads that fetch ``fresh`` (one (y, x, h, w) read per band, in order) and, per band, the
    (read index, first row, rows) pieces its rows come from. With ``block`` (the slide's tile height),
    the rows of consecutive bands over the same columns are read in pieces aligned to multiples of
    ``block``, one read per block, so reads that run at once never decode the same tile; the rows read
    are the same."""
    reads: list[tuple[int, int, int, int]] = []
    pieces: list[list[tuple[int, int, int]]] = []
    if block is None:
        return list(fresh), [[(i, 0, h)] for i, (_, _, h, _) in enumerate(fresh)]
    open_reads: dict[tuple[int, int, int], int] = {}  # (block, x, w) -> index of the read still growing
    for y, x, h, w in fresh:
        parts, a = [], y
        while a < y + h:
            b = min(y + h, (a // block + 1) * block)
            key = (a // block, x, w)
            index = open_reads.get(key)
            if index is not None and reads[index][0] + reads[index][2] == a:
                ry, rx, rh, rw = reads[index]
                reads[index] = (ry, rx, rh + b - a, rw)
            else:
                index = open_reads[key] = len(reads)
                reads.append((a, x, b - a, w))
            parts.append((index, a - reads[index][0], b - a))
            a = b
        pieces.append(parts)
    return reads, pieces


class _LabelSink:
    """Label chunks -> the mask writers (and GeoJSON), the label thumbnail and the per-class pixel counts."""

    def __init__(self, writers: list[Any], thumbnail: Any, num_classes: int) -> None:
        self.writers, self.thumbnail = writers, thumbnail
        self.counts = np.zeros(num_classes, dtype=np.int64)

    def __call__(self, chunks: list[LabelChunk]) -> None:
        for first, labels in chunks:
            for writer in self.writers:
                writer.write(first, labels)
            self.thumbnail.write(first, labels)
            if labels.strides[0] == 0 and labels.strides[1] == 0:  # a read-only block of background rows
                self.counts[int(labels[0, 0])] += labels.size
            else:
                self.counts += np.bincount(labels.ravel(), minlength=self.counts.size)[: self.counts.size]


# ---- the report ------------------------------------------------------------------------------------


def _class_table(counts: np.ndarray, class_names: Sequence[str], mpp: float | None) -> dict[str, dict[str, Any]]:
    tissue = int(counts[1:].sum())
    table = {}
    for k, (name, pixels) in enumerate(zip(class_names, counts.tolist(), strict=True)):
        table[name] = {
            "pixels": int(pixels),
            "mm2": None if mpp is None else pixels * mpp * mpp * 1e-6,
            "tissue_share": None if k == 0 or tissue == 0 else pixels / tissue,
        }
    return table


def slide_report(predictor: SlidePredictor, slide: Any, name: str, counts: np.ndarray, run: int, skipped: int,
                 timer: StageTimer, seconds: float, fmt: OutputFormat | Sequence[OutputFormat],
                 paths: dict[str, Path]) -> dict[str, Any]:
    """The NAME.json report: areas per class (pixels, mm^2 when the mpp is known, share of the tissue,
    i.e. of pixels labelled 1..C-1), the worst grade found, patches run and skipped, seconds per stage,
    throughput (patches/s over the patches run, Mpx/s over the slide's area at the processing
    resolution, both over the whole call), MACs per patch and what ran."""
    engine, settings = predictor.engine, predictor.settings
    names = engine.class_names
    found = [k for k in range(1, len(names)) if counts[k] > 0]
    fmts = [fmt] if isinstance(fmt, OutputFormat) else list(fmt)
    level0 = getattr(slide, "level0_size", None) or (round(slide.width * slide.downsample),
                                                      round(slide.height * slide.downsample))
    return {
        "slide": str(Path(slide.path).resolve()), "name": name,
        "width": slide.width, "height": slide.height, "mpp": slide.mpp, "native_mpp": slide.native_mpp,
        "downsample": slide.downsample, "level0": {"width": int(level0[0]), "height": int(level0[1])},
        "mpp_used": slide.mpp if slide.mpp is not None else engine.mpp, "mpp_assumed": slide.native_mpp is None,
        "model": {"arch": engine.metadata.get("arch"), "patch_size": engine.patch_size, "mpp": engine.mpp,
                  "classes": list(names), **provenance(engine)},
        "engine": engine.kind, "provider": engine.provider, "precision": engine.precision, "device": engine.device,
        "fusion": predictor.fusion_backend,
        "fallback": getattr(engine, "fallback", None),  # why the engine or fusion is not the one asked for
        "settings": {"stride": settings.stride, "blend": settings.blend.value, "batch_size": settings.batch_size,
                     "tissue_threshold": settings.tissue_threshold},
        "patches": {"total": run + skipped, "run": run, "skipped": skipped},
        "no_tissue": run == 0,
        "tissue_pixels": int(counts[1:].sum()),
        "classes": _class_table(counts, names, slide.mpp),
        "worst_grade": names[found[-1]] if found else None,
        "seconds": {**{stage: round(timer.seconds[stage], 4) for stage in STAGES}, "total": round(seconds, 4)},
        "patches_per_s": run / seconds if seconds > 0 else None,
        "mpx_per_s": slide.width * slide.height / 1e6 / seconds if seconds > 0 else None,
        "macs_per_patch": engine.metadata.get("macs_patch"),
        "mask_format": fmts[0].value, "mask_formats": [f.value for f in fmts],
        "outputs": {kind: str(path.resolve()) for kind, path in paths.items()},
    }


# ---- the run -----------------------------------------------------------------------------------------


def _paths(out: Path, name: str, fmts: list[OutputFormat], geojson: bool, gzip: bool = False) -> dict[str, Path]:
    paths = dict(fmts[0].paths(out, name))
    for fmt in fmts[1:]:
        paths |= {f"{kind}.{fmt.value}": path for kind, path in fmt.paths(out, name).items()}
    paths["overlay"] = out / f"{name}.overlay.jpg"
    if geojson:
        paths["geojson"] = out / f"{name}.geojson{'.gz' if gzip else ''}"
    paths["json"] = out / f"{name}.json"
    return paths


@contextlib.contextmanager
def _all_or_nothing() -> Iterator[list[Path]]:
    """Yield a list to append finished outputs to; on any failure (Ctrl-C included) remove them again."""
    done: list[Path] = []
    try:
        yield done
    except BaseException:
        for path in done:
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()  # NAME.seg/, NAME.ome.zarr/ are folders
        raise


def _tissue(predictor: SlidePredictor, slide: Any, timer: StageTimer) -> tuple[Any, np.ndarray]:
    """The slide's TissueMap (None with a threshold of 0: every window runs) and its thumbnail, read
    once (a pass over a whole pyramid level) for the tissue map and the overlay both."""
    from cervrt.runtime.tissue import TissueMap, tissue_mask

    with timer("tissue"):
        thumbnail = slide.thumbnail(THUMBNAIL_SIDE)
        if predictor.settings.tissue_threshold <= 0:
            return None, thumbnail
        mask, threshold = tissue_mask(thumbnail)
        return TissueMap(mask, slide.height, slide.width, threshold), thumbnail


def _write_mask(predictor: SlidePredictor, slide: Any, rows: Rows, fmts: list[OutputFormat], paths: dict[str, Path],
                simplify: float | None, timer: StageTimer, progress: Progress | None,
                done: list[Path], overlap: bool = True, on_rows: OnRows | None = None,
                then: Callable[[Any], None] | None = None) -> tuple[int, _LabelSink]:
    """Every mask format and the GeoJSON from one pass of the rows; each finished output joins ``done``.
    ``then(label_thumbnail)`` runs on a thread of its own while the writers finish (their pyramids)."""
    h, w = slide.height, slide.width
    engine = predictor.engine
    context = SinkContext(engine.class_names, engine.palette, slide, provenance(engine))
    keys = ["mask"] + [f"mask.{fmt.value}" for fmt in fmts[1:]]
    with contextlib.ExitStack() as stack:
        writers = [(paths[key], stack.enter_context(MaskWriter(paths[key], h, w, fmt=fmt, mpp=slide.mpp,
                                                               context=context)))
                   for key, fmt in zip(keys, fmts, strict=True)]
        if "geojson" in paths:
            writers.append((paths["geojson"], stack.enter_context(geojson_sink(paths["geojson"], h, w, context,
                                                                               simplify))))
        sink = _LabelSink([writer for _, writer in writers], LabelThumbnail(h, w, THUMBNAIL_SIDE),
                          predictor.num_classes)
        gather, *normalise = predictor.gather_args()
        if overlap:  # beside the other stage threads, one thread per gather (see HostLabeler.label)
            gather = functools.partial(gather, threads=1)
        source = stack.enter_context(SlideRows(slide, rows, gather, *normalise, prefetch=overlap,
                                               readers=READ_THREADS if overlap else 1))
        run = predictor.label_rows(source, rows, h, w, rows_sink(sink, on_rows), timer, progress, overlap=overlap)
        with timer("write"), ThreadPoolExecutor(1, "cervrt-pictures") as pool:
            pictures = None if then is None else pool.submit(then, sink.thumbnail)
            for path, writer in writers:
                writer.close()
                done.append(path)
            if pictures is not None:
                pictures.result()
    return run, sink


def _write_pictures(predictor: SlidePredictor, picture: np.ndarray, thumbnail: LabelThumbnail,
                    paths: dict[str, Path], done: list[Path]) -> None:
    engine = predictor.engine
    write_overlay(paths["overlay"], picture, thumbnail.labels, engine.palette, engine.class_names)
    done.append(paths["overlay"])


def run_slide(predictor: SlidePredictor, path: str | Path, out_dir: str | Path, fmt: str | Sequence[str] = "png",
              geojson: bool = False, name: str | None = None, progress: Progress | None = None,
              on_rows: OnRows | None = None, *, geojson_simplify: float | None = None, geojson_gzip: bool = False,
              require_mpp: bool = False, overlap: bool = True) -> SlideResult:
    """Segment the slide at ``path`` with ``predictor`` and write its outputs into ``out_dir``;
    ``on_rows(y0, labels)`` gets each band of finished mask rows. ``overlap`` (default): the band reader
    prefetches on threads of its own and the stages overlap (``cervrt.runtime.pipeline.run_windows``);
    False runs them one after another on the calling thread."""
    from cervrt.runtime.readers import open_slide

    start = time.perf_counter()
    out = ensure_writable_dir(out_dir)
    timer = StageTimer()
    with timer("read"):  # PNG/JPEG are decoded here
        slide = open_slide(path, target_mpp=predictor.engine.mpp, mpp=predictor.settings.mpp)
    with slide:
        if require_mpp and slide.native_mpp is None:
            raise CervrtError(f"{path} carries no microns per pixel and require_mpp refuses to assume the model's "
                              f"{predictor.engine.mpp}: give the slide's mpp")
        requested = [fmt] if isinstance(fmt, str) else list(fmt)
        if not requested:
            raise CervrtError("no mask format asked for: give at least one (png, tiff, ...)")
        fmts = list(dict.fromkeys(mask_format(f, slide.height, slide.width) for f in requested))
        name = name or slide.name
        paths = _paths(out, name, fmts, geojson, geojson_gzip)
        tissue, picture = _tissue(predictor, slide, timer)
        rows, skipped = predictor.plan_windows(slide.height, slide.width, tissue)
        with _all_or_nothing() as done:
            run, sink = _write_mask(predictor, slide, rows, fmts, paths, geojson_simplify, timer, progress, done,
                                    overlap, on_rows,
                                    then=lambda labels: _write_pictures(predictor, picture, labels, paths, done))
            seconds = time.perf_counter() - start
            report = slide_report(predictor, slide, name, sink.counts, run, skipped, timer, seconds, fmts, paths)
            write_json(paths["json"], report)
    return SlideResult(name, report, paths)
