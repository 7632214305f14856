"""get_stats arithmetic (seed 003's ServiceMetrics), as pure functions over prediction rows (dicts with the
`predictions` table's columns and, when reviewed, a `review` dict) and the training-data reference. Classification
and detection metrics are shared/evaluation.py's (scikit-learn, pycocotools' COCOeval: the same as the lineage
benchmarks'), so the numbers are unit-tested against the libraries and hand computations (tests/unit/test_evaluation.py,
tests/unit/test_monitoring_stats.py).

The outlying score of a prediction is the root mean square of its image features' standardized distances to the
training reference: sqrt(mean_i(((x_i - mean_i) / std_i) ** 2)) over the features of images.image_features (a
feature that did not vary in the reference, std 0, is compared on a unit scale). It is 0 for an image at the
reference's mean and about 1 for a typical reference image; above OUTLIER_THRESHOLD (3: three standard deviations
on average) the prediction counts as outlying ("drifting")."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import Conflict, InvalidRequest
from shared.evaluation import classification_metrics, coco_box, detection_metrics
from shared.lean_imports import lazy_module
from shared.messages.monitoring_feedback import SERVICE_METRICS

if TYPE_CHECKING:
    import numpy as np
else:
    # imported by the first statistics computed (~12 MiB of RSS the idle monitoring service does without)
    np = lazy_module("numpy")

OUTLIER_THRESHOLD = 3.0
"""Predictions whose outlying score is above this are outlying (drifting)."""

PSI_EPSILON = 1e-4
"""Empty bins count as this proportion in the population stability index (so it stays finite)."""

REFERENCE_BINS = 10
"""The reference keeps each feature's deciles: the window is binned on them for the PSI."""

MAX_LISTED = 1000
"""Per-prediction lists (PREDICTIONS_DATA, PREDICTIONS_OUTLYING_SCORE) hold at most this many, newest first."""

NEEDS_REFERENCE = {"PREDICTIONS_OUTLYING_SCORE", "AGGREGATED_DRIFTING_PREDICTIONS"}


def check_service(service: str) -> str:
    """The ServiceMetrics value, or InvalidRequest listing the valid ones."""
    name = service.strip().upper().removeprefix("SERVICEMETRICS.")
    if name not in SERVICE_METRICS:
        raise InvalidRequest(f"unknown ServiceMetrics {service!r}: use one of {', '.join(SERVICE_METRICS)}")
    return name


# --- the training reference ------------------------------------------------------------------------------


def summarize_feature(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (population), min, max and the inner decile edges of one feature's values."""
    data = np.asarray(values, dtype=np.float64)
    edges = np.quantile(data, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]).tolist()
    proportions = bin_proportions(edges, data.tolist())
    return {"mean": float(data.mean()), "std": float(data.std()), "min": float(data.min()),
            "max": float(data.max()), "count": int(data.size), "edges": edges, "proportions": proportions}


def bin_proportions(edges: list[float], values: list[float]) -> list[float]:
    """The share of values in each bin that the inner `edges` make (len(edges) + 1 bins; a value equal to an edge
    goes to the bin above it)."""
    if not values:
        return [0.0] * (len(edges) + 1)
    indexes = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64),
                              side="right")
    counts = np.bincount(indexes, minlength=len(edges) + 1)
    return (counts / counts.sum()).tolist()


def build_reference(features: list[dict[str, float]], labels: list[list[str]]) -> dict[str, Any]:
    """The reference of a training set: each feature's summary (inputs) and the label distribution (outputs)."""
    if not features:
        raise ValueError("the training data has no images")
    names = sorted(set().union(*features))
    counts = Counter(label for image in labels for label in image)
    total = sum(counts.values())
    return {"images": len(features),
            "features": {name: summarize_feature([f[name] for f in features if name in f]) for name in names},
            "labels": {"counts": dict(sorted(counts.items())),
                       "proportions": {k: v / total for k, v in sorted(counts.items())} if total else {}}}


def labels_of(file_labels: Any) -> list[str]:
    """The class labels a dataset file's labels name: a PredictionFormat (`detection_classes`, also under
    `ground_truth`), COCO-style `boxes` with `category`, or `label` / `class` / `classes`."""
    if not isinstance(file_labels, dict):
        return [str(file_labels)] if isinstance(file_labels, str | int) and not isinstance(file_labels, bool) else []
    if isinstance(file_labels.get("ground_truth"), dict):
        return labels_of(file_labels["ground_truth"])
    if isinstance(file_labels.get("detection_classes"), list):
        return [str(c) for c in file_labels["detection_classes"]]
    if isinstance(file_labels.get("boxes"), list):
        return [str(b["category"]) for b in file_labels["boxes"] if isinstance(b, dict) and "category" in b]
    for key in ("label", "class"):
        if isinstance(file_labels.get(key), str | int):
            return [str(file_labels[key])]
    if isinstance(file_labels.get("classes"), list):
        return [str(c) for c in file_labels["classes"]]
    return []


def outlying_score(features: dict[str, float], reference: dict[str, Any]) -> float:
    """The root mean square standardized distance of an image's features to the reference (module docstring)."""
    distances = []
    for name, summary in reference["features"].items():
        if name in features:
            scale = summary["std"] if summary["std"] > 1e-9 else 1.0
            distances.append(((float(features[name]) - summary["mean"]) / scale) ** 2)
    return math.sqrt(sum(distances) / len(distances)) if distances else 0.0


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over bins, empty bins counted as PSI_EPSILON."""
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, PSI_EPSILON), max(a, PSI_EPSILON)
        total += (a - e) * math.log(a / e)
    return total


# --- prediction formats ----------------------------------------------------------------------------------


def top_class(fmt: dict[str, Any] | None) -> int | None:
    """A classification's class: the class with the highest score (the first class without scores)."""
    if not fmt or not fmt.get("detection_classes"):
        return None
    classes = fmt["detection_classes"]
    scores = fmt.get("detection_scores") or []
    if len(scores) != len(classes):
        return int(classes[0])
    return int(classes[int(np.argmax(scores))])


def classes_of(kind: str, fmt: dict[str, Any] | None) -> list[str]:
    """The labels a prediction (or ground truth) names: its top class for classification, every box's class for
    detection and segmentation."""
    if not fmt:
        return []
    if kind == "classification":
        top = top_class(fmt)
        return [] if top is None else [str(top)]
    return [str(c) for c in fmt.get("detection_classes") or []]


# --- the metrics -----------------------------------------------------------------------------------------


def _stamp(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _numbers(values: list[float | None]) -> dict[str, Any]:
    data = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not data.size:
        return {"count": 0}
    return {"count": int(data.size), "mean": float(data.mean()), "min": float(data.min()),
            "p50": float(np.percentile(data, 50)), "p95": float(np.percentile(data, 95)),
            "p99": float(np.percentile(data, 99)), "max": float(data.max())}


def _distribution(counts: Counter) -> dict[str, Any]:
    total = sum(counts.values())
    ordered = dict(sorted(counts.items()))
    return {"total": total, "counts": ordered,
            "proportions": {k: v / total for k, v in ordered.items()} if total else {}}


def shapes(fmt: dict[str, Any] | None, with_scores: bool, masks: bool = False) -> list[dict[str, Any]]:
    """A prediction format's boxes ({bbox: COCO's [x, y, w, h], category[, score]}), or its polygons
    ({polygon, category[, score]}) with `masks`: what shared/evaluation.detection_metrics takes."""
    if not fmt:
        return []
    classes = fmt.get("detection_classes") or []
    scores = fmt.get("detection_scores") or [1.0] * len(classes)
    shapes = fmt.get("detection_masks" if masks else "detection_boxes") or []
    out = []
    for index, (cls, shape) in enumerate(zip(classes, shapes, strict=False)):
        entry = {"polygon": shape} if masks else {"bbox": coco_box(shape)}
        entry["category"] = str(cls)
        if with_scores:
            entry["score"] = float(scores[index]) if index < len(scores) else 1.0
        out.append(entry)
    return out


def label_distribution(predictions: int, counts: Counter, reference: dict[str, Any] | None) -> dict[str, Any]:
    """AGGREGATED_LABEL_DISTRIBUTION from the number of predictions and their labels' counts (from the rows, or
    from the pre-aggregated hours: aggregates.py)."""
    result = {"predictions": predictions, "predicted": _distribution(counts)}
    if reference is not None and reference["labels"]["proportions"]:
        expected = reference["labels"]["proportions"]
        actual = result["predicted"]["proportions"]
        keys = sorted({*expected, *actual})
        result["reference"] = reference["labels"]
        result["total_variation"] = 0.5 * sum(abs(expected.get(k, 0.0) - actual.get(k, 0.0)) for k in keys)
        result["psi"] = psi([expected.get(k, 0.0) for k in keys], [actual.get(k, 0.0) for k in keys]) \
            if actual else None
    return result


def compute(service: str, rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> dict[str, Any]:
    """The statistics of one ServiceMetrics value over the filtered prediction rows (newest first)."""
    if service in NEEDS_REFERENCE and reference is None:
        raise Conflict(f"{service} compares predictions with the training-data reference: call set_training_data "
                       "and wait until check_training_data_metrics_status is 'ready'")
    reviewed = [r for r in rows if r.get("review")]
    match service:
        case "PREDICTIONS_OUTLYING_SCORE":
            assert reference is not None
            scores = [(r, outlying_score(r["features"], reference)) for r in rows]
            values = [s for _, s in scores]
            return {"threshold": OUTLIER_THRESHOLD, "count": len(values),
                    "mean": float(np.mean(values)) if values else None,
                    "max": float(np.max(values)) if values else None,
                    "outlying": sum(s > OUTLIER_THRESHOLD for s in values),
                    "scores": [{"prediction_id": str(r["id"]), "predicted_at": _stamp(r["predicted_at"]),
                                "score": s, "outlying": s > OUTLIER_THRESHOLD} for r, s in scores[:MAX_LISTED]]}
        case "PREDICTIONS_DATA":
            return {"count": len(rows), "predictions": [{
                "id": str(r["id"]), "predicted_at": _stamp(r["predicted_at"]), "origin": r["origin"],
                "source": r.get("source"), "tags": list(r.get("tags") or []), "model_version": r.get("model_version"),
                "kind": r["kind"], "prediction": r["prediction"], "shadow_prediction": r.get("shadow_prediction"),
                "latency": r.get("latency"), "shadow_latency": r.get("shadow_latency"), "height": r["height"],
                "width": r["width"], "reviewed": bool(r.get("review"))} for r in rows[:MAX_LISTED]]}
        case "REVIEWS_CLASSIFICATION_STATS":
            pairs = [(top_class(r["review"]["ground_truth"]), top_class(r["prediction"]), r) for r in reviewed
                     if r["kind"] == "classification"]
            pairs = [(t, p, r) for t, p, r in pairs if t is not None and p is not None]
            shadow = [(t, top_class(r.get("shadow_prediction"))) for t, _, r in pairs if r.get("shadow_prediction")]
            shadow = [(t, p) for t, p in shadow if p is not None]
            return {"reviews": len(reviewed), "accepted": sum(r["review"]["decision"] == "accepted" for r in reviewed),
                    "corrected": sum(r["review"]["decision"] == "corrected" for r in reviewed),
                    "champion": classification_metrics([t for t, _, _ in pairs], [p for _, p, _ in pairs]),
                    "shadow": classification_metrics([t for t, _ in shadow], [p for _, p in shadow])}
        case "REVIEWS_OBJECT_DETECTION_STATS":
            images = [(shapes(r["review"]["ground_truth"], False), shapes(r["prediction"], True)) for r in reviewed
                      if r["kind"] in ("detection", "segmentation")]
            shadow = [(shapes(r["review"]["ground_truth"], False), shapes(r["shadow_prediction"], True))
                      for r in reviewed if r["kind"] in ("detection", "segmentation") and r.get("shadow_prediction")]
            result = {"reviews": len(reviewed), "champion": detection_metrics(images),
                      "shadow": detection_metrics(shadow) if shadow else {"images": 0}}
            segmented = [r for r in reviewed if r["kind"] == "segmentation"]
            if segmented:
                result["champion_masks"] = detection_metrics(
                    [(shapes(r["review"]["ground_truth"], False, masks=True),
                      shapes(r["prediction"], True, masks=True)) for r in segmented],
                    [(r["height"], r["width"]) for r in segmented])
            return result
        case "REVIEWS_LABEL_DISTRIBUTION_STATS":
            truth = Counter(c for r in reviewed for c in classes_of(r["kind"], r["review"]["ground_truth"]))
            predicted = Counter(c for r in reviewed for c in classes_of(r["kind"], r["prediction"]))
            return {"reviews": len(reviewed), "ground_truth": _distribution(truth),
                    "predicted": _distribution(predicted),
                    "difference": {k: predicted.get(k, 0) - truth.get(k, 0)
                                   for k in sorted({*truth, *predicted})}}
        case "AGGREGATED_LABEL_DISTRIBUTION":
            return label_distribution(len(rows), Counter(c for r in rows for c in classes_of(r["kind"],
                                                                                              r["prediction"])),
                                      reference)
        case "AGGREGATED_OBJECT_DETECTION_STATS":
            detected = [r for r in rows if r["kind"] in ("detection", "segmentation")]
            per_image = [len(r["prediction"].get("detection_classes") or []) for r in detected]
            scores = [float(s) for r in detected for s in r["prediction"].get("detection_scores") or []]
            areas = []
            by_class: dict[str, list[float]] = {}
            for r in detected:
                fmt = r["prediction"]
                for index, box in enumerate(fmt.get("detection_boxes") or []):
                    x, y, w, h = coco_box(box)
                    areas.append(w * h / float(r["height"] * r["width"]))
                    cls = str((fmt.get("detection_classes") or [None])[index] if index < len(
                        fmt.get("detection_classes") or []) else None)
                    score = (fmt.get("detection_scores") or [])
                    by_class.setdefault(cls, []).append(float(score[index]) if index < len(score) else 1.0)
            return {"images": len(detected), "boxes": sum(per_image), "boxes_per_image": _numbers(per_image),
                    "scores": _numbers(scores), "relative_area": _numbers(areas),
                    "per_class": {k: {"boxes": len(v), "mean_score": float(np.mean(v))}
                                  for k, v in sorted(by_class.items())}}
        case "AGGREGATED_PREDICTIONS_DATA":
            times = [r["predicted_at"] for r in rows]
            hours = Counter(t.replace(minute=0, second=0, microsecond=0).isoformat() for t in times
                            if isinstance(t, datetime))
            names = sorted(set().union(*(r["features"] for r in rows))) if rows else []
            return {"count": len(rows), "reviewed": len(reviewed), "origin": dict(Counter(r["origin"] for r in rows)),
                    "kind": dict(Counter(r["kind"] for r in rows)),
                    "latency": _numbers([r.get("latency") for r in rows]),
                    "shadow_latency": _numbers([r.get("shadow_latency") for r in rows]),
                    "height": _numbers([r["height"] for r in rows]), "width": _numbers([r["width"] for r in rows]),
                    "features": {n: _numbers([r["features"].get(n) for r in rows]) for n in names},
                    "first": _stamp(min(times)) if times else None, "last": _stamp(max(times)) if times else None,
                    "per_hour": dict(sorted(hours.items()))}
        case "AGGREGATED_DRIFTING_PREDICTIONS":
            assert reference is not None
            scores = [outlying_score(r["features"], reference) for r in rows]
            drifting = sum(s > OUTLIER_THRESHOLD for s in scores)
            features = {}
            for name, summary in reference["features"].items():
                values = [float(r["features"][name]) for r in rows if name in r["features"]]
                if not values:
                    continue
                scale = summary["std"] if summary["std"] > 1e-9 else 1.0
                features[name] = {"psi": psi(summary["proportions"], bin_proportions(summary["edges"], values)),
                                  "mean": float(np.mean(values)), "reference_mean": summary["mean"],
                                  "mean_shift": (float(np.mean(values)) - summary["mean"]) / scale}
            worst = max((f["psi"] for f in features.values()), default=0.0)
            return {"predictions": len(rows), "threshold": OUTLIER_THRESHOLD, "drifting": drifting,
                    "drifting_ratio": drifting / len(rows) if rows else 0.0, "features": features,
                    "max_psi": worst, "drift": "significant" if worst > 0.25 else "moderate" if worst > 0.1
                    else "none"}
    raise InvalidRequest(f"unknown ServiceMetrics {service!r}: use one of {', '.join(SERVICE_METRICS)}")
