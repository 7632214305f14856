"""`shared.db.background_pass` and the outbox's quiet rounds (shared/outbox.py, `Outbox.run`), on the real embedded
PostgreSQL: a background pass closes the connections it opened when it ends, and keeps those it found open and those
in use; an outbox's start round and IDLE rounds leave no backend open, a round woken by a commit keeps its connection
for the request path's next query. Before, each round's connection stayed `pool_idle_seconds` (30 s): every service's
outbox held a PostgreSQL backend half of each IDLE minute, all at the same moments (docs/performance.md, item 61).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared import outbox as outbox_module
from shared.db import background_pass, create_pool
from shared.outbox import Outbox
from shared.settings import PostgresSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def pool_settings(stack) -> PostgresSettings:
    return PostgresSettings(dsn=stack.settings().postgres.dsn, pool_min=0, pool_max=5, pool_idle_seconds=30.0)


class EmptyOutbox:
    """The outbox table's functions, on a table that is always empty (each read is a real query); `reads` counts the
    rounds."""

    def __init__(self) -> None:
        self.reads = 0
        self.read = asyncio.Event()

    async def unsent_events(self, conn: asyncpg.Connection, limit: int, after: int = 0) -> list:
        await conn.fetchval("SELECT 1")
        self.reads += 1
        self.read.set()
        return []


async def nothing_published(subject: str, event: object) -> None:
    raise AssertionError("nothing to publish")


def test_a_background_pass_closes_what_it_opened_only(stack):
    async def scenario() -> None:
        pool = await create_pool(pool_settings(stack), "public")
        try:
            async with background_pass(pool):
                await pool.fetchval("SELECT 1")
                assert pool.get_size() == 1
            assert pool.get_size() == 0  # was 1 until pool_idle_seconds

            held = await pool.acquire()  # in use when the pass ends (a request's): kept
            found = await pool.acquire()
            await pool.release(found)  # open and idle before the pass: kept, though the pass uses it
            try:
                async with background_pass(pool):
                    async with pool.acquire() as first, pool.acquire() as second:
                        await first.fetchval("SELECT 1")
                        await second.fetchval("SELECT 1")
                    assert pool.get_size() == 3
                assert pool.get_size() == 2  # the one found idle and the one held; the one the pass opened closed
                assert await held.fetchval("SELECT 2") == 2
                async with pool.acquire() as again:
                    assert again is not held
            finally:
                await pool.release(held)
        finally:
            await pool.close()

    asyncio.run(scenario())


async def closed(pool: asyncpg.Pool) -> None:
    """Until the pool holds no connection, 10 s at most: the round read its rows, then still commits and releases
    its connection (a round trip each, which a loaded machine can take well past a fixed short sleep) before its
    pass ends; without the pass the connection stays pool_idle_seconds (30 s)."""
    deadline = asyncio.get_running_loop().time() + 10
    while pool.get_size():
        assert asyncio.get_running_loop().time() < deadline, f"{pool.get_size()} connection(s) still open"
        await asyncio.sleep(0.01)


def test_an_outbox_round_not_asked_for_leaves_no_backend_and_a_woken_one_keeps_it(stack, monkeypatch):
    monkeypatch.setattr(outbox_module, "IDLE", 0.3)

    async def scenario() -> None:
        pool = await create_pool(pool_settings(stack), "public")
        rows = EmptyOutbox()
        box = Outbox(pool, nothing_published, event_types={}, order_field="id", what="test events", retry=0.3,
                     rows=rows)
        task = asyncio.create_task(box.run())
        try:
            await asyncio.wait_for(rows.read.wait(), 10)  # the start's round
            await closed(pool)  # was 1 for 30 s after the round
            rows.read.clear()
            await asyncio.wait_for(rows.read.wait(), 10)  # an IDLE round
            await closed(pool)

            rows.read.clear()
            box.wake()  # a commit with events: the service is busy, its connection stays for the next query
            await asyncio.wait_for(rows.read.wait(), 10)
            async with box._sending:  # the round ended (a pass's close would have run in the same step as its end)
                pass
            assert pool.get_size() == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await pool.close()

    asyncio.run(scenario())
