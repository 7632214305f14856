"""The gateway's JSON command routes and the bus's commands refuse a JSON true/false where the command has a number,
and anything but true/false where it has a boolean (shared/request_values.py refuse_lax_scalars): pydantic's lax mode
reads them as 1 and 0, so `{"workspace_id": true}` listed workspace 1's models, and `{"active": "yes"}` as true.
Fields that are free-form (Any) keep what was sent; what services stored is read as before."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services.gateway.json_body import refuse_lax_scalars
from services.monitoring.predictions import image_config
from shared.bus import CallContext, run_command
from shared.errors import InvalidRequest, validation_message
from shared.messages.assays import AssayConfig, NewAssayConfig, SetAssayActive
from shared.messages.auth import ListRevocations
from shared.messages.deployer import NewPipeline
from shared.messages.lineage import (
    CollectObjects,
    DatasetFileQuery,
    EvaluateDetections,
    FileLink,
    RestoreProjectVersion,
)
from shared.messages.logs import RunLogMaintenance
from shared.messages.monitoring import DeleteDeployment
from shared.messages.monitoring_continuous import ToggleContinuous
from shared.messages.monitoring_feedback import ToggleFeedbackLoop
from shared.messages.registry import ModelLookup
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
        refuse_lax_scalars(body, validated)
    assert str(refused.value).startswith(place)


@pytest.mark.parametrize("body", [
    {"workspace_id": 2, "active": True}, {"inner": {"free": True, "bins": 7}}, {"settings": {"x": True}},
    {"settings": {"deep": [{"on": True}, [False, 1]], "n": 2}}, {"by_name": {"a": {"free": {"k": True}}}},
    {"items": [{"bins": 1}], "ids": [1, 2]}, {"unknown": True},
])
def test_booleans_where_the_command_takes_them_and_numbers_pass(body):
    refuse_lax_scalars(body, Outer.model_validate({k: v for k, v in body.items() if k in Outer.model_fields}))


def test_a_real_command():
    with pytest.raises(InvalidRequest, match="^id: "):
        refuse_lax_scalars({"id": True, "active": False}, SetAssayActive.model_validate({"id": True,
                                                                                                "active": False}))
    refuse_lax_scalars({"id": 1, "active": False}, SetAssayActive.model_validate({"id": 1, "active": False}))


def test_real_commands_with_dicts_of_models_and_free_form_objects():
    """A detection's score or box inside candidates' `detections` (a dict of lists of models) was not walked: true
    scored as 1.0. Free-form objects (a definition, a task's json arguments) keep their booleans at any depth."""
    detections = {"workspace_id": 1, "name": "r", "dataset_id": 2, "candidates": [{"name": "m", "detections": {
        "a.png": [{"bbox": [0, 0, 4, 4], "category": "cat", "score": 0.5}],
        "b.png": [{"bbox": [0, 0, 4, 4], "category": "cat", "score": True}]}}]}
    with pytest.raises(InvalidRequest, match=r"^candidates\.0\.detections\.b\.png\.0\.score: "):
        refuse_lax_scalars(detections, EvaluateDetections.model_validate(detections))
    detections["candidates"][0]["detections"]["b.png"][0].update(score=1, bbox=[False, 0, 4, 4])
    with pytest.raises(InvalidRequest, match=r"\.bbox\.0: "):
        refuse_lax_scalars(detections, EvaluateDetections.model_validate(detections))
    pipeline = {"pipeline_id": "p", "workspace_id": 1,
                "definition": {"steps": [{"ModelInference": {"models": [{"name": "m", "batch": True}]}}],
                               "flags": [True, False, 3], "nested": {"on": False, "n": 1}}}
    refuse_lax_scalars(pipeline, NewPipeline.model_validate(pipeline))
    run = {"orch_id": "0b7c3a0e-4d6f-4f43-9d1a-1f2b3c4d5e6f", "workspace_id": 1, "json": {"dry_run": True, "n": [1]}}
    refuse_lax_scalars(run, RunTaskOnce.model_validate(run))
    with pytest.raises(InvalidRequest, match="^timeout: "):
        refuse_lax_scalars({**run, "timeout": True}, RunTaskOnce.model_validate({**run, "timeout": True}))


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


@pytest.mark.parametrize("given", [1, 0, True, False])
def test_the_sdks_delete_sends_force_delete_as_the_api_takes_it(given):
    """9808be20 said the SDK sends bool(...) already: its toggles do, but deployment.delete(force_delete=1) sent 1,
    which DeleteDeployment took as true before and refuses since (a 400 from a call that worked)."""
    from railyard_client.pipelines import Deployment

    class Sent:
        def post(self, route, body):
            self.route, self.body = route, body

    session = Sent()
    Deployment(session, {"id": 1, "name": "fraud-1"}, None).delete(force_delete=given)
    assert session.route == "deployments/delete"
    assert DeleteDeployment.model_validate_json(json.dumps(session.body)).force_delete is bool(given)


IMAGE = {"input": "x", "kind": "detection", "labels": ["cat"], "outputs": {"scores": "s", "boxes": "b"}}
ASSAY = {"name": "a", "pipeline_id": 1, "pipeline_name": "p", "iopath": "output y 0", "alert_threshold": 0.25,
         "workspace_id": 1, "summarizer": {"num_bins": 5},
         "baseline": {"Fixed": {"pipeline": "p", "model": "m", "start_at": "2026-01-01T00:00:00Z",
                                "end_at": "2026-01-02T00:00:00Z"}},
         "window": {"pipeline": "p", "model": "m", "width": "24 hours"}}
BOOLEANS = [  # every request boolean of the services but the monitoring service's (strict fields since 9808be20)
    (SetAssayActive, ("active",), {"id": 1}),
    (NewAssayConfig, ("active",), ASSAY),
    (NewAssayConfig, ("summarizer", "add_outlier_edges"), ASSAY),
    (CollectObjects, ("dry_run",), {}),
    (DatasetFileQuery, ("labels",), {"dataset_id": 1, "name": "a.png"}),
    (RestoreProjectVersion, ("skip_missed_entities",), {"project_id": 1, "version_id": 2}),
    (FileLink, ("model_weight",), {"workspace_id": 1, "path": "w.bin"}),
    (EvaluateDetections, ("image", "flatten"), {"workspace_id": 1, "name": "r", "dataset_id": 2,
                                                "deployments": ["d-1"], "image": IMAGE}),
    (EvaluateDetections, ("image", "box_normalized"), {"workspace_id": 1, "name": "r", "dataset_id": 2,
                                                       "deployments": ["d-1"], "image": IMAGE}),
    (RunLogMaintenance, ("compact",), {}),
    (RunLogMaintenance, ("retention",), {}),
    (RunLogMaintenance, ("purge",), {}),
    (ModelLookup, ("exists_only",), {"workspace_id": 1, "name": "m"}),
    (ListRevocations, ("with_keys",), {}),
]


def _with(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    *parents, field = path
    inner = body
    for name in parents:
        inner = inner[name]
    inner[field] = value
    return body


@pytest.mark.parametrize("sent", ["yes", "true", "false", 1, 0, 0.0, "1", "on"])
@pytest.mark.parametrize(("model", "path", "others"), BOOLEANS)
def test_a_request_boolean_takes_only_true_or_false(model, path, others, sent):
    """Session 39: `{"active": "yes"}` resumed an assay, `{"dry_run": 0}` collected (deleted) objects and the log
    store's maintenance read `{"purge": "off"}` as false: pydantic (lax) reads such words and numbers as booleans.
    The gateway's routes (the body as parsed) and the bus's commands refuse them, a 400 naming the field; true and
    false pass both."""
    body = _with(others, path, sent)
    command = model.model_validate(body)  # what pydantic alone makes of it: a boolean
    place = ".".join(path)
    with pytest.raises(InvalidRequest, match=f"^{place}: Input should be a valid boolean$"):
        refuse_lax_scalars(body, command)

    async def handler(cmd, ctx):
        return {"ran": True}

    reply = asyncio.run(run_command(handler, model, json.loads(json.dumps(body)), CallContext(subject="s")))
    assert (reply.status, reply.error.code, reply.error.msg) == (400, "invalid_request",
                                                                 f"{place}: Input should be a valid boolean")
    for value in (True, False):
        body = _with(others, path, value)
        refuse_lax_scalars(body, model.model_validate(body))
        assert asyncio.run(run_command(handler, model, body, CallContext(subject="s"))).data == {"ran": True}


def test_the_bus_refuses_a_boolean_where_a_number_is_too():
    async def handler(cmd, ctx):  # never reached
        raise AssertionError("validated")

    reply = asyncio.run(run_command(handler, CollectObjects, {"grace_seconds": True}, CallContext(subject="s")))
    assert (reply.status, reply.error.msg) == (400, "grace_seconds: Input should be a valid number, not true")


def test_what_services_stored_is_read_as_before():
    """Only requests are checked: a pipeline definition's image configuration (free-form when the pipeline was
    created) and a stored assay's configuration are read by their models as written, a lax boolean included."""
    step = {"ModelInference": {"models": [{"name": "m"}], "image": IMAGE | {"flatten": "yes", "box_normalized": 0}}}
    image = image_config({"steps": [step]})
    assert image is not None and (image.flatten, image.box_normalized) == (True, False)
    stored = _with(_with(ASSAY, ("active",), "false"), ("summarizer", "add_outlier_edges"), 1)
    config = AssayConfig.model_validate(stored)
    assert (config.active, config.summarizer.add_outlier_edges) == (False, True)


@pytest.mark.parametrize("given", [1, 0, True, False])
def test_the_sdk_sends_the_booleans_it_is_given_as_the_api_takes_them(given):
    """As 1466203b for deployment.delete: assay.set_active(1), collect_objects(dry_run=0) and the like sent 1 or 0,
    taken as booleans until every request boolean became strict (6e2e6f21): a 400 from a call that worked."""
    from railyard_client.assays import Assay, assay_config
    from railyard_client.lineage import Lineage

    class Sent:
        def __init__(self):
            self.bodies = {}

        def post(self, route, body):
            self.bodies[route] = body
            return {}

    session = Sent()
    Assay(session, {"id": 1, "active": True}).set_active(given)
    lineage = Lineage(SimpleNamespace(_session=session), 1)
    lineage.collect_objects(dry_run=given)
    lineage.restore_version(1, 2, skip_missed_entities=given)
    lineage.add_input_file("w.bin", given, task_id="t-1")
    pipeline = SimpleNamespace(id=1, name="p", workspace_id=1)
    session.bodies["assays/create"] = assay_config("a", pipeline, "output y 0", baseline_values=[1.0], active=given)
    for route, model, field in (("assays/set_active", SetAssayActive, "active"),
                                ("assays/create", NewAssayConfig, "active"),
                                ("maintenance/collect_objects", CollectObjects, "dry_run"),
                                ("projects/restore_version", RestoreProjectVersion, "skip_missed_entities"),
                                ("workflow/add_input_file", FileLink, "model_weight")):
        body = json.loads(json.dumps(session.bodies[route]))
        refuse_lax_scalars(body, model.model_validate(body))
        assert body[field] is bool(given), route
