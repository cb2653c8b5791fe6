"""The Ray runner on a real local Ray cluster (2 CPUs, started by cervrt's ``local_cluster``, one per module):
the masks equal the serial run's, resume skips, a corrupt slide fails alone, a killed worker costs only its
slide (retried on another worker), and shards 1/2 + 2/2 cover each slide once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from cervrt._cv import cv2
from cervrt.runtime.batch import BatchOptions, run_batch
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.inputs import collect_inputs
from cervrt.runtime.runner import OutputOptions, SerialRunner
from tests.support.tiny_onnx import save_tiny_model, slide_image, tissue_image

pytest.importorskip("ray")

CONFIG = PredictorConfig(device="cpu", stride=32)


@pytest.fixture(scope="module")
def cluster():
    from cervrt.runtime.ray_runner import local_cluster

    # The test machine is shared: Ray's memory monitor must not kill these tiny workers for others' memory.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_memory_monitor_refresh_ms", "0")
        with local_cluster(num_cpus=2) as ray:
            yield ray


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def _png(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    rng = np.random.default_rng(0)
    for name in ("a/case1", "b/case1", "c", "d"):
        _png(root / f"{name}.png", slide_image(rng, 160 + 20 * len(name), 200, (20, 30, 110, 140)))
    return root


def _mask(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _runner(**kwargs):
    from cervrt.runtime.ray_runner import RayRunner

    return RayRunner(workers=2, cpus_per_worker=1, **kwargs)


def test_masks_equal_the_serial_run(cluster, model, slides, tmp_path):
    paths = sorted(slides.rglob("*.png"))
    serial = SerialRunner().run(model, paths[2:], tmp_path / "serial", CONFIG, echo=lambda line: None)
    runner = _runner()
    ray_run = runner.run(model, paths[2:], tmp_path / "ray", CONFIG, echo=lambda line: None)
    assert not serial.failed and not ray_run.failed and len(ray_run.results) == 2
    for result in serial.results:
        assert np.array_equal(_mask(result.paths["mask"]), _mask(tmp_path / "ray" / f"{result.name}.mask.png"))
    assert len(runner.workers_info) == 2
    assert all(info["provider"] == "CPUExecutionProvider" and info["threads"] == 1  # 1 CPU each: 1 ORT thread
               for info in runner.workers_info.values())
    assert os.getpid() not in runner.workers_info  # two worker processes, not this one


def test_resume_skips_finished_slides_and_a_corrupt_slide_fails_alone(cluster, model, slides, tmp_path):
    (tmp_path / "in").mkdir()
    for path in slides.rglob("*.png"):
        (tmp_path / "in" / path.relative_to(slides)).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / path.relative_to(slides)).write_bytes(path.read_bytes())
    (tmp_path / "in" / "bad.png").write_bytes(np.random.default_rng(1).bytes(3000))
    out, options = tmp_path / "out", BatchOptions(workers=2, cpus_per_worker=1, progress="none")
    errors = []
    first = run_batch(model, collect_inputs([tmp_path / "in"], recursive=True), out, CONFIG, OutputOptions(), options,
                      echo=lambda line: None, error=errors.append)
    assert sorted(r.name for r in first.results) == ["c", "case1", "case1", "d"]
    assert [slide for slide, _ in first.failed] == [str(tmp_path / "in" / "bad.png")]
    assert len([line for line in errors if line.startswith("error: ")]) == 1
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 6 and sum(",failed," in row for row in rows) == 1 and sum(",done," in row for row in rows) == 4
    report = json.loads((out / "a" / "case1.json").read_text())
    assert report["run"]["model_sha256"] and report["triage"]["grade"] == report["worst_grade"]
    stamp = (out / "a" / "case1.mask.png").stat().st_mtime_ns
    second = run_batch(model, collect_inputs([tmp_path / "in"], recursive=True), out, CONFIG, OutputOptions(),
                       options, echo=lambda line: None, error=lambda line: None)
    assert sorted(second.skipped) == ["a/case1", "b/case1", "c", "d"] and not second.results
    assert [slide for slide, _ in second.failed] == [str(tmp_path / "in" / "bad.png")]  # tried again: not done
    assert (out / "a" / "case1.mask.png").stat().st_mtime_ns == stamp
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["counts"] == {"total": 5, "done": 0, "skipped": 4, "failed": 1,
                                                                    "pending": 0}


def test_a_killed_worker_costs_only_its_slide_which_is_retried(cluster, model, slides, tmp_path):
    big = _png(tmp_path / "in" / "big.png", tissue_image(np.random.default_rng(2), 640, 640))
    small = [_png(tmp_path / "in" / f"s{i}.png", slide_image(np.random.default_rng(i), 160, 160, (20, 20, 100, 100)))
             for i in range(3)]
    out, events, killed = tmp_path / "out", [], []

    def on_event(kind, job, pid):
        events.append((kind, job.slide.name, pid))
        if kind == "started" and job.slide == big and not killed:
            threading.Thread(target=_kill_when_writing, args=(out, pid, killed), daemon=True).start()

    runner = _runner(on_event=on_event)
    config = PredictorConfig(device="cpu", stride=16, tissue_threshold=0)
    summary = runner.run(model, [big, *small], out, config, OutputOptions(fmt="tiff"), echo=lambda line: None)
    assert killed, "the big slide ended before its worker could be killed"
    assert not summary.failed and sorted(r.name for r in summary.results) == ["big", "s0", "s1", "s2"]
    assert [e for e in events if e[0] == "died"] == [("died", "big.png", killed[0])]
    big_starts = [pid for kind, name, pid in events if kind == "started" and name == "big.png"]
    assert len(big_starts) == 2 and big_starts[0] == killed[0] != big_starts[1]  # retried once, on another worker
    assert killed[0] not in [pid for kind, _, pid in events if kind == "started"][2:]  # the dead one got no more
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{k}" for n in ("big", "s0", "s1", "s2")
                                                           for k in ("json", "mask.tiff", "overlay.jpg"))


def _kill_when_writing(out, pid, killed, timeout=60.0):
    """SIGKILL ``pid`` once the big slide's mask rows are being written (mid-slide)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.is_dir() and any(p.name.startswith(".big.mask.tiff.") for p in out.iterdir()):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


def test_shards_cover_each_slide_once(cluster, model, slides, tmp_path):
    inputs = collect_inputs([slides], recursive=True)
    done = []
    for index in (1, 2):
        options = BatchOptions(workers=2, cpus_per_worker=1, shard=(index, 2), progress="none")
        summary = run_batch(model, inputs, tmp_path / "out", CONFIG, OutputOptions(), options, echo=lambda line: None)
        done.append({row.name for row in summary.record.rows if row.status == "done"})
        assert (tmp_path / "out" / f"summary.{index}-of-2.csv").is_file()
        assert (tmp_path / "out" / f"run.{index}-of-2.json").is_file()
    assert not done[0] & done[1] and done[0] | done[1] == {"a/case1", "b/case1", "c", "d"}
    assert len(done[0]) == len(done[1]) == 2
