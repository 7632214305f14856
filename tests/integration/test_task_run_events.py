"""A run's events.task_run.* are not lost when the EVENTS stream refuses them after the run's change committed: they
are written with the run's status (the task scheduler's outbox, shared/outbox.py) and reach the stream once it
accepts again, once each, in order, with Nats-Msg-Id = event_id; also when the process that ran the run stopped
meanwhile (another one sends them). Before the outbox the scheduler published after the commit and only logged a
failure: monitoring never learned that a continuous-training run ended (the training stayed open for good) and
lineage drew no card for the run.

The schedulers run in this process against the test stack's real PostgreSQL (a schema of their own) and publish
with the service's `publish_event` to the stack's real EVENTS stream; only the run itself is a stand-in
(test_task_scheduler_wakeups.StandInRuns).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from faststream.nats import NatsBroker

from services.task_scheduler import store
from services.task_scheduler.handlers import Deps
from shared import subjects
from shared.bus import publish_event
from shared.settings import TaskSettings
from tests.integration.bus_events import outbox_sent, stream_events
from tests.integration.conftest import service_schema
from tests.integration.test_assay_events import events_refused
from tests.integration.test_task_scheduler_wakeups import StandInRuns, settled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "task_scheduler" / "migrations"


@pytest.fixture
async def database(stack):
    """A task scheduler schema of this test's, an orchestration in a workspace no other test uses."""
    async with service_schema(stack, "task_scheduler_events", MIGRATIONS) as pool:
        workspace = random.randrange(10**9, 2 * 10**9)
        orch_id = uuid.uuid4()
        await store.insert_orchestration(pool, id=orch_id, workspace_id=workspace, sha="0" * 64, name=None,
                                         file_name="o.zip", entrypoint="main.py", requirements_sha=None,
                                         owner_id="u", status="ready", reason=None)
        yield pool, orch_id, workspace


async def scheduler(stack, pool: asyncpg.Pool, tmp_path: Path, name: str) -> tuple[StandInRuns, NatsBroker]:
    broker = NatsBroker(stack.settings().nats.url)
    await broker.connect()

    async def publish(subject: str, event: object) -> None:  # as services/task_scheduler/app.py publishes
        await publish_event(broker, subject, event)

    async def mint(*_: object) -> str:
        return "unused"

    settings = TaskSettings(tick=60, heartbeat_interval=0.5, supervisor_lost_after=5)
    deps = Deps(pool=pool, objects=None, settings=settings, work_root=tmp_path / name,
                membership=lambda token: None, publish=publish)
    made = StandInRuns(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity=name)
    made.spans, made.installed, made.install_gate = [], [], asyncio.Event()
    made.install_gate.set()
    made.start()
    return made, broker


async def stop(made: StandInRuns, broker: NatsBroker) -> None:
    await made.stop()
    await broker.stop()


async def run_once(pool: asyncpg.Pool, orch_id: uuid.UUID, workspace: int) -> uuid.UUID:
    task_id = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await store.insert_task(conn, id=task_id, workspace_id=workspace, orch_id=orch_id, orch_sha="0" * 64,
                                name="events", owner_id="u", args={"seconds": 0.1}, timeout_seconds=60,
                                schedule=None, missed_run_policy=None, next_fire=None)
        await store.queue_once(conn, task_id, workspace)
    return task_id


async def run_events(stack, run_id: uuid.UUID) -> list[dict]:
    """Every events.task_run.* of the run the EVENTS stream holds, in stream order."""
    return await stream_events(stack, "events.task_run.>", "run_id", {str(run_id)})


async def tried(pool: asyncpg.Pool, rows: int, within: float = 20) -> None:
    """Until the outbox has tried (and failed) to send `rows` of its events."""
    deadline = time.monotonic() + within
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE attempts > 0") < rows:
        assert time.monotonic() < deadline, "the outbox did not try to send the run's events"
        await asyncio.sleep(0.05)


async def arrived_once(stack, run_id: uuid.UUID, within: float = 30) -> list[dict]:
    """The run's started and succeeded events, once each and in that order, once both reached the stream."""
    deadline = time.monotonic() + within
    while True:
        events = await run_events(stack, run_id)
        if len(events) >= 2:
            break
        assert time.monotonic() < deadline, f"the run's refused events never reached the stream: {events}"
        await asyncio.sleep(0.2)
    await outbox_sent(stack, "task_scheduler", "run_id", {str(run_id)})  # a copy would be on the stream too
    events = await run_events(stack, run_id)
    assert [e["_subject"] for e in events] == [subjects.EVENT_TASK_RUN_STARTED, subjects.EVENT_TASK_RUN_SUCCEEDED]
    assert [e["status"] for e in events] == ["running", "success"]
    assert all(e["_msg_id"] == e["event_id"] for e in events)  # the stream's (and lineage's) de-duplication key
    return events


async def test_a_run_the_stream_refused_the_events_of_publishes_them_once_it_accepts(stack, database, tmp_path):
    pool, orch_id, workspace = database
    made, broker = await scheduler(stack, pool, tmp_path, "refused")
    try:
        async with events_refused(stack):
            task = await run_once(pool, orch_id, workspace)
            run = await settled(pool, task, {"success"}, 20)  # committed while every publish is refused
            await tried(pool, 1)  # started was refused; succeeded waits behind it (one run's events in order)
            assert await run_events(stack, run["id"]) == []
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 2
        # the stream accepts again: the outbox's next round (its retry period away) sends them
        await arrived_once(stack, run["id"])
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await stop(made, broker)


async def test_events_left_by_a_stopped_scheduler_are_sent_by_another(stack, database, tmp_path):
    pool, orch_id, workspace = database
    first, broker = await scheduler(stack, pool, tmp_path, "first")
    stopped = False
    try:
        async with events_refused(stack):
            task = await run_once(pool, orch_id, workspace)
            run = await settled(pool, task, {"success"}, 20)
            await tried(pool, 1)
            stopped = True
            await stop(first, broker)  # its last try at stopping is refused too
            assert await run_events(stack, run["id"]) == []
            assert await pool.fetchval("SELECT count(*) FROM outbox") == 2
    finally:
        if not stopped:
            await stop(first, broker)
    second, broker = await scheduler(stack, pool, tmp_path, "second")
    try:
        await arrived_once(stack, run["id"])
    finally:
        await stop(second, broker)


async def test_a_queued_run_killed_before_it_started_sends_its_failed_event(stack, database, tmp_path):
    """tasks.kill fails the task's queued runs ('killed before it started') without any event: the only end of a
    run with none, so a continuous training whose run was killed while queued stayed open for good (monitoring
    ends it at events.task_run.failed; the one-open-training index then blocks every later training of that
    deployment) and lineage drew no card. The failure's event is written with it, and sent."""
    pool, orch_id, workspace = database
    task = await run_once(pool, orch_id, workspace)  # no scheduler yet: the run stays queued
    run_id = await pool.fetchval("SELECT id FROM runs WHERE task_id = $1 AND status = 'queued'", task)
    assert run_id is not None
    await store.kill_task(pool, task)
    assert await pool.fetchval("SELECT reason FROM runs WHERE id = $1", run_id) == "killed before it started"
    made, broker = await scheduler(stack, pool, tmp_path, "killed")
    try:
        deadline = time.monotonic() + 20
        while not (events := await run_events(stack, run_id)):
            assert time.monotonic() < deadline, "the killed run's failure never reached the stream"
            await asyncio.sleep(0.2)
    finally:
        await stop(made, broker)
    assert [(e["_subject"], e["status"], e["reason"], e["task_id"]) for e in events] == [
        (subjects.EVENT_TASK_RUN_FAILED, "failure", "killed before it started", str(task))]
    assert events[0]["_msg_id"] == events[0]["event_id"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
