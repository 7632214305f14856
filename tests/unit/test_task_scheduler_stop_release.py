"""Scheduler.stop gives its loop's connection back to the pool within STOP_STEP, else terminates it. The release left
in the background (asyncpg's Pool.release shields its end from the cancel) may give the connection back to the pool
after the step gave up on it but before it terminated it: the pool's proxy is detached a few steps of the event loop
before the release's own task ends. Its `terminate` then raised asyncpg.InterfaceError ('connection has been
released back to the pool') out of the stop, a flaky failure of tests/integration/test_task_scheduler_stop.py under
load. Here a real asyncpg PoolConnectionProxy over a stand-in connection, and a pool whose release hands the
connection back just as the step gives up (reset done, the rest of its release still to run)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from asyncpg.pool import PoolConnectionProxy

from services.task_scheduler import scheduler as scheduler_module
from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared.settings import TaskSettings

STEP = 0.2


class _Connection:
    """What the proxy calls of an asyncpg Connection here."""

    def __init__(self) -> None:
        self.terminated = 0
        self.proxy = None

    def _set_proxy(self, proxy) -> None:
        self.proxy = proxy

    def is_closed(self) -> bool:
        return self.terminated > 0

    async def remove_listener(self, channel, callback) -> None:
        pass

    def terminate(self) -> None:
        self.terminated += 1


class _Pool:
    """Its release resets the connection in `reset` seconds (None: never, a server that stopped answering), gives it
    back (the proxy detached) and then takes `rest` seconds more to end, shielded from a cancel as asyncpg's."""

    def __init__(self, reset: float | None, rest: float) -> None:
        self.reset, self.rest = reset, rest
        self.returned = asyncio.Event()
        self.ended: asyncio.Future | None = None

    async def release(self, proxy: PoolConnectionProxy) -> None:
        async def release() -> None:
            if self.reset is None:
                await asyncio.Event().wait()
            await asyncio.sleep(self.reset)
            proxy._detach()
            self.returned.set()
            await asyncio.sleep(self.rest)

        self.ended = asyncio.ensure_future(release())
        await asyncio.shield(self.ended)


def a_scheduler(tmp_path: Path, pool: _Pool) -> Scheduler:
    async def publish(*_: object) -> None:
        pass

    async def mint(*_: object) -> str:
        return "unused"

    deps = Deps(pool=pool, objects=None, settings=TaskSettings(), work_root=tmp_path, membership=lambda token: None,
                publish=publish)
    return Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity="stopper")


async def test_a_connection_given_back_as_the_stop_gives_up_on_its_release_is_left_to_the_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler_module, "STOP_STEP", STEP)
    pool = _Pool(reset=STEP * 0.75, rest=STEP * 5)
    scheduler = a_scheduler(tmp_path, pool)
    connection = _Connection()
    scheduler._conn = PoolConnectionProxy(None, connection)
    async with asyncio.timeout(10):
        await scheduler.stop()  # raised InterfaceError: cannot call Connection.terminate(): ... released
        assert pool.returned.is_set() and not pool.ended.done()  # what this test is about: given back, not ended
        await pool.ended
    assert connection.terminated == 0  # the pool's again: not cut under its next holder
    assert scheduler._conn is None


async def test_a_connection_whose_release_does_not_end_is_terminated_by_the_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler_module, "STOP_STEP", STEP)
    pool = _Pool(reset=None, rest=0)
    scheduler = a_scheduler(tmp_path, pool)
    connection = _Connection()
    scheduler._conn = PoolConnectionProxy(None, connection)
    async with asyncio.timeout(10):
        await scheduler.stop()
    assert connection.terminated == 1 and not pool.returned.is_set()
    pool.ended.cancel()
