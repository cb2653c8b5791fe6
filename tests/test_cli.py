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


def test_commands_load_lazily_and_infer_never_imports_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from cervrt.cli import cli\n"
        "result = CliRunner().invoke(cli, ['infer', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(' '.join(m for m in ('torch', 'cervrt.cli.train', 'cervrt.cli.infer') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["cervrt.cli.infer"]


def test_a_command_whose_extra_is_missing_is_listed_and_refused_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cervrt.cli._base import CervrtGroup

    (tmp_path / "needs_extra.py").write_text("import cervrt_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = CervrtGroup(name="t", lazy={"fit": ("needs_extra:fit", "train"), "info": ("cervrt.cli.info:info", "")})
    listing = CliRunner().invoke(group, ["--help"])
    assert listing.exit_code == 0
    assert "fit   (needs cervrt[train]: cervrt_absent_dependency is not installed)" in listing.output
    assert "Describe a checkpoint" in listing.output
    result = CliRunner().invoke(group, ["fit"])
    assert result.exit_code == 1
    assert result.output == 'error: cervrt_absent_dependency is not installed: run pip install "cervrt[train]"\n'


def test_the_infer_format_choices_come_from_the_output_registry():
    from click.testing import CliRunner

    from cervrt.cli import cli
    from cervrt.runtime.outputs import output_formats

    result = CliRunner().invoke(cli, ["infer", "--help"])
    assert f"[{'|'.join(output_formats())}]" in result.output
