"""The assay runner's stop ends its outbox loop with Outbox.stop (a last send of what is unsent, bounded at 5 s), as
the deployer's, registry's, monitoring's and task scheduler's stops do, after the scheduler's pass is cancelled.
Before, it only cancelled the loop: events committed just before a stop waited for the next start."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from services.assay_runner import app


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
