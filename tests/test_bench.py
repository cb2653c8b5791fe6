"""cervrt bench: the papers' table, the measuring pieces, the report on a tiny model and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cervrt.bench import BenchConfig, BenchSettings, format_paper_table, paper_table, parse_batch_sizes, run_bench
from cervrt.bench.endtoend import SynthSlide, agreement
from cervrt.bench.measure import time_engine
from cervrt.bench.models import find_reference
from cervrt.bench.paper import percent_diff
from cervrt.bench.strides import scaled_strides
from cervrt.checkpoint import file_sha256
from cervrt.cli import cli
from cervrt.errors import CervrtError

TINY = BenchSettings("test", warmup=0, repeats=2, slides=1, slide_size=(256, 256))


# ---- the papers' table ---------------------------------------------------------------------------------


def test_percent_diff():
    assert percent_diff(110.0, 100.0) == pytest.approx(10.0)
    assert percent_diff(68.22e6, 69.70e6) == pytest.approx(-2.1234, abs=1e-3)
    assert percent_diff(None, 1.0) is None
    assert percent_diff(1.0, None) is None


def _fake_counter(arch: str, encoder: str | None) -> dict:
    return {"params": 60e6, "macs_384": 50e9, "macs_patch": 54e9, "patch_size": 400}


def test_paper_table_rows_and_missing_figures():
    rows = {r["model"]: r for r in paper_table(_fake_counter)}
    assert {"HSP-Net ResNet-34", "HSP-Net ResNet-101", "DeepLab v3+", "Ensemble-A"} <= set(rows)
    deeplab = rows["DeepLab v3+"]
    assert deeplab["paper_params"] == 59.34e6 and deeplab["paper_macs_384"] == 49.97e9
    assert deeplab["params_diff_pct"] == pytest.approx(100 * (60 - 59.34) / 59.34)
    assert deeplab["macs_384_diff_pct"] == pytest.approx(100 * (50 - 49.97) / 49.97)
    assert rows["HSP-Net ResNet-101"]["paper_params"] == 69.70e6
    assert rows["HSP-Net ResNet-101"]["macs_384_diff_pct"] is None
    table = format_paper_table(list(rows.values()))
    r34 = next(line for line in table.splitlines() if line.startswith("| HSP-Net ResNet-34 "))
    assert r34.count("| -- ") == 4  # no paper params or FLOPs: figures and differences show "--"
    assert "+1.11%" in table  # DeepLab's params: (60 - 59.34) / 59.34


def test_paper_table_real_counts():
    rows = {r["model"]: r for r in paper_table()}
    assert rows["DeepLab v3+"]["params"] == 59_340_197
    assert rows["DeepLab v3+"]["macs_384_diff_pct"] == pytest.approx(-0.32, abs=0.01)
    assert rows["HSP-Net ResNet-101"]["params_diff_pct"] == pytest.approx(-2.12, abs=0.01)
    assert abs(rows["Ensemble-A"]["params_diff_pct"]) < 0.01


# ---- measuring pieces -------------------------------------------------------------------------------------


class _FakeEngine:
    patch_size = 32

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def run(self, batch: np.ndarray) -> None:
        self.calls.append(batch.shape)


def test_time_engine_counts_warmup_and_repeats():
    engine = _FakeEngine()
    result = time_engine(engine, batch=4, warmup=2, repeats=5)
    assert engine.calls == [(4, 3, 32, 32)] * 7
    assert result["repeats"] == 5 and len(result["seconds"]) == 5
    assert result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["max_ms"]
    assert result["patches_per_s"] == pytest.approx(4 / (result["p50_ms"] / 1e3))
    assert result["mpx_per_s"] == pytest.approx(result["patches_per_s"] * 32 * 32 / 1e6)


_PEAK_PROBE = """
import json, numpy as np
from cervrt.bench.measure import PeakMemory
with PeakMemory() as peak:
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    block[::512] += 1
print(json.dumps(peak.result()))
"""


def test_peak_memory_sees_an_allocation():
    # A fresh process: in the test session, memory other tests free during the block would hide it.
    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["peak_rss_mib"] >= result["start_rss_mib"] + 60 or result["scope"] == "process"


def test_agreement_over_tissue_and_all():
    truth = np.array([[0, 1], [2, 3]], np.uint8)
    pred, ref = np.array([[4, 1], [2, 0]], np.uint8), np.array([[0, 1], [2, 3]], np.uint8)
    result = agreement((pred,), (ref,), [SynthSlide(Path("x.png"), truth)])
    assert result == {"tissue": pytest.approx(2 / 3), "all": pytest.approx(2 / 4)}


def test_scaled_strides():
    assert scaled_strides(400) == {100: 100, 200: 200, 400: 400}
    assert scaled_strides(512) == {100: 100, 200: 200, 400: 400}
    assert scaled_strides(64) == {100: 16, 200: 32, 400: 64}  # same overlaps: 16x, 4x, none


def test_trained_models_are_reused(tmp_path):
    from cervrt.bench.config import QUICK_MODEL
    from cervrt.bench.trained import build_trained_models

    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    for name in ("model.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes(b"graph")  # newer than the checkpoint: neither trained nor exported again
    messages: list[str] = []
    built = build_trained_models(tmp_path, QUICK_MODEL, messages.append)
    assert built.paths == (ckpt, tmp_path / "model.onnx", tmp_path / "model.int8.onnx")  # no FP16 graph: left out
    assert built.int8_absent is None and "trained HSP-Net ResNet-34" in built.note
    assert messages == [f"no --models given: reusing the synthetic model {ckpt}"]


def test_bench_without_models_trains_its_own(tiny_onnx, tiny_int8, tmp_path, monkeypatch):
    from cervrt.bench import trained
    from cervrt.bench.models import BuiltModels

    seen = []

    def fake_build(directory, settings, echo):
        seen.append((directory, settings))
        return BuiltModels((tiny_onnx,), "trained note", int8_absent="the INT8 export was refused: too few patches")

    monkeypatch.setattr(trained, "build_trained_models", fake_build)
    report = run_bench(BenchConfig(out=tmp_path / "r", batch_sizes=(2,), device="cpu", settings=TINY))
    assert seen == [(tmp_path / "r" / "models", TINY.model)] and report["note"] == "trained note"
    rows = {r["engine"]: r for r in report["cpu_fastpath"]["rows"]}
    assert rows["ORT INT8"] == {"engine": "ORT INT8", "absent": "the INT8 export was refused: too few patches"}



    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights")
    onnx_path = tmp_path / "model.onnx"
    meta = {"source_checkpoint": "model.pt", "source_sha256": file_sha256(ckpt)}
    assert find_reference(onnx_path, meta, ()) == ckpt
    assert find_reference(ckpt, {}, ()) == ckpt
    assert find_reference(onnx_path, {**meta, "source_sha256": "0" * 64}, (ckpt,)) is None
    assert find_reference(onnx_path, {}, (ckpt,)) is None


# ---- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "0", "1,x", "-2", "8,,1"])
def test_bad_batch_sizes(text):
    with pytest.raises(CervrtError, match=r"^batch_sizes takes"):
        parse_batch_sizes(text)


def test_batch_sizes_parse():
    assert parse_batch_sizes("8, 1,8") == (8, 1)


def test_config_refuses_missing_and_foreign_models(tmp_path):
    with pytest.raises(CervrtError, match="does not exist"):
        BenchConfig(out=tmp_path / "r", models=(tmp_path / "missing.onnx",))
    other = tmp_path / "model.txt"
    other.write_text("x")
    with pytest.raises(CervrtError, match=r"\.onnx"):
        BenchConfig(out=tmp_path / "r", models=(other,))
    with pytest.raises(CervrtError, match="needs an output directory"):
        BenchConfig(out=None)


def test_quick_changes_the_settings(tmp_path):
    assert BenchConfig(out=tmp_path, quick=True).settings.name == "quick"
    assert BenchConfig(out=tmp_path).settings.repeats > BenchConfig(out=tmp_path, quick=True).settings.repeats


@pytest.mark.parametrize("args, message", [
    (["--models", "missing.onnx", "--out", "r"], "error: model missing.onnx does not exist"),
    (["--batch-sizes", "1,a", "--out", "r"], "error: --batch-sizes takes"),
    ([], "error: cervrt bench needs --out"),
])
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 1
    assert result.output.strip().startswith(message) and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_cli_paper_prints_the_table():
    result = CliRunner().invoke(cli, ["bench", "--paper"])
    assert result.exit_code == 0, result.output
    assert "| DeepLab v3+ | 59.34M | 59.34M |" in result.output


# ---- the report on a tiny model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import onnx

    from cervrt.artifact import attach_metadata
    from cervrt.constants import PALETTE
    from tests.support.onnx_graphs import segmentation_graph
    from tests.support.tiny_models import tiny_metadata

    model = segmentation_graph()
    attach_metadata(model, tiny_metadata(format_version=1, arch="tiny", arch_kwargs={}, palette=PALETTE,
                                         has_classifier=False, params=256, macs_384=12_000_000, macs_patch=340_000))
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_int8(tiny_onnx) -> Path:
    import onnx

    from cervrt.artifact import attach_metadata, read_metadata
    from cervrt.export.int8 import quantize_int8
    from cervrt.timing import tissue_batch

    meta = read_metadata(tiny_onnx)
    quantized, _ = quantize_int8(onnx.load(tiny_onnx), tissue_batch(64, 8, meta["mean"], meta["std"]))
    attach_metadata(quantized, {**meta, "precision": "int8"})
    path = tiny_onnx.with_name("tiny.int8.onnx")
    onnx.save(quantized, path)
    return path


def _check_fastpath(section: dict, tiny_onnx: Path, tiny_int8: Path) -> None:
    from cervrt.engines.openvino import cpu_has_bf16

    rows = {r["engine"]: r for r in section["rows"]}
    assert section["model"] == str(tiny_onnx) and list(rows) == ["ORT FP32", "OV FP32", "OV BF16", "ORT INT8",
                                                                 "OV INT8"]
    assert rows["ORT FP32"]["ratio"] == 1.0 and rows["ORT FP32"]["agreement"] == 1.0
    assert rows["ORT INT8"]["file"] == str(tiny_int8) and rows["ORT INT8"]["runs"].endswith("int8")
    measured = [r for r in rows.values() if "absent" not in r]
    assert all(r["patches_per_s"] > 0 and 0 <= r["agreement"] <= 1 and 0 <= r["dice"] <= 1 for r in measured)
    assert ("absent" in rows["OV BF16"]) == (not cpu_has_bf16())


def test_report_on_a_tiny_model(tiny_onnx, tiny_int8, tmp_path):
    out = tmp_path / "report"
    plan = tmp_path / "broken.plan"  # no .plan.json beside it: reported as failed, the other model still runs
    plan.write_bytes(b"not an engine")
    config = BenchConfig(out=out, models=(tiny_onnx, plan, tiny_int8), batch_sizes=(1, 4), device="cpu",
                         settings=TINY)
    report = run_bench(config)
    saved = json.loads((out / "report.json").read_text())
    assert saved["machine"]["cpu"] and saved["machine"]["versions"]["numpy"] == np.__version__
    row, failed, _ = saved["models"]
    assert failed["path"] == str(plan) and "broken.plan.json" in failed["error"]
    assert "error" not in row, row.get("error")
    assert row["engine"] == "onnxruntime" and row["precision"] == "fp32" and row["macs_patch"] == 340_000
    assert [t["batch"] for t in row["latency"]] == [1, 4]
    assert all(t["repeats"] == 2 and t["patches_per_s"] > 0 for t in row["latency"])
    e2e = row["end_to_end"]
    assert e2e["slides"] == 1 and e2e["pixels"] == 256 * 256 and e2e["patches_run"] > 0
    assert set(e2e["seconds"]) >= {"read", "preprocess", "engine", "fuse", "write", "total"}
    assert e2e["end_to_end_over_engine"] >= 1.0
    assert 0.0 <= row["accuracy"]["ap"] <= 1.0 and row["accuracy"]["pixels"] > 0
    assert row["agreement"] is None and row["reference"] is None  # no checkpoint to compare with
    markdown = (out / "report.md").read_text()
    assert "tiny onnxruntime fp32" in markdown and saved["machine"]["cpu"] in markdown
    assert "failed: " in markdown
    assert report["models"][0]["label"] == "tiny onnxruntime fp32"
    for name in ("throughput_vs_macs.png", "accuracy_vs_throughput.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # atomic writes left no temporary file
    _check_fastpath(saved["cpu_fastpath"], tiny_onnx, tiny_int8)
    strides = saved["strides"]["rows"]
    assert [(r["paper_stride"], r["stride"]) for r in strides] == [(100, 16), (200, 32), (400, 64)]
    assert all(r["scaled"] and r["seconds_per_slide"] > 0 and 0 <= r["dice"] <= 1 for r in strides)
    assert strides[0]["patches_run"] > strides[1]["patches_run"] > strides[2]["patches_run"]
    assert "## CPU fast path" in markdown and "| 400 | 64 | 1x |" in markdown
