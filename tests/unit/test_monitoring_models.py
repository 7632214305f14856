"""Which model a deployment serves, and the definition set_model / set_shadow_model deploy (pure functions of the
monitoring handlers)."""

from __future__ import annotations

import pytest

from services.monitoring.handlers import _current_shadow, _with_model, current_model
from shared.errors import Conflict
from shared.messages.monitoring import ModelVersionRef

A = {"name": "a", "version": "1", "sha": "s1"}
B = {"name": "b", "version": "2", "sha": "s2"}
C = {"name": "c", "version": "3", "sha": "s3"}
PLAIN = {"steps": [{"ModelInference": {"models": [A]}}]}
SHADOW = {"steps": [{"ModelInference": {"models": [C]}}, {"ShadowDeploy": {"champion": A, "challengers": [B]}}]}


def test_the_model_step_is_the_shadow_champion_else_the_first_model():
    assert current_model(PLAIN) == ModelVersionRef(**A) and _current_shadow(PLAIN) is None
    assert current_model(SHADOW) == ModelVersionRef(**A) and _current_shadow(SHADOW) == ModelVersionRef(**B)
    assert current_model({"steps": []}) is None


def test_set_model_replaces_the_model_step_only():
    assert _with_model(PLAIN, B, shadow=False) == {"steps": [{"ModelInference": {"models": [B]}}]}
    changed = _with_model(SHADOW, B, shadow=False)
    assert changed["steps"][1]["ShadowDeploy"] == {"champion": B, "challengers": [B]}
    assert changed["steps"][0] == SHADOW["steps"][0]
    assert SHADOW["steps"][1]["ShadowDeploy"]["champion"] == A  # the original is left as it was


def test_set_shadow_model_makes_or_updates_a_shadow_step():
    assert _with_model(PLAIN, B, shadow=True) == {"steps": [{"ShadowDeploy": {"champion": A, "challengers": [B]}}]}
    assert _with_model(SHADOW, C, shadow=True)["steps"][1] == {"ShadowDeploy": {"champion": A, "challengers": [C]}}


def test_a_pipeline_without_a_model_step_cannot_take_a_model():
    split = {"steps": [{"RandomSplit": {"weights": [1, 1], "models": [A, B]}}]}
    with pytest.raises(Conflict):
        _with_model(split, C, shadow=False)
