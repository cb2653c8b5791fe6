"""INT8 export: tissue-only calibration spread over the inputs, QDQ quantization with the chosen groups kept
in float, and one-line refusals for every bad calibration input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from cervrt.errors import CervrtError
from cervrt.export.calibration import calibration_files, draw_calibration, holdout_count, normalise
from cervrt.export.int8 import FLOAT_GROUPS, float_nodes, quantize_int8
from cervrt.imageio import write_png
from tests.support.onnx_graphs import segmentation_graph


def _tissue(seed: int, size: int = 256) -> np.ndarray:
    from cervrt.synth import synthesize_region

    rgb, _ = synthesize_region(np.random.default_rng(seed), size)
    return rgb


def _glass(size: int = 256) -> np.ndarray:
    return np.full((size, size, 3), 242, np.uint8) + np.random.default_rng(0).integers(0, 6, (size, size, 3),
                                                                                        dtype=np.uint8)


def _saturated(patch: np.ndarray) -> float:
    """Share of the pixels more saturated than glass ever is (the tissue detector's floor)."""
    from cervrt._cv import cv2
    from cervrt.runtime.tissue import SATURATION_FLOOR

    return float((cv2.cvtColor(patch, cv2.COLOR_RGB2HSV)[..., 1] > SATURATION_FLOOR).mean())


@pytest.fixture
def images(tmp_path):
    """An MTCHI-layout dataset (images/ with two regions) and one loose image beside it."""
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i, seed in enumerate((0, 2)):  # synthetic regions with >= 10 tissue windows of 64 px each
        write_png(tmp_path / "data" / "images" / f"r{i}.png", _tissue(seed))
    write_png(tmp_path / "loose.png", _tissue(7))
    return tmp_path


# --- calibration inputs ---------------------------------------------------------------------------


def test_directories_files_and_the_mtchi_layout_expand(images):
    files = calibration_files([images / "data", images / "loose.png", images / "data" / "images"])
    assert [f.name for f in files] == ["r0.png", "r1.png", "loose.png"]


def test_patches_are_tissue_spread_over_inputs_and_disjoint_from_held_out(images):
    drawn = draw_calibration([images / "data", images / "loose.png"], 64, 0.904, count=9, holdout=6)
    assert drawn.calibration.shape == (9, 64, 64, 3) and drawn.holdout.shape == (6, 64, 64, 3)
    assert drawn.calibration.dtype == np.uint8
    assert set(drawn.sources) == {"r0.png", "r1.png", "loose.png"}  # round-robin: every input contributes
    flat_cal = {p.tobytes() for p in drawn.calibration}
    assert not flat_cal & {p.tobytes() for p in drawn.holdout}  # no window is in both sets
    assert all(_saturated(p) > 0.5 for p in np.concatenate([drawn.calibration, drawn.holdout]))  # tissue, not glass
    again = draw_calibration([images / "data", images / "loose.png"], 64, 0.904, count=9, holdout=6)
    np.testing.assert_array_equal(again.calibration, drawn.calibration)  # a fixed seed: reproducible


def test_glass_is_never_drawn(tmp_path):
    image = np.full((256, 512, 3), 244, np.uint8)
    image[:, :256] = _tissue(3)
    write_png(tmp_path / "half.png", image)
    drawn = draw_calibration([tmp_path / "half.png"], 64, None, count=8, holdout=4)
    assert all(_saturated(p) > 0.5 for p in drawn.calibration)
    with pytest.raises(CervrtError, match=r"hold (\d+) tissue patches") as info:
        draw_calibration([tmp_path / "half.png"], 64, None, count=30, holdout=4)
    assert 8 <= int(str(info.value).split()[4]) <= 16  # the left half's 16 windows at most, the glass none


def test_slides_are_read_at_the_model_mpp(tmp_path):
    # a 256 px TIFF at 0.904 um/px read for a model at 1.808 um/px is 128 px: 4 windows of 64
    tifffile = pytest.importorskip("tifffile")
    per_cm = 1e4 / 0.904
    tifffile.imwrite(tmp_path / "slide.tif", _tissue(0), photometric="rgb", resolution=(per_cm, per_cm),
                     resolutionunit="CENTIMETER")
    assert len(draw_calibration([tmp_path / "slide.tif"], 64, 0.904, count=12, holdout=1).calibration) == 12
    drawn = draw_calibration([tmp_path / "slide.tif"], 64, 0.904 * 2, count=2, holdout=1)
    assert drawn.calibration.shape == (2, 64, 64, 3)
    with pytest.raises(CervrtError, match="hold 3 tissue patches of 64 px"):  # 3 of the 4 windows are tissue
        draw_calibration([tmp_path / "slide.tif"], 64, 0.904 * 2, count=3, holdout=1)


def test_holdout_covers_enough_pixels():
    assert holdout_count(400) == 4 and holdout_count(128) == 16 and holdout_count(64) == 64


def test_normalise_matches_the_runtime():
    patches = np.full((2, 4, 4, 3), 255, np.uint8)
    x = normalise(patches, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [2.0, 1.0, 0.5])


@pytest.mark.parametrize("case", ["none", "missing", "empty_dir", "unreadable", "glass", "zero", "negative"])
def test_bad_calibration_input_is_one_line(tmp_path, case):
    paths, count = [tmp_path / "in"], 4
    (tmp_path / "in").mkdir()
    if case == "none":
        paths = []
    elif case == "missing":
        paths = [tmp_path / "nope.png"]
    elif case == "unreadable":
        write_png(tmp_path / "in" / "good.png", _tissue(2))
        (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif case == "glass":
        write_png(tmp_path / "in" / "glass.png", _glass())
    elif case in ("zero", "negative"):
        write_png(tmp_path / "in" / "good.png", _tissue(2))
        count = 0 if case == "zero" else -3
    expected = {"none": "pass --calibration PATH", "missing": "does not exist", "empty_dir": "holds no images",
                "unreadable": "broken.png", "glass": "no tissue found", "zero": "positive number of patches",
                "negative": "positive number of patches"}[case]
    with pytest.raises(CervrtError, match=expected) as info:
        draw_calibration(paths, 64, 0.904, count=count, holdout=2)
    assert "\n" not in str(info.value)


# --- float groups and quantization -----------------------------------------------------------------


def test_float_groups_find_the_tail_head_and_pooled_branch():
    found = float_nodes(segmentation_graph(), list(FLOAT_GROUPS))
    assert found == {"tail": ["softmax"], "head": ["conv2"], "pooled": ["pool"]}
    with_classifier = float_nodes(segmentation_graph(with_classifier=True), ["tail"])["tail"]
    assert set(with_classifier) == {"softmax", "sigmoid", "cat", "unsq", "mul", "sum", "div"}
    with pytest.raises(CervrtError, match="unknown float group"):
        float_nodes(segmentation_graph(), ["softmax"])


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def test_quantize_writes_qdq_and_keeps_the_chosen_groups_in_float():
    model = segmentation_graph()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32), dtype=np.float32)
    quantized, kept = quantize_int8(model, x, ("tail", "head"))
    assert kept == ["softmax", "conv2"]
    onnx.checker.check_model(quantized)
    ops = [n.op_type for n in quantized.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    weight_dq = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear" and "w1" in n.input[0]]
    assert weight_dq, "conv1's weights are int8"
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    assert scales[weight_dq[0].input[1]].shape == (8,)  # per output channel
    conv2 = next(n for n in quantized.graph.node if n.name == "conv2")
    assert conv2.input[1] == "w2" and scales["w2"].dtype == np.float32  # the head's weights stay float
    reference, got = _run(model, x), _run(quantized, x)
    assert got.shape == reference.shape and np.isfinite(got).all()
    assert np.mean(got.argmax(1) == reference.argmax(1)) > 0.9
    assert not model.metadata_props or quantized.metadata_props == []


def test_quantize_refuses_an_empty_calibration_set():
    with pytest.raises(CervrtError, match="non-empty"):
        quantize_int8(segmentation_graph(), np.zeros((0, 3, 32, 32), np.float32))


# --- the gate ------------------------------------------------------------------------------------


def _patches(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_gate_tries_the_ladder_in_turn_and_keeps_the_first_that_passes(monkeypatch):
    from cervrt.export import int8

    monkeypatch.setattr(int8, "INT8_AGREEMENT", 0.5)
    lines = []
    result = int8.quantize_gated(segmentation_graph(), _patches(8, 0), _patches(4, 1), lines.append)
    assert (result.method, result.groups, result.calibration_patches) == ("minmax", ("tail", "head"), 8)
    assert len(result.checks) == 1 and result.checks[0].agreement >= 0.5
    assert lines[0].startswith("parity int8 onnx (minmax, 8 patches, float: tail, head) vs fp32 onnx")
    assert "max |diff|" in lines[0] and "argmax agreement" in lines[0]


def test_gate_below_threshold_fails_in_one_line_after_every_try(monkeypatch):
    from cervrt.export import int8

    monkeypatch.setattr(int8, "INT8_AGREEMENT", 1.01)  # nothing can pass
    lines = []
    with pytest.raises(CervrtError, match=r"below 101\.00%.*no file was written") as info:
        int8.quantize_gated(segmentation_graph(), _patches(8, 0), _patches(4, 1), lines.append)
    assert "\n" not in str(info.value)
    assert [line.split(" vs ")[0] for line in lines] == [
        "parity int8 onnx (minmax, 8 patches, float: tail, head)",
        "parity int8 onnx (percentile, 8 patches, float: tail, head)",
        "parity int8 onnx (percentile, 8 patches, float: tail, head, pooled)"]


def test_percentile_takes_a_bounded_number_of_patches():
    from cervrt.export.int8 import _PERCENTILE_PIXELS, _percentile_count

    assert _percentile_count(np.zeros((32, 3, 400, 400), np.float32)) == _PERCENTILE_PIXELS // 160000
    assert _percentile_count(np.zeros((5, 3, 64, 64), np.float32)) == 5


def test_build_int8_records_what_stayed_in_float_and_how_it_was_calibrated(monkeypatch, tmp_path):
    from cervrt.artifact import read_metadata
    from cervrt.export import int8
    from cervrt.export.calibration import CalibrationSet
    from tests.engines.conftest import ONNX_META

    monkeypatch.setattr(int8, "INT8_AGREEMENT", 0.5)
    rng = np.random.default_rng(0)
    drawn = CalibrationSet(rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
                           rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), ("a.png", "b.svs"))
    model, metadata, result = int8.build_int8(segmentation_graph(), dict(ONNX_META), drawn)
    onnx.save(model, tmp_path / "m.int8.onnx")
    stored = read_metadata(tmp_path / "m.int8.onnx")
    assert stored["precision"] == "int8" and metadata["precision"] == "int8"
    entry = stored["int8"]
    assert entry["format"] == "QDQ" and entry["calibration_method"] == "minmax"
    assert entry["calibration_patches"] == 8 and entry["holdout_patches"] == 4
    assert entry["calibration_sources"] == ["a.png", "b.svs"]
    assert set(entry["float_groups"]) == {"tail", "head"} and stored["fp32_ops"] == ["Conv", "Softmax"]
    assert entry["tries"][0]["agreement"] == result.checks[0].agreement
    check = result.verify(ort.InferenceSession(str(tmp_path / "m.int8.onnx"), providers=["CPUExecutionProvider"]))
    assert check.agreement == result.checks[0].agreement  # the written file computes what was checked


# --- cervrt export --precision int8 ---------------------------------------------------------------


def _cervrt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """A dataset's images/ with seven synthetic tissue regions (84 tissue windows of 64 px)."""
    root = tmp_path_factory.mktemp("calibration")
    (root / "images").mkdir()
    for seed in (0, 2, 3, 4, 5, 6, 7):
        write_png(root / "images" / f"r{seed}.png", _tissue(seed))
    return root


@pytest.mark.parametrize("arch", ["hspnet", "ensemble_a"])  # deeplabv3plus, wsss_seg: see the report
def test_export_int8_writes_one_self_describing_file(arch, tmp_path, calibration_dir, monkeypatch):
    from cervrt.artifact import read_metadata
    from cervrt.engines import open_engine
    from cervrt.export import ExportConfig, export, int8
    from tests.support.tiny_models import save_tiny_checkpoint

    monkeypatch.setattr(int8, "INT8_AGREEMENT", 0.0)  # untrained tiny networks: the gate is tested on its own
    checkpoint = save_tiny_checkpoint(tmp_path / f"{arch}.pt", arch=arch)
    lines = []
    result = export(ExportConfig(checkpoint, precision="int8", calibration=(calibration_dir,), calibration_patches=8),
                    echo=lines.append)
    target = tmp_path / f"{arch}.int8.onnx"
    assert result.onnx == target and sorted(p.name for p in tmp_path.iterdir()) == [target.name, checkpoint.name]
    assert any(line.startswith("parity int8 onnx (minmax, 8 patches, float: tail, head)") for line in lines)
    meta = read_metadata(target)
    assert meta["precision"] == "int8" and meta["int8"]["calibration_patches"] == 8
    assert meta["int8"]["holdout_patches"] == 64 and "Softmax" in meta["fp32_ops"]
    with open_engine(target, "cpu") as engine:
        out = engine.run(np.zeros((1, 3, 64, 64), np.float32))
    assert out.probs.shape == (1, 5, 64, 64) and np.allclose(out.probs.sum(1), 1, atol=1e-3)
    assert (out.class_probs is not None) == (arch in ("ensemble_a", "wsss_seg"))


@pytest.mark.parametrize("case", ["no_calibration", "zero_patches", "plan_engine", "glass", "unreadable",
                                  "calibration_without_int8"])
def test_cervrt_export_int8_bad_input_is_one_line_and_writes_nothing(case, tmp_path, tiny_checkpoint):
    images = tmp_path / "images"
    images.mkdir()
    name, pixels = ("glass.png", _glass()) if case == "glass" else ("a.png", _tissue(0))
    write_png(images / name, pixels)
    if case == "unreadable":
        (images / "b.png").write_bytes(np.random.default_rng(0).bytes(4000))
    out = tmp_path / "m.int8.onnx"
    args = {"no_calibration": [], "zero_patches": ["--calibration", str(images), "--calibration-patches", "0"],
            "plan_engine": ["--calibration", str(images), "--engine", str(tmp_path / "m.plan")],
            "glass": ["--calibration", str(images)], "unreadable": ["--calibration", str(images)],
            "calibration_without_int8": ["--calibration", str(images)]}[case]
    precision = "fp32" if case == "calibration_without_int8" else "int8"
    result = _cervrt("export", str(tiny_checkpoint), "-o", str(out), "--precision", precision, *args)
    expected = {"no_calibration": "pass --calibration PATH", "zero_patches": "positive number of patches",
                "plan_engine": "TensorRT INT8 is not part of cervrt", "glass": "no tissue found",
                "unreadable": "b.png", "calibration_without_int8": "--calibration is for --precision int8"}[case]
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not (tmp_path / "m.plan").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_cervrt_export_takes_several_calibration_paths_after_one_flag(tmp_path, calibration_dir, tiny_checkpoint):
    from cervrt.export.config import ExportConfig

    config = ExportConfig.from_options(str(tiny_checkpoint), precision="int8",
                                       calibration=(str(calibration_dir), str(tmp_path)))
    assert config.calibration == (calibration_dir, tmp_path) and config.output.name == "hspnet.int8.onnx"
    result = _cervrt("export", str(tiny_checkpoint), "-o", str(tmp_path / "x.onnx"), "stray.png")
    assert result.returncode == 1 and "calibration paths follow --calibration" in result.stderr
