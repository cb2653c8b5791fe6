"""The SlideRunner seam: the many-slide loop checks its inputs first and reports each slide's outcome."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cervrt.errors import CervrtError
from cervrt.runtime.config import PredictorConfig
from cervrt.runtime.runner import OutputOptions, SlideOutcome, SlideRunner, plan_jobs, run_job

REPORT = {"width": 4, "height": 3, "patches": {"run": 2, "skipped": 1}, "no_tissue": False, "worst_grade": "CIN 2",
          "patches_per_s": 2.0, "mpx_per_s": 0.5, "seconds": {"total": 1.0}}


class _FakePredictor:
    def __init__(self):
        self.calls = []

    def predict_slide(self, slide, out_dir, fmt, geojson, progress, name=None):
        self.calls.append((slide.name, fmt, geojson))
        if slide.name == "bad.png":
            raise CervrtError("bad.png is corrupt")
        if slide.name == "full.png":
            raise OSError(28, "No space left on device")
        return SimpleNamespace(name=slide.stem, report=REPORT, paths={"mask": out_dir / f"{slide.stem}.mask.png"})


class _ListRunner(SlideRunner):
    """A runner whose 'workers' run the jobs in reverse order (a distributed runner may reorder)."""

    def __init__(self):
        self.predictor, self.config = _FakePredictor(), None

    def _run_jobs(self, model, jobs, config, outputs):
        self.config = config
        for job in reversed(list(jobs)):
            yield run_job(self.predictor, job, outputs)


def test_the_runner_reports_each_outcome_and_goes_on_after_a_failure(tmp_path):
    runner, lines, errors = _ListRunner(), [], []
    summary = runner.run("m.onnx", ["a.png", "bad.png", "full.png"], tmp_path / "out", PredictorConfig(stride=7),
                         OutputOptions(fmt="tiff", geojson=True), echo=lines.append, error=errors.append)
    assert [r.name for r in summary.results] == ["a"] and runner.config.stride == 7
    assert summary.failed == [("full.png", "OSError: [Errno 28] No space left on device"),
                              ("bad.png", "bad.png is corrupt")]
    assert runner.predictor.calls[-1] == ("a.png", "tiff", True)
    assert lines == [f"a: 4x3 px, 2 patches run, 1 skipped; worst grade CIN 2; 1.0 s (2.0 patches/s, 0.50 Mpx/s) -> "
                     f"{tmp_path / 'out' / 'a.mask.png'}"]
    assert errors[1] == "error: bad.png: bad.png is corrupt" and (tmp_path / "out").is_dir()


def test_inputs_are_checked_before_any_slide_runs(tmp_path):
    with pytest.raises(CervrtError, match="no slides given"):
        plan_jobs([], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CervrtError):
        _ListRunner().run("m.onnx", ["a.png"], tmp_path / "file")


def test_an_outcome_without_result_carries_its_message(tmp_path):
    [job] = plan_jobs(["s.png"], tmp_path)
    assert SlideOutcome(job, message="x").result is None and job.out_dir == tmp_path
