"""A run's end is recorded through a database that refuses or does not answer for a while (services/task_scheduler/
scheduler.py, Scheduler._record_end): store.finish_run is retried with backoff, each attempt bounded, for
END_RECORD_SECONDS; past that the supervisor logs one WARNING naming the run and leaves it to the lost-run step, its
task ending without an exception. Before, one failure raised out of the run's task (an exception nobody retrieved,
"Task exception was never retrieved" at GC) and the run stayed 'running' until another process failed it as lost,
and an attempt the database did not answer held the task as long as the server was away.

The scheduler's own _supervise runs with _run stood in for (the run's outcome given at once), on the task scheduler's
migrations in a schema of this test's on the stack's PostgreSQL; the database refuses through store.finish_run
raising what asyncpg raises then, and stops answering through a FreezingProxy (tests/integration/pg_proxy.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import asyncpg
import pytest

from services.task_scheduler import runner, scheduler, store
from services.task_scheduler.scheduler import Scheduler
from shared.outbox import Outbox
from shared.settings import TaskSettings
from tests.integration.conftest import service_schema
from tests.integration.pg_proxy import through_a_proxy
from tests.integration.task_scheduler_setup import MIGRATIONS, a_supervised_run, scheduler_on
from tests.unit.test_bus_database_unavailable import asyncpg_outage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

NAME = "ending"
SETTINGS = TaskSettings(tick=60, heartbeat_interval=1.0, supervisor_lost_after=5.0)


class Ended(Scheduler):
    """The service's Scheduler whose runs end at once, with success."""

    async def _run(self, row) -> runner.RunOutcome:
        return runner.RunOutcome("success", 0, None)


@pytest.fixture
async def pool(stack, monkeypatch):
    monkeypatch.setattr(runner, "FLUSH_BACKOFF", 0.01)  # the retries' waits are not what these tests look at
    async with service_schema(stack, "task_run_end_record", MIGRATIONS) as pool:
        yield pool


def supervise(supervisor: Scheduler, run_id: uuid.UUID) -> asyncio.Task:
    """The run taken by `supervisor` as its loop's start_queued takes one."""
    supervisor.kills[run_id] = asyncio.Event()
    task = supervisor.runs[run_id] = asyncio.create_task(supervisor._supervise({"id": run_id}))
    return task


async def status(pool, run_id: uuid.UUID) -> tuple[str, str | None]:
    row = await pool.fetchrow("SELECT status, reason FROM runs WHERE id = $1", run_id)
    return row["status"], row["reason"]


async def test_a_run_end_the_database_refused_at_first_is_recorded_by_a_retry(pool, tmp_path, monkeypatch):
    finish_run = store.finish_run
    refused = await asyncpg_outage("refused")  # asyncpg's own (shared/data_errors.py; runner.transient)
    refusals = [refused, refused]
    calls = []

    async def refusing(*args):
        calls.append(args[1])
        if refusals:
            raise refusals.pop(0)
        return await finish_run(*args)

    monkeypatch.setattr(store, "finish_run", refusing)
    supervisor = scheduler_on(Ended, pool, tmp_path, NAME, SETTINGS, start=False)
    run_id = await a_supervised_run(pool, supervisor=NAME)
    task = supervise(supervisor, run_id)
    await asyncio.wait({task}, timeout=30)
    assert task.done(), "the end record still retried after 30 s"
    assert task.exception() is None, task.exception()  # was: ConnectionRefusedError, never retrieved
    assert await status(pool, run_id) == ("success", None)
    assert calls == [run_id] * 3
    assert run_id not in supervisor.runs and run_id not in supervisor.ending


async def test_a_run_end_the_database_does_not_answer_is_left_to_the_lost_run_step(stack, pool, tmp_path, monkeypatch,
                                                                                  caplog):
    monkeypatch.setattr(scheduler, "END_ATTEMPT_SECONDS", 0.5)
    monkeypatch.setattr(scheduler, "END_RECORD_SECONDS", 2.0)
    run_id = await a_supervised_run(pool, supervisor=NAME)
    async with through_a_proxy(stack, pool) as (proxy, proxied):
        supervisor = scheduler_on(Ended, proxied, tmp_path, NAME, SETTINGS, start=False)
        await proxied.fetchval("SELECT 1")  # a connection taken and answered
        proxy.freeze()
        caplog.set_level(logging.WARNING, logger="railyard.task_scheduler.scheduler")
        began = time.monotonic()
        task = supervise(supervisor, run_id)
        await asyncio.wait({task}, timeout=15)  # not asyncio.timeout: that would wait for the hung record
        took = time.monotonic() - began
        if not task.done():  # was: still waiting for the server
            proxy.thaw()
            await asyncio.wait({task}, timeout=60)
            pytest.fail(f"the end record still waited for the database after {took:.1f} s")
        assert task.exception() is None, task.exception()
        said = [r.getMessage() for r in caplog.records if "could not be recorded" in r.getMessage()]
        assert len(said) == 1 and str(run_id) in said[0] and "lost-run step" in said[0], said
        assert await status(pool, run_id) == ("running", None)  # nothing recorded; the lost-run step's now
        assert run_id not in supervisor.runs
        # its supervisor beats it no more: a lost-run step (its own or another's) fails it
        other = scheduler_on(Scheduler, pool, tmp_path / "other", "other", SETTINGS, start=False)
        async with pool.acquire() as conn:
            await conn.execute("UPDATE runs SET heartbeat_at = now() - make_interval(secs => 60) WHERE id = $1", run_id)
            await other.fail_lost(conn)
        recorded, reason = await status(pool, run_id)
        assert recorded == "failure" and "supervising the run died" in reason, reason


async def test_an_end_whose_answer_was_lost_has_its_event_sent_now(pool, tmp_path, monkeypatch):
    """The first finish_run commits the run's end and its outbox row, and its answer is lost (the connection reset
    after the COMMIT): the retry finds the run ended (False). The outbox is woken all the same; before, only a True
    record woke it, and the event committed by the first attempt waited for the outbox's IDLE round (a minute)."""
    finish_run = store.finish_run
    answers: list[bool] = []

    async def answer_lost(*args):
        recorded = await finish_run(*args)
        answers.append(recorded)
        if len(answers) == 1:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")  # lost
        return recorded

    monkeypatch.setattr(store, "finish_run", answer_lost)
    supervisor = scheduler_on(Ended, pool, tmp_path, NAME, SETTINGS, start=False)
    supervisor.outbox = Outbox(pool, supervisor.deps.publish, event_types=store.EVENT_TYPES, order_field="run_id",
                               what="task run events", rows=store)  # its loop not running: `woken` is what it reads
    run_id = await a_supervised_run(pool, supervisor=NAME)
    task = supervise(supervisor, run_id)
    await asyncio.wait({task}, timeout=30)
    assert task.done() and task.exception() is None
    assert answers == [True, False]  # the retry found the run ended: nothing recorded twice
    assert await status(pool, run_id) == ("success", None)
    events = await pool.fetchval("SELECT count(*) FROM outbox WHERE payload->>'run_id' = $1", str(run_id))
    assert events == 1
    assert supervisor.outbox.woken.is_set(), "the committed run-ended event was left for the outbox's IDLE round"
