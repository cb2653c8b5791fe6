"""The CLI for embedders: `cervrt info` never tracebacks and shows patch, normalisation and dtypes;
`cervrt bench` exits non-zero when a model failed; `cervrt serve` refuses an unguarded public address."""

from __future__ import annotations

import onnx
from click.testing import CliRunner

from cervrt.artifact import attach_metadata
from cervrt.cli import cli
from tests.support.foreign_models import foreign_model
from tests.support.tiny_onnx import tiny_metadata


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_info_on_hand_written_metadata_without_params_or_macs(tmp_path):
    graph = foreign_model()
    metadata = {k: v for k, v in tiny_metadata().items() if k not in ("params", "macs_384", "macs_patch")}
    attach_metadata(graph, {**metadata, "input": "pixel_values", "outputs": ["logits"]})
    onnx.save(graph, tmp_path / "by_hand.onnx")
    result = _run("info", tmp_path / "by_hand.onnx")
    assert result.exit_code == 0, result.output
    for text in ("params      unknown", "MACs        unknown at 384x384", "patch       64x64",
                 "normalise   (rgb / 255 - mean) / std, RGB, NCHW; mean 0.485,0.456,0.406, std 0.229,0.224,0.225",
                 "inputs      pixel_values float32 ['N', 3, 'H', 'W']", "outputs     logits float32"):
        assert text in result.output, (text, result.output)


def test_info_never_tracebacks(tmp_path):
    (tmp_path / "garbage.onnx").write_bytes(b"\x00\x01not onnx")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    onnx.save(foreign_model(), tmp_path / "foreign.onnx")
    for name in ("garbage.onnx", "garbage.pt", "foreign.onnx", "missing.plan", "notes.txt"):
        result = _run("info", tmp_path / name)
        assert result.exit_code == 1, (name, result.output)
        assert "Traceback" not in result.output and result.output.startswith("error: "), (name, result.output)
        assert len(result.output.strip().splitlines()) == 1, (name, result.output)


def test_bench_exits_non_zero_when_a_model_failed(monkeypatch, tmp_path):
    import cervrt.bench as bench

    report = {"models": [{"path": "a.onnx"}, {"path": "b.plan", "error": "a TensorRT plan needs a GPU"}]}
    monkeypatch.setattr(bench, "run_bench", lambda config, echo=None: report)
    monkeypatch.setattr(bench, "format_report", lambda report: "the tables")
    (tmp_path / "a.onnx").write_bytes(b"x")
    result = _run("bench", "--models", tmp_path / "a.onnx", "--out", tmp_path / "out", "--device", "cpu")
    assert result.exit_code == 1 and "the tables" in result.output
    assert "error: 1 of 2 model(s) failed: b.plan: a TensorRT plan needs a GPU" in result.output
    report["models"].pop()
    assert _run("bench", "--models", tmp_path / "a.onnx", "--out", tmp_path / "out").exit_code == 0


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    result = _run("serve", "--engine", tmp_path / "m.onnx", "--host", "0.0.0.0")
    assert result.exit_code == 1 and "is not loopback: pass --token TOKEN" in result.output
    assert "serve" in _run("--help").output and "adopt" in _run("--help").output
