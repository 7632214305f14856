"""Workspace isolation: every route that takes a workspace's id, called by someone who is not a member
of that workspace, answers no 2xx (404: to outsiders the workspace does not exist) and changes nothing.

Later issues add their routes to WORKSPACE_ROUTES; a route in the API that is in neither list below
fails `test_every_route_is_classified`, so no new route can skip this suite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import requests

from shared.sealed import sealed_request
from tests.integration.conftest import PASSWORD, Account, inference_token, make_account, post, undeploy_all
from tests.models import ccfraud_onnx

pytestmark = pytest.mark.integration

# path -> body built from (victim, intruder, victim's model id); the body names the victim's workspace or
# one of its resources
WORKSPACE_ROUTES: dict[str, Callable[[Account, Account, int], dict]] = {
    "users/query": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "workspaces/create_inference_client": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                           "name": "intruder"},
    "workspaces/list_inference_clients": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "workspaces/revoke_inference_client": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                           "client_id": "inference-00"},
    "workspaces/add_user": lambda victim, intruder, model: {"email": intruder.email,
                                                            "workspace_id": victim.workspace_id},
    "workspaces/list_users": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "workspaces/remove_user": lambda victim, intruder, model: {"user_id": victim.user_id,
                                                               "workspace_id": victim.workspace_id},
    "models/list": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "models/get_by_id": lambda victim, intruder, model: {"id": model},
    "models/list_versions": lambda victim, intruder, model: {"models_pk_id": model},
    "models/get_config_by_id": lambda victim, intruder, model: {"model_id": model},
    "models/get": lambda victim, intruder, model: {"id": model},
    "models/download": lambda victim, intruder, model: {"workspace_id": victim.workspace_id, "name": "victim-model"},
    "connections/list": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "models/list_registries": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "pipelines/create": lambda victim, intruder, model: {"pipeline_id": "intruder", "workspace_id": victim.workspace_id,
                                                         "definition": {}},
    "pipelines/list": lambda victim, intruder, model: {"workspace_id": victim.workspace_id},
    "assays/create": lambda victim, intruder, model: assay_body(victim),
    "assays/run_interactive_baseline": lambda victim, intruder, model: assay_body(victim),
    "assays/run_interactive": lambda victim, intruder, model: assay_body(victim),
    "assays/get_baseline": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                            "pipeline_name": "victimpipe"},
    "pipelines/get_logs": lambda victim, intruder, model: {"pipeline_id": "victimpipe",
                                                           "workspace_id": victim.workspace_id},
    "pipelines/set_log_retention": lambda victim, intruder, model: {"pipeline_id": "victimpipe",
                                                                    "workspace_id": victim.workspace_id,
                                                                    "retention_days": 1},
    "admin/get_pipeline_external_url": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                        "pipeline_name": "x"},
    "models/create_registry": lambda victim, intruder, model: {"workspace_id": victim.workspace_id, "name": "x",
                                                               "url": "https://registry.example.com", "token": "t"},
    "models/attach_registry_to_workspace": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                           "registry_id": str(uuid.uuid4())},
    "models/remove_registry_from_workspace": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                             "registry_id": str(uuid.uuid4())},
    "models/upload_from_registry": lambda victim, intruder, model: {
        "registry_id": str(uuid.uuid4()), "name": "x", "path": "x", "workspace_id": victim.workspace_id,
        "conversion": {"framework": "sklearn"}},
    "connections/add_to_workspace": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                     "connection_id": str(uuid.uuid4())},
    "connections/remove_from_workspace": lambda victim, intruder, model: {"workspace_id": victim.workspace_id,
                                                                          "connection_id": str(uuid.uuid4())},
}

def assay_body(victim: Account) -> dict:
    return {"name": "intruder", "pipeline_id": 1, "pipeline_name": "victimpipe", "iopath": "output dense_1 0",
            "baseline": {"Static": {"values": [1.0, 2.0, 3.0]}},
            "window": {"pipeline": "victimpipe", "width": "1 minute"},
            "summarizer": {"type": "UnivariateContinuous", "bin_mode": "Quantile", "aggregation": "Density",
                           "metric": "PSI", "num_bins": 2, "add_outlier_edges": True},
            "alert_threshold": 0.1, "workspace_id": victim.workspace_id}


# multipart routes: path -> (form fields, files) naming the victim's workspace
UPLOAD_ROUTES: dict[str, Callable[[Account], tuple[dict, dict]]] = {
    "models/upload_and_convert": lambda victim: ({}, {
        "metadata": (None, json.dumps({"name": "intruder-model", "visibility": "public",
                                       "workspace_id": victim.workspace_id, "conversion": {"framework": "onnx"}})),
        "file": ("m.onnx", ccfraud_onnx())}),
    "models/upload_stream": lambda victim: ({"name": "intruder-model", "workspace_id": victim.workspace_id},
                                            {"file": ("m.onnx", ccfraud_onnx())}),
}

# routes that take no workspace id: scoped to the caller (or admin-only, tested in their own files)
NOT_WORKSPACE_SCOPED = {
    "users/invite", "users/deactivate", "users/activate", "users/update_password", "workspaces/list",
    "workspaces/create", "features/list",
    # connections are found by name or id; their visibility rules are tested in test_connections.py
    "connections/create", "connections/get", "connections/get_by_id", "connections/delete",
    # registries are found by id; their visibility rules are tested in test_mlflow_registry.py
    "models/get_registry", "models/list_registry_models", "models/list_registry_model_version_artifacts",
    # pipelines and deployments are found by id or name; outsiders get 404 (test_pipelines.py and below)
    "pipelines/copy", "pipelines/get", "pipelines/deploy", "pipelines/undeploy", "status/get_deployment",
    "pipelines/infer/{deployment}/{pipeline}",
    # assays are found by id or pipeline id; outsiders get 404 (test_assays.py)
    "assays/list", "assays/set_active", "assays/get_results",
    # orchestrations, tasks and runs: every route in test_orchestrations.py::test_isolation_on_all_ten_routes
    "orchestration/upload", "orchestration/list", "task/run_once", "task/run_scheduled", "task/get_by_id",
    "task/get_tasks_by_orch_sha", "task/list", "task/kill", "task/list_task_runs", "task/get_logs_for_run",
    # projects, datasets, files and the workflow graph: test_lineage.py::test_isolation_on_every_route
    *(f"projects/{verb}" for verb in ("create", "create_version", "delete", "get", "list", "list_versions",
                                      "restore_version", "verify_version")),
    *(f"datasets/{verb}" for verb in ("create", "delete", "delete_file", "download_file", "get", "get_file_info",
                                      "get_rows", "list", "list_files", "upload_file", "upload_rows")),
    "files/delete", "files/download", "files/get_info", "files/list", "files/upload", "workflow/graph",
    *(f"workflow/add_input_{card}" for card in ("dataset", "file", "folder", "job", "project", "task")),
    *(f"workflow/add_output_{card}" for card in ("app", "dataset", "file", "folder", "job", "project", "task")),
    # benchmark reports: test_lineage_benchmarks.py (bob reads, runs and compares nothing of alice's)
    "benchmarks/compare", "benchmarks/evaluate_detections", "benchmarks/get", "benchmarks/list",
    "benchmarks/run_classification",
    # seed-003 deployment management: test_monitoring.py (bob 404, inference token 403, no token 401)
    *(f"deployments/{verb}" for verb in ("add_tags", "delete", "get_model_version", "get_shadow_model", "get_tags",
                                         "retrieve_information", "set_model", "set_shadow_model", "update")),
    # seed-003 predictions: test_monitoring_predictions.py (test_bad_images_outsiders_and_inference_tokens_...:
    # an outsider 404 as a missing deployment, inference token 403, no token 401; no row, no image stored;
    # their multipart form: test_bad_oversize_and_foreign_staged_images_...: an outsider's upload 404 with nothing
    # staged left, another user's staged key 403 and untouched)
    *(f"deployments/{verb}" for verb in ("predict", "predict_bytes", "monitor", "monitor_bytes")),
    # seed-003 continuous training and deployment:
    # test_monitoring_loop.py::test_continuous_settings_checked_and_isolated (an outsider 404 as a missing
    # deployment, inference token 403, no token 401; nothing stored)
    *(f"deployments/{verb}" for verb in ("setup_continuous_training", "attach_dataset_version_to_continuous_training",
                                         "detach_dataset_version_from_continuous_training",
                                         "toggle_continuous_training", "setup_continuous_deployment",
                                         "toggle_continuous_deployment")),
    # seed-003 feedback: test_monitoring_feedback.py::test_outsiders_and_bad_input_change_nothing (another
    # workspace's member gets 404 for the deployment and its predictions, inference token 403, no token 401)
    *(f"deployments/{verb}" for verb in (
        "review_prediction", "list_predictions_to_review", "get_prediction_image", "setup_feedback_loop",
        "attach_dataset_version_to_feedback_loop", "detach_dataset_version_from_feedback_loop",
        "list_feedback_loop_datasets", "check_feedback_loop_status", "disable_feedback_loop", "toggle_feedback_loop",
        "set_training_data", "check_training_data_metrics_status", "disable_training_data_reference",
        "get_stats")),
    # admins only: test_log_quarantine.py (a non-admin is refused)
    "pipelines/list_quarantined_logs",
    # admins only (objects are shared by every workspace): test_lineage.py::test_unreferenced_objects_are_collected
    "maintenance/collect_objects",
}
# (the /v2 Open Inference Protocol routes are outside /v1/api; test_oip.py checks their tokens)


@pytest.fixture
def victim_model(stack, alice) -> int:
    return _upload_victim_model(stack, alice)


@pytest.fixture(scope="module")
def outsiders(stack, admin) -> Iterator[tuple[Account, Account, int]]:
    """(alice, bob, alice's model) made once for the parametrised cases (one route each, ~60 of them): a case
    changes nothing of either account (what each asserts: alice's state is the same after it as before, and bob
    got no 2xx), so a fresh pair and upload per case (4 sign-ins, 2 invites, an upload: ~0.2 s of a case's
    ~0.25 s) proved nothing more. The tests that add bob to alice's workspace keep fresh accounts of their own."""
    alice, bob = make_account(stack, admin, "alice"), make_account(stack, admin, "bob")
    yield alice, bob, _upload_victim_model(stack, alice)
    for account in (alice, bob):
        undeploy_all(stack, account)
        account.client.close()


def _upload_victim_model(stack, alice: Account) -> int:
    response = requests.post(
        f"{stack.api}/models/upload_stream", files={"file": ("m.onnx", ccfraud_onnx())},
        data={"name": "victim-model", "workspace_id": alice.workspace_id},
        headers={"Authorization": f"Bearer {alice.token}"}, timeout=60)
    assert response.status_code == 200, response.text
    model_id = response.json()["insert_models"]["returning"][0]["models"][0]["id"]
    # workspaces/list learns of the model from an event: wait for it so before/after snapshots compare the same
    import time

    deadline = time.monotonic() + 10
    while model_id not in next(w for w in alice.client.post("workspaces/list", {})["workspaces"]
                               if w["id"] == alice.workspace_id)["models"]:
        assert time.monotonic() < deadline, "the model never appeared in workspaces/list"
        time.sleep(0.1)
    return model_id


def _state(stack, victim: Account) -> tuple:
    members = victim.client.post("workspaces/list_users", {"workspace_id": victim.workspace_id})["users"]
    workspaces = victim.client.post("workspaces/list", {})["workspaces"]
    models = victim.client.post("models/list", {"workspace_id": victim.workspace_id})["models"]
    return (sorted((u["user_id"], u["user_type"]) for u in members), workspaces, models)


def test_every_route_is_classified(stack):
    spec = httpx.get(f"{stack.api}/openapi.json").json()
    routes = {path.removeprefix("/v1/api/") for path in spec["paths"] if path.startswith("/v1/api/")}
    routes.discard("health")
    unclassified = routes - set(WORKSPACE_ROUTES) - set(UPLOAD_ROUTES) - NOT_WORKSPACE_SCOPED
    assert not unclassified, f"add these routes to the isolation suite: {sorted(unclassified)}"


@pytest.mark.parametrize("path", sorted(WORKSPACE_ROUTES))
def test_foreign_workspace_is_not_found_and_unchanged(stack, outsiders, path):
    alice, bob, victim_model = outsiders
    before = _state(stack, alice)
    response = post(stack, path, bob.token, WORKSPACE_ROUTES[path](alice, bob, victim_model))
    assert not 200 <= response.status_code < 300, response.text
    assert response.status_code == 404 and response.json()["code"] == "not_found", response.text
    assert _state(stack, alice) == before


@pytest.mark.parametrize("path", sorted(UPLOAD_ROUTES))
def test_uploads_into_a_foreign_workspace_are_not_found_and_leave_nothing(stack, outsiders, path):
    from tests.integration.test_registry import artifact_keys

    alice, bob, _ = outsiders
    before, keys = _state(stack, alice), artifact_keys(stack)
    data, files = UPLOAD_ROUTES[path](alice)
    response = requests.post(f"{stack.api}/{path}", data=data, files=files,
                             headers={"Authorization": f"Bearer {bob.token}"}, timeout=60)
    assert response.status_code == 404 and response.json()["code"] == "not_found", response.text
    assert _state(stack, alice) == before
    assert artifact_keys(stack) == keys


@pytest.mark.parametrize("path", sorted(WORKSPACE_ROUTES))
def test_inference_tokens_cannot_reach_workspace_routes(stack, outsiders, path):
    alice, _, victim_model = outsiders
    token = inference_token(stack, alice)  # of alice's own workspace: still inference only
    response = post(stack, path, token, WORKSPACE_ROUTES[path](alice, alice, victim_model))
    assert response.status_code == 403


def test_a_removed_member_loses_access(stack, alice, bob):
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    assert post(stack, "workspaces/list_users", bob.token, {"workspace_id": alice.workspace_id}).status_code == 200
    alice.client.post("workspaces/remove_user", {"user_id": bob.user_id, "workspace_id": alice.workspace_id})
    assert post(stack, "workspaces/list_users", bob.token, {"workspace_id": alice.workspace_id}).status_code == 404


async def test_the_bus_front_door_applies_the_same_rules(stack, alice, bob):
    """Commands published straight onto NATS are checked by the owning service, not only by the gateway."""
    import nats

    from shared import subjects
    from shared.messages import Reply

    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")  # the front door identity
    try:
        async def ask(subject: str, body: bytes, token: str | None) -> Reply:
            headers = {"authorization": f"Bearer {token}"} if token else None
            return Reply.model_validate_json((await sealed_request(nc, subject, body, timeout=5, headers=headers)).data)

        payload = f'{{"workspace_id": {alice.workspace_id}}}'.encode()
        no_token = await ask(subjects.AUTH_WORKSPACES_LIST_USERS, payload, None)
        assert not no_token.ok and no_token.status == 401
        forged = await ask(subjects.AUTH_WORKSPACES_LIST_USERS, payload, "eyJhbGciOiJub25lIn0.e30.")
        assert not forged.ok and forged.status == 401
        outsider = await ask(subjects.AUTH_WORKSPACES_LIST_USERS, payload, bob.token)
        assert not outsider.ok and outsider.status == 404
        member = await ask(subjects.AUTH_WORKSPACES_LIST_USERS, payload, alice.token)
        assert member.ok and member.data["users"][0]["user_id"] == alice.user_id
        invite = await ask(subjects.AUTH_USERS_INVITE, b'{"email": "sneaky@example.com"}', alice.token)
        assert not invite.ok and invite.status == 403
    finally:
        await nc.close()


def test_foreign_pipelines_and_deployments_are_not_found(stack, alice, bob):
    """bob (an outsider) and a task run's token of alice's own, scoped to another workspace of hers, get 404 for her
    pipeline and deployment, inference included: even right after alice's own inference, whose membership the
    gateway caches for her (that cache once let her scoped token through)."""
    from tests.integration.test_pipelines import create_pipeline, infer, upload_model

    scoped = task_token(stack, alice.user_id, second_workspace(alice))
    version = upload_model(stack, alice, "isolated")
    pipeline = create_pipeline(stack, alice, "isolated", version)
    deployment = post(stack, "pipelines/deploy", alice.token, {
        "deploy_id": "isolated", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
        "pipeline_id": pipeline["pipeline_pk_id"]}).json()["id"]
    name = f"isolated-{deployment}"
    try:
        before = post(stack, "pipelines/get", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json()
        attempts = {
            "pipelines/get": {"pipeline_id": pipeline["pipeline_pk_id"]},
            "pipelines/copy": {"name": "stolen", "workspace_id": bob.workspace_id,
                               "source_pipeline": pipeline["pipeline_pk_id"]},
            "pipelines/deploy": {"deploy_id": "hijack", "pipeline_version_pk_id": pipeline["pipeline_variant_pk_id"],
                                 "pipeline_id": pipeline["pipeline_pk_id"]},
            "pipelines/undeploy": {"pipeline_id": pipeline["pipeline_pk_id"], "deployment_id": deployment},
            "status/get_deployment": {"name": name},
            "deployments/get_tags": {"deployment": name},
        }
        assert post(stack, "deployments/get_tags", alice.token, {"deployment": name}).status_code == 200
        for token in (bob.token, scoped):
            for path, body in attempts.items():
                response = post(stack, path, token, body)
                assert response.status_code == 404, (path, response.text)
        url = f"{stack.api}/pipelines/infer/{name}/isolated"
        assert infer(url, alice.token, [{"tensor": [1.0] * 29}]).status_code == 200
        for token in (bob.token, scoped):
            response = infer(url, token, [{"tensor": [1.0] * 29}])
            assert response.status_code == 404 and response.json()["code"] == "not_found", response.text
        assert post(stack, "pipelines/get", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"]}).json() == before
        assert post(stack, "status/get_deployment", alice.token, {"name": name}).json()["status"] == "Running"
    finally:
        post(stack, "pipelines/undeploy", alice.token, {"pipeline_id": pipeline["pipeline_pk_id"],
                                                        "deployment_id": deployment})


# --- task-run tokens ---------------------------------------------------------------------------------------------

def task_token(stack, user_id: str, workspace_id: int) -> str:
    """A task run's token for `user_id` in `workspace_id`, minted as the task scheduler mints one (auth.token.
    issue_task; the test stack's bus identity may publish it)."""
    import asyncio

    from faststream.nats import NatsBroker

    from shared import subjects
    from shared.bus import request
    from shared.messages.tasks import IssueTaskToken, TaskTokenIssued

    async def mint() -> str:
        broker = NatsBroker(stack.settings().nats.url)
        await broker.connect()
        try:
            issued = await request(broker, subjects.AUTH_TOKEN_ISSUE_TASK, IssueTaskToken(
                user_id=user_id, workspace_id=workspace_id, ttl=300, task_id=str(uuid.uuid4()),
                run_id=str(uuid.uuid4())), timeout=10, reply_model=TaskTokenIssued)
        finally:
            await broker.stop()
        return issued.access_token

    return asyncio.run(mint())


def second_workspace(account: Account) -> int:
    """A new workspace of the account's (its owner), beside its home workspace."""
    return account.client.post("workspaces/create", {"workspace_name": f"task-{uuid.uuid4().hex[:10]}"})[
        "workspace_id"]


def test_a_task_runs_token_reaches_its_own_workspace_only(stack, alice, bob, victim_model):
    """ARCHITECTURE.md, "Trust boundary": a task run reaches the gateway "with a short-lived token scoped to their
    workspace". alice's task runs in a second workspace of hers; her home workspace (with a model, a project, a
    member bob) is out of its token's reach on every workspace route as it is for an outsider, workspaces/list and
    users/query answer the task's workspace only, and what reaches beyond a workspace or hands out access or
    credentials (members, inference clients, connections, registries: its code is untrusted) is 403 out_of_scope,
    in its own workspace too. Nothing of alice's changes."""
    task_workspace = second_workspace(alice)
    alice.client.post("workspaces/add_user", {"email": bob.email, "workspace_id": alice.workspace_id})
    project = alice.client.post("projects/create", {"workspace_id": alice.workspace_id, "name": "home"})
    token = task_token(stack, alice.user_id, task_workspace)
    before = _state(stack, alice)
    assert {alice.workspace_id, task_workspace} <= {w["id"] for w in before[1]}  # and her default workspace

    listed = post(stack, "workspaces/list", token, {})
    assert [w["id"] for w in listed.json()["workspaces"]] == [task_workspace], listed.text
    assert bob.user_id in alice.client.post("users/query", {})["users"]  # unscoped: everyone sharing a workspace
    assert list(post(stack, "users/query", token, {}).json()["users"]) == [alice.user_id]
    assert post(stack, "models/list", token, {"workspace_id": task_workspace}).status_code == 200  # its own: fine

    home_routes = {path: build(alice, alice, victim_model) for path, build in WORKSPACE_ROUTES.items()} | {
        "projects/list": {"workspace_id": alice.workspace_id},
        "datasets/list": {"project_id": project["id"]},
        "orchestration/list": {"workspace_id": alice.workspace_id},
        "task/list": {"workspace_id": alice.workspace_id},
    }
    for path, body in home_routes.items():
        response = post(stack, path, token, body)
        assert response.status_code == 404 and response.json()["code"] == "not_found", (path, response.text)
    for path, build in UPLOAD_ROUTES.items():
        data, files = build(alice)
        response = requests.post(f"{stack.api}/{path}", data=data, files=files,
                                 headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert response.status_code == 404, (path, response.text)
    # beyond a workspace, or handing anyone access or credentials, even in its own (its code is untrusted): 403
    own = {"workspace_id": task_workspace}
    for path, body in (("workspaces/create", {"workspace_name": f"escape-{uuid.uuid4().hex[:8]}"}),
                       ("users/update_password", {"password": "Another-passw0rd!", "current_password": PASSWORD}),
                       ("workspaces/add_user", own | {"email": bob.email}),
                       ("workspaces/remove_user", own | {"user_id": bob.user_id}),
                       ("workspaces/create_inference_client", own | {"name": "escape"}),
                       ("workspaces/revoke_inference_client", own | {"client_id": "inference-00"}),
                       ("connections/create", {"name": f"escape-{uuid.uuid4().hex[:8]}", "type": "HTTP",
                                               "details": {"token": "t"}}),
                       ("connections/add_to_workspace", own | {"connection_id": str(uuid.uuid4())}),
                       ("connections/remove_from_workspace", own | {"connection_id": str(uuid.uuid4())}),
                       ("connections/delete", {"name": "escape"}),
                       ("models/create_registry", own | {"name": "escape", "url": "https://registry.example.com",
                                                         "token": "t"}),
                       ("models/attach_registry_to_workspace", own | {"registry_id": str(uuid.uuid4())}),
                       ("models/remove_registry_from_workspace", own | {"registry_id": str(uuid.uuid4())})):
        response = post(stack, path, token, body)
        assert response.status_code == 403 and response.json()["code"] == "out_of_scope", (path, response.text)
    assert _state(stack, alice) == before  # alice's token still works: her password was not changed
    assert [u["user_id"] for u in alice.client.post("workspaces/list_users", own)["users"]] == [alice.user_id]
    assert alice.client.post("workspaces/list_inference_clients", own)["clients"] == []


async def test_a_task_runs_token_on_the_bus_front_door(stack, alice):
    """The same scope when the token's commands are published straight onto NATS (the front door identity)."""
    import asyncio

    import nats

    from shared import subjects
    from shared.messages import Reply

    task_workspace = second_workspace(alice)
    token = await asyncio.to_thread(task_token, stack, alice.user_id, task_workspace)
    nc = await nats.connect(stack.nats_url("client"), inbox_prefix="_INBOX.client")
    try:
        async def ask(subject: str, body: dict) -> Reply:
            message = await sealed_request(nc, subject, json.dumps(body).encode(), timeout=5,
                                           headers={"authorization": f"Bearer {token}"})
            return Reply.model_validate_json(message.data)

        listed = await ask(subjects.AUTH_WORKSPACES_LIST, {})
        assert listed.ok and [w["id"] for w in listed.data["workspaces"]] == [task_workspace]
        home = await ask(subjects.REGISTRY_MODELS_LIST, {"workspace_id": alice.workspace_id})
        assert not home.ok and home.status == 404
        assert (await ask(subjects.REGISTRY_MODELS_LIST, {"workspace_id": task_workspace})).ok
        created = await ask(subjects.AUTH_WORKSPACES_CREATE, {"workspace_name": f"escape-{uuid.uuid4().hex[:8]}"})
        assert not created.ok and created.status == 403
    finally:
        await nc.close()
