"""The gateway's JSON command routes refuse a JSON true/false where the command has a number
(services/gateway/json_body.py refuse_booleans_as_numbers): pydantic's lax mode reads them as 1 and 0, so
`{"workspace_id": true}` listed workspace 1's models. Fields that are booleans or free-form (Any) keep theirs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.gateway.json_body import refuse_booleans_as_numbers
from shared.errors import InvalidRequest, validation_message
from shared.messages.assays import SetAssayActive
from shared.messages.deployer import NewPipeline
from shared.messages.lineage import EvaluateDetections
from shared.messages.monitoring import DeleteDeployment
from shared.messages.monitoring_continuous import ToggleContinuous
from shared.messages.monitoring_feedback import ToggleFeedbackLoop
from shared.messages.tasks import RunTaskOnce


class Inner(BaseModel):
    bins: int = 5
    weight: float | None = None
    free: Any = None


class Outer(BaseModel):
    workspace_id: int = 0
    active: bool = False
    inner: Inner = Inner()
    items: list[Inner] = []
    ids: list[int] = []
    settings: dict[str, Any] = {}
    by_name: dict[str, Inner] = {}
    scores: dict[str, float] = {}


@pytest.mark.parametrize(("body", "place"), [
    ({"workspace_id": True}, "workspace_id: Input should be a valid number, not true"),
    ({"inner": {"bins": False}}, "inner.bins: "),
    ({"inner": {"weight": True}}, "inner.weight: "),
    ({"items": [{"bins": 3}, {"bins": True}]}, "items.1.bins: "),
    ({"ids": [1, True]}, "ids.1: "),
    ({"by_name": {"a": {"bins": 1}, "b": {"weight": False}}}, "by_name.b.weight: "),
    ({"scores": {"x": 0.5, "y": True}}, "scores.y: "),
])
def test_a_boolean_where_a_number_is_is_refused(body, place):
    validated = Outer.model_validate(body)  # what pydantic alone makes of it: no error, a 1 or a 0
    with pytest.raises(InvalidRequest) as refused:
        refuse_booleans_as_numbers(body, validated)
    assert str(refused.value).startswith(place)


@pytest.mark.parametrize("body", [
    {"workspace_id": 2, "active": True}, {"inner": {"free": True, "bins": 7}}, {"settings": {"x": True}},
    {"settings": {"deep": [{"on": True}, [False, 1]], "n": 2}}, {"by_name": {"a": {"free": {"k": True}}}},
    {"items": [{"bins": 1}], "ids": [1, 2]}, {"unknown": True},
])
def test_booleans_where_the_command_takes_them_and_numbers_pass(body):
    refuse_booleans_as_numbers(body, Outer.model_validate({k: v for k, v in body.items() if k in Outer.model_fields}))


def test_a_real_command():
    with pytest.raises(InvalidRequest, match="^id: "):
        refuse_booleans_as_numbers({"id": True, "active": False}, SetAssayActive.model_validate({"id": True,
                                                                                                "active": False}))
    refuse_booleans_as_numbers({"id": 1, "active": False}, SetAssayActive.model_validate({"id": 1, "active": False}))


def test_real_commands_with_dicts_of_models_and_free_form_objects():
    """A detection's score or box inside candidates' `detections` (a dict of lists of models) was not walked: true
    scored as 1.0. Free-form objects (a definition, a task's json arguments) keep their booleans at any depth."""
    detections = {"workspace_id": 1, "name": "r", "dataset_id": 2, "candidates": [{"name": "m", "detections": {
        "a.png": [{"bbox": [0, 0, 4, 4], "category": "cat", "score": 0.5}],
        "b.png": [{"bbox": [0, 0, 4, 4], "category": "cat", "score": True}]}}]}
    with pytest.raises(InvalidRequest, match=r"^candidates\.0\.detections\.b\.png\.0\.score: "):
        refuse_booleans_as_numbers(detections, EvaluateDetections.model_validate(detections))
    detections["candidates"][0]["detections"]["b.png"][0].update(score=1, bbox=[False, 0, 4, 4])
    with pytest.raises(InvalidRequest, match=r"\.bbox\.0: "):
        refuse_booleans_as_numbers(detections, EvaluateDetections.model_validate(detections))
    pipeline = {"pipeline_id": "p", "workspace_id": 1,
                "definition": {"steps": [{"ModelInference": {"models": [{"name": "m", "batch": True}]}}],
                               "flags": [True, False, 3], "nested": {"on": False, "n": 1}}}
    refuse_booleans_as_numbers(pipeline, NewPipeline.model_validate(pipeline))
    run = {"orch_id": "0b7c3a0e-4d6f-4f43-9d1a-1f2b3c4d5e6f", "workspace_id": 1, "json": {"dry_run": True, "n": [1]}}
    refuse_booleans_as_numbers(run, RunTaskOnce.model_validate(run))
    with pytest.raises(InvalidRequest, match="^timeout: "):
        refuse_booleans_as_numbers({**run, "timeout": True}, RunTaskOnce.model_validate({**run, "timeout": True}))


@pytest.mark.parametrize("sent", ["yes", "true", "false", 1, 0, "1", "on"])
@pytest.mark.parametrize(("model", "field", "others"), [
    (ToggleContinuous, "active", {"deployment": "d-1"}),
    (ToggleFeedbackLoop, "active", {"deployment": "d-1"}),
    (DeleteDeployment, "force_delete", {"deployment": "d-1"}),
])
def test_the_monitoring_services_booleans_take_only_true_or_false(model, field, others, sent):
    """Session 38's note: toggle_continuous_training took {"active": "yes"} as true (pydantic's lax booleans), and
    {"force_delete": "false"} read as false, 1 as true. The gateway (a dict) and the bus (JSON) both refuse them now,
    a 400 naming the field; true and false pass."""
    body = others | {field: sent}
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    assert validation_message(caught.value.errors()) == f"{field}: Input should be a valid boolean"
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps(body))
    for value in (True, False):
        assert getattr(model.model_validate_json(json.dumps(others | {field: value})), field) is value
        assert getattr(model.model_validate(others | {field: value}), field) is value
