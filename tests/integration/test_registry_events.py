"""The registry's events.connection.changed and events.registry.changed go through its outbox (shared/outbox.py,
migration 004) as its model events do (test_model_events): written in the change's transaction, they reach the
EVENTS stream once it accepts again, once each, in order per connection / registry, with Nats-Msg-Id = event_id;
requests refused (a name taken, a connection not in the workspace) write none. Before, the registry published after
its commit: the request answered 500 although the change was stored, and the event was gone for good.

The stack's real registry handles the requests; the stream refuses as in test_assay_events (a real JetStream error).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import subjects
from tests.integration.bus_events import stream_events
from tests.integration.conftest import post
from tests.integration.test_assay_events import events_refused
from tests.integration.test_connections import create

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


async def connection_events(stack, connection_ids: set[str]) -> list[dict]:
    """Every events.connection.changed of those connections the EVENTS stream holds, in stream order."""
    return await stream_events(stack, subjects.EVENT_CONNECTION_CHANGED, "connection_id", connection_ids)


async def arrived(stack, count: int, read, within: float = 30) -> list[dict]:
    """What `read()` finds once it finds `count` events, and a moment later (a copy sent after them would be on the
    stream by then)."""
    deadline = time.monotonic() + within
    while len(events := await read()) < count:
        assert time.monotonic() < deadline, f"the refused events never reached the stream: {events}"
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    events = await read()
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    return events


def test_connection_and_registry_events_the_stream_refused_are_published_once_it_accepts(stack, alice):
    async def changed_while_refused() -> tuple[str, str]:
        async with events_refused(stack):
            name, response = await asyncio.to_thread(create, stack, alice)
            assert response.status_code == 200, response.text  # stored: said so
            connection_id = response.json()["id"]
            assert (await asyncio.to_thread(create, stack, alice, name))[1].status_code == 409  # no change, no event
            link = {"workspace_id": alice.workspace_id, "connection_id": connection_id}
            for path, status in (("connections/add_to_workspace", 200), ("connections/remove_from_workspace", 204),
                                 ("connections/remove_from_workspace", 404)):  # not attached any more: no event
                answer = await asyncio.to_thread(post, stack, path, alice.token, link)
                assert answer.status_code == status, (path, answer.text)
            deleted = await asyncio.to_thread(post, stack, "connections/delete", alice.token, {"name": name})
            assert deleted.status_code in (200, 204), deleted.text
            registry = await asyncio.to_thread(post, stack, "models/create_registry", alice.token, {
                "workspace_id": alice.workspace_id, "name": "refused events", "url": "http://127.0.0.1:9"})
            assert registry.status_code == 200, registry.text
            registry_id = registry.json()["id"]
            detached = await asyncio.to_thread(post, stack, "models/remove_registry_from_workspace", alice.token,
                                               {"registry_id": registry_id, "workspace_id": alice.workspace_id})
            assert detached.status_code == 200, detached.text
            assert await connection_events(stack, {connection_id}) == []  # refused: none reached the stream yet
            return connection_id, registry_id

    async def published(connection_id: str, registry_id: str) -> None:
        events = await arrived(stack, 4, lambda: connection_events(stack, {connection_id}))
        assert [e["action"] for e in events] == ["created", "attached", "detached", "deleted"]  # once each, in order
        events = await arrived(stack, 2, lambda: stream_events(stack, subjects.EVENT_REGISTRY_CHANGED, "registry_id",
                                                               {registry_id}))
        assert [(e["action"], e["workspace_id"]) for e in events] == [("created", alice.workspace_id),
                                                                      ("detached", alice.workspace_id)]

    asyncio.run(published(*asyncio.run(changed_while_refused())))
