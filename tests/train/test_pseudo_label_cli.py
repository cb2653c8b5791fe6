"""`cervrt pseudo-label` and the weak options of `cervrt train`: one-line errors, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _cervrt(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


_REQUIRED = ["--weak-data", "weak", "--labels", "labels.csv", "--out", "out"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["pseudo-label", "--classifier", "m.pt", *_REQUIRED], "classifier checkpoint m.pt does not exist"),
        (["pseudo-label", "--classifier", "m.pt", "--keep", "0", *_REQUIRED], "must be in (0, 100], got 0.0"),
        (["pseudo-label", "--classifier", "m.pt", "--keep", "150", *_REQUIRED], "must be in (0, 100], got 150.0"),
        (["train", "--data", "d", "--out", "run", "--arch", "hspnet", "--pseudo-labels", "p.csv"],
         "hspnet has no patch classifier"),
        (["train", "--data", "d", "--out", "run", "--arch", "ensemble_a", "--pseudo-labels", "p.csv"],
         "pseudo_labels needs weak_data"),
        (["train", "--data", "d", "--out", "run", "--arch", "classifier", "--cls-epochs", "2"],
         "use epochs for a classifier"),
    ],
)
def test_bad_weak_options_are_one_line(tmp_path, args, fragment):
    result = _cervrt(*args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
