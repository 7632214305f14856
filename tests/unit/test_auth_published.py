"""A change answered once its event is out (users/deactivate, users/update_password, the inference-client revoke:
services/auth/handlers.py `_published`) answers as soon as a round of this process's outbox has tried the event
(shared/outbox.py `Outbox.send_round` tells which rows it sent and which it left unsent), not after the whole
EVENT_OUT_WAIT. Before, a stream refusing the event, or another auth process holding the outbox's sender lock (a
rolling update), had every such answer wait the full 2 s: the outbox's own next try comes RETRY (2 s) later.

No outbox loop runs here and EVENT_OUT_WAIT is an hour, so a `_published` that waits for the outbox's retry or
for its bound hangs, and the guard (ANSWERED_WITHIN) fails the test."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest
from nats.js import errors as js_errors

from services.auth import handlers, store
from shared import outbox as outbox_module
from shared import subjects
from shared.messages.auth import TokensRevoked
from shared.outbox import Outbox, SendingElsewhere
from tests.unit.test_outbox_order_fields import Pool, Rows

ANSWERED_WITHIN = 20.0  # s: a hang guard only (the bound under test is EVENT_OUT_WAIT, an hour here)


class AuthRows(Rows):
    """Auth's outbox table, and whether another process holds the sender's lock now."""

    def __init__(self, events: list[tuple[str, Any]]) -> None:
        super().__init__(events)
        self.elsewhere = False

    async def unsent_events(self, conn, limit: int, after: int = 0) -> list[dict[str, Any]]:
        if self.elsewhere:
            raise SendingElsewhere
        return await super().unsent_events(conn, limit, after)

    def unsent(self, event_id: uuid.UUID) -> bool:
        return any(row["event_id"] == event_id for row in self.rows.values())


def revoked(user: uuid.UUID) -> tuple[str, TokensRevoked]:
    return subjects.EVENT_TOKENS_REVOKED, TokensRevoked(subject=str(user), revoked_before=1.0)


def published(monkeypatch, rows: AuthRows, event_id: uuid.UUID, publish: Any,
              meanwhile: Any = None) -> tuple[bool, list[str]]:
    """`_published` for `event_id` with an outbox over `rows` (no loop running), and the warnings it logged;
    `meanwhile`: a coroutine run alongside (another process)."""
    monkeypatch.setattr(handlers, "EVENT_OUT_WAIT", 3600.0)

    async def event_unsent(pool, wanted: uuid.UUID) -> bool:
        return rows.unsent(wanted)

    monkeypatch.setattr(store, "event_unsent", event_unsent)
    warnings: list[str] = []
    monkeypatch.setattr(handlers.log, "warning", lambda message, *args: warnings.append(message % args))

    async def scenario() -> bool:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="auth events", rows=rows)
        deps = SimpleNamespace(pool=Pool(), send_events=box.send_round, events_committed=box.wake)
        other = asyncio.ensure_future(meanwhile) if meanwhile is not None else None
        try:
            return await asyncio.wait_for(handlers._published(deps, event_id, "the test's change"), ANSWERED_WITHIN)
        finally:
            if other is not None:
                await other

    return asyncio.run(scenario()), warnings


def test_an_event_the_bus_takes_is_answered_once_sent(monkeypatch):
    rows = AuthRows([revoked(uuid.uuid4())])
    event_id = rows.rows[1]["event_id"]
    sent: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.event_id)

    assert published(monkeypatch, rows, event_id, publish) == (True, [])
    assert sent == [event_id] and rows.rows == {}


@pytest.mark.parametrize("error", [
    js_errors.ServiceUnavailableError(),  # JetStream unavailable: the bus's, ends the round
    nats.errors.TimeoutError(),  # no ack in time: the bus's
    js_errors.BadRequestError(description="message size exceeds maximum allowed"),  # the row's own
], ids=["unavailable", "timeout", "refused-row"])
def test_a_refused_event_is_answered_once_this_processs_round_tried_it(monkeypatch, error):
    rows = AuthRows([revoked(uuid.uuid4())])
    event_id = rows.rows[1]["event_id"]
    tried: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        tried.append(event.event_id)
        raise error

    is_out, warnings = published(monkeypatch, rows, event_id, publish)  # hung until EVENT_OUT_WAIT before
    assert is_out is False
    assert tried == [event_id]  # one try: the outbox's retry is its own loop's
    assert rows.unsent(event_id)  # kept: the outbox sends it when the bus takes it
    assert len(warnings) == 1 and "not published yet" in warnings[0]


def test_an_event_behind_a_refused_row_of_its_key_is_answered_at_once(monkeypatch):
    user = uuid.uuid4()
    rows = AuthRows([revoked(user), revoked(user)])  # one user's events go out in order
    first, second = rows.rows[1]["event_id"], rows.rows[2]["event_id"]
    tried: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        tried.append(event.event_id)
        raise js_errors.BadRequestError(description="message size exceeds maximum allowed")

    assert published(monkeypatch, rows, second, publish)[0] is False
    assert tried == [first]  # held behind it, not sent out of order
    assert rows.unsent(second)


def test_a_round_refused_by_a_bus_failure_before_the_event_is_answered_at_once(monkeypatch):
    rows = AuthRows([revoked(uuid.uuid4()), revoked(uuid.uuid4())])  # two users: no key holds the second
    first, second = rows.rows[1]["event_id"], rows.rows[2]["event_id"]
    tried: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        tried.append(event.event_id)
        raise js_errors.ServiceUnavailableError()

    assert published(monkeypatch, rows, second, publish)[0] is False
    assert tried == [first]  # the bus failed on the first: the round ended there
    assert rows.unsent(first) and rows.unsent(second)


def test_while_another_process_sends_a_round_is_tried_again_until_it_has_the_row(monkeypatch):
    """A rolling update: the other auth process's round holds the sender lock (its batch was read before this
    change committed, so it does not send this row); once it is over, this process's round sends the row."""
    rows = AuthRows([revoked(uuid.uuid4())])
    event_id = rows.rows[1]["event_id"]
    rows.elsewhere = True
    sent: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.event_id)

    async def other_process() -> None:
        await asyncio.sleep(0.2)
        rows.elsewhere = False  # its round is over

    # before, the first round found the lock taken and only the outbox loop's retry (RETRY on) could send it
    assert published(monkeypatch, rows, event_id, publish, other_process()) == (True, [])
    assert sent == [event_id] and rows.rows == {}


def test_an_event_another_process_sent_is_answered_as_out(monkeypatch):
    rows = AuthRows([revoked(uuid.uuid4())])
    event_id = rows.rows[1]["event_id"]
    rows.elsewhere = True
    sent: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        sent.append(event.event_id)

    async def other_process() -> None:
        await asyncio.sleep(0.2)
        del rows.rows[1]  # its round sent the row (JetStream acknowledged it) and deleted it; it keeps the lock

    assert published(monkeypatch, rows, event_id, publish, other_process()) == (True, [])
    assert sent == []  # not this process's to send


@pytest.mark.parametrize("error", [
    js_errors.BadRequestError(description="message size exceeds maximum allowed"),  # the row's own
    js_errors.ServiceUnavailableError(),  # the bus's
], ids=["refused-row", "unavailable"])
def test_the_outbox_loop_tries_a_refused_event_again_at_its_retry_pace_not_at_once(monkeypatch, error):
    """With the outbox's loop running (waiting its IDLE round): the answer does not wake it at once (its round,
    milliseconds after the handler's, tried the row again: a refused row spent two of its OWN_RETRIES per answer,
    a failing bus was met twice), and the handler's round asked it for a round RETRY on (not IDLE)."""
    rows = AuthRows([])
    tried: list[uuid.UUID] = []

    async def publish(subject: str, event: Any) -> None:
        tried.append(event.event_id)
        raise error

    monkeypatch.setattr(handlers, "EVENT_OUT_WAIT", 3600.0)
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)  # its value today; a test must not depend on it

    async def event_unsent(pool, wanted: uuid.UUID) -> bool:
        return rows.unsent(wanted)

    monkeypatch.setattr(store, "event_unsent", event_unsent)
    monkeypatch.setattr(handlers.log, "warning", lambda message, *args: None)

    async def scenario() -> tuple[bool, float | None]:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="auth events", retry=30.0, rows=rows)
        loop_task = asyncio.create_task(box.run())
        try:
            await asyncio.sleep(0.1)  # its round at start found nothing: it waits its IDLE round
            subject, event = revoked(uuid.uuid4())  # the change, committed
            rows.rows[1] = {"id": 1, "event_id": event.event_id, "subject": subject,
                            "payload": event.model_dump_json()}
            deps = SimpleNamespace(pool=Pool(), send_events=box.send_round, events_committed=box.wake)
            event_id = event.event_id
            is_out = await asyncio.wait_for(handlers._published(deps, event_id, "the test's change"),
                                            ANSWERED_WITHIN)
            await asyncio.sleep(0.3)  # a woken loop's round comes within milliseconds
            later = None if box._later is None else box._later.when() - asyncio.get_running_loop().time()
            return is_out, later
        finally:
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)

    is_out, later = asyncio.run(scenario())
    assert is_out is False
    assert len(tried) == 1  # the handler's round only
    assert later is not None and 20.0 < later <= 30.0  # the loop's next round: RETRY on, not IDLE (60 s)
