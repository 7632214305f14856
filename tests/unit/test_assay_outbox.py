"""The assay runner's outbox sender (services/assay_runner/outbox.py) with an in-memory table and a fake publisher:
a failed publish keeps its row (and its place) for the next round, a row is sent again with the same event id
(the stream's Nats-Msg-Id) when the sender died between JetStream's ack and the delete, and the running loop
retries by itself. tests/integration/test_assay_events.py runs it against a refusing EVENTS stream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest

from services.assay_runner import outbox, store
from shared import subjects
from shared.messages.assays import AssayThresholdCrossed


def alert(window: int) -> AssayThresholdCrossed:
    return AssayThresholdCrossed(assay_id=7, name="a", workspace_id=1, pipeline_id=1, pipeline_name="p",
                                 iopath="output dense_1 0", status="Alert", score=1.0, warning_threshold=None,
                                 alert_threshold=0.5, window_start=f"2026-12-03T10:00:0{window}Z",
                                 window_end=f"2026-12-03T10:00:0{window + 1}Z")


class Table:
    """The outbox table: rows by id, and what the store functions were asked."""

    def __init__(self, events: list[AssayThresholdCrossed]) -> None:
        self.rows = {i: {"id": i, "event_id": e.event_id, "subject": subjects.EVENT_ASSAY_ALERT,
                         "payload": e.model_dump_json(), "attempts": 0} for i, e in enumerate(events, 1)}
        self.fail_delete = 0
        self.emptied: asyncio.Event | None = None  # set when the last row is deleted

    async def unsent(self, conn, limit: int) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows)][:limit]

    async def sent(self, conn, outbox_id: int) -> None:
        if self.fail_delete:
            self.fail_delete -= 1
            raise ConnectionError("the database connection was lost")
        del self.rows[outbox_id]
        if not self.rows and self.emptied is not None:
            self.emptied.set()

    async def failed(self, conn, outbox_id: int, error: str) -> None:
        self.rows[outbox_id]["attempts"] += 1
        self.rows[outbox_id]["last_error"] = error


class Transaction:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc) -> bool:
        return False


class Pool:
    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    def transaction(self) -> Transaction:
        return Transaction()


@pytest.fixture
def table(monkeypatch) -> Table:
    table = Table([alert(0), alert(1)])
    monkeypatch.setattr(store, "unsent_events", table.unsent)
    monkeypatch.setattr(store, "event_sent", table.sent)
    monkeypatch.setattr(store, "event_failed", table.failed)
    return table


class Bus:
    """publish_event's stand-in: records (subject, event id, window) of what JetStream acknowledged; `refuse`
    publishes fail first."""

    def __init__(self, refuse: int = 0) -> None:
        self.acked: list[tuple[str, uuid.UUID, str]] = []
        self.refuse = refuse

    async def publish(self, subject: str, event: Any) -> None:
        if self.refuse:
            self.refuse -= 1
            raise TimeoutError("no JetStream ack")
        self.acked.append((subject, event.event_id, event.window_start))


def test_a_failed_publish_keeps_the_event_and_its_place_for_the_next_round(table):
    ids = [row["event_id"] for row in table.rows.values()]
    bus = Bus(refuse=1)
    box = outbox.Outbox(Pool(), bus.publish)
    assert asyncio.run(box.send()) == 0
    assert bus.acked == [] and table.rows[1]["attempts"] == 1 and "TimeoutError" in table.rows[1]["last_error"]
    assert len(table.rows) == 2  # the second was not sent ahead of the first
    assert asyncio.run(box.send()) == 2 and table.rows == {}
    assert [(event_id, window) for _, event_id, window in bus.acked] == [
        (ids[0], "2026-12-03T10:00:00Z"), (ids[1], "2026-12-03T10:00:01Z")]  # as stored, in order


def test_a_row_acknowledged_but_not_deleted_is_sent_again_with_the_same_event_id(table):
    """The sender dies (here: loses its database connection) between JetStream's ack and the delete: the row is
    sent again with its event id, the Nats-Msg-Id by which the EVENTS stream drops the second copy."""
    table.fail_delete = 1
    bus = Bus()
    box = outbox.Outbox(Pool(), bus.publish)
    with pytest.raises(ConnectionError):
        asyncio.run(box.send())
    assert asyncio.run(box.send()) == 2 and table.rows == {}
    first, again, second = bus.acked
    assert first == again and first[1] != second[1]


def test_the_loop_retries_by_itself(table):
    bus = Bus(refuse=2)

    async def go() -> None:
        table.emptied = asyncio.Event()
        task = asyncio.create_task(outbox.Outbox(Pool(), bus.publish, retry=0.05).run())
        try:
            async with asyncio.timeout(5):
                await table.emptied.wait()  # two failed rounds, then both sent, nobody waking it
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert len(bus.acked) == 2


def test_the_loop_sends_when_woken(table, monkeypatch):
    rows = dict(table.rows)
    table.rows.clear()
    rounds = []
    started: list[asyncio.Event] = []

    async def unsent(conn, limit):
        rounds.append(len(table.rows))
        started[0].set()
        return await Table.unsent(table, conn, limit)

    monkeypatch.setattr(store, "unsent_events", unsent)
    bus = Bus()

    async def go() -> None:
        started.append(asyncio.Event())
        table.emptied = asyncio.Event()
        box = outbox.Outbox(Pool(), bus.publish, retry=600.0)
        task = asyncio.create_task(box.run())
        try:
            async with asyncio.timeout(5):
                await started[0].wait()  # the round at start: nothing to send, then it waits (600 s or a wake)
                table.rows.update(rows)  # committed by a pass, which then wakes it
                box.wake()
                await table.emptied.wait()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())
    assert rounds[0] == 0 and len(bus.acked) == 2
