"""Pure parts of continuous training and deployment (services/monitoring/continuous.py): the set-up's trigger and
threshold, what counts as a classification's answer, and the pipeline definitions a promotion, a roll-back and a
shadow set produce."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.monitoring.continuous import _serving, top_class
from services.monitoring.sequential import PairCounts
from shared.messages.monitoring_continuous import SetupContinuousTraining

IMAGE = {"input": "pixels", "kind": "classification", "size": [8, 8]}
CHAMPION = {"name": "digits", "version": "v1", "sha": "a"}
CHALLENGER = {"name": "digits", "version": "v2", "sha": "b"}


def test_the_top_class_is_the_best_scored_one():
    assert top_class({"detection_classes": [3, 7], "detection_scores": [0.2, 0.9]}) == 7
    assert top_class({"detection_classes": [4]}) == 4  # a ground truth without scores
    assert top_class('{"detection_classes": [5], "detection_scores": [1.0]}') == 5  # as jsonb text
    assert top_class({"detection_classes": [], "detection_scores": []}) is None
    assert top_class(None) is None


def test_promotion_and_roll_back_serve_one_model_and_keep_the_image_configuration():
    shadowed = {"steps": [{"ShadowDeploy": {"champion": CHAMPION, "challengers": [CHALLENGER], "image": IMAGE}}]}
    promoted = _serving(shadowed, CHALLENGER, None)
    assert promoted == {"steps": [{"ModelInference": {"models": [CHALLENGER], "image": IMAGE}}]}
    rolled_back = _serving(shadowed, CHAMPION, None)
    assert rolled_back == {"steps": [{"ModelInference": {"models": [CHAMPION], "image": IMAGE}}]}
    assert shadowed["steps"][0]["ShadowDeploy"]["challengers"] == [CHALLENGER]  # the input is left as it was


def test_a_shadow_set_turns_the_model_step_into_a_shadow_deploy():
    plain = {"steps": [{"ModelInference": {"models": [CHAMPION], "image": IMAGE}}]}
    shadowed = _serving(plain, CHAMPION, CHALLENGER)
    assert shadowed == {"steps": [{"ShadowDeploy": {"champion": CHAMPION, "challengers": [CHALLENGER],
                                                    "image": IMAGE}}]}
    assert _serving(shadowed, CHAMPION, CHALLENGER) == shadowed  # nothing to redeploy


def test_pairs_are_counted_by_outcome():
    counts = PairCounts.from_pairs([(True, True), (True, False), (False, True), (False, True), (False, False)])
    assert (counts.n11, counts.n10, counts.n01, counts.n00, counts.pairs) == (1, 1, 2, 1, 5)


def test_the_trigger_and_its_threshold_are_checked_at_set_up():
    base = {"deployment": "d-1", "project_id": 1, "experiment_parameters": {}}
    assert SetupContinuousTraining.model_validate(base | {"threshold": 5}).trigger == "FEEDBACK_LOOP"
    assert SetupContinuousTraining.model_validate(base | {"trigger": "ASSAY_ALERT"}).threshold == 1  # default 1
    assert SetupContinuousTraining.model_validate(base | {"trigger": "ASSAY_ALERT", "threshold": 3}).threshold == 3
    for bad in ({"threshold": 5, "trigger": "DRIFT"}, {"trigger": "ASSAY_ALERT", "threshold": 0},
                {"trigger": "FEEDBACK_LOOP"}, {}):  # FEEDBACK_LOOP (the default) needs its threshold
        with pytest.raises(ValidationError):
            SetupContinuousTraining.model_validate(base | bad)
