"""`services.workflow_lineage.store.next_auto_benchmark`, what the automatic benchmarks' worker sleeps on between
claims (auto_benchmarks.AutoBenchmarks.next_wait): the seconds until a pending claim's next try or a running claim's
stale time, whichever comes first; None with no claim pending or running. On the real embedded PostgreSQL, in a
transaction rolled back (the stack's own worker never sees the rows)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.workflow_lineage import store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CLAIM = ("INSERT INTO auto_benchmarks (workspace_id, task_run, model_version, deployment, evaluation, status,"
         " next_try, updated_at) VALUES (1, $1, 'mv', 'd', '{}', $2, now() + make_interval(secs => $3),"
         " now() - make_interval(secs => $4))")


class Rollback(Exception):
    """Ends the transaction without committing."""


def test_the_next_claim_is_the_earliest_retry_or_stale_time(stack):
    async def scenario() -> None:
        conn = await asyncpg.connect(stack.settings().postgres.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL search_path TO workflow_lineage")
                await conn.execute("DELETE FROM auto_benchmarks")  # this transaction's view only
                assert await store.next_auto_benchmark(conn, 600.0) is None
                await conn.execute(CLAIM, "done", "done", 0.0, 0.0)
                await conn.execute(CLAIM, "failed", "failed", 0.0, 0.0)
                assert await store.next_auto_benchmark(conn, 600.0) is None  # finished claims wait for nothing
                await conn.execute(CLAIM, "retry", "pending", 40.0, 0.0)
                assert 39.0 < await store.next_auto_benchmark(conn, 600.0) <= 40.0
                await conn.execute(CLAIM, "running", "running", 0.0, 580.0)  # stale in 20 s
                assert 19.0 < await store.next_auto_benchmark(conn, 600.0) <= 20.0
                await conn.execute(CLAIM, "due", "pending", -5.0, 0.0)
                assert await store.next_auto_benchmark(conn, 600.0) <= -4.0  # due now
                raise Rollback
        except Rollback:
            pass
        finally:
            await conn.close()

    asyncio.run(scenario())
