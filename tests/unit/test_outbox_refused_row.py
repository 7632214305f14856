"""A row JetStream refuses for itself, for good (larger than the stream's largest message), is tried at the outbox's
RETRY pace for its first OWN_RETRIES tries only, then at the IDLE rounds and wake-ups (shared/outbox.py): it stays,
holds up its own key's later rows and is logged, but no longer has the service poll PostgreSQL every 2 s for as long
as it stays (review3, requests.md 13:23, item 2: `failing_since` stayed set, so `run` waited RETRY for ever). A bus
failure still retries at the RETRY pace however often it happened."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from nats.js import errors as js_errors

from services.registry import store
from shared import outbox as outbox_module
from shared import subjects
from shared.messages.registry import ConnectionChanged
from shared.outbox import OWN_RETRIES, Outbox
from tests.unit.test_outbox_order_fields import Pool, Rows


class CountedRows(Rows):
    """Rows whose failed tries are counted in `attempts`, as the table's event_failed does."""

    def __init__(self, events: list[tuple[str, Any]], attempts: int) -> None:
        super().__init__(events)
        for row in self.rows.values():
            row["attempts"] = attempts

    async def event_failed(self, conn, outbox_id: int, error: str) -> None:
        self.rows[outbox_id]["attempts"] += 1


def tries(attempts: int, error: Exception, until: int) -> int:
    """How often a running outbox (retry 10 ms, IDLE 60 s) tries a row that always fails with `error`, having failed
    `attempts` times before: once it tried `until` times (5 s at most), and 0.3 s later (rounds at the retry pace
    would have tried some 30 times more by then)."""
    rows = CountedRows([(subjects.EVENT_CONNECTION_CHANGED, ConnectionChanged(connection_id=uuid.uuid4(),
                                                                             action="created"))], attempts)
    tried = [0]

    async def publish(subject: str, event: Any) -> None:
        tried[0] += 1
        raise error

    async def scenario() -> None:
        box = Outbox(Pool(), publish, event_types=store.EVENT_TYPES, order_field=store.ORDER_FIELDS,
                     what="registry events", retry=0.01, rows=rows)
        task = asyncio.create_task(box.run())
        for _ in range(500):
            if tried[0] >= until:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert len(rows.rows) == 1  # kept either way
    return tried[0]


TOO_LARGE = js_errors.BadRequestError(description="message size exceeds maximum allowed")


def test_a_row_refused_for_itself_is_retried_soon_for_its_first_tries_only(monkeypatch):
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)  # its value today; a test must not depend on it
    assert tries(0, TOO_LARGE, OWN_RETRIES) == OWN_RETRIES  # then it waits for the IDLE round
    assert tries(OWN_RETRIES, TOO_LARGE, 1) == 1  # tried at start, then at IDLE rounds only


@pytest.mark.parametrize("error", [js_errors.ServiceUnavailableError(), TimeoutError("no answer")])
def test_a_failure_of_the_bus_is_retried_soon_however_often_it_happened(monkeypatch, error):
    monkeypatch.setattr(outbox_module, "IDLE", 60.0)  # its value today; a test must not depend on it
    assert tries(OWN_RETRIES * 3, error, OWN_RETRIES + 2) >= OWN_RETRIES + 2
