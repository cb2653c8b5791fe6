"""Metrics on hand-computed cases; the confusion matrix against a pixel loop."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from cervrt import metrics as metrics_module
from cervrt.errors import CervrtError
from cervrt.metrics import (
    MetricAccumulator,
    class_names,
    confusion_matrix,
    format_metrics_table,
    metrics_from_confusion,
    segmentation_metrics,
)

# Column 0 is background truth: its predictions (4, 1, 0) must not count anywhere.
TARGET = np.array(
    [
        [0, 1, 1, 2, 1],
        [0, 1, 2, 2, 3],
        [0, 3, 3, 4, 4],
    ]
)
PRED = np.array(
    [
        [4, 1, 2, 2, 0],
        [1, 1, 2, 3, 3],
        [0, 3, 4, 4, 1],
    ]
)
# Counted (truth, prediction) pairs, 12 pixels:
#   row 0: (1,1) (1,2) (2,2) (1,0)
#   row 1: (1,1) (2,2) (2,3) (3,3)
#   row 2: (3,3) (3,4) (4,4) (4,1)
# |T| = 4, 3, 3, 2 and |P| = 3, 3, 3, 2 for classes 1..4 (one pixel predicted background);
# hits |P and T| = 2, 2, 2, 1.
#   Dice = 2*2/7, 2*2/6, 2*2/6, 2*1/4 = 4/7, 2/3, 2/3, 1/2
#   IoU  = 2/(7-2), 2/(6-2), 2/(6-2), 1/(4-1) = 2/5, 1/2, 1/2, 1/3
#   AP   = 7/12
#   WP   = 10/12: wrong are (1,0), predicted background although |0-1| = 1, and (4,1), |1-4| = 3
#   FwIoU = (4*2/5 + 3*1/2 + 3*1/2 + 2*1/3) / 12
DICE = (4 / 7, 2 / 3, 2 / 3, 1 / 2)
IOU = (2 / 5, 1 / 2, 1 / 2, 1 / 3)


def _assert_all_nan(result: dict) -> None:
    for key in ("dice", "miou", "ap", "wp", "fwiou"):
        assert math.isnan(result[key]), key
    assert all(math.isnan(v) for v in result["iou"].values())
    assert all(math.isnan(v) for v in result["dice_per_class"].values())


def test_confusion_matrix_rows_truth_columns_prediction():
    cm = confusion_matrix(np.array([2, 2, 0]), np.array([1, 2, 0]), num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])


def test_confusion_matrix_matches_pixel_loop(monkeypatch):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=(7, 9), dtype=np.uint8)
    target = rng.integers(0, 5, size=(7, 9), dtype=np.uint8)
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, y in zip(target.ravel(), pred.ravel(), strict=True):
        expected[t, y] += 1
    np.testing.assert_array_equal(confusion_matrix(pred, target), expected)
    monkeypatch.setattr(metrics_module, "_CHUNK", 5)  # many chunks, one partial
    np.testing.assert_array_equal(confusion_matrix(pred, target), expected)


def test_hand_computed_metrics():
    result = segmentation_metrics(PRED, TARGET)
    assert result["pixels"] == 12
    assert result["ap"] == pytest.approx(7 / 12)
    assert result["wp"] == pytest.approx(10 / 12)
    assert result["dice"] == pytest.approx(sum(DICE) / 4)
    assert result["miou"] == pytest.approx(sum(IOU) / 4)
    assert result["fwiou"] == pytest.approx((4 * 2 / 5 + 3 * 1 / 2 + 3 * 1 / 2 + 2 * 1 / 3) / 12)
    assert list(result["iou"]) == ["normal", "CIN 1", "CIN 2", "CIN 3"]
    assert list(result["iou"].values()) == pytest.approx(IOU)
    assert list(result["dice_per_class"].values()) == pytest.approx(DICE)


def test_background_truth_pixels_are_ignored():
    pred = PRED.copy()
    pred[:, 0] = [2, 3, 4]  # change only predictions on background truth
    assert segmentation_metrics(pred, TARGET) == segmentation_metrics(PRED, TARGET)


def test_predicted_background_is_wrong_in_wp():
    # truth 1 predicted 0 is within the window numerically but counts wrong; truth 1 predicted 2 counts right
    result = segmentation_metrics(np.array([0, 2]), np.array([1, 1]))
    assert result["wp"] == pytest.approx(1 / 2)
    assert result["ap"] == 0.0


def test_absent_class_is_nan_and_left_out_of_the_mean():
    # classes 1, 2, 4 occur; 3 occurs nowhere
    # class 1: hit 1, |P| 2, |T| 1 -> Dice 2/3, IoU 1/2
    # class 2: hit 0, |P| 1, |T| 1 -> Dice 0,   IoU 0
    # class 4: hit 1, |P| 1, |T| 2 -> Dice 2/3, IoU 1/2
    result = segmentation_metrics(np.array([[1, 1], [4, 2]]), np.array([[1, 2], [4, 4]]))
    assert math.isnan(result["iou"]["CIN 2"])
    assert math.isnan(result["dice_per_class"]["CIN 2"])
    assert result["dice"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    assert result["miou"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    # FwIoU: truth weights 1, 1, 2 of 4 pixels -> (1/2 + 0 + 2 * 1/2) / 4
    assert result["fwiou"] == pytest.approx(3 / 8)


def test_class_only_predicted_counts_zero_in_the_mean():
    # class 1: hit 1, |P| 1, |T| 2 -> Dice 2/3, IoU 1/2; class 3 only predicted -> 0, 0
    result = segmentation_metrics(np.array([1, 3]), np.array([1, 1]))
    assert result["iou"]["CIN 2"] == 0.0
    assert result["dice"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["miou"] == pytest.approx((1 / 2 + 0) / 2)
    assert result["fwiou"] == pytest.approx(1 / 2)


def test_no_foreground_truth_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = segmentation_metrics(np.array([[1, 2], [0, 0]]), np.zeros((2, 2), dtype=np.int64))
        empty = MetricAccumulator().compute()
    assert result["pixels"] == 0 and empty["pixels"] == 0
    _assert_all_nan(result)
    _assert_all_nan(empty)


def test_perfect_prediction():
    result = segmentation_metrics(TARGET, TARGET)
    for key in ("dice", "miou", "ap", "wp", "fwiou"):
        assert result[key] == pytest.approx(1.0)


def test_other_class_counts():
    # 3 classes: 0 background, 1, 2; pairs (1,1) (1,2) (2,2): all within the window
    result = segmentation_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), num_classes=3)
    assert list(result["iou"]) == ["class 1", "class 2"]
    assert result["iou"]["class 1"] == pytest.approx(1 / 2)
    assert result["iou"]["class 2"] == pytest.approx(1 / 2)
    assert result["ap"] == pytest.approx(2 / 3)
    assert result["wp"] == pytest.approx(1.0)
    # 7 classes: grade distance 1 still inside the window, 2 outside
    result = segmentation_metrics(np.array([5, 4]), np.array([6, 6]), num_classes=7)
    assert result["wp"] == pytest.approx(1 / 2)
    assert class_names(7)[-1] == "class 6"


def test_accumulator_equals_metrics_of_the_concatenation():
    rng = np.random.default_rng(1)
    first = rng.integers(0, 5, size=(2, 6, 6)), rng.integers(0, 5, size=(2, 6, 6))
    second = rng.integers(0, 5, size=(3, 4)), rng.integers(0, 5, size=(3, 4))
    acc = MetricAccumulator()
    acc.update(*first)
    acc.update(*second)
    pred = np.concatenate([first[0].ravel(), second[0].ravel()])
    target = np.concatenate([first[1].ravel(), second[1].ravel()])
    assert acc.compute() == segmentation_metrics(pred, target)
    np.testing.assert_array_equal(acc.confusion, confusion_matrix(pred, target))


def test_accumulator_merge_and_reset():
    one, two = MetricAccumulator(), MetricAccumulator()
    one.update(PRED[:2], TARGET[:2])
    two.update(PRED[2:], TARGET[2:])
    one += two
    assert one.compute() == segmentation_metrics(PRED, TARGET)
    one.confusion[:] = 0  # a copy: the accumulator is unchanged
    assert one.compute()["pixels"] == 12
    one.reset()
    assert one.compute()["pixels"] == 0
    with pytest.raises(CervrtError, match="3 and 5 classes"):
        MetricAccumulator(5).merge(MetricAccumulator(3))


def test_metrics_are_json_friendly():
    result = segmentation_metrics(PRED, TARGET)
    assert json.loads(json.dumps(result)) == result
    assert isinstance(result["pixels"], int) and isinstance(result["dice"], float)


def test_metrics_from_confusion_matches():
    cm = confusion_matrix(PRED, TARGET)
    assert metrics_from_confusion(cm) == segmentation_metrics(PRED, TARGET)
    assert metrics_from_confusion(cm.tolist()) == segmentation_metrics(PRED, TARGET)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), r"\(4, 4\) differs from target shape \(4, 5\)"),
        (np.array([0, 5, 7]), np.array([0, 1, 1]), "prediction holds values 5, 7 outside"),
        (np.array([0, 1]), np.array([-1, 1]), "target holds values -1 outside the class range 0..4"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "integer class labels, got dtype float64"),
    ],
)
def test_bad_input_raises(pred, target, match):
    with pytest.raises(CervrtError, match=match):
        confusion_matrix(pred, target)


@pytest.mark.parametrize("cm", [np.zeros((5, 4), int), np.zeros((1, 1), int), -np.ones((5, 5), int), np.ones((5, 5))])
def test_bad_confusion_raises(cm):
    with pytest.raises(CervrtError, match="confusion matrix"):
        metrics_from_confusion(cm)


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True])
def test_bad_num_classes_raises(num_classes):
    with pytest.raises(CervrtError, match="num_classes"):
        MetricAccumulator(num_classes)


def test_format_metrics_table():
    table = format_metrics_table(segmentation_metrics(np.array([[1, 1], [4, 2]]), np.array([[1, 2], [4, 4]])))
    lines = table.splitlines()
    assert lines[0].split() == ["Dice", "mIoU", "AP", "WP", "FwIoU", "pixels"]
    assert lines[1].split()[-1] == "4"
    assert "0.4444" in lines[1]  # Dice 4/9
    assert lines[0].index("mIoU") == lines[1].index(lines[1].split()[1])  # columns aligned
    cin2 = next(line for line in lines if line.startswith("CIN 2"))
    assert cin2.split()[2:] == ["n/a", "n/a"]
    with pytest.raises(CervrtError, match="lacks"):
        format_metrics_table({"dice": 0.5})


def test_metrics_never_imports_torch():
    code = "import sys, cervrt.metrics; sys.exit('torch' in sys.modules)"
    root = str(metrics_module.__file__).rsplit("/cervrt/", 1)[0]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
