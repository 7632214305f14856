"""A pipeline's events.pipeline.version_created, deployed and undeployed are not lost when the EVENTS stream refuses
them after the change committed: the deployer writes them with the change (its outbox, shared/outbox.py, migration
003) and they reach the stream once it accepts again, once each, in order, with Nats-Msg-Id = event_id; requests
that change nothing (a deploy refused with a 400, an undeploy of an inactive deployment) write none. Before the
outbox the deployer published after the commit: pipelines/create answered 500 although its version was stored, and
the event was gone for good (the pipeline missing from workspaces/list and the lineage graph; no deployment card or a
stale active flag, no automatic benchmark).

The stack's real deployer handles the requests; the stream refuses as in test_assay_events (a real JetStream
error); the stream is read and the workspace listed as in test_model_events.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from shared import subjects
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import post
from tests.integration.test_assay_events import events_refused
from tests.integration.test_model_events import listed
from tests.integration.test_pipelines import upload_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


async def pipeline_events(stack, pipeline_id: int) -> list[dict]:
    """Every events.pipeline.* of the pipeline the EVENTS stream holds, in stream order."""
    return await stream_events(stack, "events.pipeline.>", "pipeline_id", {pipeline_id})


def test_pipeline_events_the_stream_refused_are_published_once_it_accepts(stack, alice):
    name, model = f"refused{uuid.uuid4().hex[:6]}", f"pevents{uuid.uuid4().hex[:6]}"

    async def changed_while_refused() -> tuple[int, int]:
        async with events_refused(stack):
            # its newest version is deployed; uploaded first: pipelines/create looks up the models it names
            await asyncio.to_thread(upload_model, stack, alice, model)
            created = await asyncio.to_thread(post, stack, "pipelines/create", alice.token, {
                "pipeline_id": name, "workspace_id": alice.workspace_id,
                "definition": {"steps": [{"ModelInference": {"models": [{"name": model}]}}]}})
            assert created.status_code == 200, created.text  # stored: said so
            created = created.json()
            pipeline_id = created["pipeline_pk_id"]
            deploy = {"deploy_id": name, "pipeline_version_pk_id": created["pipeline_variant_pk_id"],
                      "pipeline_id": pipeline_id}
            refused = await asyncio.to_thread(post, stack, "pipelines/deploy", alice.token,
                                              deploy | {"engine_config": {"replica_count": 99}})
            assert refused.status_code == 400, refused.text  # bad input: nothing changed, nothing to tell
            deployed = await asyncio.to_thread(post, stack, "pipelines/deploy", alice.token, deploy)
            assert deployed.status_code == 200, deployed.text
            deployment_id = deployed.json()["id"]
            for _ in range(2):  # the second changes nothing (inactive already): no second event
                undeployed = await asyncio.to_thread(post, stack, "pipelines/undeploy", alice.token,
                                                     {"pipeline_id": pipeline_id, "deployment_id": deployment_id})
                assert undeployed.status_code == 200, undeployed.text
            assert await pipeline_events(stack, pipeline_id) == []  # refused: none reached the stream yet
            assert pipeline_id not in await asyncio.to_thread(listed, stack, alice, "pipelines")
            return pipeline_id, deployment_id

    pipeline_id, deployment_id = asyncio.run(changed_while_refused())
    deadline = time.monotonic() + 30
    while len(asyncio.run(pipeline_events(stack, pipeline_id))) < 3:  # the outbox's next round sends them
        assert time.monotonic() < deadline, (
            f"the refused pipeline events never reached the stream: {asyncio.run(pipeline_events(stack, pipeline_id))}")
        time.sleep(0.2)
    asyncio.run(outbox_sent(stack, "deployer", "pipeline_id", {pipeline_id}))  # a copy would be on the stream too
    events = asyncio.run(pipeline_events(stack, pipeline_id))
    assert [e["_subject"] for e in events] == [subjects.EVENT_PIPELINE_VERSION_CREATED,
                                               subjects.EVENT_PIPELINE_DEPLOYED,
                                               subjects.EVENT_PIPELINE_UNDEPLOYED]  # once each, in order
    assert events[0]["name"] == name and events[0]["models"] == [{"name": model, "version": None}]
    assert [(e["deployment_id"], e["name"]) for e in events[1:]] == [(deployment_id, f"{name}-{deployment_id}")] * 2
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    deadline = time.monotonic() + 10  # auth records the pipeline from version_created
    while pipeline_id not in listed(stack, alice, "pipelines"):
        assert time.monotonic() < deadline, "workspaces/list never showed the pipeline created while refused"
        time.sleep(0.2)
