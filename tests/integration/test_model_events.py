"""A model version's events.model.uploaded and events.model.version_finished are not lost when the EVENTS stream
refuses them after the version committed: they are written with the version (the registry's outbox,
shared/outbox.py, migration 004) and reach the stream once it accepts again, once each, in order, with
Nats-Msg-Id = event_id. Before the outbox the registry published after the commit: the upload answered an error
although its version was stored, a finished conversion's event was gone for good, and the model never showed in
workspaces/list (auth learns of it from model.uploaded) nor in the lineage graph, and a continuous training waiting
for it failed after 60 s as "registered no model version".

The stack's real registry handles the uploads; the stream refuses as in test_assay_events (a real JetStream error).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from shared import subjects
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.test_assay_events import events_refused
from tests.integration.test_registry import api, model_id_of, upload
from tests.models import ccfraud_onnx, ccfraud_pickle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


async def model_events(stack, model_ids: set[int]) -> list[dict]:
    """Every events.model.uploaded / version_finished of those models the EVENTS stream holds, in stream order."""
    return await stream_events(stack, "events.model.>", "model_id", model_ids)


def converted(stack, account, model_id: int, within: float = 60) -> dict:
    deadline = time.monotonic() + within
    while (version := api(stack, account, "models/list_versions", {"models_pk_id": model_id}).json()[0])[
            "status"] == "converting":
        assert time.monotonic() < deadline, "conversion never finished"
        time.sleep(0.2)
    return version


def listed(stack, account, kind: str = "models") -> list[int]:
    """The ids workspaces/list shows of the account's workspace's `kind` ("models", "pipelines"): auth records them
    from the services' events (model.uploaded, pipeline.version_created)."""
    workspaces = account.client.post("workspaces/list", {})["workspaces"]
    return next(w for w in workspaces if w["id"] == account.workspace_id)[kind]


def test_model_events_the_stream_refused_are_published_once_it_accepts(stack, alice):
    async def uploaded_while_refused() -> tuple[int, int]:
        async with events_refused(stack):
            ready = model_id_of(await asyncio.to_thread(
                upload, stack, alice, f"refused-{uuid.uuid4().hex[:6]}", ccfraud_onnx()))
            pickled = model_id_of(await asyncio.to_thread(
                upload, stack, alice, f"refused-sk-{uuid.uuid4().hex[:6]}", ccfraud_pickle(), "sklearn"))
            version = await asyncio.to_thread(converted, stack, alice, pickled)  # committed while refused
            assert version["status"] == "ready", version
            assert await model_events(stack, {ready, pickled}) == []  # refused: none reached the stream yet
            assert not {ready, pickled} & set(await asyncio.to_thread(listed, stack, alice))
            return ready, pickled

    ready, pickled = asyncio.run(uploaded_while_refused())
    deadline = time.monotonic() + 30
    while len(asyncio.run(model_events(stack, {ready, pickled}))) < 3:  # the outbox's next round sends them
        assert time.monotonic() < deadline, (
            f"the refused model events never reached the stream: {asyncio.run(model_events(stack, {ready, pickled}))}")
        time.sleep(0.2)
    asyncio.run(outbox_sent(stack, "registry", "model_id", {ready, pickled}))  # a copy would be on the stream too
    events = asyncio.run(model_events(stack, {ready, pickled}))
    assert sorted((e["model_id"], e["_subject"]) for e in events) == sorted([
        (ready, subjects.EVENT_MODEL_UPLOADED), (pickled, subjects.EVENT_MODEL_UPLOADED),
        (pickled, subjects.EVENT_MODEL_VERSION_FINISHED)])
    pickled_events = [e for e in events if e["model_id"] == pickled]
    assert [e["_subject"] for e in pickled_events] == [subjects.EVENT_MODEL_UPLOADED,
                                                       subjects.EVENT_MODEL_VERSION_FINISHED]  # in order
    assert [e["status"] for e in pickled_events] == ["converting", "ready"]
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    deadline = time.monotonic() + 10  # auth records the models from model.uploaded
    while not {ready, pickled} <= set(listed(stack, alice)):
        assert time.monotonic() < deadline, "workspaces/list never showed the models uploaded while refused"
        time.sleep(0.2)
