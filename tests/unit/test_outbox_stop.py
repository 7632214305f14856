"""`Outbox.stop` (shared/outbox.py), what the deployer's, the registry's, monitoring's, the task scheduler's and the
assay runner's stops call: the sending loop is cancelled (its task done) and what is unsent goes out in one last
round; a bus that does not answer does not hold the stop up (the rows stay, sent at a start)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.registry import store
from shared import outbox as outbox_module
from shared.outbox import Outbox
from tests.unit.test_outbox_order_fields import Pool
from tests.unit.test_outbox_sending_elsewhere import SharedRows


class ReadRows(SharedRows):
    """The table; `read` is set once a round has read it."""

    def __init__(self) -> None:
        super().__init__()
        self.read = asyncio.Event()

    async def unsent_events(self, conn, limit: int, after: int = 0) -> list[dict[str, Any]]:
        found = await super().unsent_events(conn, limit, after)
        self.read.set()
        return found


def test_stop_cancels_the_loop_and_sends_what_is_unsent(monkeypatch):
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)
    rows = ReadRows()
    sent: list[str] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.action)

    async def scenario() -> asyncio.Task:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="registry events", retry=0.05, rows=rows)
        task = asyncio.create_task(box.run())
        await rows.read.wait()  # its round at start read an empty table: next it waits its IDLE round
        rows.add("created")  # committed, the loop not woken
        await box.stop(task)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()
    assert sent == ["created"]
    assert rows.rows == {}


def test_stop_gives_up_on_a_bus_that_does_not_answer(monkeypatch):
    rows = SharedRows()
    rows.add("created")

    async def publish(subject: str, event: Any) -> None:
        await asyncio.sleep(3600)

    wait_for = asyncio.wait_for

    async def no_wait(awaitable, timeout):  # the 5 s bound, at once
        return await wait_for(awaitable, 0.05)

    async def scenario() -> asyncio.Task:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="registry events", retry=0.05, rows=rows)
        task = asyncio.create_task(asyncio.sleep(3600))
        monkeypatch.setattr(outbox_module.asyncio, "wait_for", no_wait)
        await box.stop(task)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()
    assert len(rows.rows) == 1  # kept for a start
