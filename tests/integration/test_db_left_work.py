"""Database work given up on (shared.db.within, the deployer's request-path steps and the task scheduler's log writes,
beats and end records) gives its pool connection back within CUT_AFTER of its cancel when the server does not answer
the cancel: the connection is terminated (shared.db._cut). Before, asyncpg held it until the cancel was answered or
the pool's command timeout (30 s) passed: the connections' network path gone (a partition; a server that restarted
behind the same address while the old connections hang), work given up on held the pool's five connections
(postgres.pool_max) for 30 s while new connections would have worked, and every query of the process waited for one.
A server that answers is sent the cancel first (it stops the query there; a terminated client's query runs on)."""

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

from shared import db
from tests.integration.conftest import service_schema
from tests.integration.pg_proxy import FreezingProxy
from tests.integration.task_scheduler_setup import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NO_MIGRATIONS = Path("/nonexistent")  # a schema of its own, no tables


class Partition(FreezingProxy):
    """A proxy to the stack's PostgreSQL whose connections open at `cut()` stop passing bytes either way (their
    network path gone), while connections opened after pass: each connection is a FreezingProxy's of its own."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.links: list[FreezingProxy] = []

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = FreezingProxy(*self.upstream)
        link.writers = self.writers  # closed with the proxy's
        self.links.append(link)
        await link._connected(reader, writer)

    def cut(self) -> None:
        for link in self.links:
            link.freeze()

    def thaw(self) -> None:
        super().thaw()
        for link in self.links:
            link.thaw()


@contextlib.asynccontextmanager
async def partitioned(stack, pool, **settings_of_its_own) -> AsyncIterator[tuple[Partition, asyncpg.Pool]]:
    settings = stack.settings().postgres.model_copy(update=settings_of_its_own)
    parts = urlsplit(settings.dsn)
    proxy = Partition(parts.hostname, parts.port)
    async with proxy.serving() as port:
        dsn = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))
        proxied = await db.create_pool(settings.model_copy(update={"dsn": dsn}),
                                       await pool.fetchval("SELECT current_schema()"))
        try:
            yield proxy, proxied
        finally:
            proxy.thaw()
            await db.close_pool(proxied, 30)


async def sleeping(pool: asyncpg.Pool, query: str) -> int:
    return await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'", query)


def gave_up() -> TimeoutError:
    return TimeoutError("no answer")


async def test_work_given_up_on_a_partitioned_connection_frees_the_pool_within_cut_after(stack, caplog):
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, partitioned(stack, pool) as (proxy, proxied):
        size = proxied.get_max_size()
        query = f"SELECT pg_sleep(60) -- {uuid.uuid4().hex}"
        works = [asyncio.create_task(db.within(3.0, proxied.execute(query), gave_up)) for _ in range(size)]
        await until("every connection's query", lambda: _all(pool, query, size))
        proxy.cut()  # the pool's connections hang; new ones pass
        with caplog.at_level(logging.INFO, logger="railyard.db"):
            for work in works:
                with pytest.raises(TimeoutError):
                    await work
            began = time.monotonic()
            answer = asyncio.create_task(proxied.fetchval("SELECT 1"))
            await asyncio.wait({answer}, timeout=15)  # not asyncio.timeout: that would wait for a hung acquire
            took = time.monotonic() - began
        assert answer.done() and answer.result() == 1, f"no connection of the pool free after {took:.1f} s"
        # before: 30 s (asyncpg's wait for the cancels' answers, bounded by the command timeout)
        assert took < db.CUT_AFTER + 3.0, took
        assert any("terminated" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


async def _all(pool: asyncpg.Pool, query: str, count: int) -> bool:
    return await sleeping(pool, query) == count


async def test_work_given_up_on_a_server_that_answers_is_cancelled_not_cut(stack, caplog):
    """The cancel is answered: the query stops on the server, the connection goes back to the pool, nothing cut."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, partitioned(stack, pool) as (proxy, proxied):
        query = f"SELECT pg_sleep(60) -- {uuid.uuid4().hex}"
        assert await proxied.fetchval("SELECT 1") == 1
        conn = next(holder._con for holder in proxied._holders if holder._con is not None)
        with caplog.at_level(logging.INFO, logger="railyard.db"):
            with pytest.raises(TimeoutError):
                await db.within(0.5, proxied.execute(query), gave_up)
            await until("the query cancelled on the server", lambda: _all(pool, query, 0), within=10)
            await asyncio.sleep(db.CUT_AFTER + 0.5)  # past the cut's time: nothing was cut
        assert not conn.is_closed()  # the same connection, back in the pool
        assert not [r for r in caplog.records if "terminated" in r.getMessage()]
        assert proxied.get_idle_size() == proxied.get_size() == 1


async def test_a_pool_closed_through_a_server_that_stopped_answering_counts_its_idle_connections(stack, caplog):
    """close_pool's WARNING counts the connections it terminated, idle ones included: asyncpg's close of an idle one
    (Pool.close's second phase, waiting for the server to drop it) marks it closed at once, and the count read
    is_closed(), so a pool whose only connections were idle was said to have '0 open connection(s) terminated'."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, partitioned(stack, pool) as (proxy, proxied):
        assert await proxied.fetchval("SELECT 1") == 1  # one connection, then idle
        proxy.cut()
        with caplog.at_level(logging.WARNING, logger="railyard.db"):
            await db.close_pool(proxied, 1.0)
        said = [r.getMessage() for r in caplog.records if "closing the database pool" in r.getMessage()]
        assert len(said) == 1 and "1 open connection(s) terminated, 0 of them held by work" in said[0], said


async def test_a_task_the_left_work_started_and_does_not_wait_for_keeps_its_connection(stack):
    """A task started inside work `begin` runs (a task of its own, which the work's cancel does not cancel: the
    pattern of shared/authz.py's shared reads) inherits the work's context, so its connections were noted on the work
    too: left and still ending at CUT_AFTER (its own connection hung), the work had that task's query cut as well, on
    a connection the server answered (ConnectionDoesNotExistError). Only what was cancelled with the work is cut."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, partitioned(stack, pool) as (proxy, proxied):
        cut, taken, own = asyncio.Event(), asyncio.Event(), []

        async def its_own() -> str:  # on a new connection (the partition passes it), taken before the work hangs
            async with proxied.acquire() as conn:
                taken.set()
                return await conn.fetchval("SELECT pg_sleep($1::float8)::text || 'done'", db.CUT_AFTER + 4)

        async def work() -> None:
            async with proxied.acquire() as conn:
                await conn.execute("SELECT 1")  # its connection, on a link the partition stops
                await cut.wait()
                own.append(asyncio.ensure_future(its_own()))
                await taken.wait()
                await conn.execute("SELECT 1")  # hangs: its link is cut

        before = set(db.LEFT)
        left = asyncio.create_task(db.within(3.0, work(), gave_up))  # the cut at 4 s, in its own query's 5 s
        await until("the work's connection", lambda: _holding(proxied), within=30)
        proxy.cut()
        cut.set()
        with pytest.raises(TimeoutError):
            await left
        await asyncio.wait(own, timeout=15)
        assert own[0].done() and own[0].exception() is None, own[0]  # before: ConnectionDoesNotExistError
        assert own[0].result() == "done"
        await until("the left work's own connection cut", lambda: _none_left(before), within=10)


async def _holding(pool: asyncpg.Pool) -> bool:
    return pool.get_size() == 1 and pool.get_idle_size() == 0


async def _none_left(before: set) -> bool:
    return not db.LEFT - before


async def test_a_task_the_work_started_that_runs_on_does_not_pile_up_its_connections(stack):
    """What a work begun by `begin` notes holds only connections still held: a task it started that runs on (a loop)
    shares its context, and every connection that task took was added to the work's list, kept as long as the task
    ran (a leak in a long-lived loop started in such work)."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool:
        async def runs_on() -> None:
            for _ in range(20):
                assert await pool.fetchval("SELECT 1") == 1

        async def work() -> asyncio.Task:
            return asyncio.ensure_future(runs_on())

        begun = db.begin(work())
        await (await begun)
        assert len(db._HELD_BY[begun]) <= 1  # before: 20


async def test_a_pool_closed_while_work_runs_on_a_server_that_answers_does_not_blame_the_server(stack, caplog):
    """close_pool's bound cuts work still under way on a server that answers too (it holds its connection past the
    bound); its WARNING said '(the server did not answer)' whatever held the close, sending one looking at a healthy
    server. Now it says work held them when it did."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, partitioned(stack, pool) as (_, proxied):
        query = f"SELECT pg_sleep(3) -- {uuid.uuid4().hex}"
        running = asyncio.create_task(proxied.execute(query))
        await until("the work's query", lambda: _all(pool, query, 1), within=30)
        with caplog.at_level(logging.WARNING, logger="railyard.db"):
            await db.close_pool(proxied, 0.5)
        await asyncio.wait({running}, timeout=10)
        assert running.done() and isinstance(running.exception(), asyncpg.PostgresConnectionError), running
        said = [r.getMessage() for r in caplog.records if "closing the database pool" in r.getMessage()]
        assert len(said) == 1 and "did not answer" not in said[0], said
        assert "1 open connection(s) terminated, 1 of them held by work" in said[0], said


async def test_work_given_up_on_while_its_release_closes_the_connection_is_cut_too(stack, caplog):
    """Work given up on whose connection asyncpg closes as it is let go (expired: Pool.expire_connections; or past
    the pool's max_queries) on a server that stopped answering: the close waits for the server to drop the
    connection, up to the command timeout (30 s), the connection held meanwhile; is_closed() is True at once, and the
    cut skipped it. Now it is terminated at CUT_AFTER as well: here the pool's one connection is free again."""
    async with service_schema(stack, "dbleft", NO_MIGRATIONS) as pool, \
            partitioned(stack, pool, pool_max=1) as (proxy, proxied):
        taken = asyncio.Event()

        async def work() -> None:
            async with proxied.acquire() as conn:
                await conn.execute("SELECT 1")  # its connection, on a link the partition stops
                taken.set()
                await asyncio.Event().wait()  # until it is given up on: then let go, and closed

        with caplog.at_level(logging.INFO, logger="railyard.db"):
            left = asyncio.create_task(db.within(2.0, work(), gave_up))
            async with asyncio.timeout(30):
                await taken.wait()
            await proxied.expire_connections()  # its release closes it
            proxy.cut()
            with pytest.raises(TimeoutError):
                await left
            began = time.monotonic()
            answer = asyncio.create_task(proxied.fetchval("SELECT 1"))  # a new connection: the partition passes it
            await asyncio.wait({answer}, timeout=15)
            took = time.monotonic() - began
        assert answer.done() and answer.result() == 1, f"the pool's connection not free after {took:.1f} s"
        assert took < db.CUT_AFTER + 3.0, took  # before: 30 s (the close's wait, the command timeout)
        assert any("terminated" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
