"""The sequential test's pairs for detection and segmentation (services/monitoring/challenge_pairs.py): per-image F1
at IoU 0.5 from the shared COCOeval matching, worked by hand, and which model each pair credits."""

from __future__ import annotations

import json

import pytest

from services.monitoring.challenge_pairs import pair_rows
from services.monitoring.continuous import challenge_evidence
from shared.evaluation import image_f1_50


def box(x, y, w, h, category, score=None):
    entry = {"bbox": [x, y, w, h], "category": category}
    return entry if score is None else entry | {"score": score}


def test_image_f1_at_iou_50_by_hand():
    truth = [box(0, 0, 10, 10, "a"), box(20, 20, 10, 10, "b")]
    scores = image_f1_50([
        (truth, [box(0, 0, 10, 10, "a", 0.9), box(20, 20, 10, 10, "b", 0.8)]),  # both found: 1
        # a shifted by 1 (IoU 81/119 = 0.68: a match), b found as "a" (wrong class: a false positive and a miss)
        (truth, [box(1, 1, 10, 10, "a", 0.5), box(20, 20, 10, 10, "a", 0.9)]),  # 2*1 / (2 + 2) = 0.5
        (truth, [box(5, 5, 10, 10, "a", 0.9)]),  # IoU 25/175 < 0.5: nothing matched, 0
        ([], []),  # nothing to find, nothing found: 1
        ([], [box(0, 0, 5, 5, "a", 0.3)]),  # a false positive only: 0
        (truth, []),  # all missed: 0
    ])
    assert scores == pytest.approx([1.0, 0.5, 0.0, 1.0, 0.0, 0.0])


def test_image_f1_on_masks():
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    inner = [1, 1, 10, 1, 10, 10, 1, 10]  # mask IoU 81/100 >= 0.5
    corner = [6, 6, 10, 6, 10, 10, 6, 10]  # 16/100 < 0.5
    scores = image_f1_50([([{"polygon": square, "category": "a"}], [{"polygon": inner, "category": "a", "score": 1}]),
                          ([{"polygon": square, "category": "a"}], [{"polygon": corner, "category": "a", "score": 1}])],
                         [(20, 20), (20, 20)])
    assert scores == pytest.approx([1.0, 0.0])


def fmt(boxes, classes, scores=None):
    """A PredictionFormat with [top, left, bottom, right] boxes."""
    return {"detection_classes": classes, "detection_scores": scores or [0.9] * len(classes),
            "detection_boxes": boxes}


def row(truth, champion, challenger, kind="detection"):
    return {"kind": kind, "prediction": json.dumps(champion), "shadow_prediction": challenger,
            "ground_truth": truth, "height": 32, "width": 32}


def test_detection_pairs_credit_the_model_with_the_higher_image_f1():
    truth = fmt([[0, 0, 8, 8], [8, 8, 16, 16]], [1, 0], [1.0, 1.0])
    right = fmt([[0, 0, 8, 8], [8, 8, 16, 16]], [1, 0])
    half = fmt([[0, 0, 8, 8], [8, 8, 16, 16]], [1, 1])  # the second box's class wrong: F1 0.5
    missed = fmt([], [], [])
    pairing = pair_rows([row(truth, right, half), row(truth, half, right), row(truth, right, right),
                         row(truth, half, half), row(truth, missed, half),
                         row({"detection_classes": [3], "detection_scores": [1.0]},
                             {"detection_classes": [3], "detection_scores": [0.9]},
                             {"detection_classes": [4], "detection_scores": [0.9]}, kind="classification")])
    # the classification row pairs by top class; then the detection rows in order
    assert pairing.pairs == [(True, False), (True, False), (False, True), (True, True), (False, False),
                             (False, True)]
    assert pairing.champion_scores == pytest.approx([1.0, 0.5, 1.0, 0.5, 0.0])
    assert pairing.challenger_scores == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5])
    assert pairing.metric == "mixed"


def test_segmentation_rows_with_polygons_are_scored_on_masks():
    square = [0, 0, 8, 0, 8, 8, 0, 8]
    truth = {"detection_classes": [1], "detection_scores": [1.0], "detection_boxes": [[0, 0, 8, 8]],
             "detection_masks": [square]}
    # same box, but the challenger's mask is a sliver: boxes would tie, masks do not
    good = truth | {"detection_scores": [0.9]}
    sliver = good | {"detection_masks": [[0, 0, 8, 0, 8, 1, 0, 1]]}
    pairing = pair_rows([row(truth, good, sliver, kind="segmentation")])
    assert pairing.pairs == [(True, False)] and pairing.metric == "f1_iou50"


def test_a_better_detector_is_promoted_and_the_evidence_reports_image_scores():
    truth = fmt([[0, 0, 8, 8]], [1], [1.0])
    good, bad = fmt([[0, 0, 8, 8]], [1]), fmt([[0, 0, 8, 8]], [0])
    rows = [row(truth, bad, good)] * 14 + [row(truth, good, good)] * 6
    evidence = challenge_evidence(pair_rows(rows), 0.05, 12)
    assert evidence.decision == "promote" and evidence.metric == "f1_iou50"
    assert (evidence.n01, evidence.n10, evidence.n11, evidence.pairs) == (14, 0, 6, 20)
    assert evidence.champion_score == pytest.approx(6 / 20) and evidence.challenger_score == 1.0
    assert evidence.champion_accuracy == pytest.approx(6 / 20) and evidence.challenger_accuracy == 1.0
    worse = challenge_evidence(pair_rows([row(truth, good, bad)] * 14), 0.05, 12)
    assert worse.decision == "roll_back" and worse.as_dict()["metric"] == "f1_iou50"
    # classification evidence is unchanged
    classified = challenge_evidence(pair_rows([row({"detection_classes": [1]}, {"detection_classes": [1]},
                                                   {"detection_classes": [2]}, kind="classification")] * 3), 0.05, 1)
    assert classified.metric == "top1" and classified.champion_score is None and classified.champion_accuracy == 1.0


def test_image_f1_counts_every_false_positive_not_cocos_first_100():
    truth = [box(0, 0, 10, 10, "a")]
    flood = [box(0, 0, 10, 10, "a", 0.99)] + [box(100 + 20 * i, 100, 10, 10, "a", 0.5) for i in range(400)]
    [score] = image_f1_50([(truth, flood)])
    assert score == pytest.approx(2 / (1 + 401))  # 0.005; COCO's 100 detections gave 2 / (1 + 100) = 0.0198
    square = [0, 0, 10, 0, 10, 10, 0, 10]
    masks = [{"polygon": square, "category": "a", "score": 0.99}] + [
        {"polygon": [x, 20, x + 2, 20, x + 2, 22, x, 22], "category": "a", "score": 0.5} for x in range(0, 600, 3)]
    [on_masks] = image_f1_50([([{"polygon": square, "category": "a"}], masks)], [(40, 640)])
    assert on_masks == pytest.approx(2 / (1 + 201))
