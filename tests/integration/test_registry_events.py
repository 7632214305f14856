"""The registry's events.connection.changed and events.registry.changed go through its outbox (shared/outbox.py,
migration 004) as its model events do (test_model_events): written in the change's transaction, they reach the
EVENTS stream once it accepts again, once each, in order per connection / registry, with Nats-Msg-Id = event_id;
requests refused (a name taken, a connection not in the workspace) write none. Before, the registry published after
its commit: the request answered 500 although the change was stored, and the event was gone for good.

And what a registry process left unsent when it stopped (the stream refusing its last try too) is sent by the next
registry process: the supervisor's restart of the stack's registry here, whose outbox sends at its start and then
every 2 s while the stream refuses.

The stack's real registry handles the requests; the stream refuses as in test_assay_events (a real JetStream error).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import psutil
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


async def unsent(stack, connection_id: str) -> list[asyncpg.Record]:
    """The registry's outbox rows of the connection (the operator's connection reads every schema)."""
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        return await conn.fetch("SELECT payload->>'action' AS action, attempts FROM registry.outbox"
                                " WHERE payload->>'connection_id' = $1 ORDER BY id", connection_id)
    finally:
        await conn.close()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


def test_events_a_stopped_registry_left_unsent_are_sent_by_the_next_registry_process(stack, alice):
    async def left_by_a_stopped_registry() -> str:
        async with events_refused(stack):
            response = (await asyncio.to_thread(create, stack, alice))[1]
            assert response.status_code == 200, response.text
            connection_id = response.json()["id"]
            attached = await asyncio.to_thread(post, stack, "connections/add_to_workspace", alice.token,
                                               {"workspace_id": alice.workspace_id, "connection_id": connection_id})
            assert attached.status_code == 200, attached.text
            deadline = time.monotonic() + 20
            while not (rows := await unsent(stack, connection_id)) or rows[0]["attempts"] == 0:
                assert time.monotonic() < deadline, f"the registry never tried to send the events: {rows}"
                await asyncio.sleep(0.05)
            first = stack.state()["components"]["registry"]["pid"]
            os.kill(first, signal.SIGTERM)  # a graceful stop: its last try to send is refused too
            deadline = time.monotonic() + 30
            while running(first):
                assert time.monotonic() < deadline, "the registry did not stop"
                await asyncio.sleep(0.05)
            assert [r["action"] for r in await unsent(stack, connection_id)] == ["created", "attached"]  # left
            while stack.state()["components"]["registry"]["pid"] == first:  # the supervisor starts another
                assert time.monotonic() < deadline, "the supervisor did not start another registry"
                await asyncio.sleep(0.05)
            assert await connection_events(stack, {connection_id}) == []
            return connection_id

    connection_id = asyncio.run(left_by_a_stopped_registry())
    events = asyncio.run(arrived(stack, 2, lambda: connection_events(stack, {connection_id})))
    assert [e["action"] for e in events] == ["created", "attached"]  # once each, in order
    assert asyncio.run(unsent(stack, connection_id)) == []  # deleted once acknowledged
    deadline = time.monotonic() + 30
    while (got := post(stack, "connections/get_by_id", alice.token, {"id": connection_id})).status_code != 200:
        assert time.monotonic() < deadline, got.text  # the new registry process serves
        time.sleep(0.2)
