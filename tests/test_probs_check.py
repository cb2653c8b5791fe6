"""check_probabilities: the reasons a model's output is refused (NHWC, size, range, class sums)."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import ModelError
from cervrt.probs_check import check_probabilities


def _probs(n=2, c=5, h=8, w=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True), x


def test_probabilities_pass_and_fp16_rounding_is_within_tolerance():
    probs, _ = _probs()
    check_probabilities(probs, (2, 5, 8, 8))
    check_probabilities(probs.astype(np.float16), (2, 5, 8, 8))


def test_logits_are_refused_with_their_range_and_the_hint():
    _, logits = _probs()
    with pytest.raises(ModelError, match=r"not probabilities summing to 1 .* they look like logits; do X$"):
        check_probabilities(logits, (2, 5, 8, 8), hint="do X")


def test_sums_off_by_more_than_the_tolerance_are_refused():
    probs, _ = _probs()
    probs[0, 0, 0, 0] += 2e-3
    with pytest.raises(ModelError, match="class sums range"):
        check_probabilities(probs, (2, 5, 8, 8))
    probs[0, 0, 0, 0] -= 1.5e-3
    check_probabilities(probs, (2, 5, 8, 8))


def test_channel_last_other_sizes_and_shapes_and_nan():
    probs, _ = _probs()
    with pytest.raises(ModelError, match=r"channel-last \(NHWC\)"):
        check_probabilities(probs.transpose(0, 2, 3, 1), (2, 5, 8, 8))
    with pytest.raises(ModelError, match=r"the input's height and width \(16, 16\)"):
        check_probabilities(probs, (2, 5, 16, 16))
    with pytest.raises(ModelError, match=r"returns shape \(2, 5, 8, 8\), expected \(2, 4, 8, 8\)"):
        check_probabilities(probs, (2, 4, 8, 8))
    probs[1, 2, 3, 4] = np.nan
    with pytest.raises(ModelError, match="NaN or infinite"):
        check_probabilities(probs, (2, 5, 8, 8))
