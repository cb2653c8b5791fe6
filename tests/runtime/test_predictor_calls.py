"""The Predictor's per-call API: regions of a slide, images at another mpp, progress and cancel per call,
streamed rows, ONNX Runtime threads, typed errors (channel-first arrays named), the first-batch output check."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest

from cervrt._cv import cv2
from cervrt.artifact import attach_metadata
from cervrt.cancel import CancelToken
from cervrt.errors import Cancelled, InputError, ModelError
from cervrt.runtime.predictor import Predictor
from tests.support.foreign_models import foreign_model
from tests.support.tiny_onnx import MPP, save_tiny_model, slide_image, tiny_metadata, tissue_image

STRIDE = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def predictor(model):
    with Predictor(model, device="cpu", stride=STRIDE, tissue_threshold=0) as p:
        yield p


@pytest.fixture(scope="module")
def slide_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.png"
    cv2.imwrite(str(path), slide_image(np.random.default_rng(3), 300, 340, (50, 40, 200, 260))[:, :, ::-1])
    return path


def _mask(predictor, slide, tmp_path):
    result = predictor.predict_slide(slide, tmp_path / "out")
    return cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED)


# ---- regions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [(0, 0, 64, 64), (70, 90, 120, 80), (250, 230, 90, 70), (0, 0, 340, 300)])
def test_a_region_equals_the_whole_slide_run_on_its_pixels(predictor, slide_png, tmp_path, box):
    x, y, w, h = box
    mask = _mask(predictor, slide_png, tmp_path)
    labels = predictor.predict_region(slide_png, x, y, w, h)
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, mask[y : y + h, x : x + w])


def test_region_probabilities_agree_with_the_labels(predictor, slide_png):
    probs = predictor.predict_region_proba(slide_png, 70, 90, 120, 80)
    assert probs.shape == (predictor.num_classes, 80, 120) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(axis=0), predictor.predict_region(slide_png, 70, 90, 120, 80))


def test_a_region_of_a_slide_at_another_mpp_is_labelled_on_the_request_grid(model, slide_png):
    with Predictor(model, device="cpu", stride=STRIDE, tissue_threshold=0, mpp=MPP / 2) as p:
        labels = p.predict_region(slide_png, 100, 80, 120, 60)  # level-0 pixels: 2 per processing pixel
        assert labels.shape == (60, 120)
        by_mpp = p.predict_region(slide_png, 50, 40, 60, 30, mpp=MPP)  # the same box in MPP-micron pixels
        assert by_mpp.shape == (30, 60)
        np.testing.assert_array_equal(by_mpp, labels[::2, ::2])


@pytest.mark.parametrize(("args", "message"), [
    ((-1, 0, 10, 10), "not inside the slide"),
    ((0, 0, 0, 10), "positive width and height"),
    ((300, 0, 100, 10), "not inside the slide, which is 340x300"),
])
def test_bad_regions_are_input_errors(predictor, slide_png, args, message):
    with pytest.raises(InputError, match=message):
        predictor.predict_region(slide_png, *args)


# ---- images at another resolution -----------------------------------------------------------------------


def test_predict_at_another_mpp_resamples_there_and_back(predictor):
    image = tissue_image(np.random.default_rng(0), 120, 160)
    assert predictor.predict(image, mpp=MPP).shape == (120, 160)
    half = predictor.predict(image, mpp=MPP / 2)  # twice finer than the model: run on a 60x80 copy
    small = cv2.resize(image, (80, 60), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(half, cv2.resize(predictor.predict(small), (160, 120),
                                                   interpolation=cv2.INTER_NEAREST))
    proba = predictor.predict_proba(image, mpp=MPP / 2)
    assert proba.shape == (predictor.num_classes, 120, 160)
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-4)


# ---- per-call hooks -----------------------------------------------------------------------------------


def test_progress_is_per_call(predictor):
    image = tissue_image(np.random.default_rng(1), 100, 100)
    calls = []
    predictor.predict(image, progress=lambda done, total: calls.append((done, total)))
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1] > 0


@pytest.mark.parametrize("make", [threading.Event, CancelToken])
def test_a_cancel_before_the_start(predictor, make):
    token = make()
    token.set() if isinstance(token, threading.Event) else token.cancel()
    with pytest.raises(Cancelled):
        predictor.predict(np.zeros((64, 64, 3), np.uint8), cancel=token)


def test_a_cancel_mid_slide_leaves_nothing_and_the_predictor_reusable(predictor, slide_png, tmp_path):
    token = CancelToken()

    def progress(done, total):
        if done >= 4:
            token.cancel()

    with pytest.raises(Cancelled):
        predictor.predict_slide(slide_png, tmp_path / "cancelled", progress=progress, cancel=token)
    assert not list((tmp_path / "cancelled").iterdir())
    for call in (lambda t: predictor.predict(tissue_image(np.random.default_rng(2), 90, 90), cancel=t),
                 lambda t: predictor.predict_region(slide_png, 0, 0, 80, 80, cancel=t)):
        with pytest.raises(Cancelled):
            call(token)
        call(CancelToken())  # a fresh token: the Predictor still works
    assert predictor.predict_slide(slide_png, tmp_path / "again").paths["mask"].exists()


def test_on_rows_streams_every_row_once_in_order(predictor, slide_png, tmp_path):
    image = tissue_image(np.random.default_rng(4), 150, 90)
    rows = []
    labels = predictor.predict(image, on_rows=lambda y0, block: rows.append((y0, block.copy())))
    assert [y0 for y0, _ in rows] == sorted(y0 for y0, _ in rows) and rows[0][0] == 0
    np.testing.assert_array_equal(np.concatenate([block for _, block in rows]), labels)
    streamed = []
    result = predictor.predict_slide(slide_png, tmp_path / "rows", on_rows=lambda y0, b: streamed.append(b.copy()))
    np.testing.assert_array_equal(np.concatenate(streamed),
                                  cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED))


# ---- resources, engines, errors ------------------------------------------------------------------------


def test_threads_and_a_ready_engine(model):
    with Predictor(model, device="cpu", threads=1, tissue_threshold=0) as one:
        assert one.engine.threads == 1
        image = tissue_image(np.random.default_rng(5), 70, 70)
        with Predictor(engine=one.engine, tissue_threshold=0) as shared:
            np.testing.assert_array_equal(shared.predict(image), one.predict(image))
        one.predict(image)  # the engine passed in was left open


def test_resource_options_are_checked(model):
    with pytest.raises(InputError, match="threads must be a positive integer"):
        Predictor(model, device="cpu", threads=0)
    with pytest.raises(InputError, match="gpu_mem_limit must be a positive number of bytes"):
        Predictor(model, device="cpu", gpu_mem_limit=-5)


def test_a_channel_first_array_is_named_as_such(predictor):
    message = r"\(3, 300, 300\): that is channel-first \(C, H, W\); pass image\.transpose\(1, 2, 0\)"
    with pytest.raises(InputError, match=message):
        predictor.predict(np.zeros((3, 300, 300), np.uint8))


def test_the_first_batch_refuses_logits_with_the_reason(tmp_path):
    graph = foreign_model()
    attach_metadata(graph, {**tiny_metadata(), "input": "pixel_values", "outputs": ["logits"]})
    onnx.save(graph, tmp_path / "logits.onnx")
    with Predictor(tmp_path / "logits.onnx", device="cpu", tissue_threshold=0) as p:
        with pytest.raises(ModelError, match="look like logits"):
            p.predict(tissue_image(np.random.default_rng(6), 64, 64))
