"""The run record: triage by area, the summary rows and page, progress lines for a log file."""

from __future__ import annotations

import csv
import io
import json

from cervrt.runtime.progress import RunProgress
from cervrt.runtime.record import RunRecord, SlideRow, remove_partial, triage


def _report(pixels, mpp=0.5):
    names = ["background", "normal", "CIN 1", "CIN 2", "CIN 3"]
    classes = {n: {"pixels": p, "mm2": None if mpp is None else p * mpp * mpp * 1e-6, "tissue_share": None}
               for n, p in zip(names, pixels, strict=True)}
    found = [n for n, p in zip(names[1:], pixels[1:], strict=True) if p]
    return {"mpp": mpp, "classes": classes, "worst_grade": found[-1] if found else None,
            "tissue_pixels": sum(pixels[1:]), "patches": {"run": 3, "skipped": 1}, "seconds": {"total": 1.5},
            "engine": "onnxruntime", "outputs": {"overlay": "/out/s.overlay.jpg"}}


def test_triage_is_the_highest_grade_over_the_minimum_area():
    report = _report([10, 4_000_000, 2_000_000, 0, 4])  # 4 px of CIN 3: 1e-6 mm^2
    assert report["worst_grade"] == "CIN 3"
    assert triage(report, 0.1) == {"grade": "CIN 1", "area": 0.5, "unit": "mm2", "min_area": 0.1}
    assert triage(report, 0.0)["grade"] == "CIN 3"
    assert triage(report, 2.0)["grade"] is None
    no_mpp = triage(_report([0, 100, 0, 5, 0], mpp=None), 10)
    assert no_mpp == {"grade": "normal", "area": 100.0, "unit": "px", "min_area": 10}


def test_the_record_writes_csv_json_and_a_sortable_page(tmp_path):
    done = SlideRow("/in/s.png", "", "s", "done", _report([0, 4_000_000, 0, 0, 400_000]))
    done.report["triage"] = triage(done.report, 0.05)
    done.report["outputs"]["overlay"] = str(tmp_path / "s.overlay.jpg")
    rows = [done, SlideRow("/in/bad.png", "B-1", "bad", "failed", error="bad.png is corrupt"),
            SlideRow("/in/next.png", "", "next")]
    RunRecord(tmp_path, {"model": "m.onnx"}, rows, suffix=".1-of-2").write()
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.1-of-2.csv").read_text())))
    assert [r["status"] for r in table] == ["done", "failed", "pending"]
    assert table[0]["triage_grade"] == "CIN 3" and table[0]["CIN 3 mm2"] == "0.1" and table[0]["tissue_mm2"] == "1.1"
    assert table[1]["id"] == "B-1" and table[1]["error"] == "bad.png is corrupt" and table[1]["worst_grade"] == ""
    record = json.loads((tmp_path / "run.1-of-2.json").read_text())
    assert record["status"] == "running" and record["ended"] is None
    assert record["counts"] == {"total": 3, "done": 1, "skipped": 0, "failed": 1, "pending": 1}
    page = (tmp_path / "summary.1-of-2.html").read_text()
    assert page.count("<tr class=") == 3 and "addEventListener('click'" in page and "bad.png is corrupt" in page
    assert '<a href="s.overlay.jpg"><img src="s.overlay.jpg"' in page  # relative: the folder can be moved


def test_partial_outputs_and_their_temporaries_go_but_a_longer_name_stays(tmp_path):
    for name in ("s.mask.png", ".s.mask.tiff.ab12.rows", ".s.json.1f.tmp.json", ".s.b.mask.png.77.tmp.png", "keep.txt"):
        (tmp_path / name).write_text("x")
    remove_partial(tmp_path, "s", [tmp_path / "s.mask.png", tmp_path / "s.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.b.mask.png.77.tmp.png", "keep.txt"]


def test_plain_progress_lines_come_periodically_with_rate_and_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = RunProgress(4, "auto", skipped=1, interval=30, stream=stream, clock=lambda: now[0])
    assert progress.mode == "plain"  # a StringIO is no terminal
    now[0] = 10.0
    progress.slide_done("a", 100)
    assert stream.getvalue() == ""  # not yet 30 s
    now[0] = 40.0
    progress.patches("b", 500, 1000)
    assert stream.getvalue() == "progress: 2/4 slides, 15 patches/s, ETA 0:01:20\n"
    progress.slide_done("b", 1000, failed=True)
    progress.close()
    assert stream.getvalue().splitlines()[-1].startswith("progress: 3/4 slides (1 failed)")


def test_json_progress_is_one_object_per_slide():
    stream = io.StringIO()
    progress = RunProgress(2, "json", stream=stream, clock=lambda: 2.0)
    progress.slide_done("a", 10)
    progress.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["slide", "end"] and lines[0]["slide"] == "a" and lines[0]["ok"]
