"""The Predictor against a numpy oracle (every window run by hand, fused by cervrt.runtime.reference),
tissue skipping, the classification gate, threads, bad input and slides streamed band by band."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from cervrt._cv import cv2
from cervrt.engines import open_engine
from cervrt.errors import CervrtError
from cervrt.runtime import reference
from cervrt.runtime.outputs import MaskFormat
from cervrt.runtime.pipeline import StageTimer, batches, gate_factors, plan_rows
from cervrt.runtime.predictor import FusionPath, Predictor, choose_fusion
from cervrt.runtime.slide_run import SlideRows, mask_format
from cervrt.runtime.tiling import blend_weights, window_starts
from tests.support.recording_slide import RecordingSlide
from tests.support.tiny_onnx import MPP, PATCH, save_tiny_model, slide_image, tissue_image

STRIDE = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def gated_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("gated") / "gated.onnx", with_classifier=True, gate_epsilon=0.6)


def _oracle(model_path, image, stride=STRIDE, blend="gaussian", gate=True):
    """Fused probabilities (C, H, W) and wsum: every window cropped by hand (glass-padded), normalised
    in float64, run alone, and fused with the numpy reference."""
    with open_engine(model_path, device="cpu") as engine:
        p, height, width = engine.patch_size, *image.shape[:2]
        padded = np.full((max(height, p), max(width, p), 3), 255, dtype=np.uint8)
        padded[:height, :width] = image
        mean, std = np.array(engine.mean), np.array(engine.std)
        acc = np.zeros((engine.num_classes, height, width), np.float32)
        wsum = np.zeros((height, width), np.float32)
        weights = blend_weights(blend, p)
        for y in window_starts(height, p, stride):
            for x in window_starts(width, p, stride):
                crop = (padded[y : y + p, x : x + p] / 255.0 - mean) / std
                out = engine.run(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32))
                factors = None
                if gate and engine.gate_epsilon is not None:
                    factors = np.ones((1, engine.num_classes), np.float32)
                    factors[0, 1:] = out.class_probs[0] > engine.gate_epsilon
                reference.accumulate(acc, wsum, out.probs, np.array([y]), np.array([x]), weights, factors)
    return acc, wsum


def _assert_labels(labels, acc, wsum, tolerance=1e-4):
    """Labels equal the oracle's argmax except where its two best fused probabilities tie within tolerance."""
    expected = np.empty(labels.shape, np.uint8)
    reference.argmax(acc, wsum, expected, labels.shape[0])
    fused = np.sort(acc / np.maximum(wsum, 1e-12), axis=0)
    differ = labels != expected
    assert np.all(fused[-1][differ] - fused[-2][differ] < tolerance), f"{differ.sum()} labels differ beyond ties"
    assert differ.mean() < 1e-3


@pytest.mark.parametrize("fusion", ["c", "numpy"])
@pytest.mark.parametrize("blend", ["gaussian", "mean"])
def test_predict_equals_the_numpy_oracle(model, fusion, blend):
    image = tissue_image(np.random.default_rng(1), 150, 230)
    with Predictor(model, device="cpu", batch_size=5, stride=STRIDE, blend=blend, tissue_threshold=0,
                   fusion=fusion) as predictor:
        labels = predictor.predict(image)
        assert predictor.fusion_backend == fusion
    assert labels.shape == (150, 230) and labels.dtype == np.uint8
    assert len(np.unique(labels)) >= 3
    _assert_labels(labels, *_oracle(model, image, blend=blend))


def test_mean_and_gaussian_blends_differ(model):
    image = tissue_image(np.random.default_rng(2), 128, 128)
    results = {}
    for blend in ("mean", "gaussian"):
        with Predictor(model, device="cpu", stride=STRIDE, blend=blend, tissue_threshold=0) as predictor:
            results[blend] = predictor.predict_proba(image)
    assert not np.allclose(results["mean"], results["gaussian"], atol=1e-4)


def test_predict_proba_is_normalised_and_agrees_with_predict(model):
    image = tissue_image(np.random.default_rng(3), 100, 140)
    with Predictor(model, device="cpu", stride=STRIDE, tissue_threshold=0) as predictor:
        proba = predictor.predict_proba(image)
        labels = predictor.predict(image)
    assert proba.shape == (5, 100, 140) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-4)
    acc, wsum = _oracle(model, image)
    np.testing.assert_allclose(proba, acc / wsum, atol=1e-4)
    _assert_labels(labels, acc, wsum)


def test_image_smaller_than_a_patch_is_padded_with_glass(model):
    image = tissue_image(np.random.default_rng(4), 40, 50)
    with Predictor(model, device="cpu", tissue_threshold=0) as predictor:
        labels = predictor.predict(image)
    assert labels.shape == (40, 50)
    _assert_labels(labels, *_oracle(model, image, stride=PATCH // 4))


def test_classification_gate_follows_the_metadata(gated_model):
    image = tissue_image(np.random.default_rng(0), 128, 128)
    with Predictor(gated_model, device="cpu", batch_size=1, stride=32, tissue_threshold=0) as predictor:
        labels = predictor.predict(image)
    acc, wsum = _oracle(gated_model, image, stride=32)
    _assert_labels(labels, acc, wsum)
    ungated = np.empty_like(labels)
    reference.argmax(*_oracle(gated_model, image, stride=32, gate=False), ungated, 128)
    assert (ungated != labels).mean() > 0.01  # the gate changed the answer somewhere


def test_gate_factors():
    factors = gate_factors(np.array([[0.05, 0.1, 0.2, 0.9]], np.float32), 0.1, 5)
    assert factors.dtype == np.float32
    assert factors.tolist() == [[1.0, 0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(CervrtError, match=r"expected \(n, 4\)"):
        gate_factors(np.zeros((2, 3), np.float32), 0.1, 5)


def test_tissue_filter_skips_glass_windows(model):
    image = slide_image(np.random.default_rng(5), 256, 320, box=(96, 128, 96, 96))
    with Predictor(model, device="cpu", stride=32, tissue_threshold=0.5) as predictor:
        filtered = predictor.predict(image)
    with Predictor(model, device="cpu", stride=32, tissue_threshold=0) as predictor:
        everything = predictor.predict(image)
    assert filtered[:32].max() == 0 and filtered[:, :64].max() == 0  # far from the tissue: never run
    assert everything[:32].max() > 0  # the untrained model labels glass too when it runs there
    assert filtered[96:192, 128:224].max() > 0


def test_plan_rows_and_batches():
    rows, skipped = plan_rows(100, 130, 64, 32, lambda ys, xs, p: (xs >= 64).astype(float), 0.5)
    assert skipped == 3 * 2 and [y for y, _ in rows] == [0, 32, 36]
    assert all(xs.tolist() == [64, 66] for _, xs in rows)
    everything, none_skipped = plan_rows(100, 130, 64, 32, None, 0.5)
    assert none_skipped == 0 and sum(xs.size for _, xs in everything) == 3 * 4
    batches_ = list(batches(everything, 5))
    assert [sum(xs.size for _, xs in b) for b in batches_] == [5, 5, 2]
    flat = [(y, x) for b in batches_ for y, xs in b for x in xs.tolist()]
    assert flat == [(y, x) for y, xs in everything for x in xs.tolist()]


def test_progress_is_reported_per_batch(model):
    calls = []
    image = tissue_image(np.random.default_rng(6), 96, 96)
    with Predictor(model, device="cpu", batch_size=4, stride=16, tissue_threshold=0,
                   progress=lambda done, total: calls.append((done, total))) as predictor:
        predictor.predict(image)
    total = len(window_starts(96, 64, 16)) ** 2
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == 1 + -(-total // 4)


@pytest.mark.parametrize("thread_safe", [False, True])
def test_threads_sharing_a_predictor_get_identical_results(model, monkeypatch, thread_safe):
    from cervrt.engines.onnxruntime import OnnxRuntimeEngine

    monkeypatch.setattr(OnnxRuntimeEngine, "thread_safe", thread_safe)  # False: the Predictor must lock
    images = [tissue_image(np.random.default_rng(10 + i), 120, 150) for i in range(2)]
    with Predictor(model, device="cpu", batch_size=3, stride=STRIDE, tissue_threshold=0) as predictor:
        serial = [predictor.predict(im) for im in images]
        counter, inside, most = threading.Lock(), [0], [0]
        run = predictor.engine.run

        def watched(batch):
            with counter:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.003)  # widen the window in which another thread could enter
            try:
                return run(batch)
            finally:
                with counter:
                    inside[0] -= 1

        predictor.engine.run = watched
        results: dict[int, np.ndarray] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, predictor.predict(images[i])))
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert most[0] == (2 if thread_safe else 1)  # concurrent engine calls only when the engine allows them
    for i in range(2):
        np.testing.assert_array_equal(results[i], serial[i])


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((8, 8, 3), np.float32), "got dtype float32"),
        (np.zeros((8, 8), np.uint8), "got shape (8, 8)"),
        (np.zeros((8, 8, 4), np.uint8), "4 channels"),
        (np.zeros((0, 8, 3), np.uint8), "at least one pixel"),
        ([[1, 2, 3]], "got list"),
    ],
)
def test_bad_images_are_refused_with_what_is_expected(model, image, fragment):
    with Predictor(model, device="cpu") as predictor:
        with pytest.raises(CervrtError, match=r"\(H, W, 3\) uint8 RGB") as info:
            predictor.predict(image)
        assert fragment in str(info.value)


def test_bad_settings_and_closed_predictor(model):
    with pytest.raises(CervrtError, match="stride must be between 1 and the patch size 64"):
        Predictor(model, device="cpu", stride=65)
    with pytest.raises(CervrtError, match="unknown fusion 'gpu'"):
        Predictor(model, device="cpu", fusion="gpu")
    with pytest.raises(CervrtError, match="fusion 'cuda' needs an engine with device IO"):
        Predictor(model, device="cpu", fusion="cuda")
    with pytest.raises(CervrtError, match="unknown blend"):
        Predictor(model, device="cpu", blend="max")
    predictor = Predictor(model, device="cpu")
    predictor.close()
    with pytest.raises(CervrtError, match="closed"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8))


def _engine(kind, device):
    """An engine as choose_fusion sees it: only TensorRT keeps its outputs on the device."""
    return SimpleNamespace(kind=kind, device=device, supports_device_io=kind == "tensorrt")


def test_choose_fusion_picks_the_gpu_only_for_tensorrt_on_cuda():
    assert choose_fusion("auto", _engine("tensorrt", "cuda:0")) is FusionPath.CUDA
    assert choose_fusion("cuda", _engine("tensorrt", "cuda:1")) is FusionPath.CUDA
    assert choose_fusion("c", _engine("tensorrt", "cuda:0")) is FusionPath.HOST
    assert choose_fusion("auto", _engine("onnxruntime", "cuda:0")) is FusionPath.HOST
    assert choose_fusion("auto", _engine("onnxruntime", "cpu")) is FusionPath.HOST
    assert choose_fusion("numpy", _engine("torch", "cpu")) is FusionPath.HOST
    with pytest.raises(CervrtError, match="needs an engine with device IO on a CUDA device, got torch on cuda:0"):
        choose_fusion("cuda", _engine("torch", "cuda:0"))


def test_the_gpu_path_follows_the_capability_not_the_name():
    assert choose_fusion("auto", SimpleNamespace(kind="other", device="cuda:0", supports_device_io=True)) \
        is FusionPath.CUDA
    assert choose_fusion("auto", SimpleNamespace(kind="tensorrt", device="cuda:0", supports_device_io=False)) \
        is FusionPath.HOST


# ---- slides -----------------------------------------------------------------------------------------


def test_slide_rows_read_each_row_once_in_bands():
    image = tissue_image(np.random.default_rng(7), 200, 150)
    rows, _ = plan_rows(200, 150, 64, 16, None, 0)
    slide = RecordingSlide(image)
    source = SlideRows(slide, rows, reference.gather, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    got = np.empty((len(rows[0][1]), 3, 64, 64), np.float32)
    expected = np.empty_like(got)
    for y, xs in rows:
        source.gather([(y, xs)], got[: xs.size], StageTimer())
        reference.gather(image, np.full(xs.size, y, np.int64), xs, 64, (0.5,) * 3, (0.25,) * 3, expected[: xs.size])
        np.testing.assert_array_equal(got[: xs.size], expected[: xs.size])
    assert all(h <= 64 for _, _, h, _ in slide.reads)
    assert source.rows_read == 200  # every row once


def _write_tiled_tiff(path, image, tile=64):
    import tifffile

    tifffile.imwrite(path, image, tile=(tile, tile), photometric="rgb", resolution=(1e4 / MPP, 1e4 / MPP),
                     resolutionunit="CENTIMETER")


def test_tiled_tiff_streamed_band_by_band_equals_predict_in_memory(model, tmp_path):
    image = tissue_image(np.random.default_rng(8), 300, 260)
    _write_tiled_tiff(tmp_path / "slide.tiff", image)
    with Predictor(model, device="cpu", batch_size=7, stride=STRIDE, tissue_threshold=0, mpp=MPP) as predictor:
        result = predictor.predict_slide(tmp_path / "slide.tiff", tmp_path / "out")
        in_memory = predictor.predict(image)
    mask = cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, in_memory)
    report = json.loads(result.paths["json"].read_text())
    assert report["width"] == 260 and report["height"] == 300
    assert sum(c["pixels"] for c in report["classes"].values()) == 300 * 260
    assert report["patches"]["skipped"] == 0 and report["patches"]["run"] == report["patches"]["total"]
    assert report["mpp"] == pytest.approx(MPP)
    normal = report["classes"]["normal"]
    assert normal["mm2"] == pytest.approx(normal["pixels"] * MPP * MPP * 1e-6)


def test_slide_outputs_report_and_tissue_skipping(model, tmp_path):
    image = slide_image(np.random.default_rng(9), 384, 448, box=(128, 160, 128, 128))
    cv2.imwrite(str(tmp_path / "glass.png"), image[:, :, ::-1])
    with Predictor(model, device="cpu", stride=32, tissue_threshold=0.5) as predictor:
        result = predictor.predict_slide(tmp_path / "glass.png", tmp_path / "out", geojson=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "glass.geojson", "glass.json", "glass.mask.png", "glass.overlay.jpg"]
    report = result.report
    assert report == json.loads(result.paths["json"].read_text())
    assert 0 < report["patches"]["run"] < report["patches"]["total"]
    assert report["patches"]["skipped"] == report["patches"]["total"] - report["patches"]["run"]
    assert report["no_tissue"] is False and report["worst_grade"] in report["model"]["classes"][1:]
    shares = [c["tissue_share"] for name, c in report["classes"].items() if name != "background"]
    assert sum(shares) == pytest.approx(1.0)
    assert report["mpp"] is None and report["classes"]["background"]["mm2"] is None  # a PNG without --mpp
    assert set(report["seconds"]) == {"read", "tissue", "preprocess", "engine", "fuse", "write", "total"}
    assert report["engine"] == "onnxruntime" and report["device"] == "cpu" and report["precision"] == "fp32"
    assert report["macs_per_patch"] == 1_000_000 and report["patches_per_s"] > 0
    mask = cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask[:64].max() == 0 and mask[160:224, 192:256].max() > 0


def test_a_slide_without_tissue_gives_an_all_background_mask(model, tmp_path):
    glass = np.full((200, 240, 3), 250, np.uint8)
    cv2.imwrite(str(tmp_path / "blank.png"), glass)
    with Predictor(model, device="cpu") as predictor:
        result = predictor.predict_slide(tmp_path / "blank.png", tmp_path / "out")
    assert result.no_tissue and result.report["patches"]["run"] == 0 and result.report["worst_grade"] is None
    assert cv2.imread(str(result.paths["mask"]), cv2.IMREAD_UNCHANGED).max() == 0


def test_a_failure_mid_slide_leaves_no_output(model, tmp_path, monkeypatch):
    image = tissue_image(np.random.default_rng(11), 256, 256)
    cv2.imwrite(str(tmp_path / "slide.png"), image)
    with Predictor(model, device="cpu", batch_size=4, stride=16, tissue_threshold=0) as predictor:
        calls = [0]
        infer = predictor.infer

        def failing(batch):
            calls[0] += 1
            if calls[0] == 20:
                raise KeyboardInterrupt
            return infer(batch)

        monkeypatch.setattr(predictor, "infer", failing)
        with pytest.raises(KeyboardInterrupt):
            predictor.predict_slide(tmp_path / "slide.png", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_mask_format_switches_to_tiff_for_huge_masks():
    assert mask_format("png", 1000, 1000) is MaskFormat.PNG
    assert mask_format("png", 1 << 15, (1 << 15) + 1) is MaskFormat.TIFF
    assert mask_format("tiff", 10, 10) is MaskFormat.TIFF
    with pytest.raises(CervrtError, match="choose one of png, tiff"):
        mask_format("jpeg", 10, 10)
