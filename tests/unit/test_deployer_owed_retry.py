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



class OneConnectionPool(MemoryPool):
    """A pool of one connection: acquire() waits while it is held; `held` says whether it is."""

    def __init__(self) -> None:
        self.free = asyncio.Semaphore(1)
        self.held = 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.free:
            self.held += 1
            try:
                async with super().acquire() as conn:
                    yield conn
            finally:
                self.held -= 1


def test_the_owed_write_counts_a_lock_just_released_to_a_waiting_undeploy_as_busy(world, monkeypatch):  # noqa: F811
    """The lock released by a deploy while an undeploy waits for it: locked() is false, but the undeploy is next
    (asyncio.Lock hands it over: acquire() now would queue behind it). The owed write counts it as busy and gives
    its connection back at once. Were it to wait in line with the connection, the undeploy, holding the lock, would
    wait for the pool's connection (store.deactivate takes one): both stuck. `_write_once` takes the lock with
    PipelineLock.try_acquire, which counts the tasks waiting for it (public API of asyncio.Lock only; it read
    asyncio.Lock's private `_waiters` before); the test fails if that count goes."""
    monkeypatch.setattr(handlers, "OWED_RETRY_DELAYS", (3600.0,))  # the background write stays out of the way
    deactivate = world.store.deactivate

    async def deactivate_on_a_connection(pool, *args, **kwargs):  # as store.deactivate, on one of the pool's
        async with pool.acquire():
            return await deactivate(pool, *args, **kwargs)

    world.store.deactivate = deactivate_on_a_connection

    async def scenario(world) -> None:
        pool = world.deps.pool = OneConnectionPool()
        world.backend.hold = False
        _refuse_once(world)
        assert (await _deploy(world, "a")).id == 5 and world.deps.owed.tasks  # served; its event owed
        event = handlers.deployed_event(5, "a-5", PIPELINE, world.store.pipelines[PIPELINE]["workspace_id"], "v")
        lock = world.deps.pipeline_lock(PIPELINE)
        await lock.acquire()  # a deploy of the pipeline
        undeploy = asyncio.create_task(handlers.undeploy(world.deps, ALICE, "t", PIPELINE, 5))
        await _until(lambda: lock.waiting == 1, "the undeploy waits for the lock")
        lock.release()  # the deploy is done: the lock is the undeploy's, which has not run yet
        assert not lock.locked()
        # in this task, with nothing run in between (a task of its own would run after the undeploy took the lock)
        assert await handlers.OwedDeployed._write_once(world.deps, PIPELINE, event) is None
        assert pool.held == 0
        await undeploy  # it takes the lock and the connection, and writes the owed event with its undeployed
        assert await handlers.OwedDeployed._write_once(world.deps, PIPELINE, event) is False  # owed no more
        assert [(s, e.deployment_id) for s, e in world.store.events] == [(subjects.EVENT_PIPELINE_DEPLOYED, 5),
                                                                         (subjects.EVENT_PIPELINE_UNDEPLOYED, 5)]
        await world.deps.owed.stop()

    asyncio.run(asyncio.wait_for(scenario(world), 5.0))


def test_the_pipeline_lock_counts_its_holder_and_waiters_and_forgets_one_cancelled():
    """PipelineLock.try_acquire takes the lock only when nobody holds it or waits for it, and never waits. A waiter
    that gives up (the undeploy's wait_for past its time) is counted no more: a count left behind would keep the owed
    write from ever taking the lock."""
    async def scenario() -> None:
        lock = handlers.PipelineLock()
        assert await lock.try_acquire() and lock.locked() and lock.waiting == 0
        assert not await lock.try_acquire()  # held
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.01)  # gives up
        assert lock.waiting == 0
        waiter = asyncio.create_task(lock.acquire())
        await _until(lambda: lock.waiting == 1, "the waiter waits")
        lock.release()
        assert not lock.locked() and lock.waiting == 1
        assert not await lock.try_acquire()  # released to the waiter, which has not run yet: busy
        await waiter
        assert lock.locked() and lock.waiting == 0
        lock.release()
        assert await lock.try_acquire()
        lock.release()
        assert not lock.locked()

    asyncio.run(asyncio.wait_for(scenario(), 5.0))
