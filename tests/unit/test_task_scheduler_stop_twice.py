"""Scheduler.stop is idempotent: a second stop (a service's on_stop after a failed start's, a test's teardown after
the test's own) returns once the first has, without doing its steps again and without raising what the first left
behind. Before, a loop the first stop gave up on (its last pass past STOP_STEP: cancelled and left) was awaited
again by the second, which raised its CancelledError out of the stop (and so out of the service's on_stop)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.task_scheduler import scheduler as scheduler_module
from services.task_scheduler.handlers import Deps
from services.task_scheduler.scheduler import Scheduler
from shared import db
from shared.settings import TaskSettings


def a_scheduler(tmp_path: Path) -> Scheduler:
    async def publish(*_: object) -> None:
        pass

    async def mint(*_: object) -> str:
        return "unused"

    deps = Deps(pool=None, objects=None, settings=TaskSettings(), work_root=tmp_path, membership=lambda token: None,
                publish=publish)
    return Scheduler(deps=deps, mint=mint, gateway_url="http://127.0.0.1:1", identity="stopper")


class _Outbox:
    def __init__(self) -> None:
        self.stops = 0

    async def stop(self, task: asyncio.Task) -> None:
        self.stops += 1
        task.cancel()


async def test_a_second_stop_after_a_loop_the_first_left_returns_quietly(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler_module, "STOP_STEP", 0.2)
    scheduler = a_scheduler(tmp_path)
    passes = asyncio.Event()

    async def stuck_pass() -> None:  # a pass PostgreSQL does not answer: past STOP_STEP, so the stop leaves it
        passes.set()
        await asyncio.sleep(3600)

    scheduler._loop = db.begin(stuck_pass())
    scheduler.outbox = outbox = _Outbox()
    scheduler._outbox_task = asyncio.ensure_future(asyncio.sleep(3600))
    await passes.wait()
    async with asyncio.timeout(10):
        await scheduler.stop()  # the loop left (cancelled)
        assert scheduler._loop.done()
        await scheduler.stop()  # raised CancelledError
        await scheduler.stop()
    assert outbox.stops == 1  # the steps are done once


async def test_stops_at_once_share_the_one_stop(tmp_path, monkeypatch):
    monkeypatch.setattr(scheduler_module, "STOP_STEP", 0.2)
    scheduler = a_scheduler(tmp_path)
    ended = asyncio.Event()

    async def slow_last_pass() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    scheduler._loop = db.begin(slow_last_pass())
    scheduler.outbox = outbox = _Outbox()
    scheduler._outbox_task = asyncio.ensure_future(asyncio.sleep(3600))
    await asyncio.sleep(0)
    async with asyncio.timeout(10):
        first, second = asyncio.ensure_future(scheduler.stop()), asyncio.ensure_future(scheduler.stop())
        await asyncio.gather(first, second)
    assert ended.is_set() and outbox.stops == 1
