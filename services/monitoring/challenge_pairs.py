"""The paired outcomes the sequential test (sequential.py) reads: one pair per reviewed prediction that a challenge's
champion answered and its challenger shadowed, saying which of the two did better on that image.

- **Classification**: each model is right or wrong (its top class equals the reviewed top class): the pair is
  (champion right, challenger right), McNemar's pairs.
- **Detection and segmentation**: each model gets the image's **F1 at IoU 0.5**: 2 TP / (2 TP + FP + FN), a
  detection counting as a true positive when COCOeval matches it to a reviewed box of its own class at IoU >= 0.5
  (shared/evaluation.image_f1_50, the same COCOeval matching get_stats' detection statistics and the lineage benchmarks
  use; masks are compared as masks when the review has polygons, else boxes). The pair records which model scored
  higher: (True, False) when the champion did, (False, True) when the challenger did, and a tie is concordant —
  (True, True) when both found exactly what the review holds (F1 = 1), (False, False) otherwise. The discordant pairs
  are then the images where one model beat the other, so the test is the sequential **sign test** of "the challenger
  scores higher than the champion on more than half the images where they differ", with the same guarantees
  (the pairs stay independent given the two models; ties carry no information and leave the statistic unchanged).

Every kind of row is paired the same way whatever the deployment's model, so a deployment that monitors predictions
of several kinds still gets one test; what the evidence reports as each model's accuracy is, for detection, the share
of images it got entirely right (F1 = 1), and `champion_score` / `challenger_score` are the mean per-image F1."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from services.monitoring import stats
from shared.evaluation import image_f1_50

DETECTION_KINDS = ("detection", "segmentation")


@dataclass
class Pairing:
    """The pairs of a challenge, and for detection the per-image scores behind them."""

    pairs: list[tuple[bool, bool]] = field(default_factory=list)
    champion_scores: list[float] = field(default_factory=list)
    challenger_scores: list[float] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """`top1` (classification only), `f1_iou50` (detection only) or `mixed`."""
        if not self.champion_scores:
            return "top1"
        return "f1_iou50" if len(self.champion_scores) == len(self.pairs) else "mixed"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def pair_rows(rows: list[dict[str, Any]]) -> Pairing:
    """Pair reviewed rows ({kind, prediction, shadow_prediction, ground_truth, height, width}, in review order)."""
    out = Pairing()
    detected: list[dict[str, Any]] = []
    for row in rows:
        if row["kind"] in DETECTION_KINDS:
            detected.append(row)
            continue
        truth = stats.top_class(_json(row["ground_truth"]))
        if truth is None:
            continue
        out.pairs.append((stats.top_class(_json(row["prediction"])) == truth,
                          stats.top_class(_json(row["shadow_prediction"])) == truth))
    champion, challenger = detection_scores(detected)
    for mine, theirs in zip(champion, challenger, strict=True):
        if mine == theirs:
            out.pairs.append((mine == 1.0, mine == 1.0))
        else:
            out.pairs.append((mine > theirs, theirs > mine))
    out.champion_scores, out.challenger_scores = champion, challenger
    return out


def detection_scores(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Each row's F1 at IoU 0.5 for the champion (`prediction`) and the challenger (`shadow_prediction`) against the
    review: on masks for segmentation rows whose review holds polygons, on boxes otherwise."""
    champion: list[float | None] = [None] * len(rows)
    challenger: list[float | None] = [None] * len(rows)
    for masks in (False, True):
        chosen = [i for i, r in enumerate(rows) if _on_masks(r) == masks]
        if not chosen:
            continue
        truths = [stats.shapes(_json(rows[i]["ground_truth"]), False, masks=masks) for i in chosen]
        sizes = [(rows[i]["height"], rows[i]["width"]) for i in chosen] if masks else None
        for key, into in (("prediction", champion), ("shadow_prediction", challenger)):
            found = [stats.shapes(_json(rows[i][key]), True, masks=masks) for i in chosen]
            for i, score in zip(chosen, image_f1_50(list(zip(truths, found, strict=True)), sizes), strict=True):
                into[i] = score
    return [float(s) for s in champion if s is not None], [float(s) for s in challenger if s is not None]


def _on_masks(row: dict[str, Any]) -> bool:
    truth = _json(row["ground_truth"]) or {}
    return row["kind"] == "segmentation" and bool(truth.get("detection_masks"))
