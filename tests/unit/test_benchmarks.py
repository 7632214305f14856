"""Benchmark metrics against scikit-learn and pycocotools called directly, on fixtures made here: a small
classifier on scikit-learn's bundled digits, and a small synthetic detection set."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from services.workflow_lineage import benchmarks


def digits_predictions():
    digits = load_digits()
    x, y = digits.data[:600], digits.target[:600]
    model = LogisticRegression(max_iter=200).fit(x[:300], y[:300])
    return y[300:], model.predict(x[300:])


def test_classification_equals_scikit_learn():
    truth, pred = digits_predictions()
    got = benchmarks.classification_metrics(truth.tolist(), pred.tolist())
    labels = [str(v) for v in range(10)]
    assert got["labels"] == labels
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert got["macro"]["f1"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert got["weighted"]["precision"] == pytest.approx(precision_score(truth, pred, average="weighted"))
    per_class = recall_score(truth, pred, average=None, labels=list(range(10)))
    assert [got["per_class"][k]["recall"] for k in labels] == pytest.approx(per_class.tolist())
    assert got["confusion_matrix"] == confusion_matrix(truth, pred, labels=list(range(10))).tolist()
    assert 0.8 < got["accuracy"] < 1.0  # a real classifier, not a degenerate one


def test_classification_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        benchmarks.classification_metrics([1, 2], [1])


def synthetic_detection(seed: int = 0, jitter: float = 3.0, miss: float = 0.2, false_positive: float = 0.3):
    """20 images with 1-4 boxes of two classes; detections jittered, some missed, some spurious."""
    rng = np.random.default_rng(seed)
    truth, found = {}, {}
    for i in range(20):
        name = f"img{i}.png"
        boxes, dets = [], []
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(20, 80, 2)
            category = str(rng.choice(["cat", "dog"]))
            boxes.append({"bbox": [x, y, w, h], "category": category})
            if rng.random() > miss:
                dets.append({"bbox": [x + rng.normal(0, jitter), y + rng.normal(0, jitter), w, h],
                             "category": category, "score": float(rng.uniform(0.5, 1))})
        if rng.random() < false_positive:
            dets.append({"bbox": [250.0, 250.0, 30.0, 30.0], "category": "cat", "score": 0.4})
        truth[name], found[name] = boxes, dets
    return truth, found


def cocoeval_directly(truth, found) -> np.ndarray:
    document, results = benchmarks.coco_documents(truth, found)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = document
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_detection_equals_cocoeval():
    truth, found = synthetic_detection()
    got = benchmarks.detection_metrics(truth, found)
    stats = cocoeval_directly(truth, found)
    assert got["map_50_95"] == pytest.approx(stats[0]) and got["map_50"] == pytest.approx(stats[1])
    assert 0.3 < got["map_50"] < 1.0
    assert 0 < got["precision_50"] < 1 and 0 < got["recall_50"] < 1 and 0.5 < got["mean_iou_50"] < 1


def test_perfect_detections_score_one():
    truth, _ = synthetic_detection()
    perfect = {name: [{**b, "score": 1.0} for b in boxes] for name, boxes in truth.items()}
    got = benchmarks.detection_metrics(truth, perfect)
    assert (got["map_50"], got["map_50_95"], got["precision_50"], got["recall_50"]) == (1.0, 1.0, 1.0, 1.0)
    assert got["mean_iou_50"] == pytest.approx(1.0)


def test_no_detections_and_unknown_images():
    truth, _ = synthetic_detection()
    got = benchmarks.detection_metrics(truth, {})
    assert got["map_50"] == 0.0 and got["recall_50"] == 0.0
    with pytest.raises(ValueError):
        benchmarks.detection_metrics(truth, {"nope.png": [{"bbox": [0, 0, 1, 1], "category": "cat", "score": 1}]})


def test_compare_lines_up_metrics_with_differences():
    rows = benchmarks.compare([{"metrics": {"accuracy": 0.8, "macro": {"f1": 0.7}}},
                               {"metrics": {"accuracy": 0.9, "macro": {"f1": 0.6}}}])
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["accuracy"]["values"] == [0.8, 0.9]
    assert by_metric["accuracy"]["diff"][1] == pytest.approx(0.1)
    assert by_metric["macro.f1"]["diff"] == [0.0, pytest.approx(-0.1)]


def test_speed_percentiles():
    got = benchmarks.speed([0.001, 0.002, 0.003, 0.1], rows=400, wall_s=2.0)
    assert got["p50_ms"] == pytest.approx(2.5) and got["rows_per_s"] == 200 and got["p99_ms"] > 90
