"""No user-visible name holds a control character (Unicode's category Cc: C0, DEL, C1), and a refusal says the rule
in words (c1ae36f0), not the regular expression. Session 37's note: the lineage name rule said "no control
characters" and let DEL (\\x7f) through; and the service-side rules of model, pipeline, deploy_id, workspace and
inference client names, `re.match` with a pattern ending in `$`, took a name ending in a newline ('$' matches before
a last '\\n'), so 'churn\\n' was a model name. Assays', orchestrations', tasks', a deployment's display name and a
data connection's had no rule about them at all."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from pydantic import ValidationError

from services.auth import handlers as auth
from services.deployer.handlers import _check_name
from services.registry.handlers import _upload
from shared.authz import Principal
from shared.errors import InvalidRequest, validation_detail
from shared.messages.assays import NewAssayConfig
from shared.messages.auth import CreateInferenceClient, CreateWorkspace
from shared.messages.lineage import CreateDataset, CreateProject, CreateProjectVersion, WorkflowMeta, WorkflowSettings
from shared.messages.monitoring import SetDeploymentModel, UpdateDeployment
from shared.messages.monitoring_predictions import MonitorImage
from shared.messages.registry import CreateConnection, UploadModel
from shared.messages.tasks import RunTaskOnce, UploadOrchestration

CONTROLS = ["\x7f", "\x85", "\x9f", "\x00", "\t", "\n", "\x1b"]
LINEAGE_RULE = "use 1-200 characters without '/' or control characters"
FREE_TEXT_RULE = "use no control characters (tab, newline, DEL and the like)"
USER = Principal(subject=str(uuid.uuid4()), kind="user", admin=False, client_id="cli", username="alice",
                 issued_at=0.0)


def name_refusal(model, payload, field="name") -> str:
    """What the refusal of `payload` says about `field` (a tuple: a nested one; other fields may be refused too)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    loc = field if isinstance(field, tuple) else (field,)
    said = [validation_detail(e) for e in caught.value.errors() if e["loc"] == loc]
    assert said, caught.value.errors()
    return said[0]


@pytest.mark.parametrize("control", CONTROLS)
def test_a_lineage_name_with_a_control_character_is_refused_in_words(control):
    name = f"sales{control}2026"
    assert name_refusal(CreateProject, {"workspace_id": 1, "name": name}) == f"{LINEAGE_RULE}; got {name!r}"
    assert name_refusal(CreateDataset, {"project_id": 1, "name": name}).startswith(LINEAGE_RULE)


def test_a_lineage_name_of_printable_characters_is_taken():
    for name in ("sales 2026", "données", "\xa0nbsp", "日本語", "a" * 200):
        assert CreateProject.model_validate({"workspace_id": 1, "name": name}).name == name


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("model, payload", [
    (UploadOrchestration, {"workspace_id": 1, "file_name": "o.zip", "staged_key": "k"}),
    (RunTaskOnce, {"orch_id": str(uuid.uuid4()), "workspace_id": 1}),
    (UpdateDeployment, {"deployment": "d-1"}),
    (CreateConnection, {"type": "s3", "details": {}}),
    (NewAssayConfig, {}),
])
def test_a_free_text_name_with_a_control_character_is_refused_in_words(model, payload, control):
    name = f"nightly{control}run"
    assert name_refusal(model, payload | {"name": name}) == f"{FREE_TEXT_RULE}; got {name!r}"


def test_free_text_names_of_printable_characters_are_taken():
    name = "Nightly run: données/日本語 (v2)"
    assert UploadOrchestration.model_validate({"workspace_id": 1, "file_name": "o.zip", "staged_key": "k",
                                               "name": name}).name == name
    assert UpdateDeployment.model_validate({"deployment": "d-1", "name": name}).name == name


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("model, field", [
    (WorkflowMeta, ("relation_settings", "title")),
    (WorkflowMeta, ("node_settings", "url_title")),
    (CreateProjectVersion, "version_title"),
    (UploadOrchestration, "file_name"),
])
def test_a_card_title_file_name_model_or_pipeline_name_with_a_control_character_is_refused(model, field, control):
    """Session 38's note: these still took any character after cb581b6e (a card's title, an orchestration's
    file_name)."""
    name = f"nightly{control}run"
    payload = {field[0]: {field[1]: name}} if isinstance(field, tuple) else {field: name}
    assert name_refusal(model, payload, field) == f"{FREE_TEXT_RULE}; got {name!r}"
    printable = "Nightly run: données/日本語 (v2)"
    payload = {field[0]: {field[1]: printable}} if isinstance(field, tuple) else {field: printable}
    try:  # other required fields are left out: only this one's refusal counts
        model.model_validate(payload)
    except ValidationError as exc:
        assert all(e["loc"] != (field if isinstance(field, tuple) else (field,)) for e in exc.errors())


def test_a_card_title_stored_with_a_control_character_is_still_answered():
    """Stored before the rule (or a card titled after a project name with DEL, or a version title with a newline,
    taken then): workflow/graph still answers it, as it does an icon stored with a newline (38ffba70)."""
    from datetime import UTC, datetime

    from services.workflow_lineage import graph
    from shared.messages.monitoring import ModelVersionRef

    now = datetime.now(UTC)
    node = graph.node_model({"id": 1, "kind": "project_version", "ref": "7", "title": "sales\x7f v1: first\n",
                             "settings": {"url_title": "Open\tit"}, "data": {}, "created_at": now, "updated_at": now})
    assert (node.title, node.settings.title, node.settings.url_title) == ("sales\x7f v1: first\n",) * 2 + ("Open\tit",)
    edge = graph.edge_model({"id": 2, "source": 1, "target": 3, "relation": "input", "origin": "explicit",
                             "settings": {"title": "in\nput", "icon": "folder"}})
    assert (edge.settings.title, edge.settings.icon) == ("in\nput", "folder")
    assert ModelVersionRef.model_validate({"name": "churn\n"}).name == "churn\n"  # answers read what is stored


def test_a_card_titled_with_a_control_character_is_answered_through_the_gateway(monkeypatch):
    """The gateway checks a JSON route's answer against its model (FastAPI's response_model): with the request rule on
    WorkflowSettings, which WorkflowNode and WorkflowEdge answer, a card titled with a tab (a workspace file's name
    gives a file card its title, and a file's path may hold one) or stored before the rule made workflow/graph, and
    the add_input_* that drew the card, a 500 for the whole workspace. A request's settings still refuse one."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from services.gateway import handlers
    from services.gateway.http import create_app
    from services.workflow_lineage import graph
    from shared.messages.lineage import LinkAdded, WorkflowGraph
    from shared.settings import Settings

    now = datetime.now(UTC)
    card = graph.node_model({"id": 1, "kind": "file", "ref": "/data/a\tb.csv", "title": "a\tb.csv", "settings": {},
                             "data": {}, "created_at": now, "updated_at": now})
    run = graph.node_model({"id": 2, "kind": "task_run", "ref": "run-1", "title": "nightly\x7f",
                            "settings": {"url_title": "Open\nit"}, "data": {}, "created_at": now, "updated_at": now})
    edge = graph.edge_model({"id": 3, "source": 1, "target": 2, "relation": "input", "origin": "explicit",
                             "settings": {"title": "in\nput"}})
    answers = {"workflow_lineage.workflow.graph": WorkflowGraph(root=None, nodes=[card, run], edges=[edge]),
               "workflow_lineage.workflow.add_input_file": LinkAdded(node=card, main_node=run, edge=edge)}

    class Verifier:
        async def verify(self, token):
            return USER

    async def forward(broker, subject, cmd, token, timeout):
        return answers[subject].model_dump(mode="json")  # as the bus carries it

    monkeypatch.setattr(handlers, "forward", forward)
    app = create_app(SimpleNamespace(settings=Settings(), extras={"verifier": Verifier()}, broker=None, objects=None))
    auth = {"Authorization": "Bearer t"}
    with TestClient(app, raise_server_exceptions=False) as client:
        drawn = client.post("/v1/api/workflow/graph", json={"workspace_id": 1}, headers=auth)
        assert drawn.status_code == 200, drawn.text
        titles = [(n["title"], n["settings"].get("title"), n["settings"].get("url_title"))
                  for n in drawn.json()["nodes"]]
        assert titles == [("a\tb.csv", "a\tb.csv", None), ("nightly\x7f", "nightly\x7f", "Open\nit")]
        assert drawn.json()["edges"][0]["settings"]["title"] == "in\nput"
        linked = client.post("/v1/api/workflow/add_input_file", json={"workspace_id": 1, "task_id": "run-1",
                                                                      "path": "/data/a\tb.csv"}, headers=auth)
        assert linked.status_code == 200, linked.text
        assert linked.json()["node"]["settings"]["title"] == "a\tb.csv"
        refused = client.post("/v1/api/workflow/add_input_file", headers=auth, json={
            "workspace_id": 1, "task_id": "run-1", "path": "/data/a.csv",
            "meta": {"relation_settings": {"title": "a\tb"}}})
        assert refused.status_code == 400 and FREE_TEXT_RULE in refused.json()["msg"], refused.text


@pytest.mark.parametrize("name", ["churn\n", "churn\x7f"])
def test_a_model_named_before_the_rule_is_still_set_or_monitored_by_its_name(name):
    """set_model, set_shadow_model and monitor's model_version name a registry model, looked up as stored (never
    stored as sent): a model named 'churn\\n' before cb581b6e (the registry's re.match took a last newline) was a 400
    after 72c73ea1, so a deployment could no longer be set back to it nor a prediction recorded under its A/B arm,
    and seed code passing monitor's deprecated model_version met a new 400 the module promises it does not (a new
    model cannot be given such a name: the registry refuses it, below)."""
    ref = {"name": name, "version": str(uuid.uuid4())}
    assert SetDeploymentModel.model_validate({"deployment": "d-1", "model_version": ref}).model_version.name == name
    monitored = MonitorImage.model_validate({
        "deployment": "d-1", "image": "aGk=", "latency": 0.1, "height": 1, "width": 1, "model_version": ref,
        "prediction": {"detection_classes": [0], "detection_scores": [0.9]}})
    assert monitored.model_version.name == name


@pytest.mark.parametrize("name", ["churn\n", "churn\x7f"])
def test_an_assay_on_a_pipeline_named_before_the_rule_is_still_made(name):
    """An assay's pipeline_name must equal its pipeline's stored name (assay_runner's _check_pipeline; the SDK sends
    pipeline.name()), and the deployer took 'churn\\n' before cb581b6e: after 72c73ea1 no assay could be created,
    previewed or baselined on such a pipeline. Its own name still holds no control character."""
    body = {"name": "drift", "pipeline_id": 1, "pipeline_name": name, "iopath": "output dense_1 0",
            "baseline": {"Static": {"values": [0.5]}}, "window": {"pipeline": name, "width": "1 hours"},
            "summarizer": {}, "alert_threshold": 0.1, "workspace_id": 1}
    assert NewAssayConfig.model_validate(body).pipeline_name == name
    assert name_refusal(NewAssayConfig, body | {"name": name}) == f"{FREE_TEXT_RULE}; got {name!r}"


@pytest.mark.parametrize("name", ["churn\n", "churn\x7f", "ch\turn"])
def test_a_model_pipeline_or_deploy_id_name_ending_in_a_newline_is_refused(name):
    for what in ("pipeline name", "deploy_id"):
        with pytest.raises(InvalidRequest, match=rf"^invalid {what} .*: use 1-63 ASCII letters"):
            _check_name(name, what)
    upload = UploadModel(workspace_id=1, name=name, conversion={"framework": "onnx"}, staged_key="k",
                         file_name="m.onnx")
    with pytest.raises(InvalidRequest, match=r"^invalid model name .*: use 1-63 ASCII letters"):
        asyncio.run(_upload(None, USER, None, upload))  # refused before anything is read


@pytest.mark.parametrize("name", ["team-a\n", "team-a\x7f"])
def test_a_workspace_or_inference_client_name_ending_in_a_newline_is_refused(name, monkeypatch):
    with pytest.raises(InvalidRequest, match=r"^invalid workspace name .*: use 1-63 lowercase ASCII"):
        asyncio.run(auth.create_workspace(None, USER, CreateWorkspace(workspace_name=name)))

    async def owner(*_):
        return None

    monkeypatch.setattr(auth, "_require_owner", owner)
    with pytest.raises(InvalidRequest, match=r"^invalid inference client name .*: use 1-63 letters"):
        asyncio.run(auth.create_inference_client(None, USER, CreateInferenceClient(workspace_id=1, name=name)))


@pytest.mark.parametrize("field, value", [("icon", "folder\n"), ("icon_color", "#fff\n")])
def test_a_card_icon_or_colour_ending_in_a_newline_is_refused(field, value):
    with pytest.raises(ValidationError):
        WorkflowSettings.model_validate({field: value})
    WorkflowSettings.model_validate({field: value.strip()})


@pytest.mark.parametrize("control", ["\x7f", "\x85", "\x9f"])
def test_a_file_stored_with_del_or_c1_in_its_name_is_still_reached(control):
    """NAME_PATTERN took DEL and C1 until cb581b6e, so a dataset may hold 'scan\\x85.png' (a Windows-1252 name read as
    Latin-1). A new file is refused such a name; the one stored is still named to read or delete it, and a list_files
    page ending at it still has a next page (each was a 400 after cb581b6e)."""
    from services.workflow_lineage.file_pages import cursor_of, name_of
    from shared.messages.lineage import AddDatasetFile, DatasetFileQuery, DatasetFileRef

    name = f"scan{control}.png"
    assert name_refusal(AddDatasetFile, {"dataset_id": 1, "name": name, "staged_key": "k"}).startswith(LINEAGE_RULE)
    assert DatasetFileQuery.model_validate({"dataset_id": 1, "name": name}).name == name
    assert DatasetFileRef.model_validate({"dataset_id": 1, "name": name}).name == name
    assert name_of(cursor_of(name)) == name


@pytest.mark.parametrize("name", ["a\x00b", "a\nb", "a/b", ""])
def test_a_name_no_file_can_have_is_still_refused_when_naming_one(name):
    from services.workflow_lineage.file_pages import cursor_of, name_of
    from shared.messages.lineage import DatasetFileRef

    with pytest.raises(ValidationError):
        DatasetFileRef.model_validate({"dataset_id": 1, "name": name})
    with pytest.raises(InvalidRequest, match="^cursor: not a next_cursor"):
        name_of(cursor_of(name) or "=")
