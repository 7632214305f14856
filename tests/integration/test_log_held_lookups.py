"""A log-store process holding batches hears at once the deployments any log-store process records
(services/log_store/deployments.py: the recording's NOTIFY on CHANNEL, `Deployments.listen`), so its looks in the
table can back off (handlers.Ingestor.look_up_held: 1, 2, 4 ... 30 s apart, tests/unit/test_log_store_holding.py)
without a late announcement being picked up late. The whole path with two log-store processes and a batch held 16 s
is tests/integration/test_log_held_two_stores.py. On the old code nothing was NOTIFY'd and nothing listened. The
LISTEN has a connection of its own, not one of the pool's (a pool of one connection went on working)."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from services.log_store.deployments import Deployments
from shared.db import create_pool
from shared.messages.deployer import PipelineDeployed
from tests.integration.conftest import service_schema

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
MIGRATIONS = Path("services/log_store/migrations")


def _connect(stack):
    return partial(asyncpg.connect, stack.settings().postgres.dsn, timeout=5)


def _event(name: str) -> PipelineDeployed:
    return PipelineDeployed(deployment_id=3, name=name, pipeline_id=2, workspace_id=9, pipeline_version="v",
                            pipeline_name="p")


async def _heard(heard: list[str], name: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while name not in heard:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_deployment_recorded_by_another_process_is_heard_at_once_while_listening(stack):
    async with service_schema(stack, "logstorelisten", MIGRATIONS) as pool:
        holder, reader = Deployments(pool, connect=_connect(stack)), Deployments(pool)  # two processes' views
        heard: list[str] = []
        holder.on_recorded = heard.append
        assert await holder.listen(True)  # began now: the caller looks its held deployments up
        assert not await holder.listen(True)  # listening already
        name = f"d-{uuid.uuid4().hex[:8]}"
        await reader.record(_event(name))
        # heard at all says it: nothing else tells this process (no look in the table here); how soon is not asserted
        assert await _heard(heard, name), "the recorded deployment's NOTIFY was never heard"
        assert (await holder.lookup([name]))[name].workspace_id == 9  # heard after its commit: the row is there

        # not wanted (nothing held): the connection is closed and nothing more is heard
        assert not await holder.listen(False)
        assert holder.listener is None
        later = f"d-{uuid.uuid4().hex[:8]}"
        await reader.record(_event(later))
        assert await holder.listen(True)  # what was recorded meanwhile was not heard: True says look it up
        again = f"d-{uuid.uuid4().hex[:8]}"
        await reader.record(_event(again))
        assert await _heard(heard, again)
        assert later not in heard

        # the connection lost (a server restart, a network cut): replaced at the next turn, which says so
        lost = holder.listener
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", lost.get_server_pid())
        deadline = time.monotonic() + 10
        while not await holder.listen(True):  # the ingestion loop's turns
            assert time.monotonic() < deadline, "the lost LISTEN connection was never replaced"
            await asyncio.sleep(0.02)
        assert holder.listener is not lost
        last = f"d-{uuid.uuid4().hex[:8]}"
        await reader.record(_event(last))
        assert await _heard(heard, last)
        await holder.stop()
        assert holder.listener is None


async def test_listening_takes_none_of_the_pools_connections(stack):
    """With `postgres.pool_max` 1 the log store records announcements and looks deployments up (what each flush does
    first) while it listens. The LISTEN held a pool connection for as long as batches were held (up to an hour):
    with a pool of one, every flush's lookup and every recording waited for ever (the held batches with them); with
    five, reads and ingestion had four."""
    async with service_schema(stack, "logstorelisten", MIGRATIONS) as setup:
        schema = await setup.fetchval("SELECT current_schema()")
        one = await create_pool(stack.settings().postgres.model_copy(update={"pool_max": 1}), schema)
        try:
            holder = Deployments(one, connect=_connect(stack))
            assert await holder.listen(True)
            name = f"d-{uuid.uuid4().hex[:8]}"
            await asyncio.wait_for(holder.record(_event(name)), 10)  # waited for the pool's one connection for ever
            owner = (await asyncio.wait_for(holder.lookup([name]), 10))[name]
            assert (owner.workspace_id, owner.pipeline) == (9, "p")
            await holder.stop()
            assert holder.listener is None
        finally:
            await one.close()
