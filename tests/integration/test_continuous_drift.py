"""Drift-triggered continuous training (trigger ASSAY_ALERT, docs/monitoring.md "Continuous training on assay
alerts") and monitoring's own events through its outbox, on the real stack.

A model is deployed; its pipeline is fed shifted rows (as the engine logs them) and two assays watch it: one whose
window scores above its alert threshold (events.assay.alert), one only above its warning threshold
(events.assay.warning). The monitoring service's durable consumer counts the alert for the deployment, once per
event_id (the same event delivered again is not counted again), never a warning, never an alert naming another
workspace; at `threshold` alerts exactly one training run starts, with what drifted in its arguments. The training
recipe fails on purpose: the training ends at once (training_finished, status failed), which is all the events
test needs: with EVENTS refusing monitoring's training events while a training starts and ends, both reach the
stream once each once it accepts again (before the outbox they were published after the commit and lost).

Events are put on the bus as the assay runner does (the test's connection may publish anything): the first alert is
the assay runner's own; the copies and the other workspace's alert are the same message with one field changed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import uuid
import zipfile
from datetime import UTC, datetime

import nats as nats_client
import numpy as np
import pytest
from railyard_client import Lineage, Orchestrations

from shared import subjects
from tests.image_models import digit_png
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import make_account, post, undeploy_all
from tests.integration.conftest import sdk_client as sdk
from tests.integration.continuous_setups import consumer_caught_up
from tests.integration.test_assays import config, iso, publish_rows
from tests.integration.test_logs import wait_rows
from tests.integration.test_monitoring_loop import wait_for
from tests.integration.test_monitoring_predictions import query
from tests.models import ccfraud_onnx
from tests.stack import service_process, wait_serving

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ALERTS_DURABLE = "monitoring-continuous-assay-alerts"
TRAINING_EVENTS = (subjects.EVENT_MONITORING_TRAINING_STARTED, subjects.EVENT_MONITORING_TRAINING_FINISHED,
                   subjects.EVENT_MONITORING_CHALLENGER_DECIDED, subjects.EVENT_MONITORING_MODEL_SWAPPED)
FAILING_RECIPE = '''
"""A training recipe that fails at once (the tests need a training that starts and ends, not a model)."""
from railyard_client import task_args

args = task_args()
print("trigger", args["trigger"], "alerts", args.get("alerts"), "assays", [a["assay_id"] for a in args.get(
    "assay_alerts", [])])
raise SystemExit("this recipe fails on purpose")
'''


@pytest.fixture(scope="module")
def drift(stack, admin):
    """A deployment (a small ONNX model), its pipeline's id, and a training recipe that fails at once."""
    account = make_account(stack, admin, "drift")
    client = sdk(stack, account)
    model = client.upload_model("driftmodel", ccfraud_onnx(), progress=False)
    name = f"drift{uuid.uuid4().hex[:6]}"
    pipeline = client.build_pipeline(name).add_model_step(model)
    pipeline.deploy(replicas=1, cpus=0.5, wait=False)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("main.py", FAILING_RECIPE)
    orchestrations = Orchestrations(client, account.workspace_id)
    orchestration = orchestrations.upload(archive.getvalue(), "drift-recipe", progress=False)
    project = Lineage(client, account.workspace_id).create_project(f"drift-{name}")
    pipeline.deployment().wait_until_running(180)
    listed = post(stack, "pipelines/list", account.token, {"workspace_id": account.workspace_id}).json()
    pipeline_id = next(p["id"] for p in listed["pipelines"] if p["name"] == name)
    yield {"account": account, "deployment": client.get_deployment(name), "pipeline": {
        "name": name, "pipeline_pk_id": pipeline_id}, "orchestration": orchestration,
        "orchestrations": orchestrations, "project": project}
    undeploy_all(stack, account)


def setup(stack, drift, **fields) -> object:
    return post(stack, "deployments/setup_continuous_training", drift["account"].token, {
        "deployment": drift["deployment"].name, "project_id": drift["project"]["id"],
        "orchestration_id": drift["orchestration"]["id"], "experiment_parameters": {"epochs": 1}, **fields})


def continuous(drift) -> dict:
    return drift["deployment"].retrieve_information()["continuous"]


def query_training(stack, drift) -> dict:
    """The deployment's newest training (id None: none yet), read from monitoring's table (retrieve_information
    answers 404 once the deployment is undeployed)."""
    deployment_id = int(drift["deployment"].name.rsplit("-", 1)[1])
    rows = query(stack, "SELECT id, state, reason, trigger FROM monitoring.trainings WHERE deployment_id = $1 ORDER"
                        " BY created_at DESC LIMIT 1", deployment_id)
    return dict(rows[0]) if rows else {"id": None, "state": None}


def training_tasks(drift) -> list[dict]:
    return [t for t in drift["orchestrations"].tasks() if (t["name"] or "").startswith("continuous training of")]


async def stream_alerts(stack, assay_ids: set[int]) -> list[dict]:
    """The events.assay.* of these assays on the EVENTS stream but their created, each with its stream sequence
    (`_seq`)."""
    return [e for e in await stream_events(stack, "events.assay.>", "assay_id", assay_ids)
            if e["_subject"] != subjects.EVENT_ASSAY_CREATED]


async def training_events(stack, training_id: str) -> list[dict]:
    """Every events.monitoring.* of that training on the EVENTS stream, in stream order, with its subject and
    Nats-Msg-Id (`_subject`, `_msg_id`)."""
    return await stream_events(stack, "events.monitoring.>", "training_id", {training_id})


def fresh(alert: dict) -> dict:
    """Another alert like `alert`, raised now."""
    return alert | {"event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat()}


async def send_alert(stack, body: dict) -> int:
    """Put an alert on the bus as the assay runner does (without its Nats-Msg-Id, so the stream keeps a copy of an
    event it has seen: what a redelivery hands the consumer); its stream sequence."""
    nc = await nats_client.connect(stack.settings().nats.url)
    try:
        ack = await nc.jetstream().publish(subjects.EVENT_ASSAY_ALERT, json.dumps(body).encode(),
                                           stream=subjects.EVENTS_STREAM)
        return ack.seq
    finally:
        await nc.close()


async def handled(stack, seq: int, within: float = 20.0) -> None:
    """Wait until monitoring's alert consumer has handled (acknowledged) every alert up to stream sequence `seq`."""
    await consumer_caught_up(stack, ALERTS_DURABLE, seq, within, "alert")


def drifted_assays(stack, drift) -> tuple[int, int]:
    """An alerting and a warning-only assay over one past window of the deployment's pipeline, fed shifted rows;
    their ids once both windows are scored."""
    account, pipeline = drift["account"], drift["pipeline"]
    start = int(time.time() * 1000) - 4000
    rng = np.random.default_rng(11)
    # logged before the assays exist: their one window is due at once, and is scored with what the log holds
    asyncio.run(publish_rows(stack, account, pipeline["name"], rng.normal(3.0, 0.5, 40), start + 1000))
    wait_rows(stack, account, pipeline["name"], 40)
    baseline = {"Static": {"values": np.linspace(-2.0, 2.0, 60).tolist()}}
    one_window = {"run_until": iso(start + 2000)}
    alerting = post(stack, "assays/create", account.token, config(
        account, pipeline, "drift-alert", baseline, iso(start), "2 seconds", **one_window)).json()["assay_id"]
    warning = config(account, pipeline, "drift-warning", baseline, iso(start), "2 seconds", **one_window)
    warning |= {"warning_threshold": 0.1, "alert_threshold": 1e9}
    warning = post(stack, "assays/create", account.token, warning).json()["assay_id"]

    def scored(assay_id: int) -> list[dict]:
        return post(stack, "assays/get_results", account.token, {"assay_id": assay_id}).json()

    wait_for(lambda: scored(alerting) and scored(warning), 60, "the drifted windows' results")
    assert [r["status"] for r in scored(alerting)] == ["Alert"]
    assert [r["status"] for r in scored(warning)] == ["Warning"]
    return alerting, warning


def test_assay_alerts_start_one_training_warnings_copies_and_other_workspaces_do_not(stack, drift, bob):
    # bad set-up: a typed 400, nothing stored
    for fields, code in (({"trigger": "DRIFT", "threshold": 1}, "invalid_request"),
                         ({"trigger": "ASSAY_ALERT", "threshold": 0}, "invalid_request"),
                         ({"trigger": "ASSAY_ALERT", "threshold": -3}, "invalid_request"),
                         ({"trigger": "FEEDBACK_LOOP"}, "invalid_request")):
        answer = setup(stack, drift, **fields)
        assert answer.status_code == 400 and answer.json()["code"] == code, (fields, answer.text)
    assert continuous(drift)["training"] is None

    answer = setup(stack, drift, trigger="ASSAY_ALERT", threshold=2)
    assert answer.status_code == 200, answer.text
    state = answer.json()["training"]
    assert (state["trigger"], state["threshold"], state["alerts"], state["alerts_at_last_training"]) == (
        "ASSAY_ALERT", 2, 0, 0)

    alerting, warning = drifted_assays(stack, drift)
    events = wait_for(lambda: len(e := asyncio.run(stream_alerts(stack, {alerting, warning}))) == 2 and e, 30,
                      "the assays' events")
    by_subject = {e["_subject"]: e for e in events}
    assert set(by_subject) == {subjects.EVENT_ASSAY_ALERT, subjects.EVENT_ASSAY_WARNING}
    alert = {k: v for k, v in by_subject[subjects.EVENT_ASSAY_ALERT].items() if not k.startswith("_")}
    asyncio.run(handled(stack, by_subject[subjects.EVENT_ASSAY_ALERT]["_seq"]))
    assert continuous(drift)["training"]["alerts"] == 1  # the alert counted, the warning not: below 2
    assert continuous(drift)["last_training"] is None

    # the same event again (a redelivery): not counted again; another workspace's alert naming this pipeline, and
    # this workspace's alert on another pipeline: not counted
    for body in (alert, fresh(alert) | {"workspace_id": bob.workspace_id},
                 fresh(alert) | {"pipeline_id": alert["pipeline_id"] + 100000}):
        asyncio.run(handled(stack, asyncio.run(send_alert(stack, body))))
    state = continuous(drift)
    assert state["training"]["alerts"] == 1 and state["last_training"] is None and not training_tasks(drift)

    # a second alert of this pipeline (another window): the threshold is met, one training run starts
    second = fresh(alert) | {"window_start": alert["window_end"]}
    asyncio.run(handled(stack, asyncio.run(send_alert(stack, second))))
    training = continuous(drift)["last_training"]
    assert training is not None and training["trigger"] == "ASSAY_ALERT" and training["alerts"] == 2, training
    tasks = wait_for(lambda: training_tasks(drift), 30, "the training task")
    args = tasks[0]["input_data"]
    assert (args["trigger"], args["alerts"], args["threshold"]) == ("ASSAY_ALERT", 2, 2)
    assert [a["assay_id"] for a in args["assay_alerts"]] == [alerting, alerting]
    ended = wait_for(lambda: (t := continuous(drift)["last_training"])["state"] == "failed" and t, 60,
                     "the training's end")
    assert ended["id"] == training["id"] and "training run failed" in ended["reason"]

    # both alerts delivered again after the training ended: counted once each, so no second training
    for body in (alert, second):
        asyncio.run(handled(stack, asyncio.run(send_alert(stack, body))))
    state = continuous(drift)
    assert state["training"]["alerts"] == 2 and state["training"]["alerts_at_last_training"] == 2
    assert state["last_training"]["id"] == training["id"] and len(training_tasks(drift)) == 1

    # set up again with the threshold left out (1): an alert raised before that counts nothing, a third one raised
    # after it starts the next training
    answer = setup(stack, drift, trigger="ASSAY_ALERT")
    assert answer.status_code == 200 and answer.json()["training"]["threshold"] == 1, answer.text
    asyncio.run(handled(stack, asyncio.run(send_alert(stack, alert | {"event_id": str(uuid.uuid4())}))))
    assert continuous(drift)["training"]["alerts"] == 2 and len(training_tasks(drift)) == 1
    asyncio.run(handled(stack, asyncio.run(send_alert(stack, fresh(alert)))))
    assert continuous(drift)["last_training"]["id"] != training["id"]
    wait_for(lambda: len(training_tasks(drift)) == 2, 30, "the second training task")
    wait_for(lambda: continuous(drift)["last_training"]["state"] == "failed", 60, "the second training's end")


@contextlib.asynccontextmanager
async def training_events_refused(stack):
    """The EVENTS stream takes every subject but monitoring's training events (publishing those gets no answer from
    JetStream, as when it is away), until the block ends; the task scheduler's run events still flow."""
    names = {getattr(subjects, n) for n in dir(subjects) if n.startswith("EVENT_")}
    kept = sorted({f"events.{s.split('.')[1]}.>" for s in names if s.split(".")[1] != "monitoring"} |
                  {s for s in names if s.startswith("events.monitoring.") and s not in TRAINING_EVENTS})
    nc = await nats_client.connect(stack.settings().nats.url)
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    before = list(info.config.subjects)
    try:
        info.config.subjects = kept
        await js.update_stream(info.config)
        yield
    finally:
        info = await js.stream_info(subjects.EVENTS_STREAM)
        info.config.subjects = before
        await js.update_stream(info.config)
        await nc.close()


def test_training_events_the_stream_refused_are_published_once_it_accepts(stack, drift):
    answer = setup(stack, drift, trigger="ASSAY_ALERT", threshold=1)
    assert answer.status_code == 200, answer.text
    before = continuous(drift)["last_training"]
    pipeline = drift["pipeline"]
    alert = {"event_id": str(uuid.uuid4()), "assay_id": 0, "name": "refused",
             "workspace_id": drift["account"].workspace_id, "pipeline_id": pipeline["pipeline_pk_id"],
             "pipeline_name": pipeline["name"],
             "iopath": "output dense_1 0", "status": "Alert", "score": 9.0, "warning_threshold": None,
             "alert_threshold": 0.1, "window_start": iso(0), "window_end": iso(1000)}

    async def trained_while_refused() -> str:
        async with training_events_refused(stack):
            await handled(stack, await send_alert(stack, alert))
            deadline = time.monotonic() + 60
            while True:  # the run starts, fails, and the training ends: both events refused
                training = (await asyncio.to_thread(continuous, drift))["last_training"]
                if training and (before is None or training["id"] != before["id"]) and training["state"] == "failed":
                    break
                assert time.monotonic() < deadline, f"the training never ended: {training}"
                await asyncio.sleep(0.2)
            assert await training_events(stack, training["id"]) == []
            return training["id"]

    training_id = asyncio.run(trained_while_refused())
    wait_for(lambda: len(asyncio.run(training_events(stack, training_id))) >= 2, 30, "the refused training events")
    asyncio.run(outbox_sent(stack, "monitoring", "training_id", {training_id}))  # a copy would be on it too
    events = asyncio.run(training_events(stack, training_id))
    assert [e["_subject"] for e in events] == [subjects.EVENT_MONITORING_TRAINING_STARTED,
                                               subjects.EVENT_MONITORING_TRAINING_FINISHED]
    assert events[0]["trigger"] == "ASSAY_ALERT" and events[0]["alerts"] is not None
    assert events[1]["status"] == "failed" and "training run failed" in events[1]["reason"]
    assert all(e["_msg_id"] == e["event_id"] for e in events)


@contextlib.contextmanager
def second_monitoring(stack, tmp_path):
    """Another monitoring process on the stack, as the supervisor starts one: a second replica sharing the durable
    consumers and the training starter's table."""
    env = {k: v for k, v in stack.env.items() if k.startswith(("RAILYARD_MONITORING__", "RAILYARD_AUTH__",
                                                                "RAILYARD_TASKS__"))}
    log = tmp_path / "monitoring.log"
    with service_process(stack, "monitoring", log, env) as process:
        wait_serving(process, log, "the second monitoring process")
        yield process, log


def test_copies_of_one_alert_handled_by_two_monitoring_processes_start_one_training(stack, drift, tmp_path):
    answer = setup(stack, drift, trigger="ASSAY_ALERT", threshold=1)
    assert answer.status_code == 200, answer.text
    counted, runs = answer.json()["training"]["alerts"], len(training_tasks(drift))
    pipeline = drift["pipeline"]
    alert = {"event_id": str(uuid.uuid4()), "assay_id": 0, "name": "copies",
             "workspace_id": drift["account"].workspace_id, "pipeline_id": pipeline["pipeline_pk_id"],
             "pipeline_name": pipeline["name"], "iopath": "output dense_1 0", "status": "Alert", "score": 9.0,
             "warning_threshold": None, "alert_threshold": 0.1, "window_start": iso(0), "window_end": iso(1000),
             "occurred_at": datetime.now(UTC).isoformat()}

    async def copies() -> None:  # the same event eight times, as fast as the bus takes them: both processes pull
        sequences = await asyncio.gather(*(send_alert(stack, alert) for _ in range(8)))
        await handled(stack, max(sequences))

    with second_monitoring(stack, tmp_path):
        asyncio.run(copies())
        state = continuous(drift)
        assert state["training"]["alerts"] == counted + 1, state["training"]
        training = state["last_training"]
        assert training["trigger"] == "ASSAY_ALERT" and training["alerts"] == counted + 1, training
        wait_for(lambda: len(training_tasks(drift)) == runs + 1, 30, "the training task")
        wait_for(lambda: continuous(drift)["last_training"]["state"] == "failed", 60, "the training's end")
        assert len(training_tasks(drift)) == runs + 1 and continuous(drift)["last_training"]["id"] == training["id"]


def alert_for(drift, name: str) -> dict:
    """An alert of the drift pipeline's, raised now."""
    pipeline = drift["pipeline"]
    return {"event_id": str(uuid.uuid4()), "assay_id": 0, "name": name, "workspace_id": drift["account"].workspace_id,
            "pipeline_id": pipeline["pipeline_pk_id"], "pipeline_name": pipeline["name"],
            "iopath": "output dense_1 0", "status": "Alert", "score": 9.0, "warning_threshold": None,
            "alert_threshold": 0.1, "window_start": iso(0), "window_end": iso(1000),
            "occurred_at": datetime.now(UTC).isoformat()}


def redeploy(stack, drift, deploy_id: str) -> str:
    """Deploy the drift pipeline's serving version again under `deploy_id` (the deployer swaps it in place: the
    deployment keeps its id, its name becomes `<deploy_id>-<id>`); its new name."""
    account, pipeline_id = drift["account"], drift["pipeline"]["pipeline_pk_id"]
    active = post(stack, "pipelines/get", account.token, {"pipeline_id": pipeline_id}).json()["deployment"]
    deployed = post(stack, "pipelines/deploy", account.token, {
        "deploy_id": deploy_id, "pipeline_version_pk_id": active["pipeline_version_pk_id"],
        "pipeline_id": pipeline_id, "engine_config": {"replica_count": 1, "cpus": 0.5}})
    assert deployed.status_code == 200, deployed.text
    return f"{deploy_id}-{active['id']}"


def stored_name(stack, deployment_id: int) -> str:
    return query(stack, "SELECT deployment FROM monitoring.continuous_training WHERE deployment_id = $1",
                 deployment_id)[0]["deployment"]


def test_an_alert_after_a_redeploy_under_another_deploy_id_trains_the_renamed_deployment(stack, drift):
    """The pipeline deployed again under another deploy_id: the same deployment (its id, its continuous training)
    under a new name. An alert then starts a run for it under that name; before, the training kept the name of its
    set-up and every alert's training failed 'could not start: deployment ... not found' until set up again."""
    answer = setup(stack, drift, trigger="ASSAY_ALERT", threshold=1)
    assert answer.status_code == 200, answer.text
    original = drift["deployment"].name
    deployment_id = int(original.rsplit("-", 1)[1])
    runs, before = len(training_tasks(drift)), query_training(stack, drift)["id"]
    renamed = redeploy(stack, drift, f"re{uuid.uuid4().hex[:6]}")
    try:
        assert renamed != original and renamed.endswith(f"-{deployment_id}")
        asyncio.run(handled(stack, asyncio.run(send_alert(stack, alert_for(drift, "renamed")))))
        training = wait_for(lambda: (t := query_training(stack, drift))["id"] != before and t["state"] == "failed"
                            and t, 60, "the training's end")
        assert "training run failed" in training["reason"], training  # its run ran (the recipe fails on purpose)
        tasks = training_tasks(drift)
        assert len(tasks) == runs + 1, tasks
        newest = max(tasks, key=lambda t: t["created_at"])
        assert newest["name"] == f"continuous training of {renamed} ({training['id']})", newest["name"]
        assert (newest["input_data"]["deployment"], newest["input_data"]["deployment_id"]) == (
            renamed, deployment_id)
        assert stored_name(stack, deployment_id) == renamed  # the row follows the deployment
    finally:  # the module's deployment (the SDK's Deployment) by its name again
        assert redeploy(stack, drift, original.rsplit("-", 1)[0]) == original


def test_a_review_after_a_redeploy_under_another_deploy_id_trains_the_renamed_deployment(stack, drift):
    """The same for the FEEDBACK_LOOP trigger: set up under the first name, the review that reaches the threshold
    comes after the redeploy, and the run carries the deployment's new name (before: the name of the set-up, which
    no longer resolves, in its task name and task_args()['deployment'])."""
    answer = setup(stack, drift, trigger="FEEDBACK_LOOP", threshold=1)
    assert answer.status_code == 200, answer.text
    original = drift["deployment"].name
    deployment_id = int(original.rsplit("-", 1)[1])
    runs, before = len(training_tasks(drift)), query_training(stack, drift)["id"]
    renamed = redeploy(stack, drift, f"rv{uuid.uuid4().hex[:6]}")
    try:
        deployment = sdk(stack, drift["account"]).get_deployment(renamed)
        png, label = digit_png(1)
        predicted = deployment.monitor_bytes(png, "image/png", "reviewed.png", latency=0.01, height=8, width=8,
                                             prediction={"detection_classes": [label], "detection_scores": [0.9]})
        deployment.review_prediction(predicted["id"])
        training = wait_for(lambda: (t := query_training(stack, drift))["id"] != before and t["state"] == "failed"
                            and t, 60, "the training's end")
        assert training["trigger"] == "FEEDBACK_LOOP" and "training run failed" in training["reason"], training
        tasks = training_tasks(drift)
        assert len(tasks) == runs + 1, tasks
        newest = max(tasks, key=lambda t: t["created_at"])
        assert newest["name"] == f"continuous training of {renamed} ({training['id']})", newest["name"]
        assert newest["input_data"]["deployment"] == renamed and newest["input_data"]["reviews"] >= 1
        assert stored_name(stack, deployment_id) == renamed
    finally:
        assert redeploy(stack, drift, original.rsplit("-", 1)[0]) == original


def monitoring_log(stack) -> str:
    return "".join(log.read_text(errors="replace") for log in (stack.data_dir / "logs").glob("monitoring*.log"))


def test_an_alert_for_a_deployment_no_longer_deployed_opens_no_training(stack, drift):
    """Last in the file: it undeploys the module's deployment. Its alerts still match the pipeline, but while it is
    not deployed they are not counted and open no training (said once at INFO): before, each alert opened a training
    that the starter failed ('not deployed', with its training_finished), one failure per alert."""
    answer = setup(stack, drift, trigger="ASSAY_ALERT", threshold=1)
    assert answer.status_code == 200, answer.text
    counted = answer.json()["training"]["alerts"]
    runs, before = len(training_tasks(drift)), query_training(stack, drift)["id"]
    pipeline = drift["pipeline"]
    deployment_id = int(drift["deployment"].name.rsplit("-", 1)[1])
    undeployed = post(stack, "pipelines/undeploy", drift["account"].token,
                      {"pipeline_id": pipeline["pipeline_pk_id"], "deployment_id": deployment_id})
    assert undeployed.status_code == 200, undeployed.text
    told = f"deployment {deployment_id} is not deployed: assay alerts on its pipeline are not counted"
    logged = monitoring_log(stack).count(told)
    for name in ("gone", "still gone"):
        asyncio.run(handled(stack, asyncio.run(send_alert(stack, alert_for(drift, name)))))
    assert query_training(stack, drift)["id"] == before
    assert len(training_tasks(drift)) == runs

    alerts = query(stack, "SELECT count(*) AS n FROM monitoring.continuous_training_alerts WHERE deployment_id = $1",
                   deployment_id)[0]["n"]
    assert alerts == counted  # not counted: nothing to open a training once it is deployed again
    assert monitoring_log(stack).count(told) == logged + 1  # once for both alerts
