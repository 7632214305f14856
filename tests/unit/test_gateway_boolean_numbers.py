"""The gateway's JSON command routes and the bus's commands refuse a JSON true/false where the command has a number,
and anything but true/false where it has a boolean (shared/request_values.py refuse_lax_scalars): pydantic's lax mode
reads them as 1 and 0, so `{"workspace_id": true}` listed workspace 1's models, and `{"active": "yes"}` as true.
Fields that are free-form (Any) keep what was sent; what services stored is read as before."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class Flagged(BaseModel):
    on: bool = False


class Kinds(BaseModel):
    """Where a boolean may be, by type: each must still be walked in a body with no JSON true or false in it."""

    count: int = 0
    maybe: bool | None = None
    either: bool | int = 0
    flags: dict[str, bool] = {}
    items: list[Flagged] = []
    nested: dict[str, list[Flagged]] = {}
    annotated: Annotated[bool, Field(description="a boolean")] = False
    free: dict[str, Any] = {}


@pytest.mark.parametrize(("body", "place"), [
    ({"maybe": "yes"}, "maybe"), ({"either": "on"}, "either"), ({"flags": {"a": 1}}, "flags.a"),
    ({"items": [{"on": "off"}]}, "items.0.on"), ({"nested": {"x": [{}, {"on": 0}]}}, "nested.x.1.on"),
    ({"annotated": 0.0, "count": 3}, "annotated"),
])
def test_every_kind_of_boolean_field_is_walked(body, place):
    with pytest.raises(InvalidRequest, match=f"^{place}: Input should be a valid boolean$"):
        refuse_lax_scalars(body, Kinds.model_validate(body))


@pytest.mark.parametrize("body", [{"either": 1, "count": 2}, {"maybe": None}, {"free": {"on": "yes", "n": 1}},
                                  {"flags": {"a": True}, "items": [{"on": False}]}])
def test_what_is_kept_as_sent_passes(body):
    refuse_lax_scalars(body, Kinds.model_validate(body))


class Aliased(BaseModel):
    model_config = ConfigDict(extra="ignore")
    flag: bool = Field(False, alias="on")
    count: int = Field(0, alias="n")


class AliasedByName(Aliased):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def test_a_field_is_checked_under_the_key_the_client_sends():
    """The walk matched a body's keys with the fields' names: a field with an alias (the registry's model_config,
    a task's `json`: free-form today) was never checked under the key a client sends, and a model that ignores
    unknown keys had a key it ignored checked against the field of that name."""
    with pytest.raises(InvalidRequest, match="^on: Input should be a valid boolean$"):
        refuse_lax_scalars({"on": "yes"}, Aliased.model_validate({"on": "yes"}))
    with pytest.raises(InvalidRequest, match="^n: Input should be a valid number, not true$"):
        refuse_lax_scalars({"n": True}, Aliased.model_validate({"n": True}))
    ignored = {"flag": "yes", "on": True}  # pydantic ignores "flag": the field is "on"'s true
    refuse_lax_scalars(ignored, Aliased.model_validate(ignored))
    with pytest.raises(InvalidRequest, match="^flag: Input should be a valid boolean$"):
        refuse_lax_scalars({"flag": "yes"}, AliasedByName.model_validate({"flag": "yes"}))


def test_a_body_without_a_json_boolean_is_walked_only_where_a_boolean_may_be(monkeypatch):
    """shared.bus.run_command walks every command's body again (6e2e6f21), after the gateway did: an
    evaluate_detections of 40,000 submitted detections cost 0.2-1.0 s more on the bus (0.18 s of a 1.2-1.9 s
    validation at load 7). Without a JSON true or false in it, no boolean can stand where a number is, so only the
    fields whose type may hold a boolean are walked (here `image`): a few steps, not one per detection."""
    from shared import request_values

    steps = []
    walk = request_values._refuse_at
    monkeypatch.setattr(request_values, "_refuse_at", lambda *args: (steps.append(1), walk(*args))[1])
    detections = {f"{i}.png": [{"bbox": [0, 0, 4, 4], "category": "cat", "score": 0.5}] * 5 for i in range(200)}
    body = {"workspace_id": 1, "name": "r", "dataset_id": 2, "candidates": [{"name": "m", "detections": detections}],
            "deployments": ["d-1"], "image": IMAGE | {"flatten": "yes"}}
    with pytest.raises(InvalidRequest, match="^image.flatten: Input should be a valid boolean$"):
        refuse_lax_scalars(body, EvaluateDetections.model_validate(body))
    body["image"]["flatten"] = False  # a JSON boolean: the whole body is walked, a detection's too
    detections["9.png"] = [{"bbox": [0, 0, 4, 4], "category": "cat", "score": True}]
    with pytest.raises(InvalidRequest, match=r"^candidates\.0\.detections\.9\.png\.0\.score: "):
        refuse_lax_scalars(body, EvaluateDetections.model_validate(body))
    steps.clear()
    del body["image"]["flatten"]
    detections["9.png"][0]["score"] = 1
    refuse_lax_scalars(body, EvaluateDetections.model_validate(body))
    assert len(steps) < 10


class Tree(BaseModel):
    flag: bool = False
    child: Tree | None = None


def test_a_model_inside_itself_is_walked():
    body = {"child": {"child": {"flag": "yes"}}}
    with pytest.raises(InvalidRequest, match=r"^child\.child\.flag: Input should be a valid boolean$"):
        refuse_lax_scalars(body, Tree.model_validate(body))


@pytest.mark.parametrize("given", ["false", "true", "0", b"no"])
def test_the_sdk_refuses_a_string_for_a_boolean_before_sending(given):
    """7b647b44 and 1466203b sent bool() of what was given: bool("false") is True, so set_active("false") resumed
    the assay and delete(force_delete="false") forced the delete, where the API read "false" as false until
    6e2e6f21 and answers a 400 since. The SDK refuses a string (InvalidInput, an InvalidRequest as that 400 was)
    and sends nothing; 1, 0 and numpy's booleans are still sent as true or false."""
    import numpy as np
    from railyard_client.assays import Assay, assay_config
    from railyard_client.errors import InvalidInput
    from railyard_client.lineage import Lineage
    from railyard_client.monitoring import DeploymentManagement
    from railyard_client.monitoring_continuous import DeploymentContinuous
    from railyard_client.monitoring_feedback import DeploymentFeedback
    from railyard_client.pipelines import Deployment

    class Sent:
        def __init__(self):
            self.bodies = []

        def post(self, route, body):
            self.bodies.append((route, body))
            return {}

    session = Sent()
    deployment = Deployment(session, {"id": 1, "name": "fraud-1"}, None)
    lineage = Lineage(SimpleNamespace(_session=session), 1)
    pipeline = SimpleNamespace(id=1, name="p", workspace_id=1)
    calls = [lambda v: Assay(session, {"id": 1, "active": True}).set_active(v),
             lambda v: assay_config("a", pipeline, "output y 0", baseline_values=[1.0], active=v),
             lambda v: lineage.collect_objects(dry_run=v),
             lambda v: lineage.restore_version(1, 2, skip_missed_entities=v),
             lambda v: lineage.add_input_file("w.bin", v, task_id="t-1"),
             lambda v: lineage.add_output_file("w.bin", v, task_id="t-1"),
             lambda v: deployment.delete(force_delete=v),
             lambda v: deployment.toggle_continuous_training(v),
             lambda v: deployment.toggle_continuous_deployment(v),
             lambda v: deployment.toggle_feedback_loop(v)]
    assert all(isinstance(deployment, kind) for kind in (DeploymentManagement, DeploymentContinuous,
                                                         DeploymentFeedback))
    for call in calls:
        with pytest.raises(InvalidInput, match="must be True or False, not "):
            call(given)
    assert session.bodies == []
    for call in calls:
        call(np.bool_(True))
    assert session.bodies and all(True in body.values() for _, body in session.bodies)
