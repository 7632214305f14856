"""The background write of an owed events.pipeline.deployed (services/deployer/handlers.py OwedDeployed) holds no
lock of the pipeline while it waits for a pool connection, and holds no connection while the lock is busy: it takes
the connection first, then the lock only if it is free (else it tries again later). Before, it took the pipeline's
lock and then waited for the pool with it: a deployer whose pool was exhausted kept the pipeline's undeploy waiting
for the lock until it answered 409 deploy_in_progress. Still once: the event is written under the lock, and only
while the row owes it. Same in-memory world as test_deployer_locks.py."""

from __future__ import annotations

import asyncio
import contextlib

from services.deployer import handlers
from shared import subjects
from tests.unit.test_deployer_locks import ALICE, PIPELINE, MemoryPool, _deploy, _until, world  # noqa: F401


class ExhaustedPool(MemoryPool):
    """A pool whose acquire() waits, while `exhausted`, until the test frees it; `waiting` counts those waiting."""

    def __init__(self) -> None:
        self.exhausted = False
        self.freed = asyncio.Event()
        self.waiting = 0
        self.held = 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        if self.exhausted:
            self.waiting += 1
            try:
                await self.freed.wait()
            finally:
                self.waiting -= 1
        self.held += 1
        try:
            async with super().acquire() as conn:
                yield conn
        finally:
            self.held -= 1


def _refuse_once(made) -> None:
    """The deploy's own write of its deployed event fails (the database lost the commit); later ones go through."""
    record_deployed = made.store.record_deployed

    async def refused_once(conn, event, *, if_pending=False):
        made.store.record_deployed = record_deployed
        raise ConnectionResetError("the commit was lost")

    made.store.record_deployed = refused_once


def test_the_owed_write_never_holds_the_lock_waiting_for_a_connection_nor_a_connection_waiting_for_the_lock(world, monkeypatch):  # noqa: F811, E501
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (0.01,) * 12)

    async def scenario(world) -> None:
        pool = world.deps.pool = ExhaustedPool()
        world.backend.hold = False
        _refuse_once(world)
        assert (await _deploy(world, "a")).id == 5 and world.deps.owed.tasks  # served; its event owed
        lock = world.deps.pipeline_lock(PIPELINE)
        async with lock:  # as a deploy or undeploy of the pipeline would (with a connection of its own)
            for _ in range(4):  # attempts come and go, none waiting for the lock with a connection
                await asyncio.sleep(0.01)
                assert pool.held == 0 and world.store.events == []
            pool.exhausted = True
        await _until(lambda: pool.waiting, "the background write waits for a connection")
        assert not lock.locked()  # before: taken first, and held while it waited for the pool
        # the undeploy takes the lock at once and writes the owed event with its undeployed (store.deactivate);
        # before, it waited for the lock, and answered 409 deploy_in_progress
        await asyncio.wait_for(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5), 1.0)
        pool.exhausted = False
        pool.freed.set()
        await asyncio.gather(*world.deps.owed.tasks.values())  # it finds nothing owed: written once
        assert [(s, e.deployment_id) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, 5),
                                                                         (subjects.EVENT_PIPELINE_UNDEPLOYED, 5)]
        assert not world.store.deployments[5]["deployed_pending"]

    asyncio.run(scenario(world))

