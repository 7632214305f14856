"""shared/evaluation.py (the scoring the lineage benchmarks and monitoring's get_stats share) against scikit-learn
called directly and against numbers worked out by hand from COCO's definitions."""

from __future__ import annotations

import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from shared import evaluation


def test_classification_equals_scikit_learn():
    digits = load_digits()
    x, y = digits.data[:600], digits.target[:600]
    truth = y[300:]
    pred = LogisticRegression(max_iter=200).fit(x[:300], y[:300]).predict(x[300:])
    got = evaluation.classification_metrics(truth.tolist(), pred.tolist())
    labels = [str(v) for v in range(10)]
    assert got["labels"] == labels and got["rows"] == 300
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert got["macro"]["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert got["weighted"]["precision"] == pytest.approx(precision_score(truth, pred, average="weighted"))
    per_class = recall_score(truth, pred, average=None, labels=list(range(10)))
    assert [got["per_class"][k]["recall"] for k in labels] == pytest.approx(per_class.tolist())
    assert got["confusion_matrix"] == confusion_matrix(truth, pred, labels=list(range(10))).tolist()
    assert 0.8 < got["accuracy"] < 1.0  # a real classifier, not a degenerate one


def test_classification_by_hand_with_classes_as_strings():
    # 1 and "1" are one class; labels sort as strings ("10" before "2")
    got = evaluation.classification_metrics([1, "1", 2, 10], ["1", 2, 2, 10])
    assert got["labels"] == ["1", "10", "2"] and got["accuracy"] == 0.75
    assert got["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert got["per_class"]["1"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert got["per_class"]["2"]["precision"] == 0.5
    assert got["weighted"]["recall"] == pytest.approx((0.5 * 2 + 1 + 1) / 4)


def test_classification_of_nothing_and_of_mismatched_lists():
    assert evaluation.classification_metrics([], []) == {"rows": 0}
    with pytest.raises(ValueError):
        evaluation.classification_metrics([1, 2], [1])


def box(x, y, w, h, category="cat", score=None):
    entry = {"bbox": [x, y, w, h], "category": category}
    return entry if score is None else {**entry, "score": score}


def test_detection_by_hand_over_cocos_iou_thresholds():
    # two images, one 10x10 box each; detections 6 and 8 wide at the same corner: IoU 0.6 (score 0.9) and 0.8
    # (score 0.8). At IoU 0.50-0.60 both match: AP 1. At 0.65-0.80 only the lower-scored one does: precision 1/2
    # up to recall 1/2, so AP = 51/101 recall points * 1/2. Above 0.80 neither: AP 0.
    images = [([box(0, 0, 10, 10)], [box(0, 0, 6, 10, score=0.9)]),
              ([box(0, 0, 10, 10)], [box(0, 0, 8, 10, score=0.8)])]
    got = evaluation.detection_metrics(images)
    half = 51 / 101 * 0.5
    assert got["map_50"] == pytest.approx(1.0) and got["map_75"] == pytest.approx(half)
    assert got["map_50_95"] == pytest.approx((3 * 1.0 + 4 * half) / 10)
    assert got["ar_100"] == pytest.approx((3 * 1.0 + 4 * 0.5) / 10)
    assert (got["precision_50"], got["recall_50"]) == (1.0, 1.0)
    assert got["mean_iou_50"] == pytest.approx((0.6 + 0.8) / 2)
    assert (got["images"], got["ground_truth_boxes"], got["detections"]) == (2, 2, 2)


def test_detection_counts_false_positives_misses_and_classes():
    # class "cat" found exactly; class "dog" detected where there is nothing (and its true box missed); a box
    # overlapping its truth by IoU 1/3 is no match at 0.5
    images = [([box(0, 0, 10, 10), box(20, 20, 10, 10, "dog")],
               [box(0, 0, 10, 10, score=0.9), box(50, 50, 10, 10, "dog", 0.8)]),
              ([box(0, 0, 10, 10)], [box(5, 0, 10, 10, score=0.7)])]
    got = evaluation.detection_metrics(images)
    assert (got["precision_50"], got["recall_50"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert got["mean_iou_50"] == pytest.approx(1.0)  # the one match is exact
    # cat: the exact match ranks first, then the miss: precision 1 up to recall 1/2 -> 51/101; dog: 0
    assert got["map_50"] == pytest.approx((51 / 101 + 0.0) / 2)


def test_detection_without_detections_or_without_truth():
    nothing_found = evaluation.detection_metrics([([box(0, 0, 10, 10)], [])])
    assert nothing_found["map_50"] == 0.0 and nothing_found["recall_50"] == 0.0
    assert nothing_found["precision_50"] == 0.0 and nothing_found["detections"] == 0
    nothing_to_find = evaluation.detection_metrics([([], [box(0, 0, 10, 10, score=0.5)])])
    assert nothing_to_find == {"images": 1, "ground_truth_boxes": 0, "detections": 1}


def test_masks_are_compared_as_rasterized_polygons():
    # a 10x10 square against a 6x10 one at its corner: mask IoU 0.6, as for the boxes; scored on masks the
    # detection's box (the same square as the truth's) does not count
    square, narrow = [0, 0, 10, 0, 10, 10, 0, 10], [0, 0, 6, 0, 6, 10, 0, 10]
    truth = [{"polygon": square, "category": "cat", "bbox": [0, 0, 10, 10]}]
    found = [{"polygon": narrow, "category": "cat", "score": 0.9, "bbox": [0, 0, 10, 10]}]
    got = evaluation.detection_metrics([(truth, found)], sizes=[(20, 20)])
    assert got["mean_iou_50"] == pytest.approx(0.6)
    assert got["map_50"] == pytest.approx(1.0) and got["map_50_95"] == pytest.approx(0.3)
    assert evaluation.detection_metrics([(truth, found)])["map_50_95"] == pytest.approx(1.0)  # on the boxes


def test_coco_box_from_top_left_bottom_right():
    assert evaluation.coco_box([10, 20, 30, 60]) == [20.0, 10.0, 40.0, 20.0]
