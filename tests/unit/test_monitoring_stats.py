"""get_stats arithmetic (services/monitoring/stats.py) against numbers computed by hand or independently."""

from __future__ import annotations

import math
import random
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.monitoring import stats
from shared.errors import Conflict, InvalidRequest
from shared.messages.monitoring_feedback import SERVICE_METRICS

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def row(kind="classification", prediction=None, review=None, features=None, shadow=None, latency=0.01, minutes=0,
        origin="predict"):
    return {"id": uuid.uuid4(), "predicted_at": T0 + timedelta(minutes=minutes), "origin": origin, "source": None,
            "tags": [], "model_version": None, "kind": kind, "prediction": prediction, "shadow_prediction": shadow,
            "latency": latency, "shadow_latency": None, "height": 10, "width": 20,
            "features": features or {"brightness_mean": 100.0}, "review": review}


def cls(top: int, other: int = 99) -> dict:
    return {"detection_classes": [other, top], "detection_scores": [0.1, 0.9]}


def reviewed(decision: str, truth: dict) -> dict:
    return {"decision": decision, "ground_truth": truth}


def test_unknown_service_lists_the_valid_values():
    with pytest.raises(InvalidRequest) as caught:
        stats.check_service("PREDICTIONS_EVERYTHING")
    assert all(name in caught.value.msg for name in SERVICE_METRICS)
    assert stats.check_service("ServiceMetrics.predictions_data") == "PREDICTIONS_DATA"


def test_reference_metrics_need_a_reference():
    for service in ("PREDICTIONS_OUTLYING_SCORE", "AGGREGATED_DRIFTING_PREDICTIONS"):
        with pytest.raises(Conflict):
            stats.compute(service, [row(prediction=cls(1))], None)


def test_classification_stats_match_a_hand_count():
    truth = [1, 1, 2, 0]
    predicted = [1, 2, 2, 0]
    rows = [row(prediction=cls(p), review=reviewed("accepted" if p == t else "corrected",
                                                    {"detection_classes": [t], "detection_scores": [1.0]}))
            for t, p in zip(truth, predicted, strict=True)]
    rows.append(row(prediction=cls(0)))  # not reviewed: left out
    out = stats.compute("REVIEWS_CLASSIFICATION_STATS", rows, None)
    champion = out["champion"]
    assert (out["reviews"], out["accepted"], out["corrected"]) == (4, 3, 1)
    assert champion["accuracy"] == 0.75 and champion["labels"] == ["0", "1", "2"]
    # rows true, columns predicted: 0->0, 1->1, 1->2, 2->2
    assert champion["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert champion["per_class"]["1"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                          "support": 2}
    assert champion["per_class"]["2"]["precision"] == 0.5
    assert champion["macro"]["recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["shadow"] == {"rows": 0}


def test_shadow_classification_is_scored_on_the_same_reviews():
    rows = [row(prediction=cls(1), shadow=cls(2), review=reviewed("accepted", cls(1))),
            row(prediction=cls(1), shadow=cls(1), review=reviewed("accepted", cls(1)))]
    out = stats.compute("REVIEWS_CLASSIFICATION_STATS", rows, None)
    assert out["champion"]["accuracy"] == 1.0 and out["shadow"]["accuracy"] == 0.5


def detection(boxes, classes, scores=None):
    return {"detection_boxes": boxes, "detection_classes": classes,
            "detection_scores": scores or [0.9] * len(classes)}


def test_detection_stats_follow_iou_thresholds():
    # ground truth [top, left, bottom, right] = 10x10; detection 10 tall, 6 wide: IoU 0.6 -> a match at IoU 0.50,
    # 0.55 and 0.60 of COCO's ten thresholds, so AP@[.5:.95] = 3/10 and AP@.5 = 1
    truth = detection([[0, 0, 10, 10]], [3])
    rows = [row("detection", detection([[0, 0, 10, 6]], [3]), reviewed("corrected", truth))]
    out = stats.compute("REVIEWS_OBJECT_DETECTION_STATS", rows, None)["champion"]
    assert out["map_50"] == pytest.approx(1.0) and out["map_50_95"] == pytest.approx(0.3)
    assert out["map_75"] == pytest.approx(0.0)
    assert (out["precision_50"], out["recall_50"], out["ground_truth_boxes"], out["detections"]) == (1.0, 1.0, 1, 1)


def test_detection_stats_count_false_positives_and_misses():
    truth = detection([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    found = detection([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2], [0.9, 0.8])  # class 2 box in the wrong place
    out = stats.compute("REVIEWS_OBJECT_DETECTION_STATS", [row("detection", found, reviewed("corrected", truth))],
                        None)["champion"]
    assert (out["precision_50"], out["recall_50"]) == (0.5, 0.5)
    assert out["map_50"] == pytest.approx(0.5)  # class 1 AP 1, class 2 AP 0


def test_label_distributions():
    rows = [row(prediction=cls(1), review=reviewed("accepted", cls(1))),
            row(prediction=cls(1), review=reviewed("corrected", cls(2))),
            row(prediction=cls(2))]
    out = stats.compute("REVIEWS_LABEL_DISTRIBUTION_STATS", rows, None)
    assert out["ground_truth"]["counts"] == {"1": 1, "2": 1} and out["predicted"]["counts"] == {"1": 2}
    assert out["difference"] == {"1": 1, "2": -1}
    reference = {"labels": {"counts": {"1": 1, "2": 3}, "proportions": {"1": 0.25, "2": 0.75}}, "features": {}}
    aggregated = stats.compute("AGGREGATED_LABEL_DISTRIBUTION", rows, reference)
    assert aggregated["predicted"]["proportions"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(1 / 3)}
    assert aggregated["total_variation"] == pytest.approx(0.5 * (abs(2 / 3 - 0.25) + abs(1 / 3 - 0.75)))
    expected = (2 / 3 - 0.25) * math.log((2 / 3) / 0.25) + (1 / 3 - 0.75) * math.log((1 / 3) / 0.75)
    assert aggregated["psi"] == pytest.approx(expected)


def test_outlying_score_and_drift_against_a_reference():
    reference_images = [{"brightness_mean": v, "width": 20.0} for v in (90.0, 100.0, 110.0, 100.0)]
    reference = stats.build_reference(reference_images, [["1"], ["1"], ["2"], []])
    assert reference["features"]["brightness_mean"]["mean"] == 100.0
    std = float(np.std([90, 100, 110, 100]))
    assert reference["features"]["brightness_mean"]["std"] == pytest.approx(std)
    assert reference["labels"]["counts"] == {"1": 2, "2": 1}
    # width never varied (std 0): compared on a unit scale
    near, far = {"brightness_mean": 100.0 + std, "width": 20.0}, {"brightness_mean": 200.0, "width": 21.0}
    assert stats.outlying_score(near, reference) == pytest.approx(math.sqrt((1.0 + 0.0) / 2))
    far_score = math.sqrt((((200 - 100) / std) ** 2 + 1.0) / 2)
    assert stats.outlying_score(far, reference) == pytest.approx(far_score)
    rows = [row(features=near), row(features=far)]
    scored = stats.compute("PREDICTIONS_OUTLYING_SCORE", rows, reference)
    assert [s["outlying"] for s in scored["scores"]] == [False, True] and scored["outlying"] == 1
    drift = stats.compute("AGGREGATED_DRIFTING_PREDICTIONS", rows, reference)
    assert (drift["drifting"], drift["drifting_ratio"]) == (1, 0.5)
    summary = reference["features"]["brightness_mean"]
    actual = stats.bin_proportions(summary["edges"], [100.0 + std, 200.0])
    assert drift["features"]["brightness_mean"]["psi"] == pytest.approx(stats.psi(summary["proportions"], actual))
    assert drift["features"]["width"]["mean_shift"] == pytest.approx(0.5)


def test_psi_by_hand():
    assert stats.psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert stats.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) - 0.4 * math.log(0.2))
    assert stats.bin_proportions([1.0, 2.0], [0.5, 1.0, 1.5, 3.0]) == [0.25, 0.5, 0.25]


def test_aggregated_predictions_data_and_detection_stats():
    rows = [row(latency=0.1, minutes=0, origin="monitor"), row(latency=0.3, minutes=70)]
    for r in rows:
        r["prediction"] = cls(1)
    out = stats.compute("AGGREGATED_PREDICTIONS_DATA", rows, None)
    assert out["count"] == 2 and out["origin"] == {"monitor": 1, "predict": 1}
    assert out["latency"]["mean"] == pytest.approx(0.2) and out["latency"]["max"] == 0.3
    assert out["per_hour"] == {T0.isoformat(): 1, (T0 + timedelta(hours=1)).isoformat(): 1}
    boxes = [row("detection", detection([[0, 0, 5, 4], [0, 0, 10, 20]], [1, 2], [0.5, 0.7])),
             row("detection", detection([], []))]
    det = stats.compute("AGGREGATED_OBJECT_DETECTION_STATS", boxes, None)
    assert (det["images"], det["boxes"], det["boxes_per_image"]["mean"]) == (2, 2, 1.0)
    assert det["relative_area"]["mean"] == pytest.approx((20 / 200 + 200 / 200) / 2)
    assert det["per_class"] == {"1": {"boxes": 1, "mean_score": 0.5}, "2": {"boxes": 1, "mean_score": 0.7}}
    data = stats.compute("PREDICTIONS_DATA", rows, None)
    assert data["count"] == 2 and {p["id"] for p in data["predictions"]} == {str(r["id"]) for r in rows}


def test_labels_of_reads_the_usual_shapes():
    assert stats.labels_of({"ground_truth": {"detection_classes": [1, 2]}}) == ["1", "2"]
    assert stats.labels_of({"boxes": [{"bbox": [0, 0, 1, 1], "category": "cat"}]}) == ["cat"]
    assert stats.labels_of({"label": 3}) == ["3"] and stats.labels_of(None) == []


def segmentation(polygons, classes, scores=None):
    boxes = [[min(p[1::2]), min(p[0::2]), max(p[1::2]), max(p[0::2])] for p in polygons]
    return {"detection_classes": classes, "detection_scores": scores or [0.9] * len(classes),
            "detection_boxes": boxes, "detection_masks": polygons}


def test_segmentation_reviews_are_also_scored_on_masks():
    square, other = [2, 2, 12, 2, 12, 12, 2, 12], [20, 20, 30, 20, 30, 30, 20, 30]
    exact = row("segmentation", segmentation([square], [1]), reviewed("accepted", segmentation([square], [1])))
    # the second image: one mask right, one of class 2 where the truth has nothing (and the truth's class-2 mask
    # missed): class 1 AP 1, class 2 AP 0
    truth = segmentation([square, other], [1, 2])
    found = segmentation([square, [40, 2, 48, 2, 48, 8, 40, 8]], [1, 2], [0.9, 0.8])
    mixed = row("segmentation", found, reviewed("corrected", truth))
    for r in (exact, mixed):
        r["height"], r["width"] = 50, 50
    out = stats.compute("REVIEWS_OBJECT_DETECTION_STATS", [exact, mixed], None)
    masks = out["champion_masks"]
    assert masks["ground_truth_boxes"] == 3 and masks["detections"] == 3
    assert (masks["precision_50"], masks["recall_50"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert masks["map_50"] == pytest.approx(0.5)
    only_exact = stats.compute("REVIEWS_OBJECT_DETECTION_STATS", [exact], None)["champion_masks"]
    assert only_exact["map_50_95"] == pytest.approx(1.0)


def test_every_outlying_score_at_once_has_the_bits_of_one_at_a_time():
    """stats_columns.outlying_scores (numpy over columns, get_stats' path) equals stats.outlying_score per row exactly,
    with features missing from some rows and a feature that did not vary; numpy's own square would not."""
    from services.monitoring import stats_columns

    rng = random.Random(3)
    reference = stats.build_reference([{"a": rng.gauss(0, 5), "b": rng.gauss(100, 30), "c": 3.0} for _ in range(50)],
                                      [[]])
    rows = [{k: v for k, v in {"a": rng.gauss(0, 5), "b": rng.gauss(100, 30), "c": rng.choice((3.0, 4.0))}.items()
             if rng.random() < 0.9} for _ in range(20_000)]
    columns = [[row.get(name) for row in rows] for name in reference["features"]]
    scores = stats_columns.outlying_scores(columns, reference, len(rows)).tolist()
    assert scores == [stats.outlying_score(row, reference) for row in rows]
    standardized = (np.array(columns[0], dtype=np.float64) - reference["features"]["a"]["mean"]) \
        / reference["features"]["a"]["std"]
    finite = standardized[~np.isnan(standardized)]
    assert (finite ** 2 != np.array([v ** 2 for v in finite.tolist()])).any()  # why the square goes through pow


def test_the_hour_fold_folds_only_after_predictions_were_written():
    """An idle monitoring service opens no PostgreSQL connection to fold nothing; a written prediction (or a fold that
    failed) makes the next pass fold."""
    import asyncio

    from services.monitoring import aggregates

    class Pool:
        folds = 0
        fail = False

        async def fetchval(self, query: str) -> int:
            assert query == "SELECT fold_prediction_hours()"
            self.folds += 1
            if self.fail:
                raise OSError("database away")
            return 3

    pool = Pool()
    fold = aggregates.HourFold(pool)
    aggregates.HourFold.pending = True  # as a process starts (the class default): what an earlier run left
    assert asyncio.run(fold.sweep()) == 3
    assert asyncio.run(fold.sweep()) == 0 and pool.folds == 1
    aggregates.note_written()
    pool.fail = True
    with pytest.raises(OSError):
        asyncio.run(fold.sweep())
    pool.fail = False
    assert asyncio.run(fold.sweep()) == 3 and pool.folds == 3  # the failed fold is tried again
    assert asyncio.run(fold.sweep()) == 0 and pool.folds == 3
