"""Benchmark arithmetic (seed 002 "model benchmarking"), computed with the field's own libraries: scikit-learn
for classification, pycocotools' COCOeval for object detection. Nothing here touches the network or the
database, so the numbers are unit-tested against the libraries called directly."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

DETECTION_SUMMARY = ("map_50_95", "map_50", "map_75", "map_small", "map_medium", "map_large",
                     "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large")


def classification_metrics(y_true: list[Any], y_pred: list[Any]) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 per class and averaged (macro, weighted), and the confusion matrix (rows:
    true classes, columns: predicted, in `labels` order)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if len(y_true) != len(y_pred) or not y_true:
        raise ValueError("need as many predictions as labels, and at least one")
    labels = sorted({*map(str, y_true), *map(str, y_pred)})
    truth, pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=labels, zero_division=0)
    averaged = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, pred, labels=labels, average=average, zero_division=0)
        averaged[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "labels": labels,
        "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                              "support": int(support[i])} for i, label in enumerate(labels)},
        "macro": averaged["macro"],
        "weighted": averaged["weighted"],
        "confusion_matrix": confusion_matrix(truth, pred, labels=labels).tolist(),
        "rows": len(truth),
    }


def coco_documents(ground_truth: dict[str, list[dict[str, Any]]], detections: dict[str, list[dict[str, Any]]]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO ground-truth and result documents from {image: [{bbox: [x, y, w, h], category}]} and
    {image: [{bbox, category, score}]} (categories are names; images unknown to the ground truth are refused)."""
    images = sorted(ground_truth)
    image_ids = {name: i + 1 for i, name in enumerate(images)}
    names = sorted({str(b["category"]) for boxes in ground_truth.values() for b in boxes}
                   | {str(d["category"]) for boxes in detections.values() for d in boxes})
    category_ids = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for name in images:
        for box in ground_truth[name]:
            x, y, w, h = (float(v) for v in box["bbox"])
            annotations.append({"id": len(annotations) + 1, "image_id": image_ids[name], "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0, "category_id": category_ids[str(box["category"])]})
    results = []
    for name, boxes in detections.items():
        if name not in image_ids:
            raise ValueError(f"detections name an image the dataset does not have: {name!r}")
        for box in boxes:
            results.append({"image_id": image_ids[name], "category_id": category_ids[str(box["category"])],
                            "bbox": [float(v) for v in box["bbox"]], "score": float(box["score"])})
    document = {"images": [{"id": image_ids[n], "file_name": n} for n in images], "annotations": annotations,
                "categories": [{"id": i, "name": n} for n, i in category_ids.items()]}
    return document, results


def detection_metrics(ground_truth: dict[str, list[dict[str, Any]]],
                      detections: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """COCO box metrics (mAP@0.5:0.95, mAP@0.5, ... as COCOeval's summary), plus precision, recall and mean IoU
    of the matches at IoU 0.5 (all areas, 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    document, results = coco_documents(ground_truth, detections)
    if not document["annotations"]:
        raise ValueError("the dataset has no ground-truth boxes")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = document
        coco.createIndex()
        found = coco.loadRes(results) if results else COCO()
        if not results:
            found.dataset = {"images": document["images"], "categories": document["categories"], "annotations": []}
            found.createIndex()
        evaluation = COCOeval(coco, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    summary = {key: float(value) for key, value in zip(DETECTION_SUMMARY, evaluation.stats, strict=True)}
    true_positives = detections_counted = ground_truths = 0
    ious: list[float] = []
    max_det = evaluation.params.maxDets[-1]
    for image in evaluation.evalImgs:
        if image is None or image["aRng"] != evaluation.params.areaRng[0] or image["maxDet"] != max_det:
            continue
        gt_ignore = np.asarray(image["gtIgnore"], dtype=bool)
        ground_truths += int((~gt_ignore).sum())
        matches = np.asarray(image["dtMatches"])[0] if len(image["dtIds"]) else np.zeros(0)
        ignored = np.asarray(image["dtIgnore"])[0].astype(bool) if len(image["dtIds"]) else np.zeros(0, bool)
        detections_counted += int((~ignored).sum())
        pair_ious = evaluation.ious.get((image["image_id"], image["category_id"]))
        for d, gt_id in enumerate(matches):
            if gt_id > 0 and not ignored[d]:
                true_positives += 1
                g = image["gtIds"].index(int(gt_id))
                ious.append(float(np.asarray(pair_ious)[d, g]))
    return {**summary,
            "precision_50": true_positives / detections_counted if detections_counted else 0.0,
            "recall_50": true_positives / ground_truths if ground_truths else 0.0,
            "mean_iou_50": float(np.mean(ious)) if ious else 0.0,
            "images": len(document["images"]), "ground_truth_boxes": len(document["annotations"]),
            "detections": len(results)}


def speed(latencies_s: list[float], rows: int, wall_s: float) -> dict[str, float]:
    """p50/p99 latency of the engine calls (ms) and rows per second over the whole run."""
    values = np.asarray(latencies_s) * 1000.0
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "rows_per_s": rows / wall_s if wall_s > 0 else 0.0, "calls": len(latencies_s), "rows": rows}


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves as `a.b.c` keys (what `compare` lines up), lists and strings left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def compare(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each metric with its value per candidate and the difference from the first candidate."""
    flats = [flatten(c["metrics"]) for c in candidates]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [f.get(key) for f in flats]
        base = values[0]
        rows.append({"metric": key, "values": values,
                     "diff": [None if v is None or base is None else v - base for v in values]})
    return rows
