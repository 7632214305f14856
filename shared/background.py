"""One background task a service owns: started with the service, cancelled and awaited when it stops.

Subclasses implement `_run()` (their loop: what wakes it, what it does, how it survives a failing pass), or, for
the common loop "wait, sweep, survive a failing sweep", subclass `Sweeper` and implement `sweep()`."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

QUIET_WAIT = 30.0
"""A sweep after a wait this long (the pools' `pool_idle_seconds`: its connection would otherwise stay that long)
nobody woke is quiet (`Sweeper.quiet_pool`)."""


class BackgroundTask:
    """Start/stop of one named asyncio task running `self._run()`."""

    task_name = "background"
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the loop and wait until it has let go (a pass in flight is cancelled with it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError


class Sweeper(BackgroundTask):
    """A loop that waits `every` seconds (less when `wake_event()` is set), then runs `sweep()`; a sweep that fails
    is logged with `failure` and the next one tries again. `next_wait(result)` may shorten the following wait
    (result is None after a failed sweep). With `quiet_pool()` a PostgreSQL pool, the first sweep, and a sweep
    nobody woke after a wait of QUIET_WAIT or more, close the connections they opened when they end
    (shared.db.background_pass): a loop that looks every minute holds no backend between its looks, and the first
    look, just after the service's start (what a stopped process left), does not keep its connection 30 s past the
    start's own close of idle ones."""

    every = 60.0
    failure = "sweep failed (retried on the next sweep)"
    log = logging.getLogger("railyard.background")

    def wake_event(self) -> asyncio.Event | None:
        return None

    def next_wait(self, result: Any) -> float:
        return self.every

    def quiet_pool(self) -> Any:
        """The PostgreSQL pool whose connections a quiet sweep closes (None: none)."""
        return None

    async def sweep(self) -> Any:
        raise NotImplementedError

    async def _run(self) -> None:
        # The first wait is between half and all of `every`, at random: sweepers a service starts together would
        # otherwise sweep at the same moments and hold one PostgreSQL connection each (a backend of ~15-20 MiB
        # of RSS) where one, taken in turn, serves them all (docs/performance.md, "Memory").
        wait = self.every * (0.5 + random.random() / 2)  # noqa: S311 - a phase, not a secret
        first = True
        while True:
            wake = self.wake_event()
            woken = False
            if wake is None:
                await asyncio.sleep(wait)
            else:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns when the event is set in the
                    # step `stop`'s cancel comes (bpo-42130), and the cancel was lost: the loop went on, stop waited
                    async with asyncio.timeout(wait):
                        await wake.wait()
                    woken = True
                except TimeoutError:
                    pass
                wake.clear()
            pool = self.quiet_pool() if first or (not woken and wait >= QUIET_WAIT) else None
            first = False
            try:
                if pool is None:
                    result = await self.sweep()
                else:
                    from shared.db import background_pass  # asyncpg: only for a service that has a pool

                    async with background_pass(pool):
                        result = await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception(self.failure)
                result = None
            wait = self.next_wait(result)
