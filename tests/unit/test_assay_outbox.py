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
from nats.js import errors as js_errors

from services.assay_runner import outbox, store
from shared import subjects
from shared.messages.assays import AssayThresholdCrossed


def alert(window: int, assay_id: int = 7) -> AssayThresholdCrossed:
    return AssayThresholdCrossed(assay_id=assay_id, name="a", workspace_id=1, pipeline_id=1, pipeline_name="p",
                                 iopath="output dense_1 0", status="Alert", score=1.0, warning_threshold=None,
                                 alert_threshold=0.5, window_start=f"2026-12-03T10:00:{window:02d}Z",
                                 window_end=f"2026-12-03T10:00:{window + 1:02d}Z")


class Table:
    """The outbox table: rows by id, and what the store functions were asked."""

    def __init__(self, events: list[AssayThresholdCrossed]) -> None:
        self.rows = {i: {"id": i, "event_id": e.event_id, "subject": subjects.EVENT_ASSAY_ALERT,
                         "payload": e.model_dump_json(), "attempts": 0} for i, e in enumerate(events, 1)}
        self.fail_delete = 0
        self.emptied: asyncio.Event | None = None  # set when the last row is deleted

    async def unsent(self, conn, limit: int, after: int = 0) -> list[dict[str, Any]]:
        return [self.rows[i] for i in sorted(self.rows) if i > after][:limit]

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

    async def unsent(conn, limit, after=0):
        rounds.append(len(table.rows))
        started[0].set()
        return await Table.unsent(table, conn, limit, after)

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


# ---- one bad row holds up its own assay's events, not everyone's ----

class RefusingBus(Bus):
    """JetStream refuses the events of `refused` (assay ids) as a stream refuses one message (e.g. larger than its
    largest): a BadRequestError, its answer about that message."""

    def __init__(self, refused: set[int], error: Exception | None = None) -> None:
        super().__init__()
        self.refused = refused
        self.error = error
        self.tried: list[int] = []

    async def publish(self, subject: str, event: Any) -> None:
        self.tried.append(event.assay_id)
        if event.assay_id in self.refused:
            raise self.error or js_errors.BadRequestError(code=400, err_code=10054,
                                                          description="message size exceeds maximum allowed")
        await super().publish(subject, event)


def windows_sent(bus: Bus) -> list[str]:
    return [window for _, _, window in bus.acked]


def test_a_row_whose_event_no_longer_reads_holds_up_only_its_own_assay(monkeypatch):
    """A row written before a message change that no longer validates: the events of other assays behind it are
    sent (they waited behind it for good: the first failure ended every round); its own assay's later event waits
    in order behind it."""
    table = Table([alert(0, assay_id=7), alert(1, assay_id=7), alert(2, assay_id=8)])
    table.rows[1]["payload"] = table.rows[1]["payload"].replace('"alert_threshold":0.5', '"alert_threshold":"x"')
    monkeypatch.setattr(store, "unsent_events", table.unsent)
    monkeypatch.setattr(store, "event_sent", table.sent)
    monkeypatch.setattr(store, "event_failed", table.failed)
    bus = Bus()
    assert asyncio.run(outbox.Outbox(Pool(), bus.publish).send()) == 1
    assert windows_sent(bus) == ["2026-12-03T10:00:02Z"]  # assay 8's
    assert sorted(table.rows) == [1, 2] and table.rows[1]["attempts"] == 1 and table.rows[2]["attempts"] == 0
    assert "ValidationError" in table.rows[1]["last_error"]


def test_a_message_jetstream_refuses_holds_up_only_its_own_assay_across_batches(monkeypatch):
    """A row JetStream refuses (its answer about that message), with more than a batch of its assay's rows behind
    it: every other assay's events are sent, none of the refused assay's goes ahead of its first, and the round
    ends (the held rows are not read again and again)."""
    events = [alert(i % 60, assay_id=7) for i in range(outbox.BATCH + 50)] + [alert(0, assay_id=8)]
    table = Table(events)
    monkeypatch.setattr(store, "unsent_events", table.unsent)
    monkeypatch.setattr(store, "event_sent", table.sent)
    monkeypatch.setattr(store, "event_failed", table.failed)
    bus = RefusingBus({7})

    async def go() -> int:
        async with asyncio.timeout(5):
            return await outbox.Outbox(Pool(), bus.publish).send()

    assert asyncio.run(go()) == 1
    assert bus.tried == [7, 8]  # assay 7's first row once, its later rows not tried ahead of it
    assert len(table.rows) == outbox.BATCH + 50 and table.rows[1]["attempts"] == 1
    assert "BadRequestError" in table.rows[1]["last_error"]
    bus.refused.clear()  # accepted again: assay 7's events go, in order
    assert asyncio.run(go()) == outbox.BATCH + 50 and table.rows == {}
    assert windows_sent(bus)[1:] == [e.window_start for e in events[:-1]]


@pytest.mark.parametrize("error", [TimeoutError("no JetStream ack"), js_errors.ServiceUnavailableError()],
                         ids=["timeout", "jetstream-unavailable"])
def test_a_failure_of_the_bus_still_ends_the_round(monkeypatch, error):
    """The bus failing (no ack in time, JetStream unavailable) would fail the next rows too: the round ends at once
    rather than waiting a timeout per assay."""
    table = Table([alert(0, assay_id=7), alert(1, assay_id=8)])
    monkeypatch.setattr(store, "unsent_events", table.unsent)
    monkeypatch.setattr(store, "event_sent", table.sent)
    monkeypatch.setattr(store, "event_failed", table.failed)
    bus = RefusingBus({7}, error)
    assert asyncio.run(outbox.Outbox(Pool(), bus.publish).send()) == 0
    assert bus.tried == [7] and sorted(table.rows) == [1, 2]


def test_one_process_sends_one_round_at_a_time(table, monkeypatch):
    """A route's send (an assay's create) while the loop's round is publishing: it waits for that round instead of
    reading the rows past those the round holds (SKIP LOCKED) and sending an assay's later events first."""
    reads: list[str] = []
    first_publishing = asyncio.Event()
    release = asyncio.Event()

    async def unsent(conn, limit, after=0):
        reads.append("read while publishing" if first_publishing.is_set() and not release.is_set() else "read")
        return await Table.unsent(table, conn, limit, after)

    monkeypatch.setattr(store, "unsent_events", unsent)
    bus = Bus()

    async def slow_publish(subject: str, event: Any) -> None:
        first_publishing.set()
        await release.wait()
        await bus.publish(subject, event)

    async def go() -> None:
        box = outbox.Outbox(Pool(), slow_publish)
        first = asyncio.create_task(box.send())
        await first_publishing.wait()
        second = asyncio.create_task(box.send())
        for _ in range(20):  # in-memory awaits only: enough loop steps for the second to read if it could
            await asyncio.sleep(0)
        release.set()
        async with asyncio.timeout(5):
            assert await first == 2 and await second == 0

    asyncio.run(go())
    assert "read while publishing" not in reads
