"""`Outbox.stop` (shared/outbox.py), what the deployer's, the registry's, monitoring's, the task scheduler's and the
assay runner's stops call: the sending loop is cancelled (its task done) and what is unsent goes out in one last
round; a bus that does not answer does not hold the stop up (the rows stay, sent at a start)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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


def registry_outbox(rows: SharedRows, publish: Callable[[str, Any], Awaitable[None]]) -> Outbox:
    """The registry's outbox on the stand-in table `rows`, sending with `publish`."""
    return Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                  what="registry events", retry=0.05, rows=rows)


def idle_outbox(monkeypatch) -> tuple[ReadRows, list[str], Outbox]:
    """An outbox whose loop, after its round at start, waits its IDLE round (60 s): its table, what it sent (the
    events' actions, in order) and the outbox."""
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)
    rows, sent = ReadRows(), []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.action)

    return rows, sent, registry_outbox(rows, publish)


def test_stop_cancels_the_loop_and_sends_what_is_unsent(monkeypatch):
    rows, sent, box = idle_outbox(monkeypatch)

    async def scenario() -> asyncio.Task:
        task = asyncio.create_task(box.run())
        await rows.read.wait()  # its round at start read an empty table: next it waits its IDLE round
        rows.add("created")  # committed, the loop not woken
        await box.stop(task)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()
    assert sent == ["created"]
    assert rows.rows == {}


def test_a_stop_that_comes_as_the_loop_is_woken_still_ends_it(monkeypatch):
    """A commit wakes the loop and the service's stop comes in the same step of the event loop (its last command
    answered, then the stop; or `_round_later`'s timer firing then). The loop waited with asyncio.wait_for, which on
    Python 3.11 returns when its wait ends as the cancel comes (bpo-42130): the cancel was lost, the loop went on
    (next round in IDLE, 60 s) and the stop waited for it until the service was killed."""
    rows, sent, box = idle_outbox(monkeypatch)

    async def scenario() -> asyncio.Task:
        task = asyncio.create_task(box.run())
        await rows.read.wait()  # its round at start read an empty table
        for _ in range(100):  # a few steps of the loop: until it waits for its next round
            if box.woken._waiters:
                break
            await asyncio.sleep(0)
        assert box.woken._waiters, "the loop does not wait for a wake-up"
        rows.add("created")
        box.wake()  # committed: the loop is woken ...
        stopping = asyncio.create_task(box.stop(task))  # ... and the stop cancels it in the same step
        await asyncio.wait({stopping}, timeout=3.0)
        assert stopping.done(), f"the stop still waits for the sending loop after 3 s (sent: {sent})"
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
        box = registry_outbox(rows, publish)
        task = asyncio.create_task(asyncio.sleep(3600))
        monkeypatch.setattr(outbox_module.asyncio, "wait_for", no_wait)
        await box.stop(task)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled()
    assert len(rows.rows) == 1  # kept for a start


def test_a_stop_waits_for_a_silent_bus_less_than_the_stacks_stop_grace(monkeypatch):
    """Each event's ack is waited up to 5 s (shared.bus.JETSTREAM_TIMEOUT): the stop's last send is bounded well
    under the embedded stack's 5 s grace, so the pool's close after it still comes before a SIGKILL."""
    from shared.embedded.stack import Child

    rows = SharedRows()
    rows.add("created")
    bounds: list[float] = []
    wait_for = asyncio.wait_for

    async def publish(subject: str, event: Any) -> None:
        await asyncio.sleep(3600)

    async def recorded(awaitable, timeout):
        bounds.append(timeout)
        return await wait_for(awaitable, 0.05)

    async def scenario() -> None:
        box = registry_outbox(rows, publish)
        task = asyncio.create_task(asyncio.sleep(3600))
        monkeypatch.setattr(outbox_module.asyncio, "wait_for", recorded)
        await box.stop(task)

    asyncio.run(scenario())
    grace = Child.__dataclass_fields__["stop_grace"].default
    assert bounds and bounds[-1] <= grace / 2, (bounds, grace)
    assert len(rows.rows) == 1
