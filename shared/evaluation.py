"""Scoring a model's answers against the truth, written once for the two places that do it: the lineage
benchmarks (services/workflow_lineage/benchmarks.py: a dataset run through deployments) and monitoring's get_stats
(services/monitoring/stats.py: reviewed predictions). Classification metrics come from scikit-learn, detection
metrics from pycocotools' COCOeval; both are imported inside the functions, so a service loads them when it first
scores something, not at start. Nothing here touches the network or the database: tests/unit/test_evaluation.py
checks the numbers against the libraries called directly and against hand computations."""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

from shared.lean_imports import lazy_module

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy_module("numpy")  # imported by the first evaluation, not when a service starts (~10 MiB of RSS)

DETECTION_SUMMARY = ("map_50_95", "map_50", "map_75", "map_small", "map_medium", "map_large",
                     "ar_1", "ar_10", "ar_100", "ar_small", "ar_medium", "ar_large")
"""The names of COCOeval's twelve summary numbers, in the order of its `stats`."""


def coco_box(box: list[float]) -> list[float]:
    """[top, left, bottom, right] (the prediction format's order) as COCO's [x, y, width, height]."""
    top, left, bottom, right = (float(v) for v in box[:4])
    return [left, top, right - left, bottom - top]


def classification_metrics(y_true: list[Any], y_pred: list[Any]) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 per class and averaged (macro, weighted), and the confusion matrix (rows: true
    classes, columns: predicted, in `labels` order), with scikit-learn; classes compare as strings. {"rows": 0}
    when there is nothing to score; ValueError when the lists differ in length."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"need as many predictions as labels ({len(y_pred)} predictions, {len(y_true)} labels)")
    truth, pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    if not truth:
        return {"rows": 0}
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = sorted({*truth, *pred})
    # scikit-learn on integer codes: the same numbers as on the strings, without its slow object-array paths
    code = {label: index for index, label in enumerate(labels)}
    truth_codes = np.fromiter((code[v] for v in truth), dtype=np.int64, count=len(truth))
    pred_codes = np.fromiter((code[v] for v in pred), dtype=np.int64, count=len(pred))
    codes = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(truth_codes, pred_codes, labels=codes,
                                                                     zero_division=0)
    averaged = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth_codes, pred_codes, labels=codes, average=average,
                                                     zero_division=0)
        averaged[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    return {"rows": len(truth), "accuracy": float(accuracy_score(truth_codes, pred_codes)), "labels": labels,
            "per_class": {label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                  "support": int(support[i])} for i, label in enumerate(labels)},
            "macro": averaged["macro"], "weighted": averaged["weighted"],
            "confusion_matrix": confusion_matrix(truth_codes, pred_codes, labels=codes).tolist()}


def detection_metrics(images: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
                      sizes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """COCO metrics with pycocotools' COCOeval over (ground truth, detections) per image: boxes as
    {bbox: [x, y, w, h], category[, score]} (IoU on boxes), or, when `sizes` gives each image's (height, width),
    polygons as {polygon: [x1, y1, ...], category[, score]} (IoU on masks). Categories are names. Its twelve summary
    numbers (DETECTION_SUMMARY), and the precision, recall and mean IoU of the matches at IoU 0.5 (all areas, 100
    detections per image); only the counts when the ground truth has nothing to find."""
    evaluation, truths, detections = _evaluated(images, sizes)
    if not truths:
        return {"images": len(images), "ground_truth_boxes": 0, "detections": detections}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress
        evaluation.accumulate()
        evaluation.summarize()
    summary = {key: float(value) for key, value in zip(DETECTION_SUMMARY, evaluation.stats, strict=True)}
    return {**summary, **_matches_at_50(evaluation), "images": len(images), "ground_truth_boxes": truths,
            "detections": detections}


def image_f1_50(images: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
                sizes: list[tuple[int, int]] | None = None) -> list[float]:
    """Each image's F1 at IoU 0.5 (same inputs as detection_metrics): 2 TP / (2 TP + FP + FN) over its COCOeval
    matches at IoU 0.5 (all areas, every detection up to MAX_DETECTIONS per image and category, a detection matching
    a box of its own category only), 1.0 for an image with nothing to find and nothing found. The per-image score
    the sequential test compares. Not COCO's 100 detections: beyond them false positives were not counted (1 right
    box and 400 wrong ones scored 2/101, not 2/402), so a model that floods an image would look better than it is."""
    from shared.messages.monitoring_predictions import MAX_DETECTIONS

    evaluation, _, _ = _evaluated(images, sizes, max_detections=MAX_DETECTIONS)
    found = [0] * len(images)
    truths = [0] * len(images)
    matched = [0] * len(images)
    for image in evaluation.evalImgs:
        if image is None or image["aRng"] != evaluation.params.areaRng[0] \
                or image["maxDet"] != evaluation.params.maxDets[-1]:
            continue
        index = image["image_id"] - 1
        truths[index] += int((~np.asarray(image["gtIgnore"], dtype=bool)).sum())
        if not len(image["dtIds"]):
            continue
        ignored = np.asarray(image["dtIgnore"])[0].astype(bool)
        found[index] += int((~ignored).sum())
        matched[index] += int(((np.asarray(image["dtMatches"])[0] > 0) & ~ignored).sum())
    return [1.0 if t + f == 0 else 2 * m / (t + f) for t, f, m in zip(truths, found, matched, strict=True)]


def _evaluated(images: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]],
               sizes: list[tuple[int, int]] | None, max_detections: int | None = None) -> tuple[Any, int, int]:
    """COCOeval over the images, evaluated (per image and category; not accumulated), with the counts of
    ground-truth boxes and detections; `max_detections` raises COCOeval's last maxDets (100), which evaluate()
    keeps per image and category (the summary's 1/10/100 stay COCO's)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    masks = sizes is not None
    categories = sorted({str(b["category"]) for truth, found in images for b in [*truth, *found]})
    category_ids = {name: i + 1 for i, name in enumerate(categories)}

    def shape(entry: dict[str, Any], image_index: int) -> dict[str, Any]:
        if not masks:
            x, y, w, h = (float(v) for v in entry["bbox"])
            return {"bbox": [x, y, w, h], "area": w * h}
        height, width = sizes[image_index]  # type: ignore[index]
        rle = mask_utils.merge(mask_utils.frPyObjects([[float(v) for v in entry["polygon"]]], height, width))
        return {"segmentation": rle, "area": float(mask_utils.area(rle))}

    annotations, results = [], []
    for index, (truth, found) in enumerate(images):
        for entry in truth:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0,
                                "category_id": category_ids[str(entry["category"])], **shape(entry, index)})
            if masks:
                annotations[-1]["bbox"] = mask_utils.toBbox(annotations[-1]["segmentation"]).tolist()
        for entry in found:
            result = {"image_id": index + 1, "category_id": category_ids[str(entry["category"])],
                      "score": float(entry["score"]), **shape(entry, index)}
            result.pop("area")
            results.append(result)
    document = {"images": [{"id": i + 1, **({"height": sizes[i][0], "width": sizes[i][1]} if masks else {})}
                           for i in range(len(images))],
                "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in category_ids.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # COCO and COCOeval print their progress
        coco = COCO()
        coco.dataset = document
        coco.createIndex()
        found = COCO()
        found.dataset = {"images": document["images"], "categories": document["categories"], "annotations": []}
        if results:
            found = coco.loadRes(results)
        else:
            found.createIndex()
        evaluation = COCOeval(coco, found, "segm" if masks else "bbox")
        if max_detections is not None and max_detections > evaluation.params.maxDets[-1]:
            evaluation.params.maxDets = [*evaluation.params.maxDets, max_detections]
        evaluation.evaluate()
    return evaluation, len(annotations), len(results)


def _matches_at_50(evaluation: Any) -> dict[str, float]:
    """Precision, recall and mean IoU of COCOeval's matches at IoU 0.5, all areas, the most detections per image."""
    true_positives = counted = truths = 0
    ious: list[float] = []
    for image in evaluation.evalImgs:
        if image is None or image["aRng"] != evaluation.params.areaRng[0] \
                or image["maxDet"] != evaluation.params.maxDets[-1]:
            continue
        truths += int((~np.asarray(image["gtIgnore"], dtype=bool)).sum())
        if not len(image["dtIds"]):
            continue
        ignored = np.asarray(image["dtIgnore"])[0].astype(bool)
        matches = np.asarray(image["dtMatches"])[0]
        counted += int((~ignored).sum())
        # rows: the image's detections by score, as dtIds; columns: its ground truth in COCOeval's own order (all
        # areas ignore nothing, so that is gtIds' order)
        pair_ious = np.asarray(evaluation.ious[(image["image_id"], image["category_id"])])
        for d, truth_id in enumerate(matches):
            if truth_id > 0 and not ignored[d]:
                true_positives += 1
                ious.append(float(pair_ious[d, image["gtIds"].index(int(truth_id))]))
    return {"precision_50": true_positives / counted if counted else 0.0,
            "recall_50": true_positives / truths if truths else 0.0,
            "mean_iou_50": float(np.mean(ious)) if ious else 0.0}
