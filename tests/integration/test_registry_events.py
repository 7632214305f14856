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
import uuid
from pathlib import Path

import asyncpg
import psutil
import pytest

from services.registry import store
from shared import subjects
from shared.messages.registry import ConnectionChanged, ModelVersionFinished
from shared.outbox import Outbox
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import post, service_schema
from tests.integration.test_assay_events import events_refused
from tests.integration.test_connections import create

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

REGISTRY_MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "registry" / "migrations"


async def connection_events(stack, connection_ids: set[str]) -> list[dict]:
    """Every events.connection.changed of those connections the EVENTS stream holds, in stream order."""
    return await stream_events(stack, subjects.EVENT_CONNECTION_CHANGED, "connection_id", connection_ids)


async def arrived(stack, count: int, read, key: str, value: str, within: float = 30) -> list[dict]:
    """What `read()` finds once it finds `count` events and the registry's outbox holds none whose payload's `key` is
    `value` (bus_events.outbox_sent: a copy would be on the stream by then, where a fixed sleep could end first)."""
    deadline = time.monotonic() + within
    while len(events := await read()) < count:
        assert time.monotonic() < deadline, f"the refused events never reached the stream: {events}"
        await asyncio.sleep(0.2)
    await outbox_sent(stack, "registry", key, {value})
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
        events = await arrived(stack, 4, lambda: connection_events(stack, {connection_id}), "connection_id",
                               connection_id)
        assert [e["action"] for e in events] == ["created", "attached", "detached", "deleted"]  # once each, in order
        events = await arrived(stack, 2, lambda: stream_events(stack, subjects.EVENT_REGISTRY_CHANGED, "registry_id",
                                                               {registry_id}), "registry_id", registry_id)
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
    events = asyncio.run(arrived(stack, 2, lambda: connection_events(stack, {connection_id}), "connection_id",
                                 connection_id))
    assert [e["action"] for e in events] == ["created", "attached"]  # once each, in order
    assert asyncio.run(unsent(stack, connection_id)) == []  # deleted once acknowledged
    deadline = time.monotonic() + 30
    while (got := post(stack, "connections/get_by_id", alice.token, {"id": connection_id})).status_code != 200:
        assert time.monotonic() < deadline, got.text  # the new registry process serves
        time.sleep(0.2)


@pytest.fixture
async def registry_schema(stack):
    """A registry schema of this test's (the service's migrations) on the stack's PostgreSQL, and a pool on it."""
    async with service_schema(stack, "registry_events", REGISTRY_MIGRATIONS) as pool:
        yield pool


async def test_a_version_two_registry_processes_convert_finishes_once_with_one_event(registry_schema):
    """A registry started while another still runs (a rolling update) resumes the versions the other is converting
    (handlers.resume_conversions), so both convert and both finish it. The first finish decides; the second changes
    nothing and writes no event. Before, both wrote their result and an events.model.version_finished each, with
    its own event_id: monitoring and lineage saw the version finish twice, and the later result overwrote the
    first's sha and schemas."""
    pool = registry_schema
    version = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        model_id = await store.insert_version(
            conn, workspace_id=1, name="twice", owner=uuid.uuid4(), visibility="private", model_version=version,
            file_name="m.pkl", framework="sklearn", runtime=None, status="converting", sha=None, source_sha="0" * 64,
            size=1, input_schema=None, output_schema=None, conversion={})

    async def finish(sha: str) -> bool:
        return await store.finish_version(
            pool, version, status="ready", error=None, sha=sha, runtime="onnx", input_schema=None,
            output_schema=None, event=ModelVersionFinished(workspace_id=1, model_id=model_id, model_version=version,
                                                           status="ready", error=None))

    finished = await asyncio.gather(finish("1" * 64), finish("2" * 64))
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE subject = $1",
                               subjects.EVENT_MODEL_VERSION_FINISHED) == 1
    assert sorted(finished) == [False, True]
    winner = "1" * 64 if finished[0] else "2" * 64
    assert await pool.fetchval("SELECT sha FROM model_versions WHERE model_version = $1", version) == winner
    assert await finish("3" * 64) is False  # finished: a later conversion changes nothing
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_two_processes_sending_at_once_keep_one_things_events_in_order(registry_schema):
    """A connection's `created` is being sent by one registry process (its batch holds the row) when its `attached`
    and `detached` are committed, and another process's outbox runs a round: it sends nothing now (one sender per
    service at a time, shared/outbox.py unsent_events) and the first sends all three, in order. Before, the second's
    read skipped the held row (SKIP LOCKED) and sent `attached` and `detached` before `created` (review3,
    requests.md 13:23, item 3; for model events: version_finished before uploaded after a bus outage during a
    rolling update)."""
    pool = registry_schema
    connection = uuid.uuid4()

    async def commit(action: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await store.add_event(conn, subjects.EVENT_CONNECTION_CHANGED,
                                  ConnectionChanged(connection_id=connection, action=action))

    sent: list[str] = []
    publishing, release = asyncio.Event(), asyncio.Event()

    async def slow(subject: str, event: ConnectionChanged) -> None:  # the first process: its first publish waits
        if not publishing.is_set():
            publishing.set()
            await release.wait()
        sent.append(event.action)

    async def quick(subject: str, event: ConnectionChanged) -> None:
        sent.append(event.action)

    def outbox(publish) -> Outbox:
        return Outbox(pool, publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                      what="registry events", rows=store)

    first, second = outbox(slow), outbox(quick)
    await commit("created")
    sending = asyncio.create_task(first.send())
    try:
        await asyncio.wait_for(publishing.wait(), 10)  # its batch (created) is open, publishing
        await commit("attached")
        await commit("detached")
        assert await second.send() == 0 and second.retry_soon  # not now: it tries again at the RETRY pace
    finally:
        release.set()  # the first's round ends (its connection goes back to the pool) whatever happened
        sent_first = await asyncio.wait_for(sending, 10)
    assert sent_first == 1  # what it had read
    assert await second.send() == 2  # the rest, after it
    assert sent == ["created", "attached", "detached"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
