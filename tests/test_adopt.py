"""``cervrt adopt``: a foreign ONNX model gets cervrt metadata, a softmax or a class map, and is refused
in one line (nothing written) when its input or outputs are not what cervrt can run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from cervrt.adopt import AdoptConfig, adopt, parse_class_map, probe_batch
from cervrt.artifact import ArtifactMetadata, read_metadata
from cervrt.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from cervrt.errors import InputError, ModelError
from cervrt.probs_check import check_probabilities
from tests.support.foreign_models import save_foreign_model

GRADES = "background,normal,CIN 1,CIN 2,CIN 3"


def _config(tmp_path, source, **changes):
    options = {"source": source, "output": tmp_path / "adopted.onnx", "classes": GRADES, "mean": IMAGENET_MEAN,
               "std": IMAGENET_STD, "mpp": 0.5, "patch": 64, "output_kind": "logits"}
    return AdoptConfig(**{**options, **changes})


def _run(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def logits_model(tmp_path):
    return save_foreign_model(tmp_path / "foreign.onnx")


def test_logits_get_a_softmax_and_versioned_metadata(tmp_path, logits_model):
    result = adopt(_config(tmp_path, logits_model))
    metadata = read_metadata(result.path)
    typed = ArtifactMetadata.from_dict(metadata)
    assert (typed.format, typed.format_version, typed.arch) == ("cervrt.onnx", 1, "adopted")
    assert typed.class_names == CLASS_NAMES and typed.palette == PALETTE and typed.patch_size == 64
    assert typed.mean == IMAGENET_MEAN and typed.std == IMAGENET_STD and typed.mpp == 0.5
    assert typed.input == "pixel_values" and typed.outputs == ("probs",) and typed.io_dtype == "float32"
    assert typed.params == 8 * 3 * 3 * 3 + 5 * 8
    assert metadata["adopted"]["added"] == ["softmax over axis 1"]
    assert metadata["adopted"]["output"] == "logits" and metadata["adopted"]["output_kind"] == "logits"
    batch = probe_batch(_config(tmp_path, logits_model), "float32", seed=3)
    (logits,) = _run(logits_model, batch)
    assert logits.min() < 0 < logits.max()  # raw scores, not probabilities
    (probs,) = _run(result.path, batch)
    np.testing.assert_allclose(probs, _softmax(logits), atol=1e-6)
    check_probabilities(probs, (2, 5, 64, 64))
    assert result.checks["max_sum_error"] <= 1e-3 and result.checks["raw_output"] == [2, 5, 64, 64]


def test_the_adopted_model_runs_in_the_predictor(tmp_path, logits_model):
    from cervrt import Predictor

    rng = np.random.default_rng(0)
    path = adopt(_config(tmp_path, logits_model)).path
    image = rng.integers(0, 256, size=(80, 90, 3), dtype=np.uint8)
    with Predictor(path, device="cpu", tissue_threshold=0, stride=32) as predictor:
        labels = predictor.predict(image)
        assert predictor.metadata["arch"] == "adopted"
    assert labels.shape == (80, 90) and labels.max() < 5


def test_probabilities_are_kept_as_they_are(tmp_path):
    source = save_foreign_model(tmp_path / "probs.onnx", softmax=True)
    result = adopt(_config(tmp_path, source, output_kind="probs"))
    assert result.metadata["outputs"] == ["probs"] and result.metadata["adopted"]["added"] == []


def test_logits_declared_as_probabilities_are_refused_and_nothing_is_written(tmp_path, logits_model):
    with pytest.raises(ModelError, match=r"look like logits; pass --output logits") as info:
        adopt(_config(tmp_path, logits_model, output_kind="probs"))
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx"]


def test_probabilities_declared_as_logits_are_refused(tmp_path):
    source = save_foreign_model(tmp_path / "probs.onnx", softmax=True)
    with pytest.raises(ModelError, match=r"already probabilities .* pass --output probs"):
        adopt(_config(tmp_path, source))


def test_a_class_map_sums_the_model_classes_onto_the_grades(tmp_path):
    source = save_foreign_model(tmp_path / "three.onnx", classes=3)
    config = _config(tmp_path, source, classes="glass,lsil,hsil", class_map="glass=background,lsil=cin1,hsil=CIN_3")
    result = adopt(config)
    assert result.metadata["class_names"] == list(CLASS_NAMES)
    assert result.metadata["adopted"]["class_map"] == {"glass": "background", "lsil": "CIN 1", "hsil": "CIN 3"}
    batch = probe_batch(config, "float32")
    (logits,) = _run(source, batch)
    (probs,) = _run(result.path, batch)
    own = _softmax(logits)
    np.testing.assert_allclose(probs[:, [0, 2, 4]], own, atol=1e-6)
    assert np.all(probs[:, [1, 3]] == 0)


def test_own_classes_are_kept_with_their_own_palette(tmp_path):
    source = save_foreign_model(tmp_path / "three.onnx", classes=3)
    result = adopt(_config(tmp_path, source, classes="background,tumour,stroma"))
    assert result.metadata["class_names"] == ["background", "tumour", "stroma"]
    assert len(result.metadata["palette"]) == 3 and result.metadata["palette"][0] == [0, 0, 0]


def test_a_class_count_that_differs_from_the_channels_is_refused(tmp_path):
    source = save_foreign_model(tmp_path / "three.onnx", classes=3)
    with pytest.raises(ModelError, match=r"returns 3 channels for the 5 classes"):
        adopt(_config(tmp_path, source))


def test_channel_last_output_and_input_are_refused(tmp_path):
    nhwc_out = save_foreign_model(tmp_path / "nhwc_out.onnx", nhwc_output=True)
    with pytest.raises(ModelError, match=r"channel-last \(NHWC\) output"):
        adopt(_config(tmp_path, nhwc_out))
    nhwc_in = save_foreign_model(tmp_path / "nhwc_in.onnx", nhwc_input=True)
    with pytest.raises(InputError, match=r"channel-last .* \(NHWC\); cervrt feeds \(N, 3, H, W\)"):
        adopt(_config(tmp_path, nhwc_in))


def test_a_patch_the_model_refuses(tmp_path):
    fixed = save_foreign_model(tmp_path / "fixed.onnx", side=96)
    with pytest.raises(InputError, match=r"takes 96x96 inputs, not --patch 64: pass --patch 96"):
        adopt(_config(tmp_path, fixed))
    assert adopt(_config(tmp_path, fixed, patch=96)).metadata["patch_size"] == 96


def test_a_batch_axis_fixed_at_one_is_made_dynamic(tmp_path):
    source = save_foreign_model(tmp_path / "batch1.onnx", batch=1)
    result = adopt(_config(tmp_path, source))
    assert result.metadata["adopted"]["added"][0] == "batch axis made dynamic (was 1)"
    assert result.checks["tile"][0] == 2


def test_an_old_opset_gets_a_softmax_over_the_classes(tmp_path):
    source = save_foreign_model(tmp_path / "old.onnx", opset=11)
    config = _config(tmp_path, source)
    batch = probe_batch(config, "float32")
    (probs,) = _run(adopt(config).path, batch)
    np.testing.assert_allclose(probs, _softmax(_run(source, batch)[0]), atol=1e-6)


def test_several_outputs_need_a_name(tmp_path):
    source = save_foreign_model(tmp_path / "two.onnx", second_output=True)
    with pytest.raises(InputError, match=r"2 outputs \(logits, features\): name one with --output-name"):
        adopt(_config(tmp_path, source))
    with pytest.raises(InputError, match=r"no output 'nope'"):
        adopt(_config(tmp_path, source, output_name="nope"))
    result = adopt(_config(tmp_path, source, output_name="logits"))
    assert [o.name for o in ort.InferenceSession(str(result.path)).get_outputs()] == ["probs"]


@pytest.mark.parametrize(("changes", "message"), [
    ({"classes": ""}, r"--classes takes 2 or more"),
    ({"classes": "background"}, r"--classes takes 2 or more"),
    ({"classes": "a,b,A"}, r"names a class twice"),
    ({"mean": "0.5,0.5"}, r"--mean takes 3 comma-separated numbers"),
    ({"std": "0.2,0,0.2"}, r"--std must be positive"),
    ({"mpp": 0}, r"--mpp must be positive"),
    ({"patch": 16}, r"--patch must be an integer side of at least 32"),
    ({"output_kind": "scores"}, r"--output must be one of probs, logits"),
    ({"output": "adopted.plan"}, r"-o must name an \.onnx file"),
    ({"input_name": "image"}, r"the model has no input 'image'; its inputs are pixel_values"),
])
def test_bad_options_are_one_line_input_errors(tmp_path, logits_model, changes, message):
    with pytest.raises(InputError, match=message) as info:
        adopt(_config(tmp_path, logits_model, **changes))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("glass=background,lsil=cin1", r"leaves hsil unmapped"),
    ("glass=background,lsil=cin 4,hsil=cin3", r"to 'cin 4': choose one of background, normal"),
    ("mucus=background,lsil=cin1,hsil=cin3", r"maps 'mucus', which is not one of --classes"),
])
def test_bad_class_maps(text, message):
    with pytest.raises(InputError, match=message):
        parse_class_map(text, ("glass", "lsil", "hsil"))


def test_a_corrupt_or_missing_model_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelError, match=r"not a readable ONNX file"):
        adopt(_config(tmp_path, tmp_path / "bad.onnx"))
    with pytest.raises(InputError, match=r"does not exist"):
        adopt(_config(tmp_path, tmp_path / "missing.onnx"))
