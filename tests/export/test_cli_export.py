"""``cervrt export`` from the shell: success writes beside the checkpoint; bad input is one line, exit 1, no files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cervrt.checkpoint import build_checkpoint, save_checkpoint
from tests.support.tiny_models import save_tiny_checkpoint


def _cervrt(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_export_ensemble_a_beside_the_checkpoint(tmp_path):
    """Ensemble-A: the assisted multiplication runs inside the graph, class_probs is a second output."""
    checkpoint = save_tiny_checkpoint(tmp_path / "ens.pt", arch="ensemble_a")
    result = _cervrt("export", str(checkpoint))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("parity fp32 onnx vs torch") for line in lines) == 2
    assert lines[-1].startswith(f"wrote {tmp_path / 'ens.onnx'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ens.onnx", "ens.pt"]
    info = json.loads(_cervrt("info", str(tmp_path / "ens.onnx"), "--json").stdout)
    assert info["kind"] == "onnx" and info["arch"] == "ensemble_a" and info["precision"] == "fp32"
    assert [o["name"] for o in info["outputs"]] == ["probs", "class_probs"]
    assert info["outputs"][1]["shape"] == ["N", 4]


def _evil(path: Path, marker: Path) -> Path:
    payload = (
        "import os, torch\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'format': 'cervrt.checkpoint', 'x': E()}}, r'{path}')\n"
    )
    subprocess.run([sys.executable, "-c", payload], check=True)
    return path


def _truncated(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes()[:4096])
    return path


def _foreign(path: Path) -> Path:
    torch.save({"weights": torch.zeros(3)}, path)
    return path


def _unknown_arch(path: Path) -> Path:
    save_checkpoint(path, build_checkpoint(torch.nn.Linear(1, 1), "unet", {}))
    return path


@pytest.mark.parametrize(
    ("make", "extra", "fragment"),
    [
        (lambda d, c: d / "missing.pt", [], "missing.pt does not exist"),
        (lambda d, c: _truncated(d / "cut.pt", c), [], "is not a readable PyTorch file (truncated or corrupt?)"),
        (lambda d, c: _foreign(d / "foreign.pt"), [], "is not a cervrt checkpoint"),
        (lambda d, c: _evil(d / "evil.pt", d / "pwned"), [], "was refused: it holds pickled objects"),
        (lambda d, c: _unknown_arch(d / "unet.pt"), [], "unknown architecture 'unet': choose one of"),
        (lambda d, c: c, ["-o", "{out}/nowhere/m.onnx"], "/nowhere does not exist"),
        (lambda d, c: c, ["--engine", "{out}/m.plan", "--batch", "8:1:32"], "--batch must be MIN:OPT:MAX"),
        (lambda d, c: c, ["--engine", "{out}/m.plan", "--batch", "a:b:c"], "got 'a:b:c'"),
        (lambda d, c: c, ["--engine", "{out}/m.plan", "--batch", "0:1:2"], "got '0:1:2'"),
        (lambda d, c: c, ["--opset", "17"], "--opset 17 is not supported"),
        (lambda d, c: c, ["--fp16-io"], "--fp16-io needs --precision fp16"),
    ],
    ids=["missing", "truncated", "not-a-checkpoint", "malicious", "unknown-arch", "missing-dir", "batch-order",
         "batch-text", "batch-zero", "opset", "fp16-io"],
)
def test_bad_input_is_one_line_exit_1_and_no_files(tmp_path, tiny_checkpoint, make, extra, fragment):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    checkpoint = make(inputs, tiny_checkpoint)
    before = sorted(p.name for p in inputs.iterdir())
    args = [a.format(out=out) for a in extra]
    if "-o" not in args:
        args += ["-o", str(out / "m.onnx")]
    result = _cervrt("export", str(checkpoint), *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert list(out.iterdir()) == [] and sorted(p.name for p in inputs.iterdir()) == before
    assert not (inputs / "pwned").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_engine_without_tensorrt_names_the_extra(tmp_path, tiny_checkpoint):
    result = _cervrt("export", str(tiny_checkpoint), "-o", str(tmp_path / "m.onnx"), "--engine",
                     str(tmp_path / "m.plan"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == 'error: tensorrt is not installed: run pip install "cervrt[tensorrt]"'
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only directories; test_export.py covers this via os.access")
def test_read_only_output_directory(tmp_path, tiny_checkpoint):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = _cervrt("export", str(tiny_checkpoint), "-o", str(out / "m.onnx"))
    finally:
        out.chmod(0o755)
    assert result.returncode == 1 and "is not writable" in result.stderr and list(out.iterdir()) == []
