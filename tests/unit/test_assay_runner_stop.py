"""The assay runner's stop ends its outbox loop with Outbox.stop (a last send of what is unsent, bounded at STOP_SEND,
2 s), as the deployer's, registry's, monitoring's and task scheduler's stops do, after the scheduler's pass is
cancelled. Before, it only cancelled the loop: events committed just before a stop waited for the next start."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.assay_runner import app
from shared.settings import AssaySettings


def test_stop_cancels_the_scheduler_then_ends_the_outbox_with_a_last_send():
    order: list[str] = []

    class Outbox:
        async def stop(self, task: asyncio.Task) -> None:
            order.append("scheduler cancelled" if scheduler.cancelled() else "scheduler running")
            task.cancel()
            order.append("outbox stopped")

    async def forever() -> None:
        await asyncio.Event().wait()

    async def scenario() -> None:
        nonlocal scheduler
        scheduler = asyncio.create_task(forever())
        loop = asyncio.create_task(forever())
        await asyncio.sleep(0)
        runtime = SimpleNamespace(extras={"scheduler": scheduler, "outbox": loop,
                                          "deps": SimpleNamespace(outbox=Outbox())})
        await app.stop(runtime)

    scheduler: asyncio.Task | None = None
    asyncio.run(scenario())
    assert order == ["scheduler cancelled", "outbox stopped"]


def test_a_stop_that_comes_as_the_scheduler_is_woken_ends_it(monkeypatch):
    """An assay created (`deps.scheduled` set) in the step of the event loop the stop cancels the scheduler in. Its
    wait was asyncio.wait_for, which on Python 3.11 returns when the event is set as the cancel comes (bpo-42130):
    the cancel was lost, the scheduler made its pass and waited for the next, and the stop waited for it until the
    service was killed."""
    passes: list[int] = []

    async def run_due(deps) -> int:
        passes.append(1)
        return 0

    async def next_due(pool):
        return None  # nothing active: the next pass in SCHEDULER_IDLE (60 s)

    monkeypatch.setattr(app.handlers, "run_due", run_due)
    monkeypatch.setattr(app.store, "next_due", next_due)

    async def scenario() -> asyncio.Task:
        deps = SimpleNamespace(scheduled=asyncio.Event(), settings=AssaySettings(), pool=SimpleNamespace())
        scheduler = asyncio.create_task(app.run_scheduler(deps))
        for _ in range(200):  # its first pass (after a tick), then its wait for the next
            if passes and deps.scheduled._waiters:
                break
            await asyncio.sleep(0.01)
        assert passes and deps.scheduled._waiters, "the scheduler does not wait for its next pass"
        deps.scheduled.set()  # an assay created ...
        stopping = asyncio.create_task(app.stop(SimpleNamespace(extras={"scheduler": scheduler})))  # ... and the stop
        await asyncio.wait({stopping}, timeout=3.0)
        assert stopping.done(), f"the stop still waits for the scheduler after 3 s ({len(passes)} passes)"
        return scheduler

    assert asyncio.run(scenario()).cancelled()
