"""`shared.background.BackgroundTask.stop` ends a `Sweeper` whose wake event is set in the step the stop's cancel
comes. The loop waited for its wake-up with asyncio.wait_for, which on Python 3.11 returns when the event is set as
the cancel comes (bpo-42130): the cancel was lost, the loop swept and waited for its next round, and stop(), which
waits for the loop, waited with it until the service was killed."""

from __future__ import annotations

import asyncio

from shared import background


class Woken(background.Sweeper):
    every = 60.0  # no timeout of the wait in the test: only the wake-up and the stop

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.sweeps = 0

    def wake_event(self) -> asyncio.Event:
        return self.wake

    async def sweep(self) -> None:
        self.sweeps += 1


def test_a_stop_that_comes_as_the_sweeper_is_woken_still_ends_it():
    async def scenario() -> asyncio.Task:
        sweeper = Woken()
        sweeper.start()
        task = sweeper._task
        for _ in range(100):  # a few steps of the loop: until it waits for its wake-up
            if sweeper.wake._waiters:
                break
            await asyncio.sleep(0)
        assert sweeper.wake._waiters, "the sweeper does not wait for a wake-up"
        sweeper.wake.set()  # something to sweep: the loop is woken ...
        stopping = asyncio.create_task(sweeper.stop())  # ... and the service's stop cancels it in the same step
        await asyncio.wait({stopping}, timeout=3.0)
        assert stopping.done(), f"the stop still waits for the sweeper after 3 s ({sweeper.sweeps} sweeps)"
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()
