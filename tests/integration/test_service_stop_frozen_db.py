"""A service's stop (shared/service.py, `serve`) through a PostgreSQL that stopped answering ends within its bounds: the
pool is closed within shared.db.POOL_CLOSE_SECONDS (close_pool), what it cut logged, and a task scheduler's whole stop
(its runs' beats and end records included) within TASK_STOP_TIMEOUT and that. Before, the pool's close had no bound:
asyncpg waits for each connection a task still held and for the server to drop each connection it closes, both bounded
only by the pool's command timeout (30 s), so a stop waited until the embedded stack killed the process (the task
scheduler's 25 s). And a server that answers loses nothing within the bound: work still writing when the pool closes
ends and its row is there (work past the bound is cut whatever the server: test_db_left_work.py).

The services are `serve` itself, in this process, with specs of the test's own (a router with no commands, a schema of
their own on the stack's PostgreSQL reached through a FreezingProxy, the stack's NATS as the operator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from faststream.nats import NatsRouter

from services.task_scheduler import runner, scheduler
from shared import db, subjects
from shared.service import Runtime, ServiceSpec, serve
from shared.settings import NatsSettings, Settings, TaskSettings
from tests.integration.pg_proxy import FreezingProxy
from tests.integration.task_scheduler_setup import MIGRATIONS, a_supervised_run, scheduler_on, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@contextlib.asynccontextmanager
async def served(stack, monkeypatch, prefix: str, migrations: Path, on_start=None, on_stop=None,
                 **settings) -> AsyncIterator[tuple[FreezingProxy, Runtime, asyncio.Event, asyncio.Task]]:
    """`serve` of a spec named `prefix`_<random> (its schema) whose PostgreSQL is the stack's through a FreezingProxy:
    the proxy, the service's runtime once it serves, its stop event and its task. The schema is dropped afterwards.
    The name is made a service's for this test (its health subject, not a real service's queue group)."""
    base = stack.settings()
    parts = urlsplit(base.postgres.dsn)
    proxy = FreezingProxy(parts.hostname, parts.port)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(subjects, "SERVICES", (*subjects.SERVICES, name))
    runtimes: list[Runtime] = []

    async def start(runtime: Runtime) -> None:
        runtimes.append(runtime)
        if on_start is not None:
            await on_start(runtime)

    spec = ServiceSpec(name=name, build_router=lambda runtime: NatsRouter(), migrations=migrations,
                       on_start=start, on_stop=on_stop)
    async with proxy.serving() as port:
        dsn = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))
        nats = NatsSettings(url=f"nats://127.0.0.1:{stack.env['RAILYARD_STACK__NATS_PORT']}", user="ops",
                            password=stack.secrets()["nats_password_ops"])
        config = Settings(nats=nats, postgres=base.postgres.model_copy(update={"dsn": dsn}), s3=base.s3, **settings)
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(spec, config, stop))
        try:
            async def started() -> bool:
                assert not serving.done(), serving.exception()
                return bool(runtimes) and runtimes[0].broker.running
            await until("the service's start", started)
            yield proxy, runtimes[0], stop, serving
        finally:
            proxy.thaw()
            stop.set()
            await asyncio.wait({serving}, timeout=60)
            conn = await asyncpg.connect(base.postgres.dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            finally:
                await conn.close()


async def stopped_within(stop: asyncio.Event, serving: asyncio.Task, proxy: FreezingProxy, waited: float) -> float:
    """Set `stop` and wait up to `waited` s for `serve` to return: the seconds it took (a failure past `waited`)."""
    began = time.monotonic()
    stop.set()
    await asyncio.wait({serving}, timeout=waited)  # not asyncio.timeout: that would wait for a hung stop
    took = time.monotonic() - began
    if not serving.done():
        proxy.thaw()
        await asyncio.wait({serving}, timeout=60)
        pytest.fail(f"the service's stop still waited for the database after {took:.1f} s")
    assert serving.exception() is None, serving.exception()
    return took


async def backends(stack, query: str) -> int:
    conn = await asyncpg.connect(stack.settings().postgres.dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                                   query)
    finally:
        await conn.close()


def a_table(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "001_rows.sql").write_text("CREATE TABLE rows (id int PRIMARY KEY);\n")
    return folder


async def test_a_stop_through_a_database_that_does_not_answer_closes_the_pool_within_its_bound(
        stack, tmp_path, monkeypatch, caplog):
    """An idle connection (its close waits for the server to drop it) and one a background query still holds, then
    the server stops answering: the stop ends within POOL_CLOSE_SECONDS (+ the drain's and the loaded machine's
    seconds), both connections terminated and said so. Before: 30 s or more (the command timeout)."""
    async with served(stack, monkeypatch, "stopfrozen", a_table(tmp_path)) as (proxy, runtime, stop, serving):
        query = f"SELECT pg_sleep(60) -- {uuid.uuid4().hex}"
        holding = asyncio.create_task(runtime.db.execute(query))  # a background step still under way at the close
        await until("the held connection's query", lambda: backends(stack, query), within=30)
        assert await runtime.db.fetchval("SELECT 1") == 1  # on another connection, then idle (pool_idle_seconds)
        proxy.freeze()
        with caplog.at_level(logging.WARNING, logger="railyard.db"):
            took = await stopped_within(stop, serving, proxy, 25)
        await asyncio.wait({holding}, timeout=10)
        assert holding.done() and isinstance(holding.exception(), asyncpg.PostgresConnectionError), holding
        # before: the close waited 30 s for the idle connection's drop and the query's connection
        assert took < db.POOL_CLOSE_SECONDS + 4.0, took
        said = [r.getMessage() for r in caplog.records if "closing the database pool" in r.getMessage()]
        assert len(said) == 1 and "2 open connection(s) terminated, 1 of them held by work" in said[0], said


async def test_a_stop_waits_for_a_write_under_way_on_a_database_that_answers(stack, tmp_path, monkeypatch, caplog):
    """The bound cuts nothing a server that answers finishes within it: a write under way when the pool closes (about
    1 s of it left) commits and the close says nothing (nothing acknowledged is lost)."""
    async with served(stack, monkeypatch, "stopwrite", a_table(tmp_path)) as (proxy, runtime, stop, serving):
        query = f"SELECT pg_sleep(1.3); INSERT INTO rows VALUES (1) -- {uuid.uuid4().hex}"
        writing = asyncio.create_task(runtime.db.execute(query))
        # under way on the server before the stop: a sleep(0) left it opening its connection (the start's close of
        # idle ones), which Pool.close does not wait for, and the stop returned with the write still pending (1 run
        # in 6 of the related files on a loaded machine)
        await until("the write under way", lambda: backends(stack, query), within=30)
        with caplog.at_level(logging.WARNING, logger="railyard.db"):
            await stopped_within(stop, serving, proxy, 30)
        assert writing.done() and writing.exception() is None, writing
        assert not [r for r in caplog.records if "closing the database pool" in r.getMessage()]
        schema = f"{runtime.name}"
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".rows') == 1
        finally:
            await conn.close()


class Stopping(scheduler.Scheduler):
    """The service's Scheduler whose runs end when stopped (their process gone at once)."""

    async def _run(self, row) -> runner.RunOutcome:
        await self.kills[row["id"]].wait()
        return runner.RunOutcome("failure", None, runner.KILLED)


async def test_a_task_scheduler_stop_through_a_database_that_does_not_answer_ends_within_its_bounds(
        stack, tmp_path, monkeypatch):
    """A task scheduler service (serve with the scheduler's start and stop) supervising a run when the server stops
    answering: the service's stop, its runs' beats and end records included, ends within TASK_STOP_TIMEOUT (6 s here)
    and POOL_CLOSE_SECONDS, under the embedded stack's grace. Before: the scheduler's stop was bounded, but the beats
    and end records it left held their connections, and the pool's close waited for them (30 s and more)."""
    monkeypatch.setattr(scheduler, "TASK_STOP_TIMEOUT", 6.0)
    monkeypatch.setattr(scheduler, "STOP_STEP", 1.0)
    made: list[scheduler.Scheduler] = []

    async def start(runtime: Runtime) -> None:
        run_id = await a_supervised_run(runtime.db, supervisor="frozen")
        supervisor = scheduler_on(Stopping, runtime.db, tmp_path, "frozen", runtime.settings.tasks)
        supervisor.kills[run_id] = asyncio.Event()
        supervisor.runs[run_id] = asyncio.create_task(supervisor._supervise({"id": run_id}))
        made.append(supervisor)

    async def stop_scheduler(runtime: Runtime) -> None:
        await made[0].stop()

    async with served(stack, monkeypatch, "stoptasks", MIGRATIONS, start, stop_scheduler,
                      tasks=TaskSettings(tick=60, heartbeat_interval=0.5)) as (proxy, runtime, stop, serving):
        async def beaten() -> bool:  # its loop's connection taken, a pass and a beat done
            return made[0].passes > 1 and made[0]._conn is not None
        await until("the scheduler's passes", beaten)
        # a read beside the loop's (a request's): a connection of its own, then idle, which the stop's beats and end
        # records take while the server does not answer
        assert await runtime.db.fetchval("SELECT count(*) FROM runs WHERE status = 'running'") == 1
        proxy.freeze()
        took = await stopped_within(stop, serving, proxy, 30)
        # its bounds and the event loop's lateness at each bounded step on a loaded machine
        assert took < 6.0 + db.POOL_CLOSE_SECONDS + 4.0, took
