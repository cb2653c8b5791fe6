"""MTCHI Algorithm 1 on hand-made confidence tables, the patch-list CSV and the pseudo-label checks."""

from __future__ import annotations

import numpy as np
import pytest

from cervrt.errors import CervrtError
from cervrt.train.pseudo_label import (
    Candidate,
    PseudoLabelConfig,
    PseudoPatchDataset,
    class_quotas,
    keep_top,
    pseudo_label,
    pseudo_label_accuracy,
    read_pseudo_labels,
    select_candidates,
    tissue_fraction,
    write_pseudo_labels,
)

CORNERS = np.array([(0, 0), (0, 10), (10, 0), (10, 10), (20, 0)])
PROBS = np.array([
    [0.70, 0.10, 0.10, 0.10],  # w0
    [0.10, 0.60, 0.20, 0.10],  # w1
    [0.40, 0.50, 0.05, 0.05],  # w2
    [0.20, 0.20, 0.50, 0.10],  # w3
    [0.60, 0.30, 0.05, 0.05],  # w4
])


def _picked(candidates):
    return [(c.y, c.x, c.label, c.confidence) for c in candidates]


def test_quotas_are_np_over_four_c_i_for_the_labelled_classes():
    labels = {"a": {1, 2}, "b": {2}, "c": {2, 4}}
    assert class_quotas(labels, 40) == {1: 10, 2: 3, 4: 10}  # c = 1, 3, 1; class 3 labels no image
    with pytest.raises(CervrtError, match="class 2, which labels 3 images: use np_total 12"):
        class_quotas(labels, 8)


def test_each_labelled_class_takes_its_top_windows_by_its_own_probability():
    picked = select_candidates("s", CORNERS, PROBS, {1, 2}, {1: 2, 2: 2, 3: 5, 4: 5}, size=10)
    # class 1 by p1: w0 .7, w4 .6 ; class 2 by p2: w1 .6, w2 .5 ; class 3 is not a label of this image
    assert _picked(picked) == [(0, 0, 1, 0.7), (0, 10, 2, 0.6), (10, 0, 2, 0.5), (20, 0, 1, 0.6)]
    assert {c.slide for c in picked} == {"s"} and {c.size for c in picked} == {10}


def test_a_window_picked_for_two_classes_keeps_the_more_confident_one():
    picked = select_candidates("s", CORNERS, PROBS, {1, 2}, {1: 3, 2: 2}, size=10)
    # class 1 top 3: w0, w4, w2 (.4); class 2 top 2: w1, w2 (.5) -> w2 stays once, as class 2
    assert _picked(picked) == [(0, 0, 1, 0.7), (0, 10, 2, 0.6), (10, 0, 2, 0.5), (20, 0, 1, 0.6)]


def test_ties_keep_window_order_and_equal_confidence_goes_to_the_higher_grade():
    probs = np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])
    picked = select_candidates("s", CORNERS[:3], probs, {1, 2}, {1: 2, 2: 1}, size=10)
    assert _picked(picked) == [(0, 0, 2, 0.5), (0, 10, 1, 0.5)]


def test_keep_top_keeps_the_most_confident_share_of_each_class_in_input_order():
    def cand(i, label, conf):
        return Candidate("s", i, 0, 10, label, conf)

    items = [cand(0, 1, 0.9), cand(1, 2, 0.8), cand(2, 1, 0.5), cand(3, 1, 0.7), cand(4, 3, 0.1)]
    assert [c.y for c in keep_top(items, 50)] == [0, 1, 3, 4]  # class 1: ceil(1.5) = 2; 2 and 3: ceil(0.5) = 1
    assert keep_top(items, 100) == items
    assert [c.y for c in keep_top(items, 1)] == [0, 1, 4]
    ten = [cand(i, 4, i / 10) for i in range(10)]
    assert [c.y for c in keep_top(ten, 30)] == [7, 8, 9]  # exactly 3, not ceil(3.0000000000000004)


def test_csv_round_trip_and_line_errors(tmp_path):
    items = [Candidate("w_0", 0, 32, 64, 3, 0.875), Candidate("w_1", 10, 0, 64, 1, 0.5)]
    path = tmp_path / "pseudo.csv"
    write_pseudo_labels(path, items)
    assert path.read_text().splitlines()[0] == "slide,y,x,size,pseudo_label,confidence"
    assert read_pseudo_labels(path) == items
    path.write_text("slide,y,x,size,pseudo_label,confidence\nw_0,0,0,64,5,0.9\n")
    with pytest.raises(CervrtError, match=r"line 2: pseudo_label 5 is outside 1\.\.4"):
        read_pseudo_labels(path)
    path.write_text("name,labels\nw_0,1\n")
    with pytest.raises(CervrtError, match="must start with the header line slide,y,x"):
        read_pseudo_labels(path)
    with pytest.raises(CervrtError, match="does not exist: make it with `cervrt pseudo-label`"):
        read_pseudo_labels(tmp_path / "missing.csv")


def test_tissue_fraction_counts_non_glass_pixels():
    image = np.full((8, 8, 3), 250, np.uint8)
    image[:, :4] = (150, 80, 160)  # stained left half
    corners = np.array([(0, 0), (0, 2), (0, 4), (4, 4)])
    assert tissue_fraction(image, corners, 4).tolist() == [1.0, 0.5, 0.0, 0.0]


def test_accuracy_against_truth_masks(tmp_path):
    import cv2

    mask = np.zeros((20, 20), np.uint8)
    mask[:10, :10] = 2
    mask[:10, 5:10] = 4  # window (0,0): 50 px of 2, 50 px of 4 -> tie goes to the higher grade, 4
    cv2.imwrite(str(tmp_path / "s.png"), mask)
    items = [Candidate("s", 0, 0, 10, 4, 0.9), Candidate("s", 0, 0, 10, 2, 0.8), Candidate("s", 10, 10, 10, 1, 0.7)]
    result = pseudo_label_accuracy(items, tmp_path)
    assert result["accuracy"] == pytest.approx(1 / 3) and result["class_present"] == pytest.approx(2 / 3)
    assert result["no_foreground"] == pytest.approx(1 / 3)
    assert result["confusion"][3][4] == 1 and result["confusion"][1][4] == 1 and result["confusion"][0][0] == 1


@pytest.fixture
def weak_dir(tmp_path):
    import cv2

    (tmp_path / "weak" / "images").mkdir(parents=True)
    for name in ("w_0", "w_1"):
        cv2.imwrite(str(tmp_path / "weak" / "images" / f"{name}.png"), np.full((80, 70, 3), 128, np.uint8))
    return tmp_path / "weak"


@pytest.mark.parametrize(("change", "message"), [
    ({"keep": 0}, r"^keep \(the percentage of S_p kept per class\) must be in \(0, 100\], got 0"),
    ({"keep": 100.5}, r"must be in \(0, 100\], got 100.5"),
    ({"np_total": 3}, "np_total .* must be at least 4"),
    ({"classifier": "nowhere.pt"}, "classifier checkpoint nowhere.pt does not exist: train one"),
])
def test_pseudo_label_refuses_bad_settings(weak_dir, tmp_path, change, message):
    config = PseudoLabelConfig(**{"classifier": "nowhere.pt", "weak_data": str(weak_dir), "labels": "x.csv",
                                  "out": str(tmp_path / "out"), **change})
    with pytest.raises(CervrtError, match=message):
        pseudo_label(config, progress=False)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def hspnet_checkpoint(tmp_path_factory):
    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    path = tmp_path_factory.mktemp("ckpt") / "hspnet.pt"
    model = create_model("hspnet", encoder="resnet34")
    save_checkpoint(path, build_checkpoint(model, "hspnet", {"encoder": "resnet34"}, patch_size=64))
    return path


@pytest.mark.parametrize(("csv_text", "message"), [
    ("name,labels\nw_0,1;5\n", "unknown class '5' for w_0"),
    ("name,labels\nw_0,1\nw_7,2\nw_8,3\n", r"2 labelled image\(s\) are not in .*images: w_7, w_8"),
])
def test_label_csv_problems_are_reported_before_any_work(weak_dir, tmp_path, hspnet_checkpoint, csv_text, message):
    from cervrt.checkpoint import build_checkpoint, save_checkpoint
    from cervrt.models import create_model

    classifier = tmp_path / "m.pt"
    save_checkpoint(classifier, build_checkpoint(create_model("classifier", encoder="resnet34"), "classifier",
                                                 {"encoder": "resnet34"}, patch_size=64))
    (tmp_path / "labels.csv").write_text(csv_text)
    config = PseudoLabelConfig(str(classifier), str(weak_dir), str(tmp_path / "labels.csv"), str(tmp_path / "out"),
                               stride=32)
    with pytest.raises(CervrtError, match=message):
        pseudo_label(config, progress=False)


def test_a_segmentation_checkpoint_without_classifier_is_refused(weak_dir, tmp_path, hspnet_checkpoint):
    config = PseudoLabelConfig(str(hspnet_checkpoint), str(weak_dir), "x.csv", str(tmp_path / "out"))
    with pytest.raises(CervrtError, match="holds a hspnet model, which has no patch classifier"):
        pseudo_label(config, progress=False)


def test_pseudo_patch_dataset_gives_labelled_patches_with_unknown_masks(weak_dir, tmp_path):
    path = tmp_path / "pseudo.csv"
    write_pseudo_labels(path, [Candidate("w_1", 16, 6, 64, 4, 0.9), Candidate("w_0", 0, 0, 64, 2, 0.8)])
    dataset = PseudoPatchDataset(path, weak_dir, patch=64)
    assert len(dataset) == 2 and dataset.class_counts.tolist() == [0, 1, 0, 1]
    image, mask, label = dataset[0]
    assert tuple(image.shape) == (3, 64, 64) and int(label) == 3 and bool((mask == 255).all())
    with pytest.raises(CervrtError, match="holds patches of 64 px but training uses 32 px"):
        PseudoPatchDataset(path, weak_dir, patch=32)
    write_pseudo_labels(path, [Candidate("w_0", 40, 0, 64, 2, 0.8)])
    with pytest.raises(CervrtError, match="reaches beyond w_0"):
        PseudoPatchDataset(path, weak_dir, patch=64)
