"""The lineage graph does not depend on the order in which the service draws the domain events: its durable consumer
pulls a batch of events and draws them concurrently (a transaction each), so a pipeline version's event can be
drawn before the upload of the model it names, an assay's before its pipeline's deployment, a conversion's end
before the upload. The events are published here out of order, all at once, on the real bus (the way the registry,
deployer and assay runner publish them), and the graph read through the API must be what the events' times say,
each arrow drawn once. Also: a workspace file saved after the upload of the same bytes is linked to the model
version. docs/lineage.md "Order of events"."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from faststream.nats import NatsBroker

from shared import subjects
from shared.bus import publish_event
from shared.messages import Event
from shared.messages.assays import AssayWasCreated
from shared.messages.deployer import PipelineDeployed, PipelineUndeployed, PipelineVersionCreated
from shared.messages.registry import ModelUploaded, ModelVersionFinished
from shared.messages.tasks import TaskRunStarted, TaskRunSucceeded
from tests.integration.conftest import post

pytestmark = pytest.mark.integration


def ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def big_id() -> int:
    """An id no real model, pipeline or deployment has (the auth service keeps the events' model/pipeline ids)."""
    return random.randrange(10**12, 10**13)


async def publish_and_wait(stack, events: list[tuple[str, Event]], timeout: float = 30.0) -> None:
    """Publish the events in this order, at once, and wait until the lineage service has recorded every one (an
    event is recorded and drawn in one transaction: recorded means drawn)."""
    broker = NatsBroker(stack.settings().nats.url)
    await broker.connect()
    try:
        await asyncio.gather(*(publish_event(broker, subject, event) for subject, event in events))
    finally:
        await broker.stop()
    ids = [e.event_id for _, e in events]
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        deadline = time.monotonic() + timeout
        while (await conn.fetchval("SELECT count(*) FROM workflow_lineage.event_log WHERE event_id = ANY($1)", ids)
               < len(ids)):
            assert time.monotonic() < deadline, "the lineage service did not record the events"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def graph(stack, account, kind: str, ref: str) -> tuple[dict, list[dict]]:
    """The card's neighbours one arrow away: (cards by id, arrows)."""
    found = ok(post(stack, "workflow/graph", account.token, {"workspace_id": account.workspace_id, "kind": kind,
                                                             "ref": ref, "depth": 1}))
    return {n["id"]: n for n in found["nodes"]}, found["edges"]


def arrows_into(stack, account, kind: str, ref: str, relation: str) -> list[tuple[str, str]]:
    """(kind, ref) of the cards with a `relation` arrow into the card (one entry per arrow)."""
    nodes, edges = graph(stack, account, kind, ref)
    [root] = [i for i, n in nodes.items() if n["kind"] == kind and n["ref"] == ref]
    return [(nodes[e["source"]]["kind"], nodes[e["source"]]["ref"]) for e in edges
            if e["target"] == root and e["relation"] == relation]


async def test_events_drawn_out_of_order_link_what_their_times_say_once(stack, alice):
    ws = alice.workspace_id
    name = f"order-{uuid.uuid4().hex[:8]}"
    model_id, pipeline_id, deployment_id = big_id(), big_id(), big_id()
    t0 = datetime.now(UTC) - timedelta(minutes=1)

    def upload(seconds: float, status: str = "ready") -> ModelUploaded:
        return ModelUploaded(workspace_id=ws, model_id=model_id, model_version=uuid.uuid4(), name=name,
                             framework="onnx", status=status, occurred_at=t0 + timedelta(seconds=seconds))

    v1, v2, v3 = upload(1), upload(2, "converting"), upload(4)  # v3 is uploaded after the pipeline version
    pipeline_version = str(uuid.uuid4())
    created = PipelineVersionCreated(pipeline_id=pipeline_id, workspace_id=ws, name=f"{name}-pipe",
                                     pipeline_version=pipeline_version, models=[{"name": name, "version": None}],
                                     occurred_at=t0 + timedelta(seconds=3))
    deployed = PipelineDeployed(deployment_id=deployment_id, name=f"{name}-{deployment_id}", pipeline_id=pipeline_id,
                                workspace_id=ws, pipeline_version=pipeline_version,
                                occurred_at=t0 + timedelta(seconds=5))
    assay = AssayWasCreated(assay_id=big_id(), name=f"{name}-assay", workspace_id=ws, pipeline_id=pipeline_id,
                            pipeline_name=f"{name}-pipe", iopath="output dense_1 0",
                            occurred_at=t0 + timedelta(seconds=6))
    undeployed = PipelineUndeployed(deployment_id=deployment_id, name=deployed.name, pipeline_id=pipeline_id,
                                    workspace_id=ws, occurred_at=t0 + timedelta(seconds=7))
    finished = ModelVersionFinished(workspace_id=ws, model_id=model_id, model_version=v2.model_version,
                                    status="ready", occurred_at=t0 + timedelta(seconds=2.5))

    run = {"run_id": uuid.uuid4(), "task_id": uuid.uuid4(), "orch_id": uuid.uuid4(), "orch_sha": "ab" * 32,
           "workspace_id": ws, "owner_id": alice.user_id, "name": f"{name}-run"}
    started = TaskRunStarted(**run, status="running", occurred_at=t0 + timedelta(seconds=1))
    succeeded = TaskRunSucceeded(**run, status="success", exit_code=0, occurred_at=t0 + timedelta(seconds=2))
    # another model whose only version is uploaded before a second pipeline's version, published after it (the
    # case of tests/integration/test_ui.py's model version without its arrow)
    only = ModelUploaded(workspace_id=ws, model_id=big_id(), model_version=uuid.uuid4(), name=f"{name}-only",
                         framework="onnx", status="ready", occurred_at=t0)
    other_version = str(uuid.uuid4())
    other = PipelineVersionCreated(pipeline_id=big_id(), workspace_id=ws, name=f"{name}-other",
                                   pipeline_version=other_version, models=[{"name": only.name, "version": None}],
                                   occurred_at=t0 + timedelta(seconds=1))

    await publish_and_wait(stack, [(subjects.EVENT_MODEL_UPLOADED, v1)])  # a version of the name is drawn first
    # then everything else at once, latest first: one pulled batch, drawn concurrently
    await publish_and_wait(stack, [
        (subjects.EVENT_PIPELINE_VERSION_CREATED, other), (subjects.EVENT_PIPELINE_UNDEPLOYED, undeployed),
        (subjects.EVENT_ASSAY_CREATED, assay), (subjects.EVENT_PIPELINE_DEPLOYED, deployed),
        (subjects.EVENT_MODEL_UPLOADED, v3), (subjects.EVENT_PIPELINE_VERSION_CREATED, created),
        (subjects.EVENT_MODEL_VERSION_FINISHED, finished), (subjects.EVENT_MODEL_UPLOADED, v2),
        (subjects.EVENT_MODEL_UPLOADED, only), (subjects.EVENT_TASK_RUN_SUCCEEDED, succeeded),
        (subjects.EVENT_TASK_RUN_STARTED, started)])

    assert arrows_into(stack, alice, "pipeline_version", other_version, "used_by") == [
        ("model_version", str(only.model_version))]

    # the pipeline version used the newest version of the name uploaded before it: v2, not v1 (drawn before it)
    # nor v3 (uploaded after it), one arrow
    assert arrows_into(stack, alice, "pipeline_version", pipeline_version, "used_by") == [
        ("model_version", str(v2.model_version))]
    # the assay hangs off the deployment (drawn after it), not the pipeline version
    assert arrows_into(stack, alice, "assay", str(assay.assay_id), "monitored_by") == [
        ("deployment", str(deployment_id))]
    assert arrows_into(stack, alice, "deployment", str(deployment_id), "deployed_as") == [
        ("pipeline_version", pipeline_version)]
    nodes, _ = graph(stack, alice, "deployment", str(deployment_id))
    [card] = [n for n in nodes.values() if n["kind"] == "deployment"]
    assert card["data"]["active"] is False  # undeployed after it was deployed, whatever the drawing order
    nodes, _ = graph(stack, alice, "model_version", str(v2.model_version))
    [card] = [n for n in nodes.values() if n["ref"] == str(v2.model_version)]
    assert card["data"]["status"] == "ready"  # the conversion ended after the upload said "converting"
    nodes, _ = graph(stack, alice, "task_run", str(run["run_id"]))
    [card] = [n for n in nodes.values() if n["kind"] == "task_run"]
    assert card["data"]["status"] == "success"  # the run's end, drawn before its start
    assert {n["kind"] for n in nodes.values()} == {"task_run", "orchestration"}

    # a redelivered event (same id) and a later upload of the name draw nothing more
    await publish_and_wait(stack, [(subjects.EVENT_PIPELINE_VERSION_CREATED, created),
                                   (subjects.EVENT_MODEL_UPLOADED, upload(30))])
    assert arrows_into(stack, alice, "pipeline_version", pipeline_version, "used_by") == [
        ("model_version", str(v2.model_version))]


def save_file(stack, account, path: str, content: bytes) -> None:
    ok(httpx.post(f"{stack.api}/files/upload", data={"workspace_id": str(account.workspace_id), "path": path},
                  files={"file": (path.rsplit("/", 1)[-1], content)},
                  headers={"Authorization": f"Bearer {account.token}"}, timeout=60))


async def test_a_file_saved_after_the_upload_of_its_bytes_is_linked_to_the_model_version(stack, alice):
    content = f"weights {uuid.uuid4()}".encode()
    uploaded = ModelUploaded(workspace_id=alice.workspace_id, model_id=big_id(), model_version=uuid.uuid4(),
                             name=f"late-file-{uuid.uuid4().hex[:8]}", framework="onnx", status="ready",
                             sha256=hashlib.sha256(content).hexdigest())
    await publish_and_wait(stack, [(subjects.EVENT_MODEL_UPLOADED, uploaded)])
    path = f"/models/{uploaded.name}/best.onnx"
    save_file(stack, alice, path, content)
    assert arrows_into(stack, alice, "model_version", str(uploaded.model_version), "uploaded_as") == [("file", path)]
    # saved again (same bytes): still one arrow
    save_file(stack, alice, path, content)
    assert arrows_into(stack, alice, "model_version", str(uploaded.model_version), "uploaded_as") == [("file", path)]


async def test_a_moved_name_reference_keeps_the_pinned_arrow_of_the_same_pair(stack, alice):
    """A pipeline version naming one model twice, pinned to v1 and by name: when the name moves to v2 (uploaded
    before the pipeline version, drawn after it), the pinned step's v1 arrow stays (edges are one per pair)."""
    name = f"pin-{uuid.uuid4().hex[:8]}"
    model_id, t0 = big_id(), datetime.now(UTC) - timedelta(minutes=1)

    def upload(seconds: int) -> ModelUploaded:
        return ModelUploaded(workspace_id=alice.workspace_id, model_id=model_id, model_version=uuid.uuid4(),
                             name=name, framework="onnx", status="ready", occurred_at=t0 + timedelta(seconds=seconds))

    v1, v2, pv = upload(1), upload(2), str(uuid.uuid4())
    created = PipelineVersionCreated(pipeline_id=big_id(), workspace_id=alice.workspace_id, name=f"{name}-pipe",
                                     pipeline_version=pv, models=[{"name": name, "version": str(v1.model_version)},
                                                                  {"name": name, "version": None}],
                                     occurred_at=t0 + timedelta(seconds=3))
    await publish_and_wait(stack, [(subjects.EVENT_MODEL_UPLOADED, v1)])
    await publish_and_wait(stack, [(subjects.EVENT_PIPELINE_VERSION_CREATED, created)])
    assert arrows_into(stack, alice, "pipeline_version", pv, "used_by") == [("model_version", str(v1.model_version))]
    await publish_and_wait(stack, [(subjects.EVENT_MODEL_UPLOADED, v2)])
    assert sorted(arrows_into(stack, alice, "pipeline_version", pv, "used_by")) == sorted(
        [("model_version", str(v1.model_version)), ("model_version", str(v2.model_version))])
