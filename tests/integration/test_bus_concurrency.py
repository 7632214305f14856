"""Command subscribers answer several commands of one subject at once (`RAILYARD_NATS__COMMAND_WORKERS`), and a
service's stop still answers every command it took (docs/architecture.md "Commands at once").

The slow command is a real one: `pipelines/create` of an existing pipeline waits for the pipeline's advisory lock
(services/deployer/store.py), which the test holds from its own PostgreSQL connection."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import nats
import nats.errors

from shared.bus import CallContext, command, make_broker
from shared.bus_workers import drain_commands
from shared.messages.base import Command
from tests.integration.conftest import post


async def _wait_for_lock_waiter(conn: asyncpg.Connection, key: int, timeout: float = 30.0, waiters: int = 1) -> None:
    """Until `waiters` backends wait for the advisory lock `key` (a bigint key: its low 32 bits are the objid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                               " AND objid = $1 AND objsubid = 1", key & 0xFFFFFFFF) >= waiters:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {waiters} waited for advisory lock {key} within {timeout}s")


def test_a_slow_command_does_not_hold_up_the_next_one_of_its_subject(stack, alice):
    """While one pipelines/create waits on its pipeline's lock, another pipelines/create (another pipeline) is
    answered; the held one is answered once the lock is released. One at a time, the second waited behind the
    first until the gateway gave up (504 after the 5 s request timeout)."""
    slow = f"slow-{uuid.uuid4().hex[:8]}"
    created = post(stack, "pipelines/create", alice.token,
                   {"pipeline_id": slow, "workspace_id": alice.workspace_id, "definition": {}})
    assert created.status_code == 200, created.text
    pipeline_id = created.json()["pipeline_pk_id"]

    async def scenario() -> tuple[float, object, object]:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        pool = ThreadPoolExecutor(2)
        loop = asyncio.get_running_loop()
        try:
            key = await conn.fetchval("SELECT hashtextextended('deployer.pipeline:' || $1::bigint, 0)", pipeline_id)
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            held = loop.run_in_executor(pool, lambda: post(
                stack, "pipelines/create", alice.token,
                {"pipeline_id": slow, "workspace_id": alice.workspace_id, "definition": {"description": "v2"}}))
            await _wait_for_lock_waiter(conn, key)
            started = time.monotonic()
            fast = await loop.run_in_executor(pool, lambda: post(
                stack, "pipelines/create", alice.token,
                {"pipeline_id": f"fast-{uuid.uuid4().hex[:8]}", "workspace_id": alice.workspace_id, "definition": {}}))
            fast_s = time.monotonic() - started
            held_answered_first = held.done()
        finally:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.close()
        answered = await held
        pool.shutdown()
        return fast_s, fast, answered, held_answered_first

    fast_s, fast, held, held_answered_first = asyncio.run(scenario())
    assert fast.status_code == 200, f"{fast.status_code} after {fast_s:.1f}s: {fast.text}"
    assert fast_s < 3.0, fast_s
    assert not held_answered_first, held.text
    assert held.status_code == 200, held.text
    assert held.json()["pipeline_pk_id"] == pipeline_id
    assert held.json()["pipeline_variant_pk_id"] != created.json()["pipeline_variant_pk_id"]


def test_copies_and_a_create_of_one_name_wait_for_the_names_lock_and_only_one_copy_makes_it(stack, alice):
    """pipelines/copy checks that its name is free and creates it in one transaction under the (workspace, name)
    advisory lock, which pipelines/create takes too. The test holds that lock: two copies to one name and a create
    of it all wait for it (copies are no longer one at a time); released, one copy makes the pipeline, the other is
    a 409, and the create is a version of the copy's pipeline. Without the lock copies ran one at a time, and a
    create of the name slipped between a copy's check and its create."""
    source = post(stack, "pipelines/create", alice.token,
                  {"pipeline_id": f"src-{uuid.uuid4().hex[:8]}", "workspace_id": alice.workspace_id,
                   "definition": {}})
    assert source.status_code == 200, source.text
    name = f"copy-{uuid.uuid4().hex[:8]}"
    copy = {"name": name, "workspace_id": alice.workspace_id, "source_pipeline": source.json()["pipeline_pk_id"]}

    async def scenario() -> tuple[list, object]:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        pool = ThreadPoolExecutor(3)
        loop = asyncio.get_running_loop()
        try:
            key = await conn.fetchval("SELECT hashtextextended('deployer.pipeline_name:' || $1::bigint || ':' || $2,"
                                      " 0)", alice.workspace_id, name)
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            copies = [loop.run_in_executor(pool, lambda: post(stack, "pipelines/copy", alice.token, copy))
                      for _ in range(2)]
            await _wait_for_lock_waiter(conn, key, waiters=2)
            create = loop.run_in_executor(pool, lambda: post(stack, "pipelines/create", alice.token, {
                "pipeline_id": name, "workspace_id": alice.workspace_id, "definition": {}}))
            await _wait_for_lock_waiter(conn, key, waiters=3)
        finally:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await conn.close()
        answered = await asyncio.gather(*copies), await create
        pool.shutdown()
        return answered

    copies, create = asyncio.run(scenario())
    assert sorted(c.status_code for c in copies) == [200, 409], [c.text for c in copies]
    made = next(c for c in copies if c.status_code == 200).json()
    refused = next(c for c in copies if c.status_code == 409).json()
    assert refused["code"] == "conflict" and name in refused["msg"]
    assert create.status_code == 200, create.text
    assert create.json()["pipeline_pk_id"] == made["pipeline_pk_id"]


class Hold(Command):
    """A test command its handler holds until the test lets it go."""

    n: int


def test_a_stopping_service_answers_every_command_it_took(stack):
    """The stop of shared/service.py on the real bus: once it starts, the subject gets no more commands (no
    responders, at once), and each of the five already sent (two being handled, three waiting) is answered.
    FastStream's stop alone answered the two and dropped the three (their callers waited for their timeout)."""

    async def scenario() -> None:
        broker = make_broker(stack.settings(), "gateway")  # the operator's identity; the name labels the connection
        subject = f"test.drain.{uuid.uuid4().hex[:8]}"
        gate, two_inside, handled = asyncio.Event(), asyncio.Event(), []

        @command(broker, subject, service="gateway", max_workers=2)
        async def hold(cmd: Hold, ctx: CallContext) -> dict:
            handled.append(cmd.n)
            if len(handled) == 2:
                two_inside.set()
            await gate.wait()
            return {"n": cmd.n}

        await broker.start()
        nc = await nats.connect(stack.nats_url("ops"))
        try:
            calls = [asyncio.create_task(nc.request(subject, json.dumps({"n": n}).encode(), timeout=20))
                     for n in range(5)]
            await asyncio.wait_for(two_inside.wait(), 10)
            assert len(handled) == 2, handled  # two workers: the other three wait
            deadline = time.monotonic() + 10

            stopping = asyncio.create_task(drain_commands(broker, 15.0))
            while True:  # a probe the server still routed here is handled (and answered) after the gate opens
                try:
                    await nc.request(subject, json.dumps({"n": 100}).encode(), timeout=0.3)
                except nats.errors.NoRespondersError:
                    break
                except nats.errors.TimeoutError:
                    assert time.monotonic() < deadline, "the subject is still routed to the stopping service"
            assert not stopping.done()
            gate.set()
            replies = await asyncio.gather(*calls)
            await stopping
            await broker.stop()
        finally:
            await nc.close()
        assert [json.loads(r.data)["data"]["n"] for r in replies] == list(range(5))
        assert sorted(n for n in handled if n < 100) == list(range(5))

    asyncio.run(scenario())
