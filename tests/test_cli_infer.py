"""`cervrt infer` through a subprocess: outputs, one line per bad slide, exit codes, nothing half-written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cervrt._cv import cv2
from tests.support.tiny_onnx import save_tiny_model, slide_image, tissue_image

OUTPUTS = ("json", "mask.png", "overlay.jpg")
RECORD = ["run.json", "summary.csv", "summary.html"]  # the run record, beside the slides' outputs


def _cervrt(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


#: A process started in the background without job control (``cmd &`` in a script, or under such a
#: parent) inherits SIGINT ignored, and so do its children: Ctrl-C cannot reach ``cervrt infer`` then.
interruptible = pytest.mark.skipif(signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                                   reason="SIGINT is ignored in this process (started in the background without "
                                          "job control), so no child can be interrupted")


def _png(path, rgb):
    cv2.imwrite(str(path), rgb[:, :, ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb)
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))


@pytest.fixture(scope="module")
def tissue_png(tmp_path_factory):
    rng = np.random.default_rng(0)
    return _png(tmp_path_factory.mktemp("slides") / "tissue.png", slide_image(rng, 200, 260, (40, 60, 128, 160)))


def _files(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_infer_writes_mask_overlay_report_and_geojson(model, tissue_png, tmp_path):
    small = _png(tmp_path / "small.png", tissue_image(np.random.default_rng(1), 40, 50))  # smaller than a patch
    result = _cervrt("infer", "--engine", model, tissue_png, small, "--out", str(tmp_path / "out"), "--device", "cpu",
                     "--stride", "32", "--geojson", "--tissue-threshold", "0.3", "--mpp", "0.904")
    assert result.returncode == 0, result.stderr
    assert _files(tmp_path / "out") == sorted(["small.geojson", "small.json", "small.mask.png", "small.overlay.jpg",
                                               "tissue.geojson", "tissue.json", "tissue.mask.png", "tissue.overlay.jpg",
                                               *RECORD])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("tissue: 260x200 px") and "worst grade" in lines[0]
    report = json.loads((tmp_path / "out" / "tissue.json").read_text())
    assert report["mpp"] == 0.904 and report["settings"]["stride"] == 32
    assert report["provider"] == "CPUExecutionProvider"
    assert report["patches"]["skipped"] > 0 and report["patches"]["run"] > 0
    mask = cv2.imread(str(tmp_path / "out" / "small.mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (40, 50) and mask.dtype == np.uint8 and mask.max() <= 4
    geojson = json.loads((tmp_path / "out" / "tissue.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and geojson["features"]


def test_tiff_format(model, tissue_png, tmp_path):
    result = _cervrt("infer", "--engine", model, tissue_png, "--out", str(tmp_path), "--device", "cpu",
                     "--format", "tiff")
    assert result.returncode == 0, result.stderr
    import tifffile

    assert tifffile.imread(tmp_path / "tissue.mask.tiff").shape == (200, 260)


def test_one_bad_slide_is_reported_and_the_others_still_run(model, tissue_png, tmp_path):
    missing = str(tmp_path / "missing.png")
    result = _cervrt("infer", "--engine", model, missing, tissue_png, "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 1
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"error: {missing}: ") and "does not exist" in errors[0]
    assert "Traceback" not in result.stderr
    assert _files(tmp_path / "out") == sorted([*RECORD, *(f"tissue.{kind}" for kind in OUTPUTS)])


def _truncated_png(path):
    data = cv2.imencode(".png", tissue_image(np.random.default_rng(2), 300, 300))[1].tobytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("missing.png", lambda p: None),
        ("empty.png", lambda p: p.write_bytes(b"")),
        ("corrupt.png", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4000))),
        ("truncated.png", _truncated_png),
        ("notes.txt", lambda p: p.write_text("not a slide")),
    ],
)
def test_bad_slides_fail_in_one_line_and_leave_nothing(model, tmp_path, name, make):
    slide = tmp_path / name
    make(slide)
    out = tmp_path / "out"
    result = _cervrt("infer", "--engine", model, str(slide), "--out", str(out), "--device", "cpu")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = _error_lines(result.stderr)  # (libpng itself also prints a line for the truncated PNG)
    assert len(lines) == 1 and lines[0].startswith(f"error: {slide}: ")
    assert _files(out) == RECORD  # the record lists the slide as failed; no output of it


@pytest.mark.parametrize(
    ("name", "pixels"),
    [
        ("grey.png", lambda rgb: rgb[:, :, 0]),
        ("rgba.png", lambda rgb: np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)])),
        ("deep.png", lambda rgb: rgb[:, :, ::-1].astype(np.uint16) * 257),
    ],
)
def test_greyscale_rgba_and_16_bit_images_are_converted(model, tmp_path, name, pixels):
    rgb = slide_image(np.random.default_rng(3), 160, 160, (32, 32, 96, 96))
    cv2.imwrite(str(tmp_path / name), pixels(rgb))
    result = _cervrt("infer", "--engine", model, str(tmp_path / name), "--out", str(tmp_path / "out"),
                     "--device", "cpu", "--tissue-threshold", "0")
    assert result.returncode == 0, result.stderr
    stem = name.removesuffix(".png")
    assert _files(tmp_path / "out") == sorted([*RECORD, *(f"{stem}.{kind}" for kind in OUTPUTS)])


def test_a_slide_without_tissue_succeeds_with_an_all_background_mask(model, tmp_path):
    blank = _png(tmp_path / "blank.png", np.full((150, 180, 3), 248, np.uint8))
    result = _cervrt("infer", "--engine", model, blank, "--out", str(tmp_path / "out"), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "no tissue found" in result.stdout
    assert cv2.imread(str(tmp_path / "out" / "blank.mask.png"), cv2.IMREAD_UNCHANGED).max() == 0
    assert json.loads((tmp_path / "out" / "blank.json").read_text())["no_tissue"] is True


def test_a_model_without_cervrt_metadata_is_refused(tissue_png, tmp_path):
    import onnx

    from tests.support.onnx_graphs import segmentation_graph

    onnx.save(segmentation_graph(), tmp_path / "plain.onnx")
    result = _cervrt("infer", "--engine", str(tmp_path / "plain.onnx"), tissue_png, "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no cervrt metadata" in lines[0] and "Traceback" not in result.stderr
    assert _files(tmp_path / "out") == []


@pytest.mark.parametrize(("out", "fragment"), [("a_file", "exists and is not a directory"),
                                              ("a_file/sub", "cannot create output directory")])
def test_an_unwritable_output_directory_is_refused(model, tissue_png, tmp_path, out, fragment):
    (tmp_path / "a_file").write_text("x")
    result = _cervrt("infer", "--engine", model, tissue_png, "--out", str(tmp_path / out))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]


@interruptible
def test_ctrl_c_mid_slide_leaves_no_half_written_output(model, tissue_png, tmp_path):
    big = _png(tmp_path / "big.png", tissue_image(np.random.default_rng(4), 1600, 1600))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cervrt", "infer", "--engine", model, tissue_png, big, "--out",
                             str(out), "--device", "cpu", "--stride", "8", "--tissue-threshold", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "tissue.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # well into the big slide
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert _files(out) == sorted([*RECORD, *(f"tissue.{kind}" for kind in OUTPUTS)])  # nothing of big


# --- many slides: inputs, resume, records, workers -------------------------------------------------------


def _one_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--manifest", "missing.csv"], "the manifest missing.csv does not exist"),
        (["empty"], "empty holds no slides"),
        (["SLIDE", "--shard", "3/2"], "shard '3/2' must be I/N"),
        (["SLIDE", "--workers", "0"], "workers must be a positive number"),
        (["SLIDE", "--workers", "1", "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
        (["SLIDE", "--ray-address", "127.0.0.1:1"], "need workers"),
    ],
)
def test_bad_run_inputs_are_one_line_errors_and_write_nothing(model, tissue_png, tmp_path, args, fragment):
    (tmp_path / "empty").mkdir()
    args = [tissue_png if a == "SLIDE" else a for a in args]
    result = _cervrt("infer", "--engine", model, *args, "--out", str(tmp_path / "out"), "--device", "cpu",
                     cwd=tmp_path)
    assert fragment in _one_error(result)
    assert _files(tmp_path / "out") == []


def test_a_manifest_row_with_a_missing_file_or_bad_mpp_is_a_failed_row(model, tissue_png, tmp_path):
    (tmp_path / "m.csv").write_text(f"path,mpp,id\n{tissue_png},0.904,T-1\nnope.png,,N-2\n{tissue_png},-1,B-3\n")
    result = _cervrt("infer", "--engine", model, "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
                     "--device", "cpu")
    assert result.returncode == 1 and len(_error_lines(result.stderr)) == 2
    rows = (tmp_path / "o" / "summary.csv").read_text().splitlines()[1:]
    assert [row.split(",")[1:3] for row in rows] == [["T-1", "done"], ["N-2", "failed"], ["B-3", "failed"]]
    assert "does not exist" in rows[1] and "bad mpp '-1'" in rows[2]
    assert _files(tmp_path / "o") == sorted([*RECORD, *(f"T-1.{kind}" for kind in OUTPUTS)])


def test_same_names_in_two_folders_neither_collide_nor_overwrite_and_a_rerun_skips(model, tmp_path):
    rng = np.random.default_rng(5)
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        _png(tmp_path / "in" / folder / "case1.png", slide_image(rng, 120, 140, (20, 20, 80, 100)))
    (tmp_path / "in" / "notes.txt").write_text("x")
    args = ["infer", "--engine", model, str(tmp_path / "in"), "--recursive", "--out", str(tmp_path / "out"),
            "--device", "cpu", "--progress", "plain"]
    first = _cervrt(*args)
    assert first.returncode == 0, first.stderr
    assert _files(tmp_path / "out") == sorted(["a", "b", *RECORD])
    assert _files(tmp_path / "out" / "a") == _files(tmp_path / "out" / "b") == [f"case1.{k}" for k in OUTPUTS]
    assert "progress: 2/2 slides" in first.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["unsupported_skipped"] == 1
    again = _cervrt(*args)
    assert again.returncode == 0 and again.stdout.count("skipped, already done") == 2
    other = _cervrt(*args, "--stride", "16")
    assert "already have outputs from another model or other settings" in _one_error(other)
    assert _cervrt(*args, "--stride", "16", "--overwrite").returncode == 0
    report = json.loads((tmp_path / "out" / "a" / "case1.json").read_text())
    assert report["settings"]["stride"] == 16 and report["run"]["settings"]["stride"] == 16
    clash = _cervrt("infer", "--engine", model, str(tmp_path / "in" / "a" / "case1.png"),
                    str(tmp_path / "in" / "b" / "case1.png"), "--out", str(tmp_path / "o2"))
    assert "would both write outputs named 'case1'" in _one_error(clash)


def test_dry_run_plans_and_estimates_without_writing(model, tissue_png, tmp_path):
    result = _cervrt("infer", "--engine", model, tissue_png, "--out", str(tmp_path / "out"), "--device", "cpu",
                     "--stride", "32", "--dry-run")
    assert result.returncode == 0, result.stderr
    first, last = result.stdout.strip().splitlines()
    assert first.startswith("tissue: 260x200 px, ") and "windows to run" in first
    assert last.startswith("dry run: 1 slides, ") and "ms per window measured here -> about" in last
    assert not (tmp_path / "out").exists()


def test_workers_without_ray_name_the_extra(model, tissue_png, tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from cervrt.cli import main; "
            f"sys.argv = ['cervrt', 'infer', '--engine', {model!r}, {tissue_png!r}, '--out', {str(tmp_path)!r}, "
            "'--workers', '2']; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert 'ray is not installed: run pip install "cervrt[ray]"' in _one_error(result)


def test_workers_run_on_a_local_ray_cluster_the_command_starts_and_stops(model, tissue_png, tmp_path):
    pytest.importorskip("ray")
    result = _cervrt("infer", "--engine", model, tissue_png, "--out", str(tmp_path / "ray"), "--device", "cpu",
                     "--workers", "2", "--progress", "json")
    assert result.returncode == 0, result.stderr
    serial = _cervrt("infer", "--engine", model, tissue_png, "--out", str(tmp_path / "serial"), "--device", "cpu")
    assert serial.returncode == 0, serial.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "ray" / "tissue.mask.png"), cv2.IMREAD_UNCHANGED),
                          cv2.imread(str(tmp_path / "serial" / "tissue.mask.png"), cv2.IMREAD_UNCHANGED))
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events] == ["slide", "end"] and events[-1]["done"] == 1
    record = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert record["workers"] == 2 and record["status"] == "finished"


@interruptible
def test_ctrl_c_stops_the_ray_workers_and_leaves_no_partial_outputs(model, tissue_png, tmp_path):
    pytest.importorskip("ray")
    big = _png(tmp_path / "big.png", tissue_image(np.random.default_rng(6), 1400, 1400))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cervrt", "infer", "--engine", model, big, "--out", str(out),
                             "--device", "cpu", "--stride", "8", "--tissue-threshold", "0", "--format", "tiff",
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (
            out.is_dir() and any(p.name.startswith(".big.mask.tiff.") for p in out.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert _files(out) == []  # the worker's half-written mask is gone; no slide ended, so no record either
