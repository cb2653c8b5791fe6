"""``write_dataset(weak_size=...)``: weak regions as patch-sized tiles of full-size regions, with exact labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.synth import TRUTH_MASKS, synthesize_region, write_dataset
from cervrt.train.data import read_image, read_mask, read_weak_labels


def test_weak_tiles_are_cut_from_full_size_regions_with_their_labels(tmp_path):
    write_dataset(tmp_path / "ds", regions=1, size=128, seed=5, weak_regions=6, weak_size=64, progress=False)
    weak = tmp_path / "ds" / "weak"
    labels = read_weak_labels(weak / "labels.csv")
    assert sorted(labels) == [f"weak_{i:04d}" for i in range(6)]
    # the first weak source region is synthesize_region((seed, 1, 0)); its tiles with epithelium come first
    image, mask = synthesize_region(np.random.default_rng([5, 1, 0]), 128)
    tiles = [(y, x) for y in (0, 64) for x in (0, 64) if mask[y : y + 64, x : x + 64].any()]
    y, x = tiles[0]
    assert np.array_equal(read_image(weak / "images" / "weak_0000.png"), image[y : y + 64, x : x + 64])
    for name, classes in labels.items():
        truth = read_mask(weak / TRUTH_MASKS / f"{name}.png")
        assert truth.shape == (64, 64)
        assert set(classes) == set(np.unique(truth).tolist()) - {0}  # exact image-level labels, never empty


def test_weak_size_is_checked(tmp_path):
    with pytest.raises(CervrtError, match="weak_size"):
        write_dataset(tmp_path / "ds", regions=1, size=128, seed=0, weak_regions=2, weak_size=200, progress=False)


def test_same_seed_same_weak_tiles(tmp_path):
    for name in ("a", "b"):
        write_dataset(tmp_path / name, regions=1, size=96, seed=2, weak_regions=3, weak_size=48, progress=False)
    for i in range(3):
        a, b = (read_image(tmp_path / n / "weak" / "images" / f"weak_{i:04d}.png") for n in ("a", "b"))
        assert np.array_equal(a, b)


def _synth(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cervrt", "synth", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_synth_weak_size_flag_cuts_tiles_as_the_library_does(tmp_path):
    result = _synth("--out", "cli", "--regions", "1", "--size", "96", "--seed", "2", "--weak", "3", "--weak-size", "48",
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    write_dataset(tmp_path / "lib", regions=1, size=96, seed=2, weak_regions=3, weak_size=48, progress=False)
    for i in range(3):
        cli, lib = (read_image(tmp_path / n / "weak" / "images" / f"weak_{i:04d}.png") for n in ("cli", "lib"))
        assert cli.shape == (48, 48, 3) and np.array_equal(cli, lib)


def test_synth_weak_size_above_size_is_one_line(tmp_path):
    result = _synth("--out", "ds", "--regions", "1", "--size", "96", "--weak", "2", "--weak-size", "128", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "weak_size" in lines[0], result.stderr
