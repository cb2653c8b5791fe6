"""The overlapped host pipeline: threads joined by bounded queues (``Lanes``), the same labels as the
stages run one after another, errors and interrupts that stop every thread and leave no output, the
band reader's prefetch (same bands, rows without windows not read) and the TIFF tile cache (each tile
decoded once; a corrupt tile named by its position)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile

from cervrt._cv import cv2
from cervrt.errors import Cancelled, CervrtError
from cervrt.runtime import reference
from cervrt.runtime._tiff import TiledLevel
from cervrt.runtime.lanes import Lanes
from cervrt.runtime.pipeline import StageTimer, plan_rows
from cervrt.runtime.predictor import Predictor
from cervrt.runtime.slide_run import SlideRows
from tests.support.recording_slide import RecordingSlide
from tests.support.tiny_onnx import MPP, save_tiny_model, slide_image, tissue_image

STRIDE = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _pipeline_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cervrt-")]


def _pyramid_tiff(path, image, tile=64, compression="jpeg"):
    """Level 0 and a half-size level (the tissue thumbnail reads that one), tiled, at the model's mpp."""
    res = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(tile, tile), photometric="rgb", compression=compression, **res)
        tif.write(image[::2, ::2], tile=(tile, tile), photometric="rgb", compression=compression, subfiletype=1)
    return path


def _corrupt_tile(path, row, col):
    """Overwrite level 0's tile (row, col) with bytes no decoder takes."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        index = row * -(-page.imagewidth // page.tilewidth) + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)


# ---- Lanes ---------------------------------------------------------------------------------------


def test_background_keeps_order_and_stays_bounded():
    made = []

    def items():
        for k in range(20):
            made.append(k)
            yield k

    with Lanes() as lanes:
        stream = lanes.background(items(), depth=2)
        first = next(stream)
        time.sleep(0.2)
        assert len(made) <= 4  # 1 handed out, 2 queued, 1 waiting to be put
        assert [first, *stream] == list(range(20))
    assert _pipeline_threads() == []


def test_a_producer_error_reaches_the_consumer_and_every_thread_ends():
    def items():
        yield 1
        raise CervrtError("tile 3 is corrupt")

    with pytest.raises(CervrtError, match="tile 3 is corrupt"), Lanes() as lanes:
        put, finish = lanes.writer(lambda item: None, depth=1)
        for item in lanes.background(items(), depth=1):
            put(item)
        finish()
    assert _pipeline_threads() == []


def test_a_writer_error_is_raised_by_finish():
    def sink(item):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Lanes() as lanes:
        put, finish = lanes.writer(sink, depth=1)
        put(1)
        finish()
    assert _pipeline_threads() == []


def test_keyboard_interrupt_in_the_calling_thread_joins_every_thread():
    def endless():
        while True:
            yield np.zeros(10)

    with pytest.raises(KeyboardInterrupt), Lanes() as lanes:
        put, _ = lanes.writer(lambda item: time.sleep(0.01), depth=2)
        for k, item in enumerate(lanes.background(endless(), depth=2)):
            put(item)
            if k == 5:
                raise KeyboardInterrupt
    assert _pipeline_threads() == []


# ---- the overlapped loop through the Predictor ------------------------------------------------------


def test_overlapped_labels_equal_the_sequential_ones(model):
    image = tissue_image(np.random.default_rng(3), 230, 190)
    with Predictor(model, device="cpu", batch_size=3, stride=STRIDE, tissue_threshold=0) as predictor:
        rows, _ = predictor.plan_windows(230, 190, None)
        results = []
        for overlap in (False, True):
            labels, firsts = np.zeros((230, 190), np.uint8), []

            def sink(chunks, labels=labels, firsts=firsts):
                for first, block in chunks:
                    firsts.append(first)
                    labels[first : first + block.shape[0]] = block

            from cervrt.runtime.pipeline import ArraySource

            run = predictor.label_rows(ArraySource(image, *predictor.gather_args()), rows, 230, 190, sink,
                                       StageTimer(), None, overlap=overlap)
            results.append((run, labels, firsts))
    (run0, labels0, firsts0), (run1, labels1, firsts1) = results
    assert run0 == run1 == sum(xs.size for _, xs in rows)
    np.testing.assert_array_equal(labels1, labels0)
    assert firsts1 == firsts0 == sorted(firsts0)  # the sink gets the rows in order
    assert _pipeline_threads() == []


def test_an_engine_error_mid_run_stops_every_thread(model):
    image = tissue_image(np.random.default_rng(4), 200, 200)
    with Predictor(model, device="cpu", batch_size=2, stride=STRIDE, tissue_threshold=0) as predictor:
        calls = []
        infer = predictor.infer

        def failing(batch):
            calls.append(len(batch))
            if len(calls) == 5:
                raise CervrtError("the engine failed on batch 5")
            return infer(batch)

        predictor.infer = failing
        with pytest.raises(CervrtError, match="batch 5"):
            predictor.predict(image)
    assert len(calls) <= 5 + 2 * 2 + 2  # the loader stops a few batches ahead at most
    assert _pipeline_threads() == []


def test_cancel_from_progress_stops_the_overlapped_run(model):
    image = tissue_image(np.random.default_rng(5), 200, 200)

    def progress(done, total):
        if done >= 6:
            raise Cancelled("cancelled after 6 patches")

    with Predictor(model, device="cpu", batch_size=2, stride=STRIDE, tissue_threshold=0,
                   progress=progress) as predictor, pytest.raises(Cancelled):
        predictor.predict(image)
    assert _pipeline_threads() == []


# ---- the band reader -----------------------------------------------------------------------------


def test_prefetched_bands_equal_direct_ones_and_rows_without_windows_are_not_read():
    image = tissue_image(np.random.default_rng(7), 400, 150)
    rows, _ = plan_rows(400, 150, 64, 16, None, 0)
    rows = [(y, xs) for y, xs in rows if not 96 <= y <= 256]  # window rows 112..256 have no tissue
    slide = RecordingSlide(image)
    with SlideRows(slide, rows, reference.gather, 64, (0.5,) * 3, (0.25,) * 3, prefetch=True, readers=2) as source:
        for y, xs in rows:
            band, x0 = source.rows(y)
            np.testing.assert_array_equal(band, image[y : y + 64, x0 : int(xs[-1]) + 64])
    covered = set()
    for y, _ in rows:
        covered.update(range(y, y + 64))
    assert source.rows_read == len(covered)  # each row with a window once, the gap 160..255 never
    read = {r for y, _, h, _ in slide.reads for r in range(y, y + h)}
    assert read == covered
    assert _pipeline_threads() == []


# ---- tiles ---------------------------------------------------------------------------------------


def test_a_slide_run_decodes_each_tile_once_and_overlap_changes_no_pixel(model, tmp_path, monkeypatch):
    image = slide_image(np.random.default_rng(9), 320, 300, (40, 30, 240, 250))
    path = _pyramid_tiff(tmp_path / "slide.tif", image, compression="zlib")
    decoded = []
    decode = TiledLevel.decode_tile

    def spy(self, r, c):
        decoded.append((self.shape, r, c))
        return decode(self, r, c)

    monkeypatch.setattr(TiledLevel, "decode_tile", spy)
    masks = []
    with Predictor(model, device="cpu", batch_size=4, stride=STRIDE) as predictor:
        for overlap in (True, False):
            decoded.clear()
            result = predictor.predict_slide(path, tmp_path / f"out-{overlap}", fmt="png", overlap=overlap)
            masks.append(cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED))
            level0 = [(r, c) for shape, r, c in decoded if shape[0] == 320]
            tiles = {(r, c) for r in range(5) for c in range(5)}
            thumbnail, run = level0[: len(tiles)], level0[len(tiles) :]  # a small slide's thumbnail is level 0
            assert set(thumbnail) == tiles
            assert len(run) == len(set(run)) > 0  # then the windows decode every tile they need once
    np.testing.assert_array_equal(masks[0], masks[1])


def test_a_corrupt_tile_mid_slide_stops_it_with_its_position_and_leaves_nothing(model, tmp_path, monkeypatch):
    from cervrt.runtime import slide_run

    monkeypatch.setattr(slide_run, "THUMBNAIL_SIDE", 128)  # the thumbnail comes from level 1, not the bad tile's
    image = tissue_image(np.random.default_rng(10), 384, 320)
    path = _pyramid_tiff(tmp_path / "slide.tif", image)
    _corrupt_tile(path, 3, 2)  # level 0 rows 192..255, columns 128..191
    out, done = tmp_path / "out", []
    with Predictor(model, device="cpu", batch_size=4, stride=STRIDE, tissue_threshold=0) as predictor:
        with pytest.raises(CervrtError) as error:
            predictor.predict_slide(path, out, fmt="tiff", geojson=True, progress=lambda d, t: done.append(d))
    assert max(done) > 0  # windows above the bad tile had run: the error came from the reader mid-slide
    message = str(error.value)
    assert "\n" not in message
    assert "level 0 tile row 3, column 2" in message and "pixels y 192-255, x 128-191" in message
    assert list(out.iterdir()) == []  # no mask, overlay, report or temporary file
    assert _pipeline_threads() == []


def test_the_tile_cache_stays_within_three_tile_rows(tmp_path):
    image = tissue_image(np.random.default_rng(11), 512, 384)
    path = _pyramid_tiff(tmp_path / "slide.tif", image, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        level = TiledLevel(tif.pages[0], path, 0)
        try:
            assert level.cache_bytes == 3 * 6 * 64 * 64 * 3  # three rows of six 64 px RGB tiles
            for y in range(0, 512, 16):  # bands moving down, as the sliding window reads them
                np.testing.assert_array_equal(level[y : y + 80, 0:384], image[y : y + 80])
                assert level.cached_bytes <= level.cache_bytes
            assert level.decoded == 8 * 6  # each tile once
        finally:
            level.close()
