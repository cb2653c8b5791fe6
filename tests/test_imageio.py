"""cervrt.imageio: the decoder training and inference share, and the atomic PNG writer."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.imageio import decode_image, read_rgb, to_rgb, write_png


def test_write_png_round_trips_rgb_and_grey_and_leaves_no_temporary(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    write_png(tmp_path / "rgb.png", rgb)
    write_png(tmp_path / "grey.png", grey)
    assert np.array_equal(read_rgb(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(decode_image(tmp_path / "grey.png"), grey)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grey.png", "rgb.png"]


def test_to_rgb_composites_alpha_on_white_and_scales_16_bit(tmp_path):
    rgba = np.array([[[0, 0, 0, 0], [10, 20, 30, 255]]], np.uint8)
    assert to_rgb(rgba, tmp_path).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    assert to_rgb(np.array([[65535, 0]], np.uint16), tmp_path).tolist() == [[[255] * 3, [0] * 3]]
    with pytest.raises(CervrtError, match="float32 pixels: only 8- and 16-bit"):
        to_rgb(np.zeros((2, 2), np.float32), tmp_path)


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(CervrtError, match=r"cannot decode .*junk\.png: it is not an image file"):
        read_rgb(tmp_path / "junk.png")
    with pytest.raises(CervrtError, match=r"cannot read .*missing\.png"):
        decode_image(tmp_path / "missing.png")
