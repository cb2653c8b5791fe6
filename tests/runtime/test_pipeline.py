"""The pipeline's one loop with hand-made stages (each a separate object), the engine stage's lock and
gate, the batchings, and the Predictor built from a PredictorConfig."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.runtime.config import Blend, PredictorConfig
from cervrt.runtime.fusion import get_backend
from cervrt.runtime.pipeline import (
    ArraySource,
    Batch,
    EngineStage,
    HostLabeler,
    StageTimer,
    host_batches,
    plan_rows,
    row_batches,
    run_windows,
)
from cervrt.runtime.predictor import Predictor
from cervrt.runtime.stitcher import BandStitcher, ProbabilityStitcher
from tests.support.tiny_onnx import save_tiny_model, tissue_image


class _Loader:
    def __init__(self):
        self.loaded = []

    def load(self, batch, timer):
        self.loaded.append(len(batch))
        return batch


class _Stitcher:
    """Records what it was given; hands back one chunk per batch and one at the end."""

    def __init__(self):
        self.added, self.finished = [], False

    def add(self, ys, xs, probs, gate):
        self.added.append((ys.tolist(), xs.tolist(), probs, gate))
        return [(int(ys[0]), np.zeros((1, 1), np.uint8))]

    def finish(self):
        self.finished = True
        return [(-1, np.zeros((1, 1), np.uint8))]


def test_run_windows_drives_separate_stages_in_order():
    rows = [(0, np.array([0, 10, 20])), (10, np.array([0, 10]))]
    loader, stitcher, sunk, calls = _Loader(), _Stitcher(), [], []
    timer = StageTimer()
    run = run_windows(host_batches(rows, 2), loader, lambda batch: (f"probs{len(batch)}", None), stitcher,
                      lambda chunks: sunk.extend(first for first, _ in chunks), timer,
                      lambda done, total: calls.append((done, total)), total=5)
    assert run == 5 and loader.loaded == [2, 2, 1]
    assert [(ys, xs) for ys, xs, _, _ in stitcher.added] == [([0, 0], [0, 10]), ([0, 10], [20, 0]), ([10], [10])]
    assert [probs for _, _, probs, _ in stitcher.added] == ["probs2", "probs2", "probs1"]
    assert stitcher.finished and sunk == [0, 0, 10, -1]
    assert calls == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert set(timer.seconds) == {"read", "tissue", "preprocess", "engine", "fuse", "write"}


def test_device_batches_never_span_rows_and_host_batches_do():
    rows = [(0, np.array([0, 16, 32])), (16, np.array([0, 16]))]
    assert [len(b) for b in host_batches(rows, 4)] == [4, 1]
    assert [(y, xs.tolist()) for y, xs in row_batches(rows, 4)] == [(0, [0, 16, 32]), (16, [0, 16])]
    batch = Batch.of([(0, np.array([32])), (16, np.array([0, 16]))])
    assert batch.ys.tolist() == [0, 16, 16] and batch.xs.tolist() == [32, 0, 16] and len(batch) == 3


class _Engine:
    class_names = ("bg", "a", "b")

    def __init__(self, thread_safe, gate_epsilon):
        self.thread_safe, self.gate_epsilon = thread_safe, gate_epsilon

    def run(self, batch):
        n = batch.shape[0]
        return SimpleNamespace(probs=np.full((n, 3, 2, 2), 1 / 3, np.float32),
                               class_probs=np.tile(np.array([[0.05, 0.9]], np.float32), (n, 1)))


def test_engine_stage_gates_only_models_that_ask_for_it():
    probs, gate = EngineStage(_Engine(True, None)).infer(np.zeros((2, 3, 2, 2), np.float32))
    assert probs.shape == (2, 3, 2, 2) and gate is None
    _, gate = EngineStage(_Engine(False, 0.1)).infer(np.zeros((2, 3, 2, 2), np.float32))
    assert gate.tolist() == [[1.0, 0.0, 1.0]] * 2
    assert EngineStage(_Engine(False, 0.1)).gated and not EngineStage(_Engine(False, None)).gated


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_host_labeler_with_the_band_or_the_probability_stitcher(model):
    image = tissue_image(np.random.default_rng(0), 100, 90)
    with Predictor(model, device="cpu", stride=32, tissue_threshold=0, fusion="numpy") as predictor:
        expected, proba = predictor.predict(image), predictor.predict_proba(image)
        backend = get_backend("numpy")
        labeler = HostLabeler(predictor.infer, backend, 64, 5, 32, Blend.GAUSSIAN, 3)
        rows, _ = plan_rows(100, 90, 64, 32, None, 0)
        source = ArraySource(image, backend.gather, 64, predictor.engine.mean, predictor.engine.std)
        labels = np.zeros((100, 90), np.uint8)

        def sink(chunks):
            for first, block in chunks:
                labels[first : first + block.shape[0]] = block

        assert isinstance(labeler.stitcher(100, 90), BandStitcher)
        assert labeler.label(source, rows, 100, 90, sink, StageTimer(), None) == sum(xs.size for _, xs in rows)
        np.testing.assert_array_equal(labels, expected)
        probability = ProbabilityStitcher(100, 90, 5, 64, Blend.GAUSSIAN, backend=backend)
        labeler.label(source, rows, 100, 90, lambda chunks: None, StageTimer(), None, stitcher=probability)
        np.testing.assert_allclose(probability.probabilities(), proba, atol=1e-6)


def test_predictor_from_a_config_with_keyword_overrides(model):
    config = PredictorConfig(device="cpu", batch_size=3, stride=32, blend="mean", tissue_threshold=0)
    with Predictor(model, config, stride=16) as predictor:
        assert predictor.config == config.replace(stride=16) and predictor.settings is predictor.config
        assert predictor.config.blend is Blend.MEAN and predictor.config.batch_size == 3
    with Predictor(model, device="cpu") as predictor:
        assert predictor.config.stride == 16  # a quarter of the tiny model's 64 px patch
    assert config.stride == 32  # the caller's config is left alone
    with pytest.raises(CervrtError, match="unknown Predictor setting 'strid'"):
        Predictor(model, config, strid=16)
    with pytest.raises(CervrtError, match="config must be a PredictorConfig"):
        Predictor(model, {"stride": 16})
    with pytest.raises(CervrtError, match="batch_size"):
        Predictor(model, device="cpu", batch_size=0)


def test_predictors_over_one_open_engine_share_it_and_leave_it_open(model):
    from cervrt.engines import open_engine

    image = tissue_image(np.random.default_rng(1), 80, 96)
    with Predictor(model, device="cpu", stride=32, tissue_threshold=0) as base:
        expected = base.predict(image)
        with base.with_settings(blend="mean") as derived:
            assert derived.engine is base.engine and derived.config.blend is Blend.MEAN
            assert derived.engine_stage is base.engine_stage  # one lock for the engine, whichever Predictor runs it
            derived.predict(image)
        np.testing.assert_array_equal(base.predict(image), expected)  # the engine is still open
    engine = open_engine(model, device="cpu")
    with Predictor(config=PredictorConfig(stride=32, tissue_threshold=0), engine=engine) as borrowed:
        np.testing.assert_array_equal(borrowed.predict(image), expected)
    assert engine.run(np.zeros((1, 3, 64, 64), np.float32)).probs.shape == (1, 5, 64, 64)
    engine.close()
    with pytest.raises(CervrtError, match="either a model path or an open engine"):
        Predictor()
