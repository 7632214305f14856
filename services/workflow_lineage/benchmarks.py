"""Benchmark arithmetic (seed 002 "model benchmarking"): the scores are shared/evaluation.py's (scikit-learn for
classification, pycocotools' COCOeval for object detection, as monitoring's get_stats), here the dataset's shape of
them, the engine's speed and the comparison of reports. Nothing here touches the network or the database."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared import evaluation


def detection_metrics(ground_truth: dict[str, list[dict[str, Any]]],
                      detections: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """COCO box metrics (shared/evaluation.py) of {image: [{bbox: [x, y, w, h], category, score}]} against the
    dataset's {image: [{bbox, category}]}; ValueError when the detections name an image the dataset does not have,
    or the dataset has no ground-truth boxes."""
    unknown = sorted(set(detections) - set(ground_truth))
    if unknown:
        raise ValueError(f"detections name an image the dataset does not have: {unknown[0]!r}")
    if not any(ground_truth.values()):
        raise ValueError("the dataset has no ground-truth boxes")
    return evaluation.detection_metrics([(ground_truth[name], detections.get(name, []))
                                         for name in sorted(ground_truth)])


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


def not_scored(metric: str, value: float | None) -> bool:
    """True for COCOeval's -1 in one of its twelve summary numbers (evaluation.DETECTION_SUMMARY): nothing of that
    kind to score (map_large without a large ground-truth box), not a score."""
    return value == -1 and metric.rsplit(".", 1)[-1] in evaluation.DETECTION_SUMMARY


def compare(candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each metric with its value per candidate and the difference from the first candidate: none where either side
    has no value, or COCO's -1 (not_scored; the value itself is answered as the report holds it). The difference
    from such a -1 read as a number before (0.3 against -1: 1.3)."""
    flats = [flatten(c["metrics"]) for c in candidates]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [f.get(key) for f in flats]
        base = None if not_scored(key, values[0]) else values[0]
        rows.append({"metric": key, "values": values,
                     "diff": [None if v is None or base is None or not_scored(key, v) else v - base
                              for v in values]})
    return rows
