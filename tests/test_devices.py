"""Device strings: the built-in forms, a backend's own kinds, and errors that list the valid forms."""

from __future__ import annotations

import pytest

from cervrt.devices import Device, parse_device
from cervrt.errors import CervrtError


@pytest.mark.parametrize(("text", "expected"), [
    ("auto", Device("auto")), ("cpu", Device("cpu")), ("cuda", Device("cuda")), ("cuda:1", Device("cuda", 1)),
    (" CUDA:0 ", Device("cuda", 0)),
])
def test_parse_device_accepts_the_documented_forms(text, expected):
    assert parse_device(text) == expected
    assert parse_device(expected) is expected


@pytest.mark.parametrize("text", ["gpu7", "cuda:", "cuda:x", "cpu:0", "auto:1", "", "tpu", 3, None])
def test_parse_device_refuses_anything_else_listing_the_valid_forms(text):
    with pytest.raises(CervrtError, match=r"unknown device .*use one of auto, cpu, cuda, cuda:N"):
        parse_device(text)


def test_device_string_and_ordinal():
    assert (str(Device("cuda", 2)), Device("cuda", 2).ordinal, Device("cuda").ordinal) == ("cuda:2", 2, 0)


def test_parse_device_accepts_a_backend_declared_kind_only_when_declared():
    assert parse_device("NPU:1", extra_kinds=("npu",)) == Device("npu", 1)
    assert parse_device("cuda:0", extra_kinds=("npu",)) == Device("cuda", 0)
    with pytest.raises(CervrtError, match=r"use one of auto, cpu, cuda, cuda:N, npu \(N"):
        parse_device("gpu", extra_kinds=("npu",))
    with pytest.raises(CervrtError, match="unknown device 'npu'"):
        parse_device("npu")
