"""The command line: JSON info, one-line errors with a non-zero exit and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cervrt(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_info_arch_json():
    result = _cervrt("info", "--arch", "deeplabv3plus", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["arch"] == "deeplabv3plus" and info["arch_kwargs"] == {"encoder": "resnet101"}
    assert info["params"] == pytest.approx(59.34e6, rel=1e-3)
    assert info["macs_384"] == pytest.approx(49.97e9, rel=0.015)
    assert info["patch_size"] == 400 and info["macs_patch"] > info["macs_384"]
    assert info["classes"] == ["background", "normal", "CIN 1", "CIN 2", "CIN 3"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["info", "--arch", "unet"],
         "unknown architecture 'unet': choose one of classifier, deeplabv3plus, ensemble_a, hspnet"),
        (["info", "--arch", "hspnet", "--encoder", "vgg16"], "choose one of resnet34, resnet101"),
        (["info", "missing.pt"], "does not exist"),
        (["info"], "either an artifact file or --arch"),
        (["eval", "--model", "missing.pt", "--data", "."], "does not exist"),
        (["train", "--data", "nowhere", "--out", "run"], "nowhere"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, args, fragment):
    result = _cervrt(*args, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_malicious_checkpoint_via_info_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = (
        "import os, torch\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        f"torch.save({{'format': 'cervrt.checkpoint', 'x': E()}}, r'{tmp_path / 'evil.pt'}')\n"
    )
    subprocess.run([sys.executable, "-c", payload], check=True)
    result = _cervrt("info", str(tmp_path / "evil.pt"), "--json")
    assert result.returncode == 1 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_import_cervrt_stays_light():
    code = (
        "import sys, cervrt, cervrt.cli, cervrt.metrics, cervrt.runtime.tiling\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'cuda') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_help_explains_the_commands():
    result = _cervrt("--help")
    assert result.returncode == 0
    for command in ("demo", "synth", "train", "eval", "info"):
        assert command in result.stdout
